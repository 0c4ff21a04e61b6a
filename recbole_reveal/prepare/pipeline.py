"""The conversion: raw files -> RecBole atomic files, images, features, statistics.

Steps (docs/datasets.md has the full rules):

1. parse the interactions (streaming; malformed lines skipped and counted);
2. drop repeated (user, item) pairs, keeping the earliest;
3. parse the item metadata of the reviewed items; drop items without metadata, without text
   (none of title / categories / brand; ``require_title``: no title) or without an image source;
4. k-core to a fixed point;
5. fetch the images of the surviving items (download / copy, verify); drop the items whose image
   failed, then k-core to a fixed point again (= the k-core of the data without those items);
6. write ``<name>.inter``, ``<name>.item``, ``<name>.review``, ``image_failures.tsv``,
   ``prepare_report.json``, ``README.md``;
7. extract the text and visual feature sets (``recbole_reveal.features.extract``);
8. print the statistics next to the paper's Table 1.
"""

import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from recbole_reveal.prepare import sources as src
from recbole_reveal.prepare.images import ImageFetcher, Stored
from recbole_reveal.prepare.interactions import (
    InteractionLog, ReviewSpool, first_of_duplicates, k_core, output_order)
from recbole_reveal.prepare.rawio import RawFileError, find_raw_file
from recbole_reveal.infra.files import atomic_open
from recbole_reveal.prepare.outputs import extract_features, save_report
from recbole_reveal.prepare.stats import PAPER_TABLE1, compute_stats, format_table, table1_rows

logger = logging.getLogger(__name__)

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\timage:token\n"
REVIEW_HEADER = "user_id:token\titem_id:token\ttimestamp:float\treview:token\n"
FAILURES_HEADER = "item_id\tsource\treason\tdetail\titem_result\n"
AMAZON_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
YELP_URL = "https://business.yelp.com/data/resources/open-dataset/"


class PrepareError(RuntimeError):
    """The conversion cannot produce a dataset (the message says why and what to check)."""


class Options:
    """Conversion settings (the CLI flags of the same names)."""

    def __init__(self, core=5, require_title=False, missing_images="drop", offline=False, workers=16,
                 retries=3, backoff=1.0, timeout=20.0, features=True, text_encoder="minilm",
                 vision_encoder="efficientnet-lite0", device="cpu", batch_size=64,
                 max_bad_fraction=0.05, photo_labels=src.DEFAULT_PHOTO_LABELS, tmp_dir=None, keep_missing=False):
        if missing_images not in ("drop", "keep"):
            raise PrepareError(f"missing_images must be 'drop' or 'keep', got {missing_images!r}")
        if core < 1:
            raise PrepareError(f"core must be >= 1, got {core}")
        self.core, self.require_title, self.missing_images = int(core), bool(require_title), missing_images
        self.offline, self.workers, self.retries = bool(offline), int(workers), int(retries)
        self.backoff, self.timeout = float(backoff), float(timeout)
        self.features, self.text_encoder, self.vision_encoder = bool(features), text_encoder, vision_encoder
        self.device, self.batch_size = device, int(batch_size)
        self.max_bad_fraction, self.photo_labels = float(max_bad_fraction), tuple(photo_labels)
        self.tmp_dir = tmp_dir
        # keep items without an image or without text, marked missing in the feature sets (not the paper's protocol)
        self.keep_missing = bool(keep_missing)
        if self.keep_missing:
            self.missing_images = "keep"

    def recorded(self):
        """The settings that determine the output (written to the report)."""
        return {"core": self.core, "require_title": self.require_title,
                "missing_images": self.missing_images, "keep_missing": self.keep_missing, "offline": self.offline,
                "features": self.features, "text_encoder": self.text_encoder,
                "vision_encoder": self.vision_encoder, "device": self.device,
                "photo_labels": list(self.photo_labels)}


# --------------------------------------------------------------------------- dataset specs

class AmazonSpec:
    kind = "amazon2014"

    def __init__(self, category, name, paper_key=None):
        self.category, self.name, self.paper_key = category, name, paper_key

    def describe(self):
        return f"Amazon 2014 (McAuley et al.), category {self.category}, 5-core review file + metadata"

    def locate(self, raw_dir, paths):
        hint = (f"Download it from {AMAZON_URL} (see docs/datasets.md), or pass the path with --reviews / --meta.")
        reviews = paths.get("reviews") or find_raw_file(
            raw_dir, [f"reviews_{self.category}_5.json.gz", f"reviews_{self.category}_5.json"],
            "Amazon 5-core review file", hint)
        meta = paths.get("meta") or find_raw_file(
            raw_dir, [f"meta_{self.category}.json.gz", f"meta_{self.category}.json"],
            "Amazon metadata file", hint)
        return {"reviews": reviews, "meta": meta}

    def read_interactions(self, files, log, spool, opts):
        return [src.read_amazon_reviews(files["reviews"], log, spool, opts.max_bad_fraction)]

    def read_items(self, files, wanted, opts):
        items, counters = src.read_amazon_meta(files["meta"], wanted, opts.max_bad_fraction)
        return items, [counters]


