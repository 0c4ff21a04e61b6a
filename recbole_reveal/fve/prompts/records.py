"""The items of a dataset and FVE's prompt files.

Prompt files are JSON lines, UTF-8, one object per item in ``.item`` order::

    {"item_id": "i0000", "prompt": "An item image of a Backpacks. ...", "keywords": ["blue", ...]}

``item_id`` and ``prompt`` (non-empty strings) are required; other keys are kept as they are (the
cycle loop adds its own). ``python -m recbole_reveal.commands.fve_prompts --dataset NAME`` writes the
initial prompts of a dataset.
"""

import json
import os
from dataclasses import dataclass

from recbole_reveal.data.atomic import read_atomic
from recbole_reveal.infra.errors import ConfigError, DatasetNotFoundError
from recbole_reveal.infra.files import atomic_open


@dataclass(frozen=True)
class ItemMeta:
    item_id: str
    title: str
    categories: tuple
    brand: str
    image: str


def _clean(value):
    """An atomic-file value as text: ``_`` inside tokens means a space; whitespace collapsed."""
    return " ".join(value.replace("_", " ").split())


def read_items(item_path):
    """The items of a ``.item`` file in file order (title / categories / brand / image optional)."""
    if not os.path.isfile(item_path):
        raise DatasetNotFoundError(f"item file not found: {item_path}")
    columns, _, rows = read_atomic(item_path)
    if "item_id" not in columns:
        raise ConfigError(f"{item_path}: no item_id column (columns: {columns}); the header names item_id:token")
    col = {c: columns.index(c) for c in columns}

    def get(row, name):
        return row[col[name]] if name in col else ""

    items, seen = [], set()
    for row in rows:
        token = row[col["item_id"]]
        if token in seen:
            raise ConfigError(f"{item_path}: duplicate item_id {token!r}; each item has one row")
        seen.add(token)
        items.append(ItemMeta(item_id=token, title=_clean(get(row, "title")),
                              categories=tuple(_clean(c) for c in get(row, "categories").split() if _clean(c)),
                              brand=_clean(get(row, "brand")), image=get(row, "image")))
    return items


def write_prompts(path, records):
    """Write prompt records as JSON lines, atomically (temporary file, then rename)."""
    records = list(records)
    _check_records(records, path)
    return write_jsonl(path, records)


def write_jsonl(path, rows):
    """Write dicts as JSON lines atomically: a crash never leaves a half-written file behind."""
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _check_records(records, where):
    seen = set()
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: record {n} is not an object")
        for key in ("item_id", "prompt"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise ValueError(f"{where}: record {n} needs a non-empty string '{key}'")
        if rec["item_id"] in seen:
            raise ValueError(f"{where}: record {n}: duplicate item_id {rec['item_id']!r}")
        seen.add(rec["item_id"])


def read_prompts(path):
    """The records of a prompt file (list, file order); malformed lines are errors naming the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file not found: {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON object ({e.msg})") from e
    _check_records(records, path)
    return records
