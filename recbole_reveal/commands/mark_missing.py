"""``python -m recbole_reveal.commands.mark_missing --dataset NAME --set SET --fraction F --name NEW``: a copy
of a feature set with a seeded fraction of its items marked missing (rows zeroed, listed in ``NEW.missing``),
to measure what missing images or texts cost on data that has them all
(:func:`recbole_reveal.data.availability.mark_missing`; docs/missing-modalities.md)."""

import argparse
import os
import sys

from recbole_reveal.data.availability import mark_missing
from recbole_reveal.infra.errors import exit_status
from recbole_reveal.infra.locations import resolve_data_path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_reveal.commands.mark_missing", description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", default="dataset_atomic", help="folder that holds <dataset>/")
    parser.add_argument("--feature_dir", help="default <data_path>/<dataset>/features")
    parser.add_argument("--set", required=True, dest="source", help="the feature set to copy")
    parser.add_argument("--fraction", type=float, required=True, help="fraction of the items marked missing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    parser.add_argument("--name", required=True, help="name of the new set")
    args = parser.parse_args(argv)
    folder = resolve_data_path(os.path.join(args.data_path, args.dataset), args.dataset)
    feature_dir = args.feature_dir or os.path.join(folder, "features")
    missing = mark_missing(feature_dir, args.source, args.name, args.fraction, args.seed)
    print(f"{args.name}: {len(missing)} items marked missing (written to {feature_dir})")


def cli(argv=None):
    """:func:`main`, with a user error as one ``error:`` line and exit status 2."""
    return exit_status(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