class YelpSpec:
    kind = "yelp"

    def __init__(self, name="Yelp", paper_key="Yelp"):
        self.name, self.paper_key = name, paper_key

    def describe(self):
        return "Yelp Open Dataset: reviews, businesses, photos archive"

    def locate(self, raw_dir, paths):
        hint = f"Download the Yelp Open Dataset from {YELP_URL} and extract it (see docs/datasets.md)."
        files = {
            "reviews": paths.get("reviews") or find_raw_file(
                raw_dir, ["yelp_academic_dataset_review.json", "yelp_academic_dataset_review.json.gz"],
                "Yelp review file", hint),
            "business": paths.get("business") or find_raw_file(
                raw_dir, ["yelp_academic_dataset_business.json", "yelp_academic_dataset_business.json.gz"],
                "Yelp business file", hint),
            "photos_json": paths.get("photos_json") or find_raw_file(
                raw_dir, ["photos.json", "photos.json.gz"], "Yelp photo list (photos.json)",
                "Extract yelp_photos.tar into the raw folder, or pass --photos-json."),
        }
        photos_dir = paths.get("photos_dir") or os.path.join(raw_dir, "photos")
        if not os.path.isdir(photos_dir):
            raise RawFileError(f"Yelp photo folder not found: {photos_dir}. Extract yelp_photos.tar into the "
                               "raw folder (it holds photos.json and photos/), or pass --photos-dir.")
        files["photos_dir"] = photos_dir
        return files

    def read_interactions(self, files, log, spool, opts):
        return [src.read_yelp_reviews(files["reviews"], log, spool, opts.max_bad_fraction)]

    def read_items(self, files, wanted, opts):
        items, business_counters = src.read_yelp_businesses(files["business"], wanted, opts.max_bad_fraction)
        photos, photo_counters = src.read_yelp_photos(files["photos_json"], files["photos_dir"], set(items),
                                                      opts.photo_labels, opts.max_bad_fraction)
        items = {bid: rec._replace(sources=photos.get(bid, [])) for bid, rec in items.items()}
        return items, [business_counters, photo_counters]


DATASETS = {
    "Sports": AmazonSpec("Sports_and_Outdoors", "Sports", "Sports"),
    "Beauty": AmazonSpec("Beauty", "Beauty", "Beauty"),
    "Home": AmazonSpec("Home_and_Kitchen", "Home", "Home"),
    "Yelp": YelpSpec(),
}


def resolve_spec(dataset, category=None):
    """``Sports`` / ``Beauty`` / ``Home`` / ``Yelp`` (any case), or ``amazon`` with ``category``
    (the file-name part, e.g. ``Toys_and_Games``)."""
    if dataset.lower() == "amazon":
        if not category:
            raise PrepareError("dataset 'amazon' needs --category, the part of the file names between "
                             "'reviews_' and '_5.json.gz' (e.g. Toys_and_Games)")
        return AmazonSpec(category, category)
    for key, spec in DATASETS.items():
        if key.lower() == dataset.lower():
            return spec
    raise PrepareError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}, or 'amazon' "
                     "with --category")


# --------------------------------------------------------------------------- helpers

def _step(steps, label, users, items, mask, note=""):
    n = int(mask.sum())
    entry = {"step": label, "users": int(np.count_nonzero(np.bincount(users[mask]))) if n else 0,
             "items": int(np.count_nonzero(np.bincount(items[mask]))) if n else 0, "interactions": n}
    if steps:
        entry["removed_interactions"] = steps[-1]["interactions"] - n
    if note:
        entry["note"] = note
    steps.append(entry)
    logger.info("%-44s %9d users %9d items %11d interactions%s%s", label, entry["users"], entry["items"], n,
                f"  ({note})" if note else "", _peak_memory())
    if n == 0:
        raise PrepareError(
            f"no interaction is left after step '{label}'. Steps so far: "
            + "; ".join(f"{s['step']}: {s['interactions']}" for s in steps)
            + ". Check the counters in the log (a wrong or mismatched raw file?)")


