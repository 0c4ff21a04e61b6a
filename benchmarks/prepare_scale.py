"""Converter time and peak memory on a SYNTHETIC raw dataset shaped like Yelp.

    python benchmarks/prepare_scale.py [--reviews 2000000] [--workdir /tmp/yelp-bench] [--keep]

Writes, in Yelp Open Dataset formats, ``yelp_academic_dataset_review.json`` (``--reviews`` lines,
review texts ~600 characters like Yelp's, users and businesses drawn from heavy-tailed popularity
so that the 5-core keeps a Yelp-like fraction), ``yelp_academic_dataset_business.json``,
``photos.json`` and ``photos/*.jpg`` (small JPEGs, one to three per photographed business), then
runs ``python -m recbole_reveal.commands.prepare_data Yelp ... --skip-features`` in a child process and
prints its wall time, the stage times from its log, and its peak resident memory (``VmHWM`` as the
converter logs it; the generator runs in its own process so that its memory is not counted).
Feature extraction is excluded: its cost is the encoder's, per item.

The real Yelp review file has 6,990,280 lines (1,987,897 users, 150,346 businesses); the defaults
are smaller so that the run takes a few minutes on 2 cores. Time and memory scale about linearly
in the number of lines.
"""

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = ("the food was great and service friendly we ordered pizza pasta salad burger fries coffee "
         "tacos sushi ramen noodles dessert cake staff waited long table clean busy parking easy price "
         "fair expensive cheap tasty fresh cold hot spicy sweet amazing terrible okay decent would come "
         "back again recommend place location downtown night weekend brunch lunch dinner caf\u00e9 "
         "na\u00efve cr\u00e8me \U0001F355 ! , .").split()


def _text_buffer(rng, n_chars):
    words = rng.choice(np.array(WORDS, dtype=object), size=n_chars // 5)
    text = " ".join(words.tolist())
    return text.replace(". ", ".\\n", 1000)  # some escaped newlines, as in the real file


def _ids(rng, n, prefix):
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    body = rng.choice(alphabet, size=(n, 22 - len(prefix)))
    ids = [prefix + "".join(row) for row in body.tolist()]
    if len(set(ids)) != n:
        raise RuntimeError("id collision; try another seed")
    return ids


def _heavy_tail(rng, n_items, size, exponent):
    weights = (np.arange(1, n_items + 1, dtype=np.float64)) ** -exponent
    weights /= weights.sum()
    return rng.choice(n_items, size=size, p=weights)


def generate(workdir, n_reviews, n_users, n_businesses, photo_fraction, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(workdir, "photos"), exist_ok=True)
    users, businesses = _ids(rng, n_users, "u"), _ids(rng, n_businesses, "b")
    buf = _text_buffer(rng, 4_000_000)
    start = time.perf_counter()
    path = os.path.join(workdir, "yelp_academic_dataset_review.json")
    chunk = 200_000
    with open(path, "w", encoding="utf-8") as f:
        for lo in range(0, n_reviews, chunk):
            n = min(chunk, n_reviews - lo)
            u = _heavy_tail(rng, n_users, n, 0.75)
            b = _heavy_tail(rng, n_businesses, n, 0.9)
            stars = rng.integers(1, 6, size=n)
            days = rng.integers(0, 5000, size=n)
            secs = rng.integers(0, 86400, size=n)
            lengths = np.clip(rng.lognormal(6.1, 0.7, size=n).astype(int), 20, 5000)
            offsets = rng.integers(0, len(buf) - 5001, size=n)
            lines = []
            for k in range(n):
                o = int(offsets[k])
                text = buf[o:o + int(lengths[k])].rstrip("\\")
                d = np.datetime64("2005-01-01") + int(days[k])
                s = int(secs[k])
                lines.append(
                    f'{{"review_id":"r{lo + k:021d}","user_id":"{users[u[k]]}","business_id":"{businesses[b[k]]}",'
                    f'"stars":{stars[k]}.0,"useful":0,"funny":0,"cool":0,"text":"{text}",'
                    f'"date":"{d} {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"}}\n')
            f.write("".join(lines))
    size = os.path.getsize(path)
    print(f"generated {n_reviews:,} reviews ({size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s")

    with open(os.path.join(workdir, "yelp_academic_dataset_business.json"), "w", encoding="utf-8") as f:
        for k, bid in enumerate(businesses):
            f.write(json.dumps({"business_id": bid, "name": f"Business {k}", "address": "1 Main St",
                                "city": "Springfield", "state": "PA", "postal_code": "19000",
                                "latitude": 40.0, "longitude": -75.0, "stars": 4.0, "review_count": 10,
                                "is_open": 1, "attributes": None,
                                "categories": "Restaurants, Pizza" if k % 7 else None, "hours": None}) + "\n")
    from PIL import Image

    blobs = []
    for k in range(16):
        im = Image.fromarray(rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8), "RGB")
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=80)
        blobs.append(out.getvalue())
    labels = ["food", "inside", "outside", "drink", "menu"]
    with open(os.path.join(workdir, "photos.json"), "w", encoding="utf-8") as f:
        for k, bid in enumerate(businesses):
            if rng.random() >= photo_fraction:
                continue
            for j in range(int(rng.integers(1, 4))):
                pid = f"p{k:012d}{j:09d}"
                f.write(json.dumps({"photo_id": pid, "business_id": bid, "caption": "",
                                    "label": labels[int(rng.integers(len(labels)))]}) + "\n")
                with open(os.path.join(workdir, "photos", pid + ".jpg"), "wb") as p:
                    p.write(blobs[(k + j) % len(blobs)])


