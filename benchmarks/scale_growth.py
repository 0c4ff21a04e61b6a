"""How M3SRec and M3SRec_REVEAL's cost grows towards Yelp's size, on SYNTHETIC interactions.

    python benchmarks/scale_growth.py [--sizes 30000 300000 3000000] [--models M3SRec M3SRec_REVEAL]
        [--steps 40] [--eval_batches 4] [--text_dim 384] [--vision_dim 1280] [--workdir /tmp/scale-growth]
        [--setup_only 3000000] [--reuse]

For each size, a dataset with Yelp's shape (paper Table 1: 287,116 users, 148,523 items, 4,392,169
interactions: 15.3 interactions a user, 1.93 users an item, Zipf-like item popularity, at least 5
interactions a user) and random text / visual feature matrices is written once; then each model runs in
a child process of its own (so its peak memory is its own) with the models' real YAML settings:

* setup: reading the atomic files, RecBole's sequence augmentation, the split and the loaders, the model;
* training: ``--steps`` real training steps (data loading, negative sampling, AVL's probes included),
  timed and scaled to the epoch's number of batches (an epoch at 3 M is hours on a CPU);
* full-sort evaluation: ``--eval_batches`` batches of the test loader (scores against every item,
  top-k), scaled to the whole test set;
* memory: the child's peak resident memory, and the training state (parameters, gradients, Adam's two
  moments) the model holds -- what a GPU must hold on top of activations.

Then, per model and quantity, the exponent b of ``cost ~ interactions^b`` fitted over the sizes, the
extrapolation to Yelp's 4,392,169 interactions / 148,523 items, and the paper's Table 7 beside it
(M3SRec on Yelp: 4.65 h of training, 7.51 GB; their GPU, their epoch count, which the paper does not
give). CPU times here are for this machine; the exponents are what carries over.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

YELP = {"users": 287_116, "items": 148_523, "interactions": 4_392_169}
PAPER_TABLE7_YELP = {"M3SRec": {"train_h": 4.65, "memory_gb": 7.51, "inference_s": 152.6},
                     "M3SRec_REVEAL": {"train_h": 5.20, "memory_gb": 8.01, "inference_s": 152.6}}
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# -- the data --------------------------------------------------------------------------------------------
def shape_for(interactions):
    per_user = YELP["interactions"] / YELP["users"]
    users = max(50, round(interactions / per_user))
    items = max(50, round(users * YELP["items"] / YELP["users"]))
    return users, items


def write_dataset(root, name, interactions, text_dim, vision_dim, seed=0):
    """Atomic files + feature sets of a Yelp-shaped synthetic dataset (skipped when already written)."""
    folder = os.path.join(root, name)
    done = os.path.join(folder, "done.json")
    if os.path.isfile(done):
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    sys.path.insert(0, ROOT)
    from recbole_reveal.data.feature_store import save_item_features

    rng = np.random.default_rng(seed)
    users, items = shape_for(interactions)
    # lengths: 5 + geometric, mean Yelp's 15.3; items: Zipf-like popularity (exponent 0.8)
    lengths = 5 + rng.geometric(1.0 / (interactions / users - 4.0), size=users)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity /= popularity.sum()
    os.makedirs(folder, exist_ok=True)
    total = int(lengths.sum())
    picks = rng.choice(items, size=total, p=popularity)
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        start = 0
        for u, n in enumerate(lengths):
            f.write("".join(f"u{u}\ti{picks[start + t]}\t{1_000_000 + 1000 * u + t}\n" for t in range(n)))
            start += n
    tokens = [f"i{i}" for i in range(items)]
    features = os.path.join(folder, "features")
    for set_name, dim in (("text_minilm", text_dim), ("vision_efficientnet_lite0", vision_dim)):
        matrix = rng.standard_normal((items, dim), dtype=np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        save_item_features(features, set_name, tokens, matrix)
        del matrix
    info = {"users": users, "items": items, "interactions": total}
    with open(done, "w", encoding="utf-8") as f:
        json.dump(info, f)
    return info


# -- one model at one size (child process) -----------------------------------------------------------------
class _Head:
    """The first ``n`` batches of a loader, loaded as training loads them."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                return
            yield batch