def peak_memory_mib():
    """This process's peak resident memory in MiB: ``VmHWM`` on Linux (reset by exec, so a parent's
    memory never counts), else ``ru_maxrss``; None when neither is available."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _peak_memory():
    peak = peak_memory_mib()
    return "" if peak is None else f"; peak memory {peak:.0f} MiB"


def _write(path, header, chunks):
    """Write ``header`` then every bytes chunk to ``path`` via a temporary file (atomic)."""
    with atomic_open(path, "wb") as f:
        f.write(header.encode("utf-8"))
        for chunk in chunks:
            f.write(chunk)


def _rating_text(value, cache={}):  # noqa: B006  (a deliberate memo of the few distinct ratings)
    text = cache.get(value)
    if text is None:
        text = cache[value] = repr(float(value))
    return text


def _inter_chunks(order, users, items, times, ratings, user_tokens, item_tokens, size=100_000):
    """``.inter`` rows for ``order``, in chunks of bytes."""
    for lo in range(0, len(order), size):
        idx = order[lo:lo + size]
        yield "".join(f"{user_tokens[u]}\t{item_tokens[i]}\t{_rating_text(r)}\t{t}\n" for u, i, t, r in zip(
            users[idx].tolist(), items[idx].tolist(), times[idx].tolist(), ratings[idx].tolist())).encode("utf-8")


def _review_chunks(order, users, items, times, user_tokens, item_tokens, spool, starts, ends, size=10_000):
    """``.review`` rows for ``order`` (texts read back from the spool), in chunks of bytes."""
    for lo in range(0, len(order), size):
        idx = order[lo:lo + size]
        yield b"".join(f"{user_tokens[u]}\t{item_tokens[i]}\t{t}\t".encode("utf-8") + spool.get(o, e) + b"\n"
                       for u, i, t, o, e in zip(users[idx].tolist(), items[idx].tolist(), times[idx].tolist(),
                                                starts[idx].tolist(), ends[idx].tolist()))


def _command_dataset(dataset, spec, name):
    arg = f"amazon --category {spec.category}" if dataset.lower() == "amazon" else spec.name
    return arg + (f" --name {name}" if name != spec.name else "")


def _item_has_text(rec, require_title):
    return bool(rec.title) if require_title else bool(rec.title or rec.categories or rec.brand)


# --------------------------------------------------------------------------- the conversion

def prepare(dataset, raw_dir=".", out="dataset_atomic", name=None, category=None, options=None, paths=None):
    """Convert one dataset; returns the report dict (also written to ``prepare_report.json``).

    ``paths`` may override input files: ``reviews``, ``meta`` (Amazon), ``business``,
    ``photos_json``, ``photos_dir`` (Yelp).
    """
    opts = options or Options()
    spec = resolve_spec(dataset, category)
    name = name or spec.name
    files = spec.locate(raw_dir, {k: v for k, v in (paths or {}).items() if v})
    for key, path in files.items():
        if not os.path.exists(path):
            raise RawFileError(f"{key} not found: {path}")
    root = os.path.join(out, name)
    os.makedirs(root, exist_ok=True)
    started = time.perf_counter()
    report = {
        "dataset": name, "command_dataset": _command_dataset(dataset, spec, name),
        "source": spec.describe(), "settings": opts.recorded(),
        "inputs": [{"role": k, "file": os.path.basename(os.path.normpath(p)),
                    **({"bytes": os.path.getsize(p)} if os.path.isfile(p) else {})}
                   for k, p in sorted(files.items())],
    }
    steps = []
    tmp = tempfile.mkdtemp(prefix=".prepare-", dir=opts.tmp_dir or root)
    spool = ReviewSpool(os.path.join(tmp, "reviews.spool"))
    try:
        # 1. interactions
        log = InteractionLog()
        file_counters = spec.read_interactions(files, log, spool, opts)
        user_tokens, item_tokens = log.user_tokens, log.item_tokens
        users, items, times, ratings, offsets = log.columns()
        logger.info("parsed %d interactions in %.1f s", len(users), time.perf_counter() - started)
        _step(steps, "parsed", users, items, np.ones(len(users), dtype=bool))

        # 2. duplicates
        mask = first_of_duplicates(users, items, times)
        _step(steps, "repeated (user, item) pairs removed", users, items, mask,
              "the earliest interaction of each pair is kept")

        # 3. item content
        records, item_counters = spec.read_items(files, set(item_tokens), opts)
        file_counters += item_counters
        reasons = {"no_metadata": 0, "no_text": 0, "no_image_source": 0}
        eligible = np.zeros(len(item_tokens), dtype=bool)
        for k, token in enumerate(item_tokens):
            rec = records.get(token)
            if rec is None:
                reasons["no_metadata"] += 1
            elif not opts.keep_missing and not _item_has_text(rec, opts.require_title):
                reasons["no_text"] += 1
            elif not rec.sources and opts.missing_images == "drop":
                reasons["no_image_source"] += 1
            else:
                eligible[k] = True
        if reasons["no_metadata"] > 0.1 * len(item_tokens):
            logger.warning("%d of %d reviewed items have no metadata line: is the metadata file the one "
                           "that belongs to the review file?", reasons["no_metadata"], len(item_tokens))
        mask &= eligible[items]
        _step(steps, "items without metadata / text / image source removed", users, items, mask,
              ", ".join(f"{k}: {v}" for k, v in reasons.items()))

        # 4. k-core
        mask, rounds = k_core(users, items, mask, opts.core, len(user_tokens), len(item_tokens))
        _step(steps, f"{opts.core}-core", users, items, mask, f"fixed point after {rounds} passes")

        # 5. images
        alive = np.flatnonzero(np.bincount(items[mask], minlength=len(item_tokens)))
        jobs = [(item_tokens[i], records[item_tokens[i]].sources) for i in alive.tolist()
                if records[item_tokens[i]].sources]
        fetcher = ImageFetcher(os.path.join(root, "images"), opts.workers, opts.retries, opts.backoff,
                               opts.timeout, opts.offline)
        img_start = time.perf_counter()
        stored, failed = fetcher.fetch_all(jobs)
        logger.info("images done in %.1f s", time.perf_counter() - img_start)
        image_of = {s.token: s.file for s in stored}
        fail_reasons, failure_rows = {}, []
        for result in sorted(stored + failed, key=lambda x: x.token):
            outcome = "a later source was used" if isinstance(result, Stored) else "no valid image"
            for source, reason, detail in result.attempts:
                fail_reasons[reason] = fail_reasons.get(reason, 0) + 1
                failure_rows.append(f"{result.token}\t{source}\t{reason}\t{' '.join(detail.split())}\t"
                                    f"{outcome}\n".encode("utf-8"))
        report["images"] = {
            "requested": len(jobs), "stored": len(stored),
            "from_fallback_candidate": sum(s.candidate > 0 for s in stored),
            "failed_items": len(failed), "failed_sources": dict(sorted(fail_reasons.items())),
        }
        _write(os.path.join(root, "image_failures.tsv"), FAILURES_HEADER, failure_rows)
        if failed:
            logger.warning("%d of %d items have no valid image (failed sources: %s); listed in %s",
                           len(failed), len(jobs),
                           ", ".join(f"{k}: {v}" for k, v in sorted(fail_reasons.items())),
                           os.path.join(root, "image_failures.tsv"))
        if opts.missing_images == "drop":
            index = {t: k for k, t in enumerate(item_tokens)}
            has_image = np.zeros(len(item_tokens), dtype=bool)
            has_image[[index[t] for t in image_of]] = True
            mask &= has_image[items]
            _step(steps, "items whose image failed removed", users, items, mask,
                  f"{len(failed)} items")
            mask, rounds = k_core(users, items, mask, opts.core, len(user_tokens), len(item_tokens))
            _step(steps, f"{opts.core}-core again", users, items, mask, f"fixed point after {rounds} passes")

        # 6. atomic files
        order = output_order(users, items, times, mask, user_tokens, item_tokens)
        _write(os.path.join(root, f"{name}.inter"), INTER_HEADER,
               _inter_chunks(order, users, items, times, ratings, user_tokens, item_tokens))
        spool.open_for_reading()
        _write(os.path.join(root, f"{name}.review"), REVIEW_HEADER,
               _review_chunks(order, users, items, times, user_tokens, item_tokens, spool, offsets,
                              spool.ends(offsets)))
        final_items = sorted(item_tokens[i] for i in np.flatnonzero(np.bincount(items[mask],
                                                                               minlength=len(item_tokens))))
        _write(os.path.join(root, f"{name}.item"), ITEM_HEADER,
               [("\t".join((t, records[t].title, records[t].categories, records[t].brand,
                            image_of.get(t, ""))) + "\n").encode("utf-8") for t in final_items])
        report["stats"] = compute_stats(users[mask], items[mask])
        report["missing"] = {"vision": sum(t not in image_of for t in final_items),
                             "text": sum(not _item_has_text(records[t], opts.require_title) for t in final_items)}
    finally:
        spool.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report["steps"] = steps
    report["files"] = [c.as_dict() for c in file_counters]
    report["paper_table1"] = PAPER_TABLE1.get(spec.paper_key)
    rows = table1_rows(name, report["stats"], spec.paper_key)
    report["features"] = []
    save_report(root, spec.describe(), report, rows, out)  # the counters survive a failing feature extraction
    logger.info("%s written in %.1f s%s", root, time.perf_counter() - started, _peak_memory())

    # 7. features
    if opts.features:
        report["features"] = extract_features(name, out, opts)
        save_report(root, spec.describe(), report, rows, out)

    # 8. statistics
    print(format_table(rows))
    print(f"items kept without an image: {report['missing']['vision']:,}, without text: {report['missing']['text']:,}"
          + (" (marked missing in the feature sets)" if opts.keep_missing or opts.missing_images == "keep" else ""))
    return report
