"""On-disk format of per-item feature matrices, shared by the extraction command and the dataset hook.

A feature set called ``NAME`` lives in a feature directory (by default
``<data_path>/<dataset>/features/``) as two files, plus one optional file:

* ``NAME.npy``   -- a 2-D float32 array, one row per item;
* ``NAME.items`` -- UTF-8 text, one item token per line: line ``i`` is the item of row ``i``
  (the tokens of the ``item_id`` column of the atomic files, not RecBole's internal ids);
* ``NAME.json``  -- optional provenance (encoder, source, ``rows``, ``dim``), written by the extractor,
  with the SHA-256 of the two other files (``items_sha256``, ``matrix_sha256``);
* ``NAME.missing`` -- optional: the tokens of the items that do NOT have this modality (no image, no
  text), one per line. Their rows are placeholders (zeros), not features: *missing is not zero*, and
  the config key ``missing_modality`` decides what a model sees in their place.

``NAME`` may contain ``/`` to group versions, e.g. ``fve/cycle_2`` for the visual features of FVE
cycle 2. Rows are matched to RecBole's internal ids by token when the dataset is loaded, so the
row order of the file never has to follow RecBole's remapping.

The format itself cannot tell a reordered ``.items`` file (or a ``.npy`` from another run) from the
right one: where the ``.json`` records the checksums, loading compares them, and its ``rows`` / ``dim``
with the matrix. A set is written under a lock (``.NAME.lock`` beside it), each file atomically, so two
writers of one set never mix their files and a reader never sees half a set.
"""

import hashlib
import json
import os

import numpy as np

from recbole_reveal.infra.errors import FeatureFileError
from recbole_reveal.infra.files import atomic_open, lock_file, write_json_atomic

# a writer (reader) of a feature set waits for another writer to finish its three files, however long:
# writing a set takes seconds and the lock is released when its holder ends, even when it is killed
SET_LOCK_WAIT_S = None


def feature_paths(feature_dir, name):
    stem = os.path.join(feature_dir, name)
    return stem + ".npy", stem + ".items", stem + ".json"


def missing_path(feature_dir, name):
    """The optional ``NAME.missing`` file: tokens of the items without this modality."""
    return os.path.join(feature_dir, name) + ".missing"


def set_lock_path(feature_dir, name):
    folder, base = os.path.split(os.path.join(feature_dir, name))
    return os.path.join(folder, f".{base}.lock")


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_item_features(feature_dir, name, item_tokens, matrix, metadata=None, missing=None):
    """Write ``matrix`` (rows in ``item_tokens`` order) as feature set ``name``.

    Each file is written atomically and the set under its lock (module docstring); with ``metadata``
    the ``.json`` also records ``rows``, ``dim`` and the checksums of the two other files. ``missing``:
    the tokens of items without the modality (written to ``NAME.missing``, counted in the ``.json`` as
    ``missing``); None or empty: every item has it (no ``.missing`` file, no count).
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
    missing = [str(t) for t in (missing or [])]
    unknown = sorted(set(missing) - set(item_tokens))
    if unknown:
        raise ValueError(f"feature set '{name}': missing items {format_tokens(unknown)} are not among its tokens")
    npy_path, items_path, json_path = feature_paths(feature_dir, name)
    os.makedirs(os.path.dirname(npy_path), exist_ok=True)
    with lock_file(set_lock_path(feature_dir, name), f"writing feature set {name}", wait=SET_LOCK_WAIT_S):
        with atomic_open(npy_path, "wb") as f:
            np.save(f, matrix)
        with atomic_open(items_path, "w") as f:
            f.write("\n".join(item_tokens) + "\n")
        if missing:
            with atomic_open(missing_path(feature_dir, name), "w") as f:
                f.write("\n".join(missing) + "\n")
        elif os.path.exists(missing_path(feature_dir, name)):
            os.unlink(missing_path(feature_dir, name))
        if metadata is not None:
            meta = dict(metadata, **({"missing": len(missing)} if missing else {}), rows=matrix.shape[0],
                        dim=matrix.shape[1],
                        items_sha256=file_sha256(items_path), matrix_sha256=file_sha256(npy_path))
            write_json_atomic(json_path, meta, sort_keys=True)
        elif os.path.exists(json_path):
            os.unlink(json_path)        # an older set's provenance would describe other files
    return npy_path


def load_item_features(feature_dir, name, expected_dim=None):
    """Read feature set ``name`` and check it; returns ``(item_tokens, float32 matrix)``.

    Every check failure raises :class:`FeatureFileError` naming the file and what was expected.
    """
    npy_path, items_path, json_path = feature_paths(feature_dir, name)
    for path in (npy_path, items_path):
        if not os.path.isfile(path):
            raise FeatureFileError(
                f"feature file not found: {path}. Create it with "
                f"`python -m recbole_reveal.commands.extract_features` (see docs/data-format.md)."
            )
    with _reading(feature_dir, name):
        tokens, matrix = _read_set(npy_path, items_path)
        _check_provenance(json_path, npy_path, items_path, matrix)
    if expected_dim is not None and matrix.shape[1] != int(expected_dim):
        raise FeatureFileError(
            f"{npy_path}: feature dimension is {matrix.shape[1]}, but the config expects {expected_dim}"
        )
    return tokens, matrix


def load_missing_items(feature_dir, name, tokens):
    """The tokens of the set's items without the modality: ``NAME.missing`` when there is one, else the
    ``zero_rows`` an older extractor recorded in ``NAME.json`` (images it could not read), else none.
    A token that is not one of the set's ``tokens`` is a :class:`FeatureFileError`."""
    path = missing_path(feature_dir, name)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            missing = [t for t in f.read().splitlines() if t]
    else:
        json_path = feature_paths(feature_dir, name)[2]
        meta = {}
        if os.path.isfile(json_path):
            with open(json_path, encoding="utf-8") as f:
                meta = json.load(f)
        missing = [str(t) for t in (meta.get("zero_rows") or [])] if isinstance(meta, dict) else []
        path = json_path
    unknown = sorted(set(missing) - set(tokens))
    if unknown:
        raise FeatureFileError(f"{path}: lists {len(unknown)} items that are not in the set's .items file "
                               f"({format_tokens(unknown)}); it must name items of the set")
    return missing


