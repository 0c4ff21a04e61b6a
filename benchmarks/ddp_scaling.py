"""Training with 1 vs N processes (RecBole's distributed path): epoch time and peak memory per process.

    python benchmarks/ddp_scaling.py [--model=M3SRec_REVEAL] [--dataset=synthetic-demo] [--nprocs 1 2]
        [--epochs=2] [--key=value ...]

Every configuration trains ``--epochs`` epochs from the same seed on the same global batch
(``train_batch_size`` rows a step, split over the processes, as RecBole splits it) and reports the
median epoch time, the speed-up over one process, and each process's peak resident memory. On CPU the
processes use gloo and share the machine's cores (each gets cores / N torch threads), so the speed-up
is bounded by what one process already gets from its threads; on GPUs each process has its own device.

On a node with N GPUs, the same measurement of a full run is:

    python run_recbole_reveal.py --model=M3SRec_REVEAL --dataset=Yelp --nproc=N --gpu_id="0,1,...,N-1"

(each run writes its epoch times in its log and its cost report, ``<checkpoint>.cost.json``).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def train_epochs(model, dataset, epochs, out_dir, config_dict=None):
    """On every rank: build the run as run_recbole_reveal does, time ``epochs`` training epochs, write
    ``rank<r>.json``."""
    from recbole_reveal.infra.cost import peak_rss_mb, reset_peak_rss
    from recbole_reveal.infra.collectives import global_rank
    from recbole_reveal.config import build_config
    from recbole_reveal.training import prepare_run

    import torch

    reset_peak_rss()
    config, (train_data, _, _), _, trainer = prepare_run(build_config(model, dataset, config_dict=dict(config_dict or {})))
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch_idx=epoch)
        times.append(time.perf_counter() - start)
    record = {"epoch_s": times, "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
              "steps": len(train_data), "rows_per_step": train_data.step, "device": str(config["device"])}
    if config["device"].type == "cuda":
        record["peak_gpu_mb"] = torch.cuda.max_memory_allocated(config["device"]) / 2 ** 20
    with open(os.path.join(out_dir, f"rank{global_rank(config)}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f)
    return record


def run(nproc, model, dataset, epochs, overrides):
    from recbole_reveal.adaptation.launch import Plan, _free_port
    from recbole_reveal.infra.collectives import uses_cuda
    from recbole_reveal.config import build_config

    out = tempfile.mkdtemp(prefix="ddp_scaling_")
    config_dict = dict(overrides, state="WARNING", show_progress=False)
    if nproc == 1:
        train_epochs(model, dataset, epochs, out, config_dict=config_dict)
    else:
        cuda = uses_cuda(build_config(model, dataset, config_dict=config_dict))
        plan = Plan(nproc=nproc, world_size=nproc, offset=0, ip="localhost", port=_free_port("localhost", 0),
                    cuda=cuda, timeout=1800)
        plan.run(train_epochs, model, dataset, epochs, out, config_dict=config_dict)
    ranks = []
    for r in range(nproc):
        with open(os.path.join(out, f"rank{r}.json"), encoding="utf-8") as f:
            ranks.append(json.load(f))
    return ranks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="M3SRec_REVEAL")
    parser.add_argument("--dataset", default="synthetic-demo")
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    args, rest = parser.parse_known_args()
    import yaml

    overrides = {}
    for item in rest:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep:
            parser.error(f"'{item}' is not of the form --key=value")
        overrides[key] = yaml.safe_load(value)

    import recbole_reveal  # noqa: F401  (RecBole compatibility fixes)

    results = {}
    for n in args.nprocs:
        start = time.perf_counter()
        results[n] = run(n, args.model, args.dataset, args.epochs, overrides)
        print(f"{n} process(es): {time.perf_counter() - start:.0f} s in all", flush=True)

    base = statistics.median(results[min(results)][0]["epoch_s"])
    print(f"\n{args.model} on {args.dataset}: {args.epochs} epochs, {results[min(results)][0]['steps']} steps "
          f"per epoch, device {results[min(results)][0]['device']}, median epoch time over the epochs of rank 0")
    print(f"{'processes':>10}{'threads/proc':>14}{'rows/step/proc':>16}{'s/epoch':>10}{'speed-up':>10}"
          f"{'peak RSS MB per process':>26}")
    for n, ranks in results.items():
        epoch = statistics.median(ranks[0]["epoch_s"])
        rss = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in ranks)
        print(f"{n:>10}{ranks[0]['threads']:>14}{ranks[0]['rows_per_step']:>16}{epoch:>10.2f}{base / epoch:>9.2f}x"
              f"{rss:>26}")


if __name__ == "__main__":
    main()
