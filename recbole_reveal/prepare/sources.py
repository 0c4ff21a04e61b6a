"""Parsers of the public raw files: Amazon 2014 (McAuley) reviews + metadata, Yelp Open Dataset
reviews + businesses + photos. Each streams its file line by line, applies the rules of
docs/datasets.md and counts every deviation in a :class:`~.rawio.FileCounters`.

Reason names are ``missing_<key>`` (key absent or null) and ``bad_<key>`` (wrong type or value),
with the raw file's own key names, so a count always names the key it is about.
"""

import ast
import calendar
import datetime
import json
import math
import os
import re
from collections import namedtuple

from recbole_reveal.prepare.rawio import (
    FileCounters, check_bad_fraction, clean_text, is_placeholder, iter_lines, to_token, valid_id)

# title / categories / brand are written to the .item file; ``sources`` are the image candidates,
# tried in order: (label written to reports, URL or local path).
ItemRecord = namedtuple("ItemRecord", "title categories brand sources")

# Reasons that reject a whole line (they count towards --max-bad-fraction).
LINE_REJECTS = {"json_error", "not_object", "line_too_long", "parse_error"}

_EPOCH = datetime.date(1970, 1, 1)


def _reject(counters, line, reason, detail=None):
    counters.add(reason, line, detail)
    return None


def _get_id(rec, key, counters, line):
    value = rec.get(key)
    if value is None:
        return _reject(counters, line, f"missing_{key}")
    if not valid_id(value):
        return _reject(counters, line, f"bad_{key}", f"{key}={value!r:.60}")
    return value


