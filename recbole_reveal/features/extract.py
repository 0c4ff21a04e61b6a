"""Extract per-item text or image features from a RecBole atomic dataset.

::

    python -m recbole_reveal.commands.extract_features --dataset synthetic-demo --data_path dataset_atomic \\
        --modality text --encoder minilm
    python -m recbole_reveal.commands.extract_features --dataset synthetic-demo --data_path dataset_atomic \\
        --modality vision --encoder efficientnet-lite0

Reads ``<data_path>/<dataset>/<dataset>.item`` and writes the feature set
``<data_path>/<dataset>/features/<name>.{npy,items,json}`` (see ``recbole_reveal.data.feature_store``),
one row per item in the order of the ``.item`` file.

Text rule: for each field of ``--fields`` (in that order) whose value is not empty, the part
``"<field>: <value>"``; parts are joined with ``"; "``. ``token_seq`` values are their tokens joined
by one space; in every value ``_`` becomes a space (atomic files use ``_`` inside multi-word tokens).
E.g. ``title: Acme tent KT-204; categories: Sports Outdoors Tents; brand: Acme``.

Images: the ``--image_field`` column holds a path, relative to the dataset folder (absolute paths
also work). If no item has an image file at all the command stops before loading the encoder.

Missing is not zero: an item whose image is missing, empty or unreadable (or, for text, whose every field
is empty) lacks the modality. Such items stop the run with their count and tokens unless
``--keep_missing`` is given; then they get a placeholder (all-zero) row, are listed in ``<name>.missing``
(and, for images, under ``zero_rows`` in the JSON), and the config key ``missing_modality`` decides what
a model is fed for them (docs/missing-modalities.md). Dropping them instead is the paper's protocol.
"""

import logging
import os
import time

import numpy as np

from recbole_reveal.data.atomic import read_atomic
from recbole_reveal.data.dataset_yaml import machine_sizes, write_starter
from recbole_reveal.data.feature_store import save_item_features
from recbole_reveal.infra.errors import ConfigError, DatasetNotFoundError
from recbole_reveal.infra.locations import property_file, read_yaml
from recbole_reveal.features.encoders import ENCODERS, build_encoder

logger = logging.getLogger(__name__)

DEFAULT_TEXT_FIELDS = ("title", "categories", "brand")
PROGRESS_EVERY_S = 10.0


def build_texts(columns, types, rows, fields, seq_separator=" "):
    """One text per row following the rule in the module docstring."""
    index = [columns.index(f) for f in fields]
    texts = []
    for row in rows:
        parts = []
        for field, i in zip(fields, index):
            value = row[i]
            if types[i].endswith("_seq"):
                value = " ".join(v for v in value.split(seq_separator) if v)
            value = " ".join(value.replace("_", " ").split())
            if value:
                parts.append(f"{field}: {value}")
        texts.append("; ".join(parts))
    return texts