def _import_baseline():
    """Peak memory of a process that only imports the converter's entry module."""
    code = ("import recbole_reveal.commands.prepare_data as m; "
            "from recbole_reveal.prepare.pipeline import peak_memory_mib; print(peak_memory_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reviews", type=int, default=2_000_000, help="review lines (real Yelp: 6,990,280)")
    p.add_argument("--users", type=int, help="distinct users (default reviews / 3.5, Yelp's ratio)")
    p.add_argument("--businesses", type=int, help="businesses (default reviews / 46.5, Yelp's ratio)")
    p.add_argument("--photo-fraction", type=float, default=0.6, help="share of businesses with photos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where to write (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--workers", type=int, default=4, help="--workers of the converter")
    p.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    users = a.users or max(10, int(a.reviews / 3.5))
    businesses = a.businesses or max(10, int(a.reviews / 46.5))
    if a.generate_only:
        generate(a.workdir, a.reviews, users, businesses, a.photo_fraction, a.seed)
        return
    workdir = a.workdir or tempfile.mkdtemp(prefix="yelp-bench-")
    try:
        marker = os.path.join(workdir, "generated.json")
        wanted = {"reviews": a.reviews, "users": users, "businesses": businesses,
                  "photo_fraction": a.photo_fraction, "seed": a.seed}
        if not os.path.isfile(marker) or json.load(open(marker, encoding="utf-8")) != wanted:
            subprocess.run([sys.executable, os.path.abspath(__file__), "--generate-only", "--workdir", workdir,
                            "--reviews", str(a.reviews), "--users", str(users), "--businesses", str(businesses),
                            "--photo-fraction", str(a.photo_fraction), "--seed", str(a.seed)], check=True)
            with open(marker, "w", encoding="utf-8") as f:
                json.dump(wanted, f)
        else:
            print(f"reusing the raw files in {workdir}")
        out = os.path.join(workdir, "out")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "recbole_reveal.prepare", "Yelp", "--raw-dir", workdir,
               "--out", out, "--skip-features", "--workers", str(a.workers)]
        print("running:", " ".join(cmd))
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            print(proc.stdout, proc.stderr, sep="\n")
            raise SystemExit(f"converter failed with status {proc.returncode}")
        peaks = [float(m) for m in re.findall(r"peak memory (\d+) MiB", proc.stderr)]
        for line in proc.stderr.splitlines():
            if re.search(r"parsed \d+ interactions in|images done in|written in|-core|removed ", line):
                print("  " + line.split(" INFO ", 1)[-1])
        print(proc.stdout)
        with open(os.path.join(out, "Yelp", "prepare_report.json"), encoding="utf-8") as f:
            stats = json.load(f)["stats"]
        print(f"input: {a.reviews:,} review lines, {users:,} users, {businesses:,} businesses")
        print(f"output: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions")
        print(f"converter wall time: {wall:.1f} s ({a.reviews / wall:,.0f} lines/s)")
        if peaks:
            print(f"converter peak memory (VmHWM / max RSS): {max(peaks):.0f} MiB, of which about "
                  f"{_import_baseline():.0f} MiB is importing the package (torch, RecBole)")
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
