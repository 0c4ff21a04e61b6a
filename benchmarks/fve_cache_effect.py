"""FVE cache effect: items re-encoded per cycle, and a re-run of a finished run, on the embedded demo.

::

    python benchmarks/fve_cache_effect.py                    # scripted tiny VLM: every critic answer accepted
    python benchmarks/fve_cache_effect.py --vlm random       # random tiny VLM: every answer malformed
    python benchmarks/fve_cache_effect.py --cycles 3 --epochs 3 --model M3SRec_REVEAL --processes 2

Runs the whole loop (``run_fve``) on ``synthetic-demo`` with a tiny Qwen2.5-VL built in a temporary
folder: ``scripted`` (``build_scripted_qwen2_5_vl``) writes one well-formed rewrite for every selected
item, so each cycle re-encodes exactly the rewritten items; ``random`` (``build_tiny_qwen2_5_vl``)
never does, so later cycles re-encode nothing. Then the same loop is run again in a new run folder on
the same embedding cache: it re-encodes nothing (and reads the review keywords from the keyword cache).
Prints the per-cycle table of both runs, the encode seconds side by side, and the files the embedding
cache gained per cycle (shards) next to what the per-item layout of earlier versions wrote (two files
per encoded item). Mechanics only: the tiny VLM's features mean nothing.
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_reveal.fve.loop.run import run_fve  # noqa: E402
from recbole_reveal.testing.vlms import build_scripted_qwen2_5_vl, build_tiny_qwen2_5_vl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FEATURES = os.path.join(ROOT, "dataset_atomic", "synthetic-demo", "features")
ANSWER = ["ANALYSIS:", " The prompt ignores the material and the colour.\n", "NEW_PROMPT:",
          " Describe the material, colour and shape of this product."]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vlm", choices=("scripted", "random"), default="scripted")
    parser.add_argument("--model", default="M3SRec_REVEAL")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per cycle (demo: CPU-sized)")
    parser.add_argument("--rewrite_fraction", type=float, default=0.25)
    parser.add_argument("--processes", type=int, default=1, help="fve_num_processes (CPU workers here)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="fve_cache_effect_")
    try:
        folder = os.path.join(work, "vlm")
        if args.vlm == "scripted":
            build_scripted_qwen2_5_vl(folder, ANSWER)
        else:
            build_tiny_qwen2_5_vl(folder)
        feature_dir = os.path.join(work, "features")
        os.makedirs(feature_dir)
        for name in os.listdir(DEMO_FEATURES):          # the demo's text features; FVE writes the visual ones
            if name.startswith("text_"):
                shutil.copy(os.path.join(DEMO_FEATURES, name), feature_dir)
        config = {"vlm_path": folder, "fve_device": "cpu", "fve_cycles": args.cycles, "epochs": args.epochs,
                  "feature_dir": feature_dir, "fve_rewrite_fraction": args.rewrite_fraction,
                  "fve_rewrite_max_new_tokens": 16, "fve_rewrite_batch_size": 16, "fve_batch_size": 16,
                  "fve_num_processes": args.processes, "checkpoint_dir": os.path.join(work, "saved")}
        shards = os.path.join(feature_dir, "fve", "cache", "shards")
        files = []                                      # shard files after each cycle's encode stage
        for x in range(args.cycles):
            run_fve(args.model, "synthetic-demo", config_dict=dict(config, fve_run_dir=os.path.join(work, "run1"),
                                                                   fve_stop_after=f"cycle_{x}/encode"))
            files.append(len(os.listdir(shards)))
        first = run_fve(args.model, "synthetic-demo", config_dict=dict(config, fve_run_dir=os.path.join(work, "run1")))
        again = run_fve(args.model, "synthetic-demo", config_dict=dict(config, fve_run_dir=os.path.join(work, "run2")))
        files_again = len(os.listdir(shards)) - files[-1]
        keyword_files = len(os.listdir(os.path.join(feature_dir, "fve", "cache", "keywords")))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nFVE cache effect on synthetic-demo ({args.vlm} tiny VLM, {args.model}, {args.cycles} cycles, "
          f"{args.epochs} epochs/cycle, rewrite fraction {args.rewrite_fraction}, {args.processes} process(es))")
    print("first run:\n" + first["table_text"])
    print("re-run (new run folder, same embedding cache):\n" + again["table_text"])
    print(f"{'cycle':>5} {'re-encoded (first)':>19} {'re-encoded (re-run)':>20} "
          f"{'encode s (first)':>17} {'encode s (re-run)':>18} {'ratio':>6}")
    for a, b in zip(first["table"], again["table"]):
        sa, sb = a["seconds"]["encode"], b["seconds"]["encode"]
        print(f"{a['cycle']:>5} {a['items_reencoded']:>19} {b['items_reencoded']:>20} {sa:>17.1f} {sb:>18.1f} "
              f"{sa / max(sb, 1e-9):>6.1f}")
    print(f"\nembedding cache files added per cycle (first run): shards / per-item layout of earlier versions")
    for x, row in enumerate(first["table"]):
        added = files[x] - (files[x - 1] if x else 0)
        print(f"{x:>5} {added:>7} / {2 * row['items_reencoded']}")
    print(f"re-run: {files_again} shard files added; keyword cache: {keyword_files} file(s), read by the re-run")


if __name__ == "__main__":
    main()
