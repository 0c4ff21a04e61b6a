"""Reading RecBole atomic files (``<name>.inter``, ``.item``, ``.review``, ...): a header of
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
