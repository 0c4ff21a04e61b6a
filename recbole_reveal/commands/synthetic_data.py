"""``python -m recbole_reveal.commands.synthetic_data [--out dataset_atomic] [--name synthetic-demo] ...``:
the SYNTHETIC multimodal demo dataset (:func:`recbole_reveal.data.synthetic.generate_dataset`)."""

import argparse
import json

from recbole_reveal.data.synthetic import generate_dataset


def main(argv=None):
    p = argparse.ArgumentParser(description="Generate the SYNTHETIC multimodal demo dataset.")
    p.add_argument("--out", default="dataset_atomic", help="parent folder (RecBole data_path)")
    p.add_argument("--name", default="synthetic-demo", help="dataset name (sub-folder and file stem)")
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--items", type=int, default=480)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--vision_share", type=float, default=None,
                   help="share of the taste weights only the images carry (default: the demo's 0.81)")
    p.add_argument("--text_noise", type=float, default=0.0, help="probability an item shows a wrong brand")
    a = p.parse_args(argv)
    summary = generate_dataset(a.out, a.name, a.users, a.items, a.seed, a.image_size, a.vision_share,
                               a.text_noise)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
