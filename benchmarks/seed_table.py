"""Test metrics of several models over several seeds, mean +- std, with modalities zeroed at inference.

    python benchmarks/seed_table.py [--dataset=synthetic-demo] [--models M3SRec M3SRec_REVEAL]
        [--seeds 2020 2021 2022] [--zeroed text] [--set key=value ...]

Each run is an ordinary ``run_recbole_reveal`` call (same config resolution as the entry script).
The table lists, per model and inference setting (full, and each zeroed modality), the test
Recall/NDCG@10/20 as mean +- sample std over the seeds.
"""

import argparse
import statistics

import yaml

from recbole_reveal import get_model, run_recbole_reveal
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def parse_overrides(items):
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic-demo")
    parser.add_argument("--models", nargs="+", default=["M3SRec", "M3SRec_REVEAL"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--zeroed", nargs="*", default=["text"], help="modalities to zero at inference")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)

    rows = {}
    for model in args.models:
        multimodal = issubclass(get_model(model), MultimodalSequentialRecommender)
        for seed in args.seeds:
            config = dict(overrides, seed=seed, eval_zeroed_modalities=args.zeroed if multimodal else [])
            result = run_recbole_reveal(model, args.dataset, config_dict=config)
            settings = {"full": result["test_result"]}
            settings.update({f"{m} zeroed": r for m, r in result["masked_test_results"].items()})
            for setting, metrics in settings.items():
                rows.setdefault((model, setting), []).append({k: float(metrics[k]) for k in METRICS})

    print(f"\nTest metrics on {args.dataset}, mean +- std over seeds {args.seeds}")
    header = f"{'model':<16}{'inference':<16}" + "".join(f"{m:>18}" for m in METRICS)
    print(header)
    print("-" * len(header))
    for (model, setting), runs in rows.items():
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f}+-{std:.4f}")
        print(f"{model:<16}{setting:<16}" + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
