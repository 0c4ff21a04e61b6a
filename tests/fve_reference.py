"""The FVE algorithms as they were before the Yelp-scale memory work, kept as test oracles and as the
"before" side of ``benchmarks/fve_scale.py``: one ``Counter`` per item for the review keywords, a scan
of every ranking row per item for the feedback examples, and two files per entry in the embedding
cache. The new code must give the same results; these are deliberately the plain old versions."""

import json
import os
import tempfile
from collections import Counter, defaultdict

import numpy as np

from recbole_reveal.data.atomic import iter_atomic, read_atomic
from recbole_reveal.fve.prompts.keywords import ENGLISH_STOP_WORDS, tokenize_review


def old_evaluation_holdout(inter_path, n_holdout=2):
    columns, _, rows = read_atomic(inter_path)
    u, i = columns.index("user_id"), columns.index("item_id")
    t = columns.index("timestamp") if "timestamp" in columns else None
    per_user = defaultdict(list)
    for line, row in enumerate(rows):
        ts = float(row[t]) if t is not None and row[t] != "" else None
        per_user[row[u]].append(((ts if ts is not None else 0.0), line, row[i], ts))
    held = set()
    for user, events in per_user.items():
        for _, _, item, ts in sorted(events)[-n_holdout:]:
            held.add((user, item, ts))
    return held


def old_review_keyword_counts(review_path, holdout=None, stop_words=ENGLISH_STOP_WORDS):
    """``{item: Counter}``: the old per-item Counter reader."""
    columns, _, rows = iter_atomic(review_path)
    i, r = columns.index("item_id"), columns.index("review")
    u = columns.index("user_id") if "user_id" in columns else None
    t = columns.index("timestamp") if "timestamp" in columns else None
    counts = defaultdict(Counter)
    for row in rows:
        if holdout:
            ts = float(row[t]) if t is not None and row[t] != "" else None
            if (row[u], row[i], ts) in holdout or (row[u], row[i], None) in holdout:
                continue
        counts[row[i]].update(tokenize_review(row[r], stop_words))
    return counts


def old_top_keywords(counts, top_k=5):
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]


def old_item_keywords(review_path, inter_path=None, top_k=5, stop_words=ENGLISH_STOP_WORDS):
    """``{item: [keyword, ...]}`` as the old ``item_keywords`` computed it (``inter_path`` given:
    exclude_eval; None: all reviews)."""
    holdout = old_evaluation_holdout(inter_path) if inter_path else None
    return {item: old_top_keywords(c, top_k)
            for item, c in old_review_keyword_counts(review_path, holdout, stop_words).items()}


def old_feedback_examples(rankings, item, label, limit=3):
    """The old per-item scan of every ranking row."""
    if label == "pos":
        rows = (rankings.targets == item) & (rankings.target_rank > 1)
        candidates = rankings.top[rows, 0]
    else:
        pos = np.argmax(rankings.top == item, axis=1) + 1
        listed = (rankings.top == item).any(axis=1)
        rows = listed & (rankings.targets != item) & (pos < rankings.target_rank)
        candidates = rankings.targets[rows]
    values, counts = np.unique(candidates, return_counts=True)
    order = np.lexsort((values, -counts))[:limit]
    return [int(v) for v in values[order]]


def old_cache_put(root, key, vector, fields=None):
    """One entry in the old per-item layout: ``<root>/<k[:2]>/<k>.npy`` + ``<k>.json``."""
    folder = os.path.join(root, key[:2])
    os.makedirs(folder, exist_ok=True)
    vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    for suffix, write in ((".json", lambda f: f.write(json.dumps(fields or {}).encode())),
                          (".npy", lambda f: np.save(f, vector))):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, os.path.join(folder, key + suffix))
