"""Reading and writing RecBole atomic files (``<name>.inter``, ``.item``, ``.review``, ...): a header of
``field:type`` columns, then one tab-separated row per line. Light: no torch, no RecBole. Used by the
feature-extraction command and by FVE's prompts (items, interactions, reviews), and to say which file
and line RecBole's loader trips over (:func:`load_errors_explained`)."""

import contextlib
import os


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


def iter_interactions(inter_path, extra=None):
    """``(user, item, timestamp or None, extra value or None)`` of each row of a ``.inter`` file, streamed
    (``extra``: the name of one more column, when the file has it). A file without ``user_id`` or
    ``item_id`` is a :class:`ConfigError`."""
    from recbole_reveal.infra.errors import ConfigError

    columns, _, rows = iter_atomic(inter_path)
    for needed in ("user_id", "item_id"):
        if needed not in columns:
            raise ConfigError(f"{inter_path}: no {needed} column (columns: {columns})")
    u, i = columns.index("user_id"), columns.index("item_id")
    t = columns.index("timestamp") if "timestamp" in columns else None
    e = columns.index(extra) if extra in columns else None
    for row in rows:
        yield (row[u], row[i], float(row[t]) if t is not None and row[t] != "" else None,
               row[e] if e is not None else None)


# ---------------------------------------------------------------------------------------------
# what RecBole's loader would trip over, said with the file and the line
# ---------------------------------------------------------------------------------------------

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


def check_header(path, field_separator="\t"):
    """Raise :class:`DataFileError` when ``path`` is empty or its first line is not RecBole's header
    (``name:type`` fields, type one of :data:`FIELD_TYPES`). Returns ``(columns, types)``."""
    from recbole_reveal.infra.errors import DataFileError

    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
    if not header.strip():
        raise DataFileError(f"{path}:1: the file is empty; an atomic file starts with a header line of "
                            "tab-separated 'name:type' fields, e.g. 'user_id:token<TAB>item_id:token<TAB>"
                            "timestamp:float' (docs/data-format.md)")
    columns, types = [], []
    for n, field in enumerate(header.split(field_separator), 1):
        name, sep, ftype = field.rpartition(":")
        if not sep or not name or ftype not in FIELD_TYPES:
            raise DataFileError(f"{path}:1: header field {n} is {field!r}; expected 'name:type' with type one "
                                f"of {', '.join(FIELD_TYPES)} (docs/data-format.md)")
        columns.append(name)
        types.append(ftype)
    return columns, types


def has_rows(path):
    """Whether ``path`` holds a non-empty line after its header."""
    with open(path, encoding="utf-8") as f:
        f.readline()
        return any(line.strip() for line in f)


def first_bad_value(path, field_separator="\t", seq_separator=" ", columns=None):
    """``(line number, column, value)`` of the first value of a float (or float_seq) column that is not
    a number, or None; only the ``columns`` given (by name) when given. Reads one line at a time."""
    names, types, rows = iter_atomic(path, field_separator)
    wanted = [i for i, (c, t) in enumerate(zip(names, types)) if t.startswith("float")
              and (columns is None or c in columns)]
    if not wanted:
        return None
    line_no = 1
    with open(path, encoding="utf-8") as f:
        f.readline()
        for line in f:
            line_no += 1
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split(field_separator)
            for i in wanted:
                value = parts[i] if i < len(parts) else ""
                values = value.split(seq_separator) if types[i] == "float_seq" else [value]
                for v in values:
                    if v.strip() == "":
                        continue
                    try:
                        float(v)
                    except ValueError:
                        return line_no, f"{names[i]}:{types[i]}", value
    return None


@contextlib.contextmanager
def load_errors_explained(config):
    """Around RecBole's loading of a dataset: an empty or header-only ``.inter`` and malformed headers
    are errors before it starts; a ``ValueError`` (or ``KeyError`` / ``TypeError`` / ``IndexError``) it
    raises becomes a :class:`DataFileError` naming the file, line and column of the first value it cannot
    read, when there is one (else it propagates as it was)."""
    from recbole_reveal.infra.errors import DataFileError, RevealUserError

    folder, name = config["data_path"], config["dataset"]
    sep = config["field_separator"] or "\t"
    seq_sep = config["seq_separator"] or " "
    load_col = config["load_col"] if isinstance(config["load_col"], dict) else None
    suffixes = ["inter", "item", "user"] + list(config["additional_feat_suffix"] or [])
    paths = {s: os.path.join(folder, f"{name}.{s}") for s in suffixes}
    paths = {s: p for s, p in paths.items() if os.path.isfile(p) and (load_col is None or s in load_col)}
    for path in paths.values():
        check_header(path, sep)
    if "inter" in paths and not has_rows(paths["inter"]):
        raise DataFileError(f"{paths['inter']}: no interactions after the header line; a dataset needs at "
                            "least one 'user<TAB>item<TAB>...' line per interaction (docs/data-format.md)")
    try:
        yield
    except (ValueError, KeyError, TypeError, IndexError) as e:
        if isinstance(e, RevealUserError):
            raise
        for suffix, path in paths.items():
            bad = first_bad_value(path, sep, seq_sep, None if load_col is None else load_col[suffix])
            if bad is not None:
                line, column, value = bad
                raise DataFileError(f"{path}:{line}: column {column} holds {value!r}, which is not a number "
                                    "(float columns hold numbers, e.g. Unix timestamps)") from e
        raise


def write_atomic(path, columns, field_separator="\t"):
    """Write a RecBole atomic file from ``{"name:type": values}`` (lists, tuples or pandas Series of one
    length), e.g. ``{"user_id:token": [...], "item_id:token": [...], "timestamp:float": [...]}``.

    Values become one line of text each: ``None`` / NaN is empty, tabs and line breaks are spaces (atomic
    files are not quoted). A ``token_seq`` / ``float_seq`` value may be a list: its items are joined by
    spaces, and spaces inside a token become ``_`` (the atomic files' convention, undone by the feature
    extractor and the prompts). Written to a temporary file, then renamed. Raises ``ValueError`` for a
    header that is not ``name:type`` with one of :data:`FIELD_TYPES` or columns of different lengths."""
    import math

    from recbole_reveal.infra.files import atomic_open

    names = list(columns)
    for name in names:
        field, _, kind = name.rpartition(":")
        if not field or kind not in FIELD_TYPES:
            raise ValueError(f"{path}: column {name!r} must be 'name:type' with type one of {', '.join(FIELD_TYPES)}")
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
    with atomic_open(path, "w") as f:
        f.write(field_separator.join(names) + "\n")
        for row in zip(*values):
            f.write(field_separator.join(cell(v, s) for v, s in zip(row, seqs)) + "\n")
    return path
