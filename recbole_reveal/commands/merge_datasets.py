"""``python -m recbole_reveal.commands.merge_datasets --datasets A B [...] --name AB [--data_path dataset_atomic]
[--features text_minilm]``: several atomic datasets merged into one for UniSRec's multi-domain
pre-training (:func:`recbole_reveal.data.merge.merge_datasets`). Exit status 2 with one ``error:`` line for a
bad dataset list or feature set."""

import argparse
import json

from recbole_reveal.data.merge import merge_datasets
from recbole_reveal.infra.errors import exit_status


def main(argv=None):
    p = argparse.ArgumentParser(description="Merge atomic datasets (users and items prefixed by their dataset's "
                                "index) for UniSRec's multi-domain pre-training.")
    p.add_argument("--data_path", default="dataset_atomic", help="folder holding the datasets (RecBole data_path)")
    p.add_argument("--datasets", nargs="+", required=True, help="datasets to merge, in order (index 0, 1, ...)")
    p.add_argument("--name", required=True, help="name of the merged dataset (a new folder under data_path)")
    p.add_argument("--features", nargs="+", default=["text_minilm"], help="feature sets to merge (default text_minilm)")
    a = p.parse_args(argv)
    print(json.dumps(merge_datasets(a.data_path, a.datasets, a.name, a.features), indent=2))


if __name__ == "__main__":
    raise SystemExit(exit_status(main))
