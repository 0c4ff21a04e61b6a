"""Reading and writing RecBole atomic files (``<name>.inter``, ``.item``, ``.review``, ...): a header of
``field:type`` columns, then one tab-separated row per line. Light: no torch, no RecBole. Used by the
feature-extraction command and by FVE's prompts (items, interactions, reviews)."""


def iter_atomic(path, field_separator="\t"):
    """Read a RecBole atomic file lazily: returns ``(columns, types, rows)`` with ``rows`` a generator of
    string lists, one line in memory at a time (for large files such as ``.review``).

    Split by hand rather than with a CSV parser: atomic files are not quoted, and a stray ``"``
    in a title must not swallow the following lines.
    """
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split(field_separator)
    columns, types = zip(*(h.rsplit(":", 1) if ":" in h else (h, "token") for h in header))
    n = len(columns)

    def rows():
        with open(path, encoding="utf-8") as f:
            f.readline()
            for line in f:
                line = line.rstrip("\r\n")
                if not line:
                    continue
                parts = line.split(field_separator)
                yield parts[:n] + [""] * (n - len(parts))

    return list(columns), list(types), rows()


def read_atomic(path, field_separator="\t"):
    """Read a RecBole atomic file: returns ``(columns, types, rows)`` with rows as string lists
    (see :func:`iter_atomic`)."""
    columns, types, rows = iter_atomic(path, field_separator)
    return columns, types, list(rows)


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def write_atomic(path, columns, field_separator="\t"):
    """Write a RecBole atomic file from ``{"name:type": values}`` (lists, tuples or pandas Series of one
    length), e.g. ``{"user_id:token": [...], "item_id:token": [...], "timestamp:float": [...]}``.

    Values become one line of text each: ``None`` / NaN is empty, tabs and line breaks are spaces (atomic
    files are not quoted). A ``token_seq`` / ``float_seq`` value may be a list: its items are joined by
    spaces, and spaces inside a token become ``_`` (the atomic files' convention, undone by the feature
    extractor and the prompts). Written to a temporary file, then renamed. Raises ``ValueError`` for a
    header that is not ``name:type`` with one of :data:`ATOMIC_TYPES` or columns of different lengths."""
    import math
    import os
    import tempfile

    names = list(columns)
    for name in names:
        field, _, kind = name.rpartition(":")
        if not field or kind not in ATOMIC_TYPES:
            raise ValueError(f"{path}: column {name!r} must be 'name:type' with type one of {', '.join(ATOMIC_TYPES)}")
    values = [list(columns[name]) for name in names]
    lengths = {len(v) for v in values}
    if len(lengths) > 1:
        raise ValueError(f"{path}: columns of different lengths: "
                         + ", ".join(f"{n} {len(v)}" for n, v in zip(names, values)))

    def cell(value, seq):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if seq and isinstance(value, (list, tuple)):
            return " ".join(cell(v, False).replace(" ", "_") for v in value if cell(v, False))
        return " ".join(str(value).replace(field_separator, " ").splitlines()).strip()

    seqs = [name.endswith("_seq") for name in names]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(field_separator.join(names) + "\n")
            for row in zip(*values):
                f.write(field_separator.join(cell(v, s) for v, s in zip(row, seqs)) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
