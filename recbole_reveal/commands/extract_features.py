"""``python -m recbole_reveal.commands.extract_features --dataset NAME [--modality text|vision] ...``: per-item
text or image features for a RecBole dataset (:func:`recbole_reveal.features.extract.extract`;
docs/data-format.md)."""

import argparse
import logging
import sys

from recbole_reveal.features.encoders import ENCODERS
from recbole_reveal.features.extract import DEFAULT_TEXT_FIELDS, extract
from recbole_reveal.infra.errors import exit_status


def main(argv=None):
    p = argparse.ArgumentParser(description="Extract per-item text or image features for a RecBole dataset.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data_path", default="dataset_atomic", help="folder that holds <dataset>/")
    p.add_argument("--modality", choices=["text", "vision"],
                   help="default: the encoder's own modality")
    p.add_argument("--encoder", default="minilm",
                   help=f"one of {sorted(ENCODERS)}; 'hf:<local folder>' for any HF text encoder")
    p.add_argument("--name", help="feature-set name (default <modality>_<encoder>, e.g. text_minilm)")
    p.add_argument("--fields", nargs="+",
                   help=f"text fields in order (default {' '.join(DEFAULT_TEXT_FIELDS)})")
    p.add_argument("--image_field", default="image")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--feature_dir", help="default <data_path>/<dataset>/features")
    p.add_argument("--keep_missing", action="store_true",
                   help="keep items without the modality (no image / no text), marked missing in <name>.missing; "
                   "without it they are an error")
    p.add_argument("--dataset_yaml", choices=("auto", "cpu", "gpu", "skip"), default="auto",
                   help="when the dataset has no property file: write a starter <data_path>/<dataset>/<dataset>.yaml "
                   "with sizes for a CPU or a GPU (auto: this machine's; default), or skip")
    a = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return extract(a.dataset, a.data_path, a.modality, a.encoder, a.name, a.fields, a.image_field,
                   a.batch_size, a.device, a.feature_dir, a.dataset_yaml, a.keep_missing)


def cli(argv=None):
    """:func:`main`, with a user error as one ``error:`` line and exit status 2."""
    return exit_status(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
