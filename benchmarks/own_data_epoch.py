"""Time per training epoch on your own dataset: the models' own (the paper's) sizes against the CPU sizes
of the starter dataset YAML (``python -m recbole_reveal.commands.extract_features`` writes it), side by side.

    python benchmarks/own_data_epoch.py --dataset mydata --data_path dataset_atomic \
        [--models M3SRec M3SRec_REVEAL] [--batches 8] [--threads 1]

For each model and each size, trains ``--batches`` batches (0: the whole epoch) of one epoch and prints
the seconds per batch, the batches per epoch and the epoch time they make (wall clock and CPU time of
this process), and the ratio of the two sizes. Both rows override the size keys (``hidden_size``,
``inner_size``, ``MAX_ITEM_LIST_LENGTH``), whatever the dataset's YAML says; its other keys (feature sets)
apply. docs/own-data.md quotes the figures.
"""

import argparse
import itertools
import os
import time

import torch

from recbole_reveal import config_report
from recbole_reveal.config import build_config
from recbole_reveal.data.dataset_yaml import CPU_SIZES, longest_history
from recbole_reveal.training import close_run_logs, prepare_run


class FirstBatches:
    """The first ``n`` batches of a RecBole data loader (its other attributes are the loader's)."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self):
        return self.n

    def __getattr__(self, name):
        return getattr(self.loader, name)


def below_the_dataset(model, dataset, data_path, keys):
    """The values of ``keys`` a run of ``model`` gets from the files below the dataset's YAML (the model's
    own YAML, else the defaults): what it trains with when the dataset's YAML does not set them."""
    config = build_config(model, dataset, config_dict={"data_path": data_path})
    values = {}
    for _, role, layer in config_report.layers(config):
        if not role.startswith("dataset"):
            values.update({k: layer[k] for k in keys if k in layer})
    return values


def sizes(model, dataset, data_path):
    """``{"own sizes": overrides, "CPU sizes": overrides}``: the model's own sizes, and the starter YAML's
    CPU sizes (whatever the dataset's YAML says)."""
    cpu = {key: value for key, value, _ in CPU_SIZES if key in ("hidden_size", "inner_size")}
    cpu["MAX_ITEM_LIST_LENGTH"] = longest_history(os.path.join(data_path, dataset, f"{dataset}.inter"))
    return {"own sizes": below_the_dataset(model, dataset, data_path, list(cpu)), "CPU sizes": cpu}


def measure(model, dataset, data_path, overrides, batches):
    config, (train_data, _, _), model_obj, trainer = prepare_run(build_config(
        model, dataset, config_dict=dict(overrides, data_path=data_path, epochs=1, show_progress=False,
                                         state="WARNING", checkpoint_dir="saved_benchmark")))
    try:
        total = len(train_data)
        n = total if batches <= 0 else min(batches, total)
        data = train_data if n == total else FirstBatches(train_data, n)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer._train_epoch(data, epoch_idx=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        close_run_logs()
    return {"hidden": config["hidden_size"], "length": config["MAX_ITEM_LIST_LENGTH"], "batches": total,
            "measured": n, "wall": wall / n * total, "cpu": cpu / n * total}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", default="dataset_atomic")
    parser.add_argument("--models", nargs="+", default=["M3SRec", "M3SRec_REVEAL"])
    parser.add_argument("--batches", type=int, default=8, help="batches timed per row (0: the whole epoch)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [(model, label, measure(model, args.dataset, args.data_path, overrides, args.batches))
            for model in args.models for label, overrides in sizes(model, args.dataset, args.data_path).items()]
    print(f"\n{args.dataset}: one training epoch, {args.threads} torch thread(s), load average "
          f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); epoch = seconds per batch x batches per epoch")
    print(f"{'model':<16} {'sizes':<10} {'hidden':>6} {'max len':>7} {'batches':>7} {'timed':>5} "
          f"{'epoch wall s':>12} {'epoch CPU s':>11} {'CPU ratio':>9}")
    base = {}
    for model, label, r in rows:
        base.setdefault(model, r["cpu"])
        print(f"{model:<16} {label:<10} {r['hidden']:>6} {r['length']:>7} {r['batches']:>7} {r['measured']:>5} "
              f"{r['wall']:>12.1f} {r['cpu']:>11.1f} {base[model] / r['cpu']:>8.1f}x")


if __name__ == "__main__":
    main()