def _reading(feature_dir, name):
    """A shared lock on the set while it is read (none on a read-only folder: nobody writes there)."""
    from contextlib import nullcontext

    path = set_lock_path(feature_dir, name)
    if not os.access(os.path.dirname(path), os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return nullcontext()
    return lock_file(path, f"reading feature set {name}", wait=SET_LOCK_WAIT_S, shared=True)


def _read_set(npy_path, items_path):
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
        raise FeatureFileError(f"{items_path}: duplicate item tokens {format_tokens(sorted(set(dupes)))}")
    return tokens, matrix


def _check_provenance(json_path, npy_path, items_path, matrix):
    """The ``.json`` beside a set (when there is one) must describe these files: ``rows`` and ``dim``,
    and the checksums where it records them (a reordered ``.items`` file keeps its row count)."""
    if not os.path.isfile(json_path):
        return
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise FeatureFileError(f"{json_path}: not a readable JSON file ({e}); re-extract the set or delete "
                               "the .json") from e
    if not isinstance(meta, dict):
        raise FeatureFileError(f"{json_path}: expected a JSON object, got {type(meta).__name__}")
    for key, actual in (("rows", matrix.shape[0]), ("dim", matrix.shape[1])):
        if key in meta and meta[key] != actual:
            raise FeatureFileError(
                f"{json_path} says {key} = {meta[key]} but {npy_path} has {actual} "
                f"({'items' if key == 'rows' else 'dimensions'}): the files are not the ones the extractor "
                "wrote; re-extract the set (or delete the .json if you replaced the files on purpose)")
    for key, path in (("items_sha256", items_path), ("matrix_sha256", npy_path)):
        if key in meta and file_sha256(path) != meta[key]:
            what = "its lines were reordered or replaced" if key == "items_sha256" else "its matrix was replaced"
            raise FeatureFileError(
                f"{path} differs from the file the extractor wrote ({key} in {json_path}): {what}, so rows "
                "would be matched to the wrong items; re-extract the set (or delete the .json if you "
                "changed the files on purpose)")


def format_tokens(tokens, limit=5):
    """Item tokens for a message, plainly: ``i0479, i0480, ...`` (not ``np.str_('i0479')``)."""
    tokens = [str(t) for t in tokens]
    more = f", ... ({len(tokens)} in all)" if len(tokens) > limit else ""
    return ", ".join(tokens[:limit]) + more


def align_to_item_ids(tokens, matrix, id2token, source):
    """Reorder ``matrix`` to RecBole's internal item ids: row 0 is padding (zeros), row ``i`` is
    the item whose token is ``id2token[i]``. Every dataset item must have a row."""
    row_of = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in id2token[1:] if t not in row_of]
    if missing:
        raise FeatureFileError(
            f"{source}: {len(missing)} of the dataset's {len(id2token) - 1} items have no row "
            f"(e.g. {format_tokens(missing)}); re-extract the features for this dataset"
        )
    aligned = np.zeros((len(id2token), matrix.shape[1]), dtype=np.float32)
    index = np.fromiter((row_of[t] for t in id2token[1:]), dtype=np.int64, count=len(id2token) - 1)
    aligned[1:] = matrix[index]
    return aligned
