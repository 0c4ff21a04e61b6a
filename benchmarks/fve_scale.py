"""FVE at Yelp's shape: time and peak RAM of the init / keyword / feedback stages and the embedding
cache's files per cycle, before (the algorithms as they were, kept in ``tests/fve_reference.py``) and
after, side by side.

::

    python benchmarks/fve_scale.py                          # 20 k items, 1 M reviews (Yelp's users/items ratio)
    python benchmarks/fve_scale.py --items 5000 --reviews 250000 --dim 512 --work /tmp/fve_scale

The synthetic set keeps Yelp's shape from the paper's Table 1 (287,116 users / 148,523 items, so 1.93
users per item): ``--items`` items, ``--reviews`` review lines (one interaction each, timestamps in
order per user), reviews of ``--words`` words on average drawn from a Zipf vocabulary mixed with
English stop words, so the number of distinct (item, word) pairs per item grows as on real text.
Every stage runs in a fresh process; its peak RSS is the kernel's high-water mark, reset after the
imports and the stage's inputs (``peak``), and ``+stage`` is the peak minus the RSS at that point.
``CPU s`` is the process's user + system time in the stage: on a shared machine it says more than the
wall-clock seconds.

Stages:

* ``keywords``: the review keywords of every item (``exclude_eval``): before, one ``Counter`` per
  item after reading the whole ``.inter`` into memory; after, the streaming interned counter; and
  ``cached``, a second run on the same dataset (another run folder) reading the keyword cache.
* ``init``: the whole init stage (``build_initial_prompts``: items, keywords, templates).
* ``feedback``: statistics, selection (25 %) and the critic requests of the selected items on
  validation rankings (one row per user, top 50, popularity-biased); the requests need the feedback
  examples of every selected item: before, a scan of every row per item; after, one indexed pass.
  (The rankings themselves are built before the measurement starts.)
* ``cache``: the embedding cache over 3 cycles (cycle 0 writes every item, later cycles the rewritten
  25 %): files written per cycle and seconds to write them and to look every item up again (vectors
  of ``--dim`` floats, 3584 = Qwen2.5-VL-7B).
* ``encode``: the real encoder with the tiny random Qwen2.5-VL on ``--encode_items`` items: files the
  cache gains in the cycle (mechanics only; the tiny VLM's features mean nothing).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))          # fve_reference: the algorithms as they were

YELP_USERS_PER_ITEM = 287_116 / 148_523                   # paper, Table 1
NAME = "YelpShape"


# ----------------------------------------------------------------------------------- the data set
def generate(folder, n_items, n_reviews, words, seed=0):
    """Write ``<folder>/<NAME>/`` (.item, .inter, .review) unless it exists with these sizes."""
    root = os.path.join(folder, NAME)
    stamp = os.path.join(root, "sizes.json")
    sizes = {"items": n_items, "reviews": n_reviews, "words": words, "seed": seed}
    if os.path.isfile(stamp) and json.load(open(stamp)) == sizes:
        return root
    from recbole_reveal.fve.prompts.keywords import ENGLISH_STOP_WORDS

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users = round(n_items * YELP_USERS_PER_ITEM)
    with open(os.path.join(root, f"{NAME}.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\timage:token\n")
        for i in range(n_items):
            f.write(f"b{i:06d}\tPlace_{i}\tRestaurants Cafe_{i % 97}\tbrand_{i % 501}\timages/b{i:06d}.jpg\n")
    content = [f"{a}{b}{c}" for a in ("cr", "sp", "gl", "fl", "tr", "st", "pl", "gr") for b in "aeiou"
               for c in ("nch", "sty", "mmy", "ttle", "rge", "lly", "sp", "ke", "ndy", "wn", "ft", "mp", "rd",
                         "lt", "zz", "ck")]
    content = [f"{w}{k}" if k else w for k in range(60) for w in content]          # 38,400 content words
    vocab = sorted(ENGLISH_STOP_WORDS) + content
    zipf = 1.0 / np.arange(1, len(content) + 1) ** 1.07
    p = np.r_[np.full(len(ENGLISH_STOP_WORDS), 0.45 / len(ENGLISH_STOP_WORDS)), 0.55 * zipf / zipf.sum()]
    item_pop = 1.0 / np.arange(1, n_items + 1) ** 0.6
    users = rng.integers(0, n_users, n_reviews)
    items = rng.choice(n_items, n_reviews, p=item_pop / item_pop.sum())
    times = np.sort(rng.integers(1_300_000_000, 1_700_000_000, n_reviews))
    with open(os.path.join(root, f"{NAME}.inter"), "w", encoding="utf-8") as inter, \
            open(os.path.join(root, f"{NAME}.review"), "w", encoding="utf-8") as review:
        inter.write("user_id:token\titem_id:token\ttimestamp:float\n")
        review.write("user_id:token\titem_id:token\ttimestamp:float\treview:token\n")
        chunk = 50_000
        for lo in range(0, n_reviews, chunk):
            hi = min(lo + chunk, n_reviews)
            lengths = rng.poisson(words, hi - lo) + 3
            ids = rng.choice(len(vocab), int(lengths.sum()), p=p)
            ends = np.cumsum(lengths)
            text = [vocab[k] for k in ids]
            rows, reviews, start = [], [], 0
            for n, end in enumerate(ends):
                r = lo + n
                rows.append(f"u{users[r]}\tb{items[r]:06d}\t{times[r]}\n")
                reviews.append(f"u{users[r]}\tb{items[r]:06d}\t{times[r]}\t{' '.join(text[start:end]).capitalize()}.\n")
                start = end
            inter.write("".join(rows))
            review.write("".join(reviews))
    json.dump(sizes, open(stamp, "w"))
    return root


# ----------------------------------------------------------------------------------- stages (child)
def _rss_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def stage_keywords(args, version, prepared=None):
    from recbole_reveal.fve.prompts import keywords as prompts

    if version == "before":
        from fve_reference import old_item_keywords

        folder = os.path.join(args.work, NAME)
        out = old_item_keywords(os.path.join(folder, f"{NAME}.review"), os.path.join(folder, f"{NAME}.inter"))
    else:
        cache = os.path.join(args.work, "keyword_cache") if version == "cached" else None
        out = prompts.item_keywords(NAME, args.work, cache_dir=cache)
    return {"items_with_reviews": len(out), "digest": _digest(out)}


def stage_init(args, version, prepared=None):
    from recbole_reveal.fve.prompts import templates

    if version == "before":                  # the init stage with the old keyword reader
        from fve_reference import old_item_keywords

        folder = os.path.join(args.work, NAME)
        old = old_item_keywords(os.path.join(folder, f"{NAME}.review"), os.path.join(folder, f"{NAME}.inter"))
        templates.item_keywords = lambda *a, **k: old
    records = templates.build_initial_prompts(NAME, args.work)
    return {"prompts": len(records), "digest": _digest(records)}


def synthetic_rankings(n_items, n_rows, top_n=50, seed=1):
    """Validation rankings with popular items on top: each row's top list is the first ``top_n``
    distinct items of a popularity-weighted draw; 30 % of the targets are in it."""
    from recbole_reveal.fve.feedback.rankings import Rankings

    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n_items) ** 0.8)
    draws = np.searchsorted(cdf, rng.random((n_rows, 3 * top_n)) * cdf[-1]) + 1
    top = np.zeros((n_rows, top_n), dtype=np.int64)
    for r, row in enumerate(draws.tolist()):
        distinct = list(dict.fromkeys(row))[:top_n]
        top[r, :len(distinct)] = distinct
    targets = np.searchsorted(cdf, rng.random(n_rows) * cdf[-1]) + 1
    rank = rng.integers(top_n + 1, n_items, n_rows)
    hit = np.flatnonzero(rng.random(n_rows) < 0.3)
    pos = rng.integers(0, top_n, len(hit))
    listed = top[hit] == targets[hit, None]            # a target already listed keeps its own place
    pos = np.where(listed.any(1), listed.argmax(1), pos)
    top[hit, pos] = targets[hit]
    rank[hit] = pos + 1
    return Rankings(users=np.arange(n_rows), targets=targets, target_rank=rank, top=top, n_items=n_items)


def prepare_feedback(args, version):
    from recbole_reveal.fve.prompts.records import read_items

    items = read_items(os.path.join(args.work, NAME, f"{NAME}.item"))
    return items, synthetic_rankings(len(items) + 1, round(len(items) * YELP_USERS_PER_ITEM))


def stage_feedback(args, version, prepared):
    from recbole_reveal.fve.feedback import rankings as feedback
    from recbole_reveal.fve.critic.critic import build_requests

    items, rankings = prepared
    if version == "before":
        from fve_reference import old_feedback_examples

        feedback.feedback_examples = old_feedback_examples
    stats = feedback.item_statistics(rankings, (10, 20), 50)
    selection = feedback.select_items(stats, 0.25)
    tokens = ["[PAD]"] + [it.item_id for it in items]
    records = [{"item_id": it.item_id, "prompt": "An item image.", "keywords": []} for it in items]
    requests = build_requests(selection, stats, rankings, tokens, items, records, args.work, (10, 20))
    return {"rows": len(rankings.targets), "selected": len(selection),
            "digest": _digest([r.feedback for r in requests])}


def stage_cache(args, version, prepared=None):
    from fve_reference import old_cache_put

    from recbole_reveal.fve.encoding.cache.embeddings import EmbeddingCache

    root = tempfile.mkdtemp(prefix="fve_scale_cache_", dir=args.work)
    rng = np.random.default_rng(0)
    keys = [hashlib.sha256(f"{i}/0".encode()).hexdigest() for i in range(args.items)]
    vector = rng.normal(size=args.dim).astype(np.float32)
    cycles = []
    try:
        for cycle in range(3):
            new = keys if cycle == 0 else [hashlib.sha256(f"{i}/{cycle}".encode()).hexdigest()
                                           for i in range(0, args.items, 4)]
            before_files = _count_files(root)
            start = time.perf_counter()
            if version == "before":
                for k in new:
                    old_cache_put(root, k, vector, {"key": k})
            else:
                with EmbeddingCache(root) as cache:
                    for k in new:
                        cache.put(k, vector, {"key": k})
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            if version == "before":
                found = sum(os.path.isfile(os.path.join(root, k[:2], k + ".npy")) and
                            np.load(os.path.join(root, k[:2], k + ".npy")) is not None for k in keys)
            else:
                cache = EmbeddingCache(root)
                found = sum(cache.get(k, args.dim) is not None for k in keys)
            cycles.append({"cycle": cycle, "written": len(new), "files_added": _count_files(root) - before_files,
                           "write_s": round(write_s, 2), "lookup_s": round(time.perf_counter() - start, 2),
                           "found": found})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"cycles": cycles}


def prepare_encode(args, version):
    from PIL import Image

    from recbole_reveal.fve.encoding.encoder import FVEEncoder, ItemRequest
    from recbole_reveal.fve.vlm.load import load_vlm
    from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

    work = tempfile.mkdtemp(prefix="fve_scale_encode_", dir=args.work)
    images = os.path.join(work, "images")
    os.makedirs(images)
    rng = np.random.default_rng(0)
    requests = []
    for k in range(args.encode_items):
        path = os.path.join(images, f"{k}.png")
        Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(path)
        requests.append(ItemRequest(f"b{k}", path, f"An item image of place {k}."))
    vlm = load_vlm(build_tiny_qwen2_5_vl(os.path.join(work, "vlm")), device="cpu")
    return work, requests, FVEEncoder(vlm, min_pixels=56 * 56, max_pixels=56 * 56, batch_size=16)


def stage_encode(args, version, prepared):
    from recbole_reveal.fve.encoding.cache.embeddings import EmbeddingCache

    work, requests, encoder = prepared
    try:
        root = os.path.join(work, "cache")
        if version == "before":                 # the old layout: every finished item as two files
            from fve_reference import old_cache_put

            class OldLayout(EmbeddingCache):
                def put(self, key, vector, fields=None):
                    old_cache_put(self.root, key, vector, fields)

                def get(self, key, dim=None):
                    self.misses += 1

            cache = OldLayout(root)
        else:
            cache = EmbeddingCache(root)
        result = encoder.encode_items(requests, cache)
        return {"encoded": len(result.encoded), "files": _count_files(root)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


STAGES = {"keywords": stage_keywords, "init": stage_init, "feedback": stage_feedback, "cache": stage_cache,
          "encode": stage_encode}
PREPARE = {"feedback": prepare_feedback, "encode": prepare_encode}     # inputs built before measuring


def child(args):
    import resource

    import recbole_reveal.fve.critic.critic  # noqa: F401  (imports first: the stage's memory is measured after them)
    from recbole_reveal.infra.cost import reset_peak_rss

    prepared = PREPARE[args.stage](args, args.version) if args.stage in PREPARE else None
    base = _rss_mb("VmRSS:")
    reset_peak_rss()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    out = STAGES[args.stage](args, args.version, prepared)
    wall = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_SELF)
    out.update(seconds=round(wall, 2), cpu_s=round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
               peak_mb=round(_rss_mb("VmHWM:"), 1), base_mb=round(base, 1))
    print("RESULT " + json.dumps(out))


# ----------------------------------------------------------------------------------- driver
def run(args, stage, version):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--stage", stage, "--version", version,
           "--work", args.work, "--items", str(args.items), "--dim", str(args.dim),
           "--encode_items", str(args.encode_items)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"stage {stage} ({version}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--reviews", type=int, default=1_000_000)
    p.add_argument("--words", type=int, default=60, help="mean review length in words")
    p.add_argument("--dim", type=int, default=3584, help="embedding size in the cache stage (7B: 3584)")
    p.add_argument("--encode_items", type=int, default=400)
    p.add_argument("--stages", default="keywords,init,feedback,cache,encode")
    p.add_argument("--work", help="folder for the data set (kept, reused when the sizes match); default: a temp folder")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--version", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    temporary = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="fve_scale_")
    try:
        start = time.perf_counter()
        root = generate(args.work, args.items, args.reviews, args.words)
        size = os.path.getsize(os.path.join(root, f"{NAME}.review")) / 2**20
        print(f"Yelp-shaped set: {args.items} items, {round(args.items * YELP_USERS_PER_ITEM)} users, "
              f"{args.reviews} reviews ({size:.0f} MiB of review text), ready in {time.perf_counter() - start:.0f} s")
        stages = args.stages.split(",")
        shutil.rmtree(os.path.join(args.work, "keyword_cache"), ignore_errors=True)
        rows = []
        for stage in ("keywords", "init", "feedback"):
            if stage not in stages:
                continue
            versions = ["before", "after"] + (["cached", "cached"] if stage == "keywords" else [])
            results = [run(args, stage, v) for v in versions]
            if stage == "keywords":
                results = results[:2] + results[3:]       # the second "cached" run is the one that reads
                versions = ["before", "after", "cached"]
            same = len({r["digest"] for r in results}) == 1
            for v, r in zip(versions, results):
                rows.append((stage, v, r["seconds"], r["cpu_s"], r["peak_mb"], r["peak_mb"] - r["base_mb"], same))
        if rows:
            print(f"\n{'stage':<9} {'version':<7} {'wall s':>8} {'CPU s':>8} {'peak MiB':>9} {'+stage MiB':>10}  same output")
            for stage, v, sec, cpu, peak, extra, same in rows:
                print(f"{stage:<9} {v:<7} {sec:>8.1f} {cpu:>8.1f} {peak:>9.0f} {extra:>10.0f}  {'yes' if same else 'NO'}")
            by = {(s, v): (cpu, extra) for s, v, _, cpu, _, extra, _ in rows}
            for stage in ("keywords", "init", "feedback"):
                if (stage, "before") in by:
                    (t0, m0), (t1, m1) = by[(stage, "before")], by[(stage, "after")]
                    memory = f"{m1 / m0:.2f}" if m0 >= 1 else "-"
                    print(f"  {stage}: after/before CPU time {t1 / max(t0, 1e-9):.2f}, stage memory {memory}")
        if "cache" in stages:
            print(f"\nembedding cache, {args.items} items, 3 cycles (25 % rewritten per cycle), {args.dim}-d vectors")
            print(f"{'cycle':>5} {'entries':>8} {'files before':>13} {'files after':>12} {'write s b/a':>12} "
                  f"{'lookup s b/a':>13}")
            b, a = run(args, "cache", "before")["cycles"], run(args, "cache", "after")["cycles"]
            for x, y in zip(b, a):
                assert x["found"] == y["found"]
                print(f"{x['cycle']:>5} {x['written']:>8} {x['files_added']:>13} {y['files_added']:>12} "
                      f"{x['write_s']:>5.1f}/{y['write_s']:<5.1f} {x['lookup_s']:>6.1f}/{y['lookup_s']:<6.1f}")
        if "encode" in stages:
            b, a = run(args, "encode", "before"), run(args, "encode", "after")
            print(f"\nencoder + tiny VLM, {args.encode_items} items in one cycle: cache files {b['files']} before, "
                  f"{a['files']} after ({b['seconds']:.1f} s / {a['seconds']:.1f} s)")
    finally:
        if temporary:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