def measure(model, root, name, steps, eval_batches, threads, setup_only=False):
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    from recbole_reveal.infra.cost import peak_rss_mb, reset_peak_rss
    from recbole_reveal.config import build_config
    from recbole_reveal.training import prepare_run

    reset_peak_rss()
    start = time.perf_counter()
    config, (train_data, _, test_data), model_obj, trainer = prepare_run(build_config(
        model, name, config_dict={"data_path": root, "checkpoint_dir": os.path.join(root, "saved"),
                                  "state": "WARNING", "eval_batch_size": 256}))
    setup_s = time.perf_counter() - start
    setup_rss = peak_rss_mb()
    n_batches = len(train_data)
    params = sum(p.numel() for p in model_obj.parameters())
    trainable = sum(p.numel() for p in model_obj.parameters() if p.requires_grad)
    result = {"model": model, "setup_s": setup_s, "setup_rss_mb": setup_rss, "batches": n_batches,
              "params": params, "train_state_gb": (params + 3 * trainable) * 4 / 2 ** 30,
              "max_len": config["MAX_ITEM_LIST_LENGTH"], "n_items": test_data._dataset.item_num - 1,
              "step_s": None, "epoch_s": None, "eval_s": None, "peak_rss_mb": None}
    if setup_only:
        return result
    trainer._train_epoch(_Head(train_data, 2), epoch_idx=0)          # warm-up (first-batch checks)
    start = time.perf_counter()
    trainer._train_epoch(_Head(train_data, steps), epoch_idx=0)
    step_s = (time.perf_counter() - start) / min(steps, n_batches)

    model_obj.eval()
    trainer.tot_item_num = test_data._dataset.item_num
    k = max(config["topk"])
    start, done = time.perf_counter(), 0
    with torch.no_grad():
        for batch in _Head(test_data, eval_batches):
            _, scores, _, _ = trainer._full_sort_batch_eval(batch)
            torch.topk(scores, k, dim=-1)
            done += 1
    eval_batch_s = (time.perf_counter() - start) / done
    return dict(result, step_s=step_s, epoch_s=step_s * n_batches, eval_s=eval_batch_s * len(test_data),
                peak_rss_mb=peak_rss_mb())


