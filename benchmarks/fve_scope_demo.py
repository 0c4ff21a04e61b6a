"""The FVE loop's per-cycle table in both prompt scopes (item / interaction) on the embedded demo dataset,
with a tiny random or scripted Qwen2.5-VL: the mechanics (prompts changed, re-encodes, cache hits,
language-model and vision-tower passes, TFLOP and the 8 x 4090 estimate), never the quality (random weights).

    python benchmarks/fve_scope_demo.py [--cycles 2] [--epochs 2] [--vlm scripted|random] [--threads 1]

Each scope runs in a temporary feature folder (the demo's text features copied in) with its own embedding
cache; ``--scopes item`` or ``--scopes interaction`` runs one.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recbole_reveal.fve.loop.run import run_fve  # noqa: E402
from recbole_reveal.testing.vlms import build_scripted_qwen2_5_vl, build_tiny_qwen2_5_vl  # noqa: E402

ANSWER = ["ANALYSIS:", " The image hides the material.\n", "NEW_PROMPT:",
          " Describe the fabric, colour and shape of this product."]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic-demo")
    p.add_argument("--data_path", default=os.path.join(ROOT, "dataset_atomic"))
    p.add_argument("--cycles", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--vlm", choices=("scripted", "random"), default="scripted")
    p.add_argument("--scopes", nargs="+", default=["item", "interaction"])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        vlm = os.path.join(tmp, "vlm")
        (build_scripted_qwen2_5_vl(vlm, ANSWER) if a.vlm == "scripted" else build_tiny_qwen2_5_vl(vlm))
        text = os.path.join(a.data_path, a.dataset, "features")
        for scope in a.scopes:
            fdir = os.path.join(tmp, f"features_{scope}")
            os.makedirs(fdir)
            for name in os.listdir(text):
                if name.startswith("text_"):
                    shutil.copy(os.path.join(text, name), fdir)
            start = time.perf_counter()
            out = run_fve("M3SRec_REVEAL", a.dataset, config_dict={
                "data_path": a.data_path, "feature_dir": fdir, "vlm_path": vlm, "fve_device": "cpu",
                "fve_cycles": a.cycles, "fve_prompt_scope": scope, "fve_preprocess_workers": 0,
                "fve_rewrite_max_new_tokens": 16, "fve_rewrite_batch_size": 8, "epochs": a.epochs,
                "show_progress": False})
            print(f"\n{scope} scope ({a.vlm} tiny VLM, {a.cycles} cycles, {a.epochs} epochs, "
                  f"{time.perf_counter() - start:.0f} s):\n{out['table_text']}", flush=True)


if __name__ == "__main__":
    main()
