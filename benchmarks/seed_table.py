"""Test metrics of several models over several seeds, mean +- std, with modalities zeroed at inference.

    python benchmarks/seed_table.py [--dataset=synthetic-demo] [--models M3SRec M3SRec_REVEAL]
        [--seeds 2020 2021 2022] [--zeroed text] [--set key=value ...] [--out results]

A thin wrapper of ``python run_experiments.py seeds`` (docs/experiments.md) with this script's
defaults: every run is saved under ``<out>/<dataset>/seeds/`` (a re-run skips finished runs), and the
table adds the relative improvement and paired t-test p-value of each X_REVEAL over X.
"""

import argparse
import sys

from recbole_reveal.commands.run_experiments import main as run_experiments


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic-demo")
    parser.add_argument("--models", nargs="+", default=["M3SRec", "M3SRec_REVEAL"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--zeroed", nargs="*", default=["text"], help="modalities to zero at inference")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--out", default="results", help="results root")
    args = parser.parse_args(argv)
    command = ["seeds", "--dataset", args.dataset, "--models", *args.models, "--seeds", *map(str, args.seeds),
               "--out", args.out]
    if args.zeroed:
        command += ["--eval_zeroed", *args.zeroed]
    if args.set:
        command += ["--set", *args.set]
    return run_experiments(command)


if __name__ == "__main__":
    sys.exit(main())