# -- the report ------------------------------------------------------------------------------------------
def fit_exponent(xs, ys):
    """Least-squares slope b of log y = a + b log x, and a."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    if len(xs) < 2:
        return math.nan, math.nan
    b, a = np.polyfit(lx, ly, 1)
    return float(b), float(a)


def fit_affine(xs, ys):
    """Least-squares ``y = c + m x`` (memory: a fixed part plus a part per interaction or per item)."""
    if len(xs) < 2:
        return math.nan, math.nan
    m, c = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(m), float(c)


# (key, label, unit, scale, law, x) -- times follow a power law in the interactions; memory is a fixed part
# plus a part per interaction (the data) or per item (the training state)
QUANTITIES = (
    ("setup_s", "data + setup", "min", 60, "power", "interactions"),
    ("epoch_s", "epoch time", "h", 3600, "power", "interactions"),
    ("eval_s", "full-sort eval", "s", 1, "power", "interactions"),
    ("setup_rss_mb", "setup RSS", "GB", 1024, "affine", "interactions"),
    ("peak_rss_mb", "peak RSS", "GB", 1024, "affine", "interactions"),
    ("train_state_gb", "train state", "GB", 1, "affine", "n_items"),
)
PAPER_COLUMN = {"epoch_s": ("train_h", "h (all epochs, GPU)"), "eval_s": ("inference_s", "s (GPU)"),
                "peak_rss_mb": ("memory_gb", "GB (GPU)")}


def report(rows):
    models = sorted({r["model"] for r in rows}, key=lambda m: (len(m), m))
    print(f"\n{'model':<15}{'interactions':>13}{'items':>8}{'setup s':>9}{'setup RSS MB':>13}{'s/step':>8}"
          f"{'s/epoch':>10}{'eval s':>9}{'peak RSS MB':>12}{'train state GB':>15}")
    def cell(value, width, fmt):
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"

    for r in sorted(rows, key=lambda r: (models.index(r["model"]), r["interactions"])):
        print(f"{r['model']:<15}{r['interactions']:>13,}{r['n_items']:>8,}{r['setup_s']:>9.1f}{r['setup_rss_mb']:>13.0f}"
              f"{cell(r['step_s'], 8, '.3f')}{cell(r['epoch_s'], 10, '.0f')}{cell(r['eval_s'], 9, '.1f')}"
              f"{cell(r['peak_rss_mb'], 12, '.0f')}{r['train_state_gb']:>15.3f}")
    print("\ngrowth and the extrapolation to Yelp "
          f"({YELP['interactions']:,} interactions, {YELP['items']:,} items): times as cost ~ interactions^b, "
          "memory as a fixed part + a part per interaction (per item for the training state)")
    print(f"{'model':<15}{'quantity':<16}{'growth':>22}{'Yelp (extrapolated)':>22}{'paper Table 7 (Yelp)':>26}")
    for model in models:
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["interactions"])
        paper = PAPER_TABLE7_YELP.get(model, {})
        for key, label, unit, scale, law, x in QUANTITIES:
            measured = [r for r in mine if r[key] is not None]
            xs, ys = [r[x] for r in measured], [r[key] for r in measured]
            at = YELP["items"] if x == "n_items" else YELP["interactions"]
            if law == "power":
                b, a = fit_exponent(xs, ys)
                growth, value = f"b = {b:.2f}", math.exp(a) * at ** b
            else:
                m, c = fit_affine(xs, ys)
                per = "item" if x == "n_items" else "inter."
                kb = m * (2 ** 20 if key.endswith("_gb") else 1024)     # MB or GB per unit of x, in KB
                growth = f"{kb:.2f} KB/{per}"
                value = c + m * at
            paper_value = ""
            if key in PAPER_COLUMN and PAPER_COLUMN[key][0] in paper:
                paper_value = f"{paper[PAPER_COLUMN[key][0]]} {PAPER_COLUMN[key][1]}"
            print(f"{model:<15}{label:<16}{growth:>22}{value / scale:>18.2f} {unit:<3}{paper_value:>26}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30_000, 300_000, 3_000_000])
    parser.add_argument("--models", nargs="+", default=["M3SRec", "M3SRec_REVEAL"])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per run")
    parser.add_argument("--eval_batches", type=int, default=4, help="timed full-sort batches (256 users each)")
    parser.add_argument("--text_dim", type=int, default=384, help="text features (MiniLM: 384)")
    parser.add_argument("--vision_dim", type=int, default=1280, help="visual features (EfficientNet-lite0: 1280; "
                        "Qwen2.5-VL-7B FVE embeddings: 3584)")
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    parser.add_argument("--workdir", default="/tmp/scale-growth")
    parser.add_argument("--setup_only", type=int, nargs="*", default=[], metavar="SIZE",
                        help="sizes measured up to the loaders and the model only (no training steps, no evaluation)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a size's measurement left in --workdir by an earlier run (same flags)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "NAME", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, name, out = args.child
        result = measure(model, args.workdir, name, args.steps, args.eval_batches, args.threads,
                         setup_only=bool(args.setup_only))
        with open(out, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return
    rows = []
    for size in args.sizes:
        name = f"yelpish-{size}"
        start = time.perf_counter()
        info = write_dataset(args.workdir, name, size, args.text_dim, args.vision_dim)
        print(f"{name}: {info['users']:,} users, {info['items']:,} items, {info['interactions']:,} interactions "
              f"(written in {time.perf_counter() - start:.0f} s)", flush=True)
        for model in args.models:
            setup_only = size in args.setup_only
            out = os.path.join(args.workdir, f"{name}-{model}{'-setup' if setup_only else ''}.json")
            cmd = [sys.executable, __file__, "--child", model, name, out, "--workdir", args.workdir,
                   "--steps", str(args.steps), "--eval_batches", str(args.eval_batches),
                   "--threads", str(args.threads)] + (["--setup_only", str(size)] if setup_only else [])
            start = time.perf_counter()
            if args.reuse and os.path.isfile(out):
                with open(out, encoding="utf-8") as f:
                    rows.append(dict(json.load(f), interactions=info["interactions"]))
                print(f"  {model}: reused {out}", flush=True)
                continue
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  {model}: FAILED after {time.perf_counter() - start:.0f} s:\n"
                      + "\n".join(proc.stderr.strip().splitlines()[-8:]), flush=True)
                continue
            with open(out, encoding="utf-8") as f:
                result = dict(json.load(f), interactions=info["interactions"])
            rows.append(result)
            print(f"  {model}: {time.perf_counter() - start:.0f} s, setup {result['setup_s']:.0f} s, "
                  f"setup RSS {result['setup_rss_mb']:.0f} MB"
                  + ("" if setup_only else f", epoch ~{result['epoch_s']:.0f} s"), flush=True)
    report(rows)


if __name__ == "__main__":
    main()
