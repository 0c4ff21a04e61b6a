"""``python -m recbole_reveal.commands.fve_attention``: VLM attention heatmaps over an item image, one panel
per prompt (paper Fig. 3; :mod:`recbole_reveal.fve.attention`, docs/cost-and-heatmaps.md)."""

import argparse
import os
import sys

import numpy as np

from recbole_reveal.fve.attention import (
    DEFAULT_POOLING, PANEL_PX, cycle_prompts, patch_attention, render_heatmaps,
)
from recbole_reveal.fve.encoding.chat import POOLINGS
from recbole_reveal.infra.errors import ConfigError


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m recbole_reveal.commands.fve_attention",
        description="VLM attention heatmaps over an item image, one panel per prompt (paper Fig. 3).")
    p.add_argument("--vlm_path", help="local Qwen2.5-VL / Qwen3-VL folder (required without --model)")
    p.add_argument("--model", help="with --dataset: read vlm_path, data_path, feature_dir and the fve_* pixel, "
                   "device and dtype keys from this model's configuration, as the FVE run read them")
    p.add_argument("--config_files", nargs="+", default=[], help="config files of that configuration (with --model)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--image", help="item image (default with --dataset/--item: the item's image)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for more panels")
    p.add_argument("--dataset", help="read the prompts of FVE cycles of this dataset's --item")
    p.add_argument("--item", help="item_id (with --dataset)")
    p.add_argument("--cycles", type=int, nargs="+", help="FVE cycles to show (default: first and last written)")
    p.add_argument("--data_path", help="folder holding <dataset>/ (default dataset_atomic)")
    p.add_argument("--feature_dir", help="the run's feature_dir (default <data_path>/<dataset>/features)")
    p.add_argument("--pooling", default=DEFAULT_POOLING, choices=sorted(POOLINGS),
                   help="chat turn as in fve_pooling (default last_token: [image, prompt] + assistant header)")
    p.add_argument("--layer", type=int, default=-1, help="decoder layer (default -1, the final one)")
    p.add_argument("--min_pixels", type=int, help="pixel budget (default the VLM folder's)")
    p.add_argument("--max_pixels", type=int, help="pixel budget (default the VLM folder's)")
    p.add_argument("--device", help="default auto")
    p.add_argument("--dtype", help="default auto")
    p.add_argument("--panel_px", type=int, default=PANEL_PX, help=f"panel width/height in pixels ({PANEL_PX})")
    p.add_argument("--shared_scale", action="store_true", help="one colour scale over all panels")
    p.add_argument("--arrays", help="also save the attention maps and prompts as .npz here")
    args = p.parse_args(argv)
    if args.model and not args.dataset:
        p.error("--model goes with --dataset (the configuration of a run on that dataset)")
    if not args.model and not args.vlm_path:
        p.error("give --vlm_path, or --model and --dataset to read it from the run's configuration")
    if bool(args.dataset) != bool(args.item):
        p.error("--dataset and --item go together")
    if args.panel_px < 64:
        p.error(f"--panel_px must be at least 64, got {args.panel_px}")
    if not args.dataset and (not args.image or not args.prompt):
        p.error("give --image and at least one --prompt, or --dataset and --item")
    return args


def _fill_from_config(args):
    """Options not given on the command line: from the run's configuration (``--model``), else defaults."""
    settings = {}
    if args.model:
        from recbole_reveal.config import build_config
        from recbole_reveal.fve.config import fve_settings

        config = build_config(args.model, args.dataset, args.config_files,
                              {"data_path": args.data_path} if args.data_path else None)
        settings = fve_settings(config)
        args.data_path = os.path.dirname(os.path.normpath(config["data_path"]))
        args.feature_dir = args.feature_dir or config["feature_dir"]
        if not settings["vlm_path"] and not args.vlm_path:
            raise ConfigError(f"no vlm_path in the configuration of {args.model} on {args.dataset}; pass --vlm_path")
    args.vlm_path = args.vlm_path or settings.get("vlm_path")
    args.data_path = args.data_path or "dataset_atomic"
    args.device = args.device or settings.get("fve_device", "auto")
    args.dtype = args.dtype or settings.get("fve_dtype", "auto")
    if args.min_pixels is None:
        args.min_pixels = settings.get("fve_min_pixels")
    if args.max_pixels is None:
        args.max_pixels = settings.get("fve_max_pixels")


def main(argv=None):
    from PIL import Image

    from recbole_reveal.infra.errors import USER_ERRORS
    from recbole_reveal.fve.vlm.load import load_vlm

    args = parse_args(argv)
    try:
        _fill_from_config(args)
        labels_prompts, image_path = ([], None)
        if args.dataset:
            labels_prompts, image_path = cycle_prompts(args.dataset, args.item, args.data_path, args.feature_dir,
                                                       args.cycles)
        if args.prompt:
            labels_prompts = [(f"prompt {k + 1}", q) for k, q in enumerate(args.prompt)]
        image_path = args.image or image_path
        if not image_path or not os.path.isfile(image_path):
            raise ConfigError(f"image not found: {image_path or '(the item has no image in its .item file)'}")
        image = Image.open(image_path).convert("RGB")
        vlm = load_vlm(args.vlm_path, device=args.device, dtype=args.dtype, attn_implementation="eager")
        results = [patch_attention(vlm, image, q, pooling=args.pooling, layer=args.layer,
                                   min_pixels=args.min_pixels, max_pixels=args.max_pixels) for _, q in labels_prompts]
    except (*USER_ERRORS, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = [label for label, _ in labels_prompts]
    render_heatmaps(image, results, args.out, labels=labels, panel_px=args.panel_px, shared_scale=args.shared_scale)
    if args.arrays:
        np.savez(args.arrays, labels=np.array(labels), prompts=np.array([r.prompt for r in results]),
                 **{f"attention_{k}": r.attention for k, r in enumerate(results)})
    for label, r in zip(labels, results):
        print(f"{label}: {100 * r.image_share:.1f}% of the last token's attention on the image "
              f"({r.attention.shape[0]}x{r.attention.shape[1]} patches, layer {r.layer}, query {r.query_token!r})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
