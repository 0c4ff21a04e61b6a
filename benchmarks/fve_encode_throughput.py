"""FVE vision-encoding throughput (items/s) and peak memory.

::

    python benchmarks/fve_encode_throughput.py                                  # tiny random Qwen2.5-VL, CPU
    python benchmarks/fve_encode_throughput.py --config 7b --device cuda        # random weights, real 7B shape
    python benchmarks/fve_encode_throughput.py --config 3b --device cuda --batch_size 32
    python benchmarks/fve_encode_throughput.py --vlm_path /models/Qwen2.5-VL-7B-Instruct --device cuda
    python benchmarks/fve_encode_throughput.py --config 7b --device cuda --compare   # sdpa vs FA2, bf16 vs 4-bit

``tiny`` writes the tiny random checkpoint to a temporary folder; ``3b`` / ``7b`` build random weights at
the published Qwen2.5-VL-3B / -7B shapes on the device and save them as a checkpoint folder
(``write_random_qwen2_5_vl``; 16.6 GB for 7B, under ``--work_dir``): the compute per item is the real
model's, nothing is downloaded. Every variant loads the folder through ``load_vlm``, the real loading
path, with its attention kernel (``--attn``) and weight format (``--quantization``); ``--compare`` runs
sdpa / flash_attention_2 x bf16 / 4-bit one after the other and prints them side by side (a variant
that cannot run here, e.g. flash-attn or bitsandbytes not installed, is listed as skipped with why). Items are the synthetic demo's images resized to ``--image_size`` squared
(448 -> 256 image tokens) with the demo's real initial prompts, read from PNG files like a real run.

Phases, each timed separately (a warm-up batch is excluded):

* ``cold``: fresh caches: vision tower + language model per item (the first FVE cycle);
* ``new prompts``: same images, changed prompts: vision outputs come from the vision cache, only the
  language model runs (a later cycle's re-encoded items);
* ``cached``: the same requests again with the embedding cache: no model at all (a re-run).

Peak memory: the process's peak resident set (CPU) and ``torch.cuda.max_memory_allocated`` per
phase (GPU). The FLOP estimate counts 2 x parameters x tokens for the language model (without the
embedding table) and the vision tower (per patch), ignoring attention's quadratic term.
"""

import argparse
import os
import resource
import sys
import tempfile
import time

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_reveal.fve.encoding.cache.embeddings import EmbeddingCache  # noqa: E402
from recbole_reveal.fve.encoding.cache.vision import VisionFeatureCache  # noqa: E402
from recbole_reveal.fve.encoding.encoder import FVEEncoder, ItemRequest  # noqa: E402
from recbole_reveal.fve.prompts.templates import build_initial_prompts  # noqa: E402
from recbole_reveal.fve.vlm.load import load_vlm, resolve_device, resolve_dtype  # noqa: E402
from recbole_reveal.infra.errors import ConfigError  # noqa: E402
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl, write_random_qwen2_5_vl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "dataset_atomic", "synthetic-demo")


