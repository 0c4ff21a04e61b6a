"""``python -m recbole_reveal.commands.prepare_data DATASET --raw-dir DIR [--out dataset_atomic] ...``"""

import argparse
import logging
import sys

from recbole_reveal.prepare.images import MIN_IMAGE_SIDE
from recbole_reveal.prepare.pipeline import DATASETS, Options, PrepareError, prepare
from recbole_reveal.prepare.rawio import RawFileError
from recbole_reveal.prepare.sources import DEFAULT_PHOTO_LABELS
from recbole_reveal.infra.errors import EncoderUnavailable


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m recbole_reveal.commands.prepare_data",
        description="Convert a raw public dataset (Amazon 2014, Yelp) into RecBole atomic files, images, "
                    "feature sets and statistics (docs/datasets.md).")
    p.add_argument("dataset", help=f"{', '.join(DATASETS)}, or 'amazon' with --category")
    p.add_argument("--raw-dir", default=".", help="folder holding the downloaded files (default: .)")
    p.add_argument("--out", default="dataset_atomic", help="RecBole data_path; writes <out>/<name>/")
    p.add_argument("--name", help="dataset name (folder and file stem); default the dataset's own name")
    p.add_argument("--category", help="'amazon' only: the category part of the file names, e.g. Toys_and_Games")
    g = p.add_argument_group("input files (default: the standard names inside --raw-dir)")
    g.add_argument("--reviews", help="review file (Amazon reviews_<Category>_5.json.gz, Yelp "
                                     "yelp_academic_dataset_review.json)")
    g.add_argument("--meta", help="Amazon metadata file meta_<Category>.json.gz")
    g.add_argument("--business", help="Yelp yelp_academic_dataset_business.json")
    g.add_argument("--photos-json", help="Yelp photos.json")
    g.add_argument("--photos-dir", help="Yelp photo folder (default <raw-dir>/photos)")
    g = p.add_argument_group("filtering")
    g.add_argument("--core", type=int, default=5, help="k of the k-core filter (default 5)")
    g.add_argument("--require-title", action="store_true",
                   help="an item has text only if it has a title (default: title, categories or brand)")
    g.add_argument("--missing-images", choices=["drop", "keep"], default="drop",
                   help="drop (paper §5.1.2, default) or keep items without a valid image (all-zero "
                        "visual features)")
    g.add_argument("--keep_missing", "--keep-missing", action="store_true",
                   help="keep items without an image or without text (not the paper's protocol): they stay in the "
                        "dataset, marked missing in the feature sets (docs/missing-modalities.md)")
    g.add_argument("--photo-labels", nargs="+", default=list(DEFAULT_PHOTO_LABELS),
                   help="Yelp: photo label priority for the one photo per business "
                        f"(default {' '.join(DEFAULT_PHOTO_LABELS)})")
    g.add_argument("--max-bad-fraction", type=float, default=0.05,
                   help="stop with an error when a raw file has more malformed lines than this fraction")
    g = p.add_argument_group("images")
    g.add_argument("--offline", action="store_true", help="never download; use images already in <out>/<name>/images")
    g.add_argument("--workers", type=int, default=16, help="parallel download / verification threads")
    g.add_argument("--retries", type=int, default=3, help="extra tries after a timeout / 5xx / connection error")
    g.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry, doubled each time")
    g.add_argument("--timeout", type=float, default=20.0, help="seconds per HTTP request")
    g = p.add_argument_group("features")
    g.add_argument("--skip-features", action="store_true", help="write no feature sets")
    g.add_argument("--text-encoder", default="minilm", help="minilm, or hf:<local folder>")
    g.add_argument("--vision-encoder", default="efficientnet-lite0")
    g.add_argument("--device", default="cpu")
    g.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tmp-dir", help="folder for the temporary review spool (default: inside the output)")
    p.epilog = (f"Images smaller than {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels count as missing. Re-running "
                "with the same inputs gives byte-identical outputs and reuses the images already fetched.")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    opts = Options(core=a.core, require_title=a.require_title, missing_images=a.missing_images,
                   offline=a.offline, workers=a.workers, retries=a.retries, backoff=a.backoff,
                   timeout=a.timeout, features=not a.skip_features, text_encoder=a.text_encoder,
                   vision_encoder=a.vision_encoder, device=a.device, batch_size=a.batch_size,
                   max_bad_fraction=a.max_bad_fraction, photo_labels=a.photo_labels, tmp_dir=a.tmp_dir,
                   keep_missing=a.keep_missing)
    paths = {"reviews": a.reviews, "meta": a.meta, "business": a.business, "photos_json": a.photos_json,
             "photos_dir": a.photos_dir}
    try:
        return prepare(a.dataset, a.raw_dir, a.out, a.name, a.category, opts, paths)
    except (RawFileError, PrepareError, EncoderUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