def _load_image(path):
    """The decoded image, or None when it is missing or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _resolve_fields(columns, modality, fields, image_field):
    if modality == "vision":
        if image_field not in columns:
            raise ConfigError(f"the .item file has no '{image_field}' column (columns: {columns}); "
                              "pass --image_field=<the column with image paths>")
        return [image_field]
    if fields:
        missing = [f for f in fields if f not in columns]
        if missing:
            raise ConfigError(f"--fields {missing} not in the .item file (columns: {columns})")
        return list(fields)
    chosen = [f for f in DEFAULT_TEXT_FIELDS if f in columns]
    if not chosen:
        raise ConfigError(f"none of the default text fields {list(DEFAULT_TEXT_FIELDS)} is in the "
                          f".item file (columns: {columns}); pass --fields <columns>")
    return chosen


def _shorten(tokens, limit=20):
    more = f" (+{len(tokens) - limit} more)" if len(tokens) > limit else ""
    return ", ".join(tokens[:limit]) + more


def extract(dataset, data_path="dataset_atomic", modality=None, encoder="minilm", name=None,
            fields=None, image_field="image", batch_size=64, device="cpu", feature_dir=None, dataset_yaml="skip",
            keep_missing=False):
    """Encode every item of ``dataset`` and save the feature set; returns a summary dict.

    ``dataset_yaml``: ``auto`` / ``cpu`` / ``gpu`` write the starter ``<data_path>/<dataset>/<dataset>.yaml``
    with sizes for that machine (``auto``: the machine this runs on) when the dataset has no property
    file yet (:mod:`recbole_reveal.data.dataset_yaml`); ``skip`` (the function's default; the command's is
    ``auto``) writes none. ``keep_missing``: keep items without the modality, marked missing (else they
    are an error)."""
    key = encoder.partition(":")[0]
    if key not in ENCODERS:
        build_encoder(encoder)  # raises the "unknown encoder" error listing the names
    modality = modality or ENCODERS[key].modality
    if modality not in ("text", "vision"):
        raise ConfigError(f"--modality must be 'text' or 'vision', got '{modality}'")

    root = os.path.join(data_path, dataset)
    item_path = os.path.join(root, f"{dataset}.item")
    if not os.path.isfile(item_path):
        raise DatasetNotFoundError(f"item file not found: {item_path} (a dataset is <data_path>/<NAME>/<NAME>.item, "
                                   ".inter, ...: docs/own-data.md)")
    columns, types, rows = read_atomic(item_path)
    if "item_id" not in columns:
        raise ConfigError(f"{item_path}: no item_id column (columns: {columns}); the header names item_id:token")
    tokens = [row[columns.index("item_id")] for row in rows]
    used = _resolve_fields(columns, modality, fields, image_field)

    if modality == "text":
        inputs = build_texts(columns, types, rows, used)
        absent = [t for t, x in zip(tokens, inputs) if not x]
    else:
        col = columns.index(image_field)
        inputs = [os.path.join(root, row[col]) if row[col] else "" for row in rows]
        if not any(p and os.path.isfile(p) for p in inputs):
            raise DatasetNotFoundError(
                f"no image of column '{image_field}' exists (e.g. '{inputs[0] if inputs else ''}'); "
                f"paths are relative to {root}")
        absent = [t for t, p in zip(tokens, inputs) if not (p and os.path.isfile(p))]
    if modality == "text" or not keep_missing:   # images: unreadable ones are known after decoding
        _check_missing(absent, len(rows), modality, item_path, keep_missing)

    enc = build_encoder(encoder, device=device, modality=modality)
    logger.info("encoding %d items of %s with '%s' (%s, batch %d, %s)",
                len(rows), item_path, encoder, modality, batch_size, device)
    matrix = np.zeros((len(rows), enc.dim), dtype=np.float32)
    zero_rows = []
    start = last_log = time.perf_counter()
    for lo in range(0, len(rows), batch_size):
        hi = min(lo + batch_size, len(rows))
        if modality == "text":
            matrix[lo:hi] = enc.encode(inputs[lo:hi])
        else:
            images = [_load_image(p) if p else None for p in inputs[lo:hi]]
            ok = [k for k, im in enumerate(images) if im is not None]
            zero_rows += [tokens[lo + k] for k, im in enumerate(images) if im is None]
            if ok:
                matrix[[lo + k for k in ok]] = enc.encode([images[k] for k in ok])
        now = time.perf_counter()
        if now - last_log >= PROGRESS_EVERY_S or hi == len(rows):
            logger.info("encoded %d/%d items (%.1f items/s)", hi, len(rows), hi / max(now - start, 1e-9))
            last_log = now
    seconds = time.perf_counter() - start
    if zero_rows:
        _check_missing(zero_rows, len(rows), modality, item_path, keep_missing)
        logger.warning("%d of %d images missing or unreadable; wrote zero rows for: %s",
                       len(zero_rows), len(rows), _shorten(zero_rows))
    missing = absent if modality == "text" else zero_rows

    name = name or f"{modality}_{enc.slug}"
    feature_dir = feature_dir or os.path.join(root, "features")
    metadata = {
        "encoder": encoder, "modality": modality, "fields": used,
        "source": f"{dataset}/{dataset}.item", **enc.describe(),
    }
    if modality == "text":
        metadata["text_rule"] = ('"<field>: <value>" for each non-empty field, joined by "; "; '
                                 "token_seq tokens joined by spaces; '_' -> ' '")
    else:
        metadata["zero_rows"] = zero_rows
    if modality == "text":
        matrix[[k for k, x in enumerate(inputs) if not x]] = 0.0
    path = save_item_features(feature_dir, name, tokens, matrix, metadata, missing=missing)
    logger.info("wrote %s (%d x %d, %d items without %s) in %.1f s", path, matrix.shape[0], matrix.shape[1],
                len(missing), modality, seconds)
    result = {"name": name, "path": path, "rows": matrix.shape[0], "dim": matrix.shape[1],
              "zero_rows": zero_rows, "missing": missing, "seconds": seconds, "dataset_yaml": None}
    if dataset_yaml != "skip":
        result["dataset_yaml"] = _dataset_yaml(data_path, dataset, modality, name, dataset_yaml)
    return result


def _dataset_yaml(data_path, dataset, modality, name, sizes):
    """Write the starter dataset YAML when the dataset has none, else say which one runs read and
    whether it selects this feature set."""
    sizes = machine_sizes() if sizes == "auto" else sizes
    yaml_path, written = write_starter(data_path, dataset, sizes, **{f"{modality}_feature": name})
    key = f"{modality}_feature"
    if written:
        logger.info("wrote the starter dataset YAML %s (%s sizes): every run on %s reads it, above the models' "
                    "YAMLs and below --config_files and the command line; edit it or delete it "
                    "(--dataset_yaml=skip writes none; docs/own-data.md)", yaml_path, sizes.upper(), dataset)
        return yaml_path
    chosen = read_yaml(yaml_path).get(key, _plugin_default(key))
    if chosen != name:
        logger.info("the dataset YAML %s selects %s: %s; to train on the set just written, set %s: %s there "
                    "or pass --%s=%s", yaml_path, key, chosen, key, name, key, name)
    else:
        logger.info("the dataset YAML %s selects this set (%s: %s)", yaml_path, key, name)
    return yaml_path


def _check_missing(missing, n_items, modality, item_path, keep_missing):
    """Items without the modality: an error unless ``keep_missing`` (then logged with their count)."""
    if not missing:
        return
    what = "image" if modality == "vision" else "text in the chosen fields"
    if not keep_missing:
        raise ConfigError(
            f"{len(missing)} of {n_items} items of {item_path} have no {what} ({_shorten(missing)}): pass "
            "--keep_missing to keep them, marked missing (missing_modality decides what a model is fed for them), or "
            "remove them from the dataset (the paper's protocol; docs/missing-modalities.md)")
    logger.warning("%d of %d items have no %s: kept, marked missing", len(missing), n_items, what)


def _plugin_default(key):
    """The plugin's default of a feature-set key (``properties/overall.yaml``)."""
    return read_yaml(property_file("overall.yaml")).get(key)
