"""On-disk format of per-item feature matrices, shared by the extraction command and the dataset hook.

A feature set called ``NAME`` lives in a feature directory (by default
``<data_path>/<dataset>/features/``) as two files, plus one optional file:

* ``NAME.npy``   -- a 2-D float32 array, one row per item;
* ``NAME.items`` -- UTF-8 text, one item token per line: line ``i`` is the item of row ``i``
  (the tokens of the ``item_id`` column of the atomic files, not RecBole's internal ids);
* ``NAME.json``  -- optional provenance (encoder, source, dimension), written by the extractor.

``NAME`` may contain ``/`` to group versions, e.g. ``fve/cycle_2`` for the visual features of FVE
cycle 2. Rows are matched to RecBole's internal ids by token when the dataset is loaded, so the
row order of the file never has to follow RecBole's remapping.
"""

import json
import os

import numpy as np

from recbole_reveal.errors import FeatureFileError


def feature_paths(feature_dir, name):
    stem = os.path.join(feature_dir, name)
    return stem + ".npy", stem + ".items", stem + ".json"


def save_item_features(feature_dir, name, item_tokens, matrix, metadata=None):
    """Write ``matrix`` (rows in ``item_tokens`` order) as feature set ``name``.

    Files are written to a temporary name and renamed, so a crash never leaves a half-written
    feature set behind.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    item_tokens = [str(t) for t in item_tokens]
    if matrix.ndim != 2 or matrix.shape[0] != len(item_tokens):
        raise ValueError(
            f"feature set '{name}': matrix shape {matrix.shape} does not match "
            f"{len(item_tokens)} item tokens"
        )
    bad = [t for t in item_tokens if not t or "\n" in t or t != t.strip()]
    if bad:
        raise ValueError(f"feature set '{name}': invalid item tokens {bad[:5]}")
    npy_path, items_path, json_path = feature_paths(feature_dir, name)
    os.makedirs(os.path.dirname(npy_path), exist_ok=True)
    with open(npy_path + ".tmp", "wb") as f:
        np.save(f, matrix)
    with open(items_path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(item_tokens) + "\n")
    os.replace(npy_path + ".tmp", npy_path)
    os.replace(items_path + ".tmp", items_path)
    if metadata is not None:
        meta = dict(metadata, rows=matrix.shape[0], dim=matrix.shape[1])
        with open(json_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        os.replace(json_path + ".tmp", json_path)
    return npy_path


def load_item_features(feature_dir, name, expected_dim=None):
    """Read feature set ``name`` and check it; returns ``(item_tokens, float32 matrix)``.

    Every check failure raises :class:`FeatureFileError` naming the file and what was expected.
    """
    npy_path, items_path, _ = feature_paths(feature_dir, name)
    for path in (npy_path, items_path):
        if not os.path.isfile(path):
            raise FeatureFileError(
                f"feature file not found: {path}. Create it with "
                f"`python -m recbole_reveal.features.extract` (see docs/data-format.md)."
            )
    try:
        matrix = np.load(npy_path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001  (numpy raises several types for a bad file)
        raise FeatureFileError(f"{npy_path}: not a readable .npy array ({e})") from e
    if matrix.dtype != np.float32:
        raise FeatureFileError(f"{npy_path}: dtype is {matrix.dtype}, expected float32")
    if matrix.ndim != 2:
        raise FeatureFileError(
            f"{npy_path}: array has shape {matrix.shape}, expected 2-D (items x dim)"
        )
    finite = np.isfinite(matrix)
    if not finite.all():
        bad_rows = np.where(~finite.all(axis=1))[0]
        raise FeatureFileError(
            f"{npy_path}: {len(bad_rows)} rows contain NaN or inf (first rows: {bad_rows[:5].tolist()})"
        )
    with open(items_path, encoding="utf-8") as f:
        tokens = f.read().splitlines()
    if len(tokens) != matrix.shape[0]:
        raise FeatureFileError(
            f"{items_path}: {len(tokens)} item tokens but {npy_path} has {matrix.shape[0]} rows; "
            "line i of the .items file must name the item of row i"
        )
    seen = set()
    dupes = [t for t in tokens if t in seen or seen.add(t)]
    if dupes:
        raise FeatureFileError(f"{items_path}: duplicate item tokens {sorted(set(dupes))[:5]}")
    if expected_dim is not None and matrix.shape[1] != int(expected_dim):
        raise FeatureFileError(
            f"{npy_path}: feature dimension is {matrix.shape[1]}, but the config expects {expected_dim}"
        )
    return tokens, matrix


def align_to_item_ids(tokens, matrix, id2token, source):
    """Reorder ``matrix`` to RecBole's internal item ids: row 0 is padding (zeros), row ``i`` is
    the item whose token is ``id2token[i]``. Every dataset item must have a row."""
    row_of = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in id2token[1:] if t not in row_of]
    if missing:
        raise FeatureFileError(
            f"{source}: {len(missing)} of the dataset's {len(id2token) - 1} items have no row "
            f"(e.g. {missing[:5]}); re-extract the features for this dataset"
        )
    aligned = np.zeros((len(id2token), matrix.shape[1]), dtype=np.float32)
    index = np.fromiter((row_of[t] for t in id2token[1:]), dtype=np.int64, count=len(id2token) - 1)
    aligned[1:] = matrix[index]
    return aligned
