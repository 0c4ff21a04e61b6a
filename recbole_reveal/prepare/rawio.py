"""Streaming line reader for the raw files, the counters every robustness rule reports into, and
the text / id normalisation rules (docs/datasets.md, "Robustness rules").

Reading: a file is opened as gzip when its first two bytes are the gzip magic (whatever its name),
otherwise as plain bytes. Lines are read one at a time (``readline`` with a length limit, so one
corrupt multi-GB "line" cannot exhaust memory), decoded as UTF-8 (invalid bytes become U+FFFD, the
line is kept and counted as ``invalid_utf8``), and stripped; a UTF-8 BOM on line 1 is ignored.
A gzip stream that ends early or is corrupt is an error naming the file and the last good line.
"""

import gzip
import html
import io
import logging
import os
import re
import unicodedata
import zlib

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 32 * 1024 * 1024  # a longer line is skipped and counted as line_too_long
EXAMPLES_PER_REASON = 3  # lines (number + detail) kept and logged per reason and file

# The strings pandas reads as NaN by default (RecBole reads atomic files with pandas): a whole
# field equal to one of these would silently become a missing value.
PANDAS_NA_STRINGS = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
])
# Placeholder values of free-text fields (title, brand) that mean "no value" (case-insensitive).
PLACEHOLDERS = frozenset(s.lower() for s in PANDAS_NA_STRINGS) | {"unknown", "-", "--", "none."}

# User / item ids are written verbatim (never rewritten, so ids cannot shift) and the item id is
# used as an image file name: an id must match this, be at most 64 characters, and not be a
# pandas NA string. Amazon (ASIN, reviewerID) and Yelp (22-character base64) ids all do.
ID_PATTERN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}")

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class RawFileError(ValueError):
    """A raw input file is missing, unreadable, truncated, or mostly not in the expected format."""


class FileCounters:
    """Counts per reason for one raw file, with the first few line numbers of each (for logs)."""

    def __init__(self, label):
        self.label = label  # file name as shown to the user (no directory: reports stay portable)
        self.lines = 0      # non-blank lines read
        self.kept = 0       # records accepted
        self.counts = {}
        self.examples = {}

    def add(self, reason, line=None, detail=None, log=True):
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if line is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < EXAMPLES_PER_REASON:
                ex.append(f"line {line}" + (f": {detail}" if detail else ""))
                if log:
                    logger.warning("%s line %d: %s%s", self.label, line, reason,
                                   f" ({detail})" if detail else "")

    def rejected(self, rejecting):
        return sum(n for r, n in self.counts.items() if r in rejecting)

    def as_dict(self):
        return {"file": self.label, "lines": self.lines, "kept": self.kept,
                "counts": dict(sorted(self.counts.items())),
                "examples": {k: v for k, v in sorted(self.examples.items())}}


def find_raw_file(raw_dir, names, what, hint):
    """The first of ``names`` (tried in order) that exists in ``raw_dir``, else a clear error."""
    for name in names:
        path = os.path.join(raw_dir, name)
        if os.path.isfile(path):
            return path
    raise RawFileError(
        f"{what} not found in {raw_dir}: expected one of {', '.join(names)}. {hint}")


def _open_binary(path):
    """``(reader, underlying file)``: gzip by magic bytes, else the plain file."""
    f = open(path, "rb", buffering=1 << 20)
    if f.peek(2)[:2] == b"\x1f\x8b":
        return io.BufferedReader(gzip.GzipFile(fileobj=f, mode="rb"), buffer_size=1 << 20), f
    return f, f


def iter_lines(path, counters, max_line_bytes=MAX_LINE_BYTES):
    """Yield ``(line_number, text)`` for every non-blank line of ``path`` (1-based numbers)."""
    if not os.path.isfile(path):
        raise RawFileError(f"raw file not found: {path}")
    reader, raw = _open_binary(path)
    number = 0
    try:
        while True:
            try:
                data = reader.readline(max_line_bytes + 1)
            except (EOFError, OSError, zlib.error) as e:
                raise RawFileError(
                    f"{path}: unreadable after line {number} ({type(e).__name__}: {e}); the file is "
                    "truncated or corrupt, download it again") from e
            if not data:
                break
            number += 1
            if len(data) > max_line_bytes and not data.endswith(b"\n"):
                while data and not data.endswith(b"\n"):  # skip the rest of this line
                    data = reader.readline(1 << 20)
                counters.lines += 1
                counters.add("line_too_long", number, f"over {max_line_bytes} bytes")
                continue
            if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            data = data.strip()
            if not data:
                counters.add("blank_line")
                continue
            counters.lines += 1
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                text = data.decode("utf-8", "replace")
                counters.add("invalid_utf8", number, f"{e.reason} at byte {e.start}; replaced by U+FFFD, line kept")
            yield number, text
    finally:
        reader.close()
        raw.close()


def check_bad_fraction(counters, rejecting, max_fraction, path, exclude=()):
    """Error when more than ``max_fraction`` of the examined lines were rejected (a wrong or
    damaged file). Lines counted under ``exclude`` (skipped unexamined) are not in the base."""
    bad = counters.rejected(rejecting)
    examined = counters.lines - sum(counters.counts.get(r, 0) for r in exclude)
    if counters.lines == 0:
        raise RawFileError(f"{path}: no data lines; is this the right file?")
    if bad > max_fraction * max(examined, 0):
        reasons = "; ".join(f"{r}: {n} ({', '.join(counters.examples.get(r, [])[:2])})"
                            for r, n in sorted(counters.counts.items()) if r in rejecting)
        raise RawFileError(
            f"{path}: {bad} of {examined} lines rejected ({reasons}), more than the allowed "
            f"fraction {max_fraction} (--max-bad-fraction); is this the right file?")


# --------------------------------------------------------------------------- text rules

def clean_text(value, counters=None, line=None, field=None, unescape=False):
    """The normalisation every free-text value goes through before it is written.

    Lone UTF-16 surrogates (from JSON ``\\ud83d`` escapes) become U+FFFD (counted ``lone_surrogate``);
    with ``unescape``, HTML entities are decoded (``&amp;`` -> ``&``); Unicode NFC; control
    characters, tabs, line and paragraph separators become spaces; runs of whitespace (any Unicode
    whitespace, NBSP included) become one space, leading/trailing removed; ``"`` becomes ``''``
    (pandas, which RecBole reads atomic files with, treats a field that starts with ``"`` as quoted
    and would swallow the following lines).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATE.sub("\ufffd", value)
        if counters is not None:
            counters.add("lone_surrogate", line, f"field '{field}'; replaced by U+FFFD")
    if unescape and "&" in value:
        value = html.unescape(value)
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    value = _CONTROL.sub(" ", value)
    value = " ".join(value.split())
    return value.replace('"', "''")


def is_placeholder(value):
    return value.lower() in PLACEHOLDERS


def to_token(value):
    """A multi-word value as one token: spaces become ``_`` (the atomic-file convention)."""
    return value.replace(" ", "_")


def valid_id(value):
    return (isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None
            and value not in PANDAS_NA_STRINGS)