def _get_number(rec, key, counters, line):
    value = rec.get(key)
    if value is None:
        return _reject(counters, line, f"missing_{key}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return _reject(counters, line, f"bad_{key}", f"{key}={value!r:.60}")
    return float(value)


def _get_text(rec, key, counters, line, unescape=False):
    """A free-text value; absent/null -> '' (counted ``missing_<key>``), non-string -> ''
    (``bad_<key>``). The line is kept either way."""
    value = rec.get(key)
    if value is None:
        counters.add(f"missing_{key}", line, log=False)
        return ""
    if not isinstance(value, str):
        counters.add(f"bad_{key}", line, f"{key} is {type(value).__name__}, used as empty")
        return ""
    return clean_text(value, counters, line, key, unescape=unescape)


def _json_object(text, counters, line):
    try:
        rec = json.loads(text)
    except (ValueError, RecursionError) as e:
        return _reject(counters, line, "json_error", str(e)[:80])
    if not isinstance(rec, dict):
        return _reject(counters, line, "not_object", f"a JSON {type(rec).__name__}")
    return rec


def _record_review(log, spool, user, item, timestamp, rating, text, counters, line):
    if not text:
        counters.add("empty_review", line, log=False)
    log.add(user, item, timestamp, rating, spool.add(text.encode("utf-8")))
    counters.kept += 1


# --------------------------------------------------------------------------- Amazon 2014

AMAZON_REVIEW_REJECTS = LINE_REJECTS | {
    "missing_reviewerID", "bad_reviewerID", "missing_asin", "bad_asin", "missing_overall",
    "bad_overall", "missing_unixReviewTime", "bad_unixReviewTime"}
_REVIEW_TIME = re.compile(r"(\d{1,2}) (\d{1,2}), (\d{4})")


def _amazon_timestamp(rec, counters, line):
    """``unixReviewTime`` (integer seconds >= 0); if absent or invalid, ``reviewTime``
    ("MM DD, YYYY", read as 00:00 UTC, which is what unixReviewTime holds) is used instead and
    counted ``timestamp_from_reviewTime``; if both fail the line is rejected."""
    value = rec.get("unixReviewTime")
    if (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer()):
        if 0 <= value < 2 ** 53:
            return int(value)
    problem = "missing_unixReviewTime" if value is None else "bad_unixReviewTime"
    fallback = rec.get("reviewTime")
    m = _REVIEW_TIME.fullmatch(fallback.strip()) if isinstance(fallback, str) else None
    if m:
        month, day, year = (int(g) for g in m.groups())
        try:
            stamp = calendar.timegm(datetime.date(year, month, day).timetuple())
        except ValueError:
            stamp = None
        if stamp is not None and stamp >= 0:
            counters.add("timestamp_from_reviewTime", line,
                         f"unixReviewTime={value!r:.30}; used reviewTime {fallback!r}")
            return stamp
    return _reject(counters, line, problem, f"unixReviewTime={value!r:.30}")


def _review_records(path, counters, user_key, item_key, rating_key):
    """``(line, record, user, item, rating)`` for every review line whose JSON object, ids and rating
    are valid; every other line is counted (under its key's name) and skipped."""
    for line, text in iter_lines(path, counters):
        rec = _json_object(text, counters, line)
        if rec is None:
            continue
        user = _get_id(rec, user_key, counters, line)
        if user is None:
            continue
        item = _get_id(rec, item_key, counters, line)
        if item is None:
            continue
        rating = _get_number(rec, rating_key, counters, line)
        if rating is None:
            continue
        yield line, rec, user, item, rating


def _wanted_new_id(rec, key, wanted, items, counters, line):
    """The item id of a metadata record if it is valid, reviewed (in ``wanted``) and not seen before
    (the first entry of a repeated id is kept); otherwise count why and return None."""
    item = _get_id(rec, key, counters, line)
    if item is None:
        return None
    if item not in wanted:
        counters.add("not_reviewed")
        return None
    if item in items:
        counters.add(f"duplicate_{key}", line, f"{key} {item} seen before; first entry kept")
        return None
    return item


def read_amazon_reviews(path, log, spool, max_bad_fraction):
    """``reviews_<Category>_5.json.gz``: one JSON object per line."""
    c = FileCounters(os.path.basename(path))
    for line, rec, user, item, rating in _review_records(path, c, "reviewerID", "asin", "overall"):
        timestamp = _amazon_timestamp(rec, c, line)
        if timestamp is None:
            continue
        summary = _get_text(rec, "summary", c, line)
        body = _get_text(rec, "reviewText", c, line)
        if summary and body and summary[-1] not in ".!?":
            summary += "."
        _record_review(log, spool, user, item, timestamp, rating, " ".join(p for p in (summary, body) if p),
                       c, line)
    check_bad_fraction(c, AMAZON_REVIEW_REJECTS, max_bad_fraction, path)
    return c


_META_ASIN = re.compile(r"""\{\s*['"]asin['"]\s*:\s*['"]([^'"\\]*)['"]""")


def _parse_meta_line(text):
    """A Python-literal dict (the 2014 files), else strict JSON; raises ValueError."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        first = e
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        why = getattr(first, "msg", None) or str(first)
        raise ValueError(f"neither a Python literal nor JSON ({type(first).__name__}: {why[:60]})")


def _amazon_categories(value, c, line):
    """``categories`` is a list of category paths (lists of strings): all paths flattened in
    order, HTML-unescaped, each name one token (spaces -> ``_``), repeats dropped. A flat list of
    strings is taken as one path. Anything else: no categories (``bad_categories``)."""
    if value is None:
        c.add("missing_categories", line, log=False)
        return ""
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        value = [value]
    if not (isinstance(value, list) and all(isinstance(p, list) and all(isinstance(x, str) for x in p)
                                            for p in value)):
        c.add("bad_categories", line, f"categories is {type(value).__name__}, not a list of lists of strings")
        return ""
    seen, tokens = set(), []
    for path in value:
        for name in path:
            tok = to_token(clean_text(name, c, line, "categories", unescape=True))
            if tok and not is_placeholder(tok) and tok not in seen:
                seen.add(tok)
                tokens.append(tok)
    if not tokens:
        c.add("missing_categories", line, log=False)
    return " ".join(tokens)


def _title(rec, key, c, line, unescape):
    title = _get_text(rec, key, c, line, unescape=unescape)
    if title and is_placeholder(title):
        c.add(f"placeholder_{key}", line, f"{key}={title!r}, used as empty")
        title = ""
    if not title:
        c.add(f"empty_{key}", line, log=False)
    return title


def _brand(rec, key, c, line, unescape):
    brand = to_token(_get_text(rec, key, c, line, unescape=unescape))
    if brand and is_placeholder(brand):
        c.add(f"placeholder_{key}", line, f"{key}={brand!r}, used as empty")
        brand = ""
    return brand


def read_amazon_meta(path, wanted, max_bad_fraction):
    """``meta_<Category>.json.gz``: one Python-literal dict per line (``ast.literal_eval``, never
    ``eval``). Only items in ``wanted`` are parsed (lines of other items are recognised by their
    leading ``{'asin': ...`` and skipped unparsed, counted ``not_reviewed``)."""
    c = FileCounters(os.path.basename(path))
    items = {}
    for line, text in iter_lines(path, c):
        m = _META_ASIN.match(text)
        if m and m.group(1) not in wanted:
            c.add("not_reviewed")
            continue
        try:
            rec = _parse_meta_line(text)
        except ValueError as e:
            c.add("parse_error", line, str(e))
            continue
        if not isinstance(rec, dict):
            c.add("not_object", line, f"a {type(rec).__name__}")
            continue
        asin = _wanted_new_id(rec, "asin", wanted, items, c, line)
        if asin is None:
            continue
        url = rec.get("imUrl")
        sources = []
        if url is None or url == "":
            c.add("missing_imUrl", line, log=False)
        elif (not isinstance(url, str) or not url.strip().lower().startswith(("http://", "https://"))
              or re.search(r"\s", url.strip())):
            c.add("bad_imUrl", line, f"imUrl={url!r:.60} (not an http(s) URL)")
        else:
            sources = [(url.strip(), url.strip())]
        items[asin] = ItemRecord(_title(rec, "title", c, line, True),
                                 _amazon_categories(rec.get("categories"), c, line),
                                 _brand(rec, "brand", c, line, True), sources)
        c.kept += 1
    check_bad_fraction(c, LINE_REJECTS | {"missing_asin", "bad_asin"}, max_bad_fraction, path,
                       exclude=("not_reviewed",))
    return items, c


# --------------------------------------------------------------------------- Yelp

YELP_REVIEW_REJECTS = LINE_REJECTS | {
    "missing_user_id", "bad_user_id", "missing_business_id", "bad_business_id", "missing_stars",
    "bad_stars", "missing_date", "bad_date"}
_YELP_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}):(\d{2}):(\d{2}))?")
_DAY_CACHE = {}


def yelp_timestamp(value):
    """"YYYY-MM-DD HH:MM:SS" (or a bare date) read as UTC -> integer seconds; None if invalid.
    Yelp's dates are local times without a zone: the numbers are not true Unix times, but each
    user's order is what the sequences use."""
    m = _YELP_DATE.fullmatch(value) if isinstance(value, str) else None
    if not m:
        return None
    day = _DAY_CACHE.get(m.group(1))
    if day is None:
        try:
            day = (datetime.date.fromisoformat(m.group(1)) - _EPOCH).days
        except ValueError:
            return None
        if len(_DAY_CACHE) < 100_000:
            _DAY_CACHE[m.group(1)] = day
    if m.group(2) is None:
        return day * 86400
    h, mi, s = int(m.group(2)), int(m.group(3)), int(m.group(4))
    if h > 23 or mi > 59 or s > 60:
        return None
    return day * 86400 + h * 3600 + mi * 60 + s


def read_yelp_reviews(path, log, spool, max_bad_fraction):
    """``yelp_academic_dataset_review.json``: one JSON object per line."""
    c = FileCounters(os.path.basename(path))
    for line, rec, user, item, rating in _review_records(path, c, "user_id", "business_id", "stars"):
        date = rec.get("date")
        timestamp = yelp_timestamp(date)
        if timestamp is None:
            _reject(c, line, "missing_date" if date is None else "bad_date", f"date={date!r:.40}")
            continue
        _record_review(log, spool, user, item, timestamp, rating, _get_text(rec, "text", c, line), c, line)
    check_bad_fraction(c, YELP_REVIEW_REJECTS, max_bad_fraction, path)
    return c


def read_yelp_businesses(path, wanted, max_bad_fraction):
    """``yelp_academic_dataset_business.json``: ``name`` -> title, ``categories`` (a
    comma-separated string or null) -> categories; Yelp has no brand (left empty)."""
    c = FileCounters(os.path.basename(path))
    items = {}
    for line, text in iter_lines(path, c):
        rec = _json_object(text, c, line)
        if rec is None:
            continue
        bid = _wanted_new_id(rec, "business_id", wanted, items, c, line)
        if bid is None:
            continue
        cats = rec.get("categories")
        tokens = []
        if cats is None:
            c.add("missing_categories", line, log=False)
        elif not isinstance(cats, str):
            c.add("bad_categories", line, f"categories is {type(cats).__name__}, not a string")
        else:
            for name in cats.split(","):
                tok = to_token(clean_text(name, c, line, "categories"))
                if tok and not is_placeholder(tok) and tok not in tokens:
                    tokens.append(tok)
            if not tokens:
                c.add("missing_categories", line, log=False)
        items[bid] = ItemRecord(_title(rec, "name", c, line, False), " ".join(tokens), "", [])
        c.kept += 1
    check_bad_fraction(c, LINE_REJECTS | {"missing_business_id", "bad_business_id"}, max_bad_fraction,
                       path, exclude=("not_reviewed",))
    return items, c


DEFAULT_PHOTO_LABELS = ("food", "inside", "outside", "drink", "menu")


def read_yelp_photos(path, photos_dir, wanted, label_priority, max_bad_fraction):
    """``photos.json``: per wanted business, its photo candidates in the documented order: label
    rank in ``label_priority`` (other or missing labels after all listed ones), then photo_id in
    code-point order. Returns ``{business_id: [(label, path), ...]}``."""
    c = FileCounters(os.path.basename(path))
    rank = {label: k for k, label in enumerate(label_priority)}
    found = {}
    for line, text in iter_lines(path, c):
        rec = _json_object(text, c, line)
        if rec is None:
            continue
        pid = _get_id(rec, "photo_id", c, line)
        if pid is None:
            continue
        bid = _get_id(rec, "business_id", c, line)
        if bid is None:
            continue
        if bid not in wanted:
            c.add("not_reviewed")
            continue
        label = rec.get("label")
        label = label.strip().lower() if isinstance(label, str) else ""
        found.setdefault(bid, set()).add((rank.get(label, len(rank)), pid))
        c.kept += 1
    check_bad_fraction(c, LINE_REJECTS | {"missing_photo_id", "bad_photo_id", "missing_business_id",
                                          "bad_business_id"}, max_bad_fraction, path,
                       exclude=("not_reviewed",))
    return {bid: [(f"photos/{pid}.jpg", os.path.join(photos_dir, f"{pid}.jpg")) for _, pid in sorted(cands)]
            for bid, cands in found.items()}, c
