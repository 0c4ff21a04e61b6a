"""Which items lack a modality: the seeded draw shared by every model (the robustness protocol's masked
items), a copy of a feature set with a fraction of its items marked missing (:func:`mark_missing`; its
command is ``python -m recbole_reveal.commands.mark_missing``), and the popularity buckets of cold items
(docs/missing-modalities.md)."""

import hashlib
import os

import numpy as np

from recbole_reveal.infra.errors import ConfigError

# cold items: test targets bucketed by their number of training interactions (name, low, high inclusive)
POPULARITY_BUCKETS = (("0", 0, 0), ("1-4", 1, 4), ("5-9", 5, 9), (">=10", 10, None))


def masked_draw(tokens, modality, rate, seed):
    """Bool array over ``tokens``: the ``round(rate * n)`` items whose hash of (seed, modality, token) is
    smallest. Depends on nothing else (not on a model, not on RecBole's ids), and is nested in ``rate``:
    a larger rate masks a superset."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"a masking rate must be in [0, 1], got {rate}")
    keys = [hashlib.sha256(f"{seed}\0{modality}\0{t}".encode()).digest()[:8] for t in tokens]
    order = sorted(range(len(tokens)), key=keys.__getitem__)
    out = np.zeros(len(tokens), dtype=bool)
    out[order[:int(round(rate * len(tokens)))]] = True
    return out


def mark_missing(feature_dir, source, name, fraction, seed=0, modality=None):
    """Write set ``name``: ``source`` with the items of :func:`masked_draw` (plus those ``source`` already
    lacks) marked missing and their rows zeroed; returns the missing tokens."""
    import json

    from recbole_reveal.data.feature_store import feature_paths, load_item_features, load_missing_items, save_item_features

    tokens, matrix = load_item_features(feature_dir, source)
    json_path = feature_paths(feature_dir, source)[2]
    meta = {}
    if os.path.isfile(json_path):
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    modality = modality or meta.get("modality") or ("vision" if "vision" in source else "text")
    drawn = masked_draw(tokens, modality, fraction, seed)
    already = set(load_missing_items(feature_dir, source, tokens))
    missing = [t for t, d in zip(tokens, drawn) if d or t in already]
    matrix = matrix.copy()
    matrix[[i for i, t in enumerate(tokens) if t in set(missing)]] = 0.0
    meta = {k: v for k, v in meta.items() if k not in ("rows", "dim", "items_sha256", "matrix_sha256", "missing",
                                                       "zero_rows")}
    meta.update(modality=modality, marked_missing={"source": source, "fraction": fraction, "seed": seed})
    save_item_features(feature_dir, name, tokens, matrix, meta, missing=missing)
    return missing