def make_items(folder, n, size):
    records = build_initial_prompts("synthetic-demo", os.path.dirname(DEMO))
    items = []
    for k in range(n):
        rec = records[k % len(records)]
        path = os.path.join(folder, f"{k}.png")
        Image.open(os.path.join(DEMO, "images", f"{rec['item_id']}.png")).convert("RGB").resize(
            (size, size), Image.BICUBIC).save(path)
        items.append(ItemRequest(f"x{k}", path, rec["prompt"]))
    return items


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(label, fn, device, n):
    """Run ``fn`` and print its items/s and peak memory; returns ``(result, items/s, peak memory text)``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    seconds = time.perf_counter() - start
    mem = (f"GPU peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda"
           else f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"{label:<13} {n:>6} items  {seconds:8.2f} s  {n / seconds:9.1f} items/s  {mem}")
    return result, n / seconds, mem


def flops_per_item(vlm, n_tokens, n_patches):
    lm = vlm.model.model.language_model
    lm_params = sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()
    vision_params = sum(p.numel() for p in vlm.model.model.visual.parameters())
    return 2 * lm_params * n_tokens + 2 * vision_params * n_patches


# --compare: attention kernel x weights (full = the compute dtype, bf16 on a GPU), side by side
VARIANTS = [("sdpa", None), ("flash_attention_2", None), ("sdpa", "4bit"), ("flash_attention_2", "4bit")]


def checkpoint_folder(a, tmp):
    """The folder to load: --vlm_path, or a random checkpoint written for --config (the tiny test model,
    or random weights at the released 3B / 7B shapes, built on --device)."""
    if a.vlm_path:
        return a.vlm_path, a.vlm_path
    folder = os.path.join(a.work_dir or tmp, f"random-{a.config}")
    start = time.perf_counter()
    if a.config == "tiny":
        build_tiny_qwen2_5_vl(folder)
        label = "tiny random Qwen2.5-VL (text 64 x 2 layers, vision 32 x 2)"
    else:
        write_random_qwen2_5_vl(a.config, folder, device=a.device, dtype=a.dtype)
        label = f"random weights, Qwen2.5-VL-{a.config.upper()} shape"
    print(f"checkpoint: {label}, written to {folder} in {time.perf_counter() - start:.0f} s")
    return folder, label


def run_variant(a, folder, label, attn, quantization, items, warm, tmp):
    """Load the folder with one attention kernel / weight format and time the three phases."""
    start = time.perf_counter()
    vlm = load_vlm(folder, device=a.device, dtype=a.dtype, attn_implementation=attn, quantization=quantization)
    setup = time.perf_counter() - start
    n_params = sum(p.numel() for p in vlm.model.parameters())
    print(f"\nmodel: {label}; {n_params / 1e6:.1f} M parameters; {vlm.dtype} on {vlm.device}; "
          f"attention {vlm.model.config._attn_implementation}; weights {quantization or 'full'}; load {setup:.1f} s")
    budget = a.image_size * a.image_size
    enc = FVEEncoder(vlm, pooling=a.pooling, min_pixels=min(3136, budget), max_pixels=budget,
                     batch_size=a.batch_size, vision_cache=VisionFeatureCache(max_bytes=64 * 2**30),
                     preprocess_workers=a.workers)
    enc.encode_items(warm)
    (feats,) = [f for f in enc.vision_cache.values()][:1]
    n_image_tokens = feats.pooler.shape[0]
    n_tokens = len(enc.turn.token_ids(items[0].prompt, n_image_tokens)[0])
    n_patches = feats.grid[0] * feats.grid[1] * feats.grid[2]
    print(f"items: {a.image_size}x{a.image_size} images -> {n_image_tokens} image tokens; sequence "
          f"~{n_tokens} tokens; batch {a.batch_size}; pooling {a.pooling}; {a.workers} preprocessing "
          f"threads; {torch.get_num_threads()} torch threads; {a.items} items per phase")
    cache = EmbeddingCache(os.path.join(tmp, f"cache-{attn}-{quantization}"))
    rates = {}
    cold, rates["cold"], rates["memory"] = timed("cold", lambda: enc.encode_items(items, cache), vlm.device,
                                                 len(items))
    changed = [ItemRequest(r.token, r.image_path, r.prompt + " Focus on colour and pattern.") for r in items]
    _, rates["new prompts"], _ = timed("new prompts", lambda: enc.encode_items(changed), vlm.device, len(items))
    rerun, rates["cached"], _ = timed("cached", lambda: enc.encode_items(items, cache), vlm.device, len(items))
    assert len(rerun.cached) == len(items) and len(cold.encoded) == len(items)
    tflop = flops_per_item(vlm, n_tokens, n_patches) / 1e12
    print(f"compute: ~{tflop * 1e3:.2f} GFLOP per item (2 x params x tokens, LM + vision)")
    enc = vlm = None                 # free the model before the next variant loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=["tiny", "3b", "7b"], default="tiny")
    p.add_argument("--vlm_path", help="benchmark this local checkpoint instead of --config")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--image_size", type=int, default=448)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--pooling", default="image_after_prompt")
    p.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, flash_attention_2, auto)")
    p.add_argument("--quantization", default=None, choices=["4bit", "8bit"], help="bitsandbytes weights (CUDA)")
    p.add_argument("--compare", action="store_true",
                   help="run sdpa / flash_attention_2 x full-precision (bf16) / 4-bit weights one after the other "
                        "and print them side by side")
    p.add_argument("--workers", type=int, default=4, help="image preprocessing threads (fve_preprocess_workers)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--work_dir", default=None, help="where the random checkpoint is written (7b: 16.6 GB)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        device = resolve_device(a.device)
    except ConfigError as e:
        sys.exit(f"fve_encode_throughput: {e}")
    dtype = str(resolve_dtype(a.dtype, device)).replace("torch.", "")
    variants = {f"{attn}/{q or dtype}": (attn, q) for attn, q in (VARIANTS if a.compare else [(a.attn, a.quantization)])}
    with tempfile.TemporaryDirectory() as tmp:
        folder, label = checkpoint_folder(a, tmp)
        items = make_items(tmp, a.items + a.batch_size, a.image_size)
        warm, items = items[:a.batch_size], items[a.batch_size:]
        results = {}
        for name, (attn, quantization) in variants.items():
            try:
                results[name] = run_variant(a, folder, label, attn, quantization, items, warm, tmp)
            except ConfigError as e:        # e.g. flash-attn or bitsandbytes not installed, or the CPU
                print(f"\n{name}: skipped: {e}")
                results[name] = None
    print(f"\n{'variant':<24} {'cold items/s':>13} {'new prompts':>12} {'cached':>10}  peak memory (cold)")
    base = next((r for r in results.values() if r), None)
    for name, r in results.items():
        if r is None:
            print(f"{name:<24} {'skipped':>13}")
            continue
        ratio = f"  ({r['cold'] / base['cold']:.2f}x cold vs {next(n for n, v in results.items() if v is base)})"
        print(f"{name:<24} {r['cold']:>13.1f} {r['new prompts']:>12.1f} {r['cached']:>10.1f}  {r['memory']}"
              + (ratio if r is not base else ""))


if __name__ == "__main__":
    main()
