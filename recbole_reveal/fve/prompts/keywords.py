"""Review keywords of FVE's initial prompts (paper §4.3.3).

Keywords of an item come from the first of (docs/own-data.md, "Reviews"):

- the ``<name>.review`` file with a user per review, ``user_id:token item_id:token timestamp:float
  review:token`` (``timestamp`` optional);
- the ``<name>.review`` file at item level, ``item_id:token review:token``;
- a ``review`` (or ``reviews``) column of ``<name>.item``, all of an item's review text in one cell;

and then:

1. reviews used: ``exclude_eval`` (default) drops, per user, the reviews of the user's last two
   interactions in ``<name>.inter`` -- the validation and test targets of the leave-one-out split --
   so item prompts carry no text written at evaluation time (matched by user, item and timestamp, or by
   user and item when the reviews have no timestamp); item-level text names no user, so nothing can be
   left out per user: it is used whole, and the log says so. ``all`` uses every review (the reference
   code);
2. each review: lowercased; apostrophes removed (``don't`` -> ``dont``); every other character that
   is not a letter or digit is a separator; tokens that are stop words (:data:`ENGLISH_STOP_WORDS`, or
   the file ``fve_stopwords``), a single character, or only digits are dropped;
3. the item's keywords: its ``fve_keywords_topk`` (5) most frequent tokens over the kept reviews
   (occurrences), ties broken alphabetically, so the result never depends on file order.

Counting is one streaming pass with interned word ids (:class:`KeywordCounts`: about 12 bytes per
distinct (item, word) pair, so Yelp's reviews fit in a few hundred MB); the keywords can be kept in a
content-keyed cache (:func:`item_keywords`) that later runs on the same dataset read instead.
"""

import bisect
import hashlib
import json
import logging
import os
import re
from array import array
from collections import Counter
from dataclasses import dataclass

import numpy as np

from recbole_reveal.data.atomic import iter_atomic, iter_interactions
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.infra.files import file_sha256, write_json_atomic

logger = logging.getLogger(__name__)

KEYWORD_CACHE_FORMAT = 1   # bump when the keyword rule changes
ITEM_REVIEW_COLUMNS = ("review", "reviews")     # a .item column holding an item's review text
REVIEW_HELP = ("a review file is 'user_id:token item_id:token timestamp:float review:token' (or "
               "'item_id:token review:token' for item-level text), docs/own-data.md 'Reviews'")


# A general-purpose English stop-word list: articles, pronouns, auxiliaries, prepositions,
# conjunctions, common adverbs/determiners, and contractions written without their apostrophe (the
# tokeniser removes apostrophes). Content words -- including review words such as "love", "great" or
# "quality" -- are kept: which of them matter is for the critic to decide, not this list.
ENGLISH_STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can cannot could did do does doing down during each either else ever few
for from further had has have having he her here hers herself him himself his how however if in
into is it its itself just least less let like may me might mine more most much must my myself
neither no nor not now of off often on once only or other ought our ours ourselves out over own
per quite rather really same shall she should since so some such than that the their theirs them
themselves then there these they this those though through thus to too under until up upon us very
was we were what whatever when whenever where whereas wherever whether which while who whoever
whom whose why will with within without would yet you your yours yourself yourselves
aint arent cant couldnt didnt doesnt dont hadnt hasnt havent hed hes id ill im isnt ive lets
mightnt mustnt neednt shant shed shes shouldnt thats theres theyd theyll theyre theyve wasnt wed
werent weve whats wheres whos wont wouldnt youd youll youre youve
""".split())


_APOSTROPHES = re.compile(r"['\u2019\u02bc`]")
_WORD = re.compile(r"[^\W_]+")   # runs of letters/digits (any script); "_" and punctuation separate


def review_words(text):
    """Every word of one review, in order: lowercased, apostrophes removed (rule 2 of the module docstring)."""
    return _WORD.findall(_APOSTROPHES.sub("", text.lower()))


def is_candidate(word, stop_words=ENGLISH_STOP_WORDS):
    """Whether a review word can be a keyword: not a stop word, a single character, or only digits."""
    return len(word) > 1 and not word.isdigit() and word not in stop_words


def tokenize_review(text, stop_words=ENGLISH_STOP_WORDS):
    """Keyword candidates of one review, in order (rule 2 of the module docstring)."""
    return [w for w in review_words(text) if is_candidate(w, stop_words)]


def extract_keywords(reviews, top_k=5, stop_words=ENGLISH_STOP_WORDS):
    """The ``top_k`` most frequent candidates over ``reviews``; ties alphabetical."""
    counts = Counter()
    for review in reviews:
        counts.update(tokenize_review(review, stop_words))
    return top_keywords(counts, top_k)


def load_stop_words(path=None):
    """The built-in list, or the words of ``path`` (one per line, ``#`` comments, lowercased)."""
    if not path:
        return ENGLISH_STOP_WORDS
    if not os.path.isfile(path):
        raise ConfigError(f"fve_stopwords: file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return frozenset(w.strip().lower() for w in f if w.strip() and not w.lstrip().startswith("#"))


def evaluation_holdout(inter_path, n_holdout=2):
    """``{(user, item, timestamp)}`` of each user's last ``n_holdout`` interactions (timestamp order,
    ties by file order): the leave-one-out validation and test targets. The file is streamed and only
    each user's latest ``n_holdout`` interactions are kept in memory."""
    latest = {}                                   # user -> up to n_holdout (order key, item, ts), ascending
    for line, (user, item, ts, _) in enumerate(iter_interactions(inter_path)):
        event = ((ts if ts is not None else 0.0, line), item, ts)
        kept = latest.get(user)
        if kept is None:
            latest[user] = [event]
        elif len(kept) < n_holdout or event[0] > kept[0][0]:
            bisect.insort(kept, event, key=lambda e: e[0])
            if len(kept) > n_holdout:
                del kept[0]
    return {(user, item, ts) for user, events in latest.items() for _, item, ts in events}


class KeywordCounts:
    """Occurrences of each keyword candidate per item, from one pass over a ``.review`` file.

    Words are interned (one id per distinct word) and the distinct (item, word) pairs are counted in
    numpy arrays of keys ``item << 32 | word`` (sorted) and counts: 12 bytes per pair, where a
    ``Counter`` per item costs about 86. The pairs are kept in buckets of consecutive item indices,
    so merging new counts and ranking the keywords never copy more than one bucket at a time.
    ``counts[item]`` gives one item's ``Counter`` (for inspection); :meth:`top` every item's keywords.
    """

    def __init__(self, items, words, buckets, bucket_items):
        self.items = items                  # item tokens in order of first kept review
        self.words = words                  # word id -> word
        self.buckets = buckets              # [(int64 sorted keys, int32 counts)] per bucket of item indices
        self.bucket_items = bucket_items    # item indices per bucket
        self._index = {token: n for n, token in enumerate(items)}

    def __len__(self):
        return len(self.items)

    def __contains__(self, item):
        return item in self._index

    def __iter__(self):
        return iter(self.items)

    @property
    def n_pairs(self):
        return sum(len(keys) for keys, _ in self.buckets)

    def __getitem__(self, item):
        n = self._index[item]
        keys, counts = self.buckets[n // self.bucket_items]
        lo, hi = np.searchsorted(keys, [n << 32, (n + 1) << 32])
        return Counter({self.words[int(k) & 0xFFFFFFFF]: int(c) for k, c in zip(keys[lo:hi], counts[lo:hi])})

    def top(self, top_k=5):
        """``{item: [keyword, ...]}`` for every item in item order: its ``top_k`` most frequent words,
        ties alphabetical (as :func:`top_keywords`)."""
        alphabetical = np.empty(len(self.words), dtype=np.int32)
        alphabetical[sorted(range(len(self.words)), key=self.words.__getitem__)] = np.arange(len(self.words))
        found = {}
        for keys, counts in self.buckets:
            item, word = keys >> 32, keys & 0xFFFFFFFF
            order = np.lexsort((alphabetical[word], -counts, item))
            item, word = item[order], word[order]
            first = np.flatnonzero(np.r_[True, item[1:] != item[:-1]])
            rank = np.arange(len(item)) - np.repeat(first, np.diff(np.r_[first, len(item)]))
            chosen = rank < top_k
            for n, w in zip(item[chosen].tolist(), word[chosen].tolist()):
                found.setdefault(n, []).append(self.words[w])
        return {token: found.get(n, []) for n, token in enumerate(self.items)}


class _PairCounter:
    """Streaming (item index, word id) counter: pairs are buffered in compact arrays and, every
    ``flush_every`` pairs, merged into per-bucket sorted arrays of distinct keys with counts."""

    def __init__(self, flush_every=1 << 22, bucket_items=1024):
        self.flush_every, self.bucket_items = flush_every, bucket_items
        self.buckets = []
        self._words, self._items, self._lengths = [], array("i"), array("i")

    def add(self, item, word_ids):
        """Count ``word_ids`` (negative ids are not keyword candidates and are skipped) for ``item``."""
        self._words += word_ids
        self._items.append(item)
        self._lengths.append(len(word_ids))
        if len(self._words) >= self.flush_every:
            self.flush()

    def flush(self):
        if not self._words:
            return
        words = np.array(self._words, dtype=np.int64)
        new = np.repeat(np.frombuffer(self._items, dtype=np.int32).astype(np.int64),
                        np.frombuffer(self._lengths, dtype=np.int32)) << 32
        self._words, self._items, self._lengths = [], array("i"), array("i")
        keep = words >= 0
        new = new[keep] | words[keep]
        del words, keep
        if not len(new):
            return
        keys, counts = np.unique(new, return_counts=True)
        del new
        counts = counts.astype(np.int32)
        bucket = (keys >> 32) // self.bucket_items
        while len(self.buckets) <= bucket[-1]:
            self.buckets.append((np.zeros(0, np.int64), np.zeros(0, np.int32)))
        edges = np.searchsorted(bucket, np.arange(len(self.buckets) + 1))
        for b in np.flatnonzero(np.diff(edges)):
            self.buckets[b] = _merge(*self.buckets[b], keys[edges[b]:edges[b + 1]], counts[edges[b]:edges[b + 1]])


def _merge(keys, counts, new_keys, new_counts):
    """Sorted distinct ``keys`` with ``counts`` plus sorted distinct ``new_keys`` with theirs."""
    at = np.searchsorted(keys, new_keys)
    known = at < len(keys)
    known[known] = keys[at[known]] == new_keys[known]
    counts[at[known]] += new_counts[known]      # distinct keys: distinct positions
    fresh = ~known
    return np.insert(keys, at[fresh], new_keys[fresh]), np.insert(counts, at[fresh], new_counts[fresh])


def review_keyword_counts(review_path, holdout=None, stop_words=ENGLISH_STOP_WORDS, text_column="review"):
    """:class:`KeywordCounts` of a ``.review`` file (or of the ``text_column`` of a ``.item`` file) without
    the ``holdout`` interactions. The file is streamed line by line: only the counts stay in memory, not
    the texts. Reviews without a timestamp are left out by (user, item)."""
    columns, _, rows = iter_atomic(review_path)
    check_review_columns(review_path, columns, text_column)
    i, r = columns.index("item_id"), columns.index(text_column)
    u = columns.index("user_id") if "user_id" in columns else None
    t = columns.index("timestamp") if "timestamp" in columns else None
    if holdout and u is None:
        raise ConfigError(f"{review_path} has no user_id column, so no review can be left out per user: set "
                          f"fve_keyword_reviews: all to use every review; {REVIEW_HELP}")
    held_pairs = {(user, item) for user, item, _ in holdout} if holdout and t is None else None
    word_id, words = {}, []                     # every distinct word -> id (-1: not a candidate)
    lookup = word_id.__getitem__
    item_index, items = {}, []
    pairs = _PairCounter()
    kept = dropped = 0
    for n, row in enumerate(rows, 1):
        if held_pairs is not None:
            if (row[u], row[i]) in held_pairs:
                dropped += 1
                continue
        elif holdout:
            ts = _timestamp(row[t], review_path, n)
            if (row[u], row[i], ts) in holdout or (row[u], row[i], None) in holdout:
                dropped += 1
                continue
        item = item_index.get(row[i])
        if item is None:
            item = item_index[row[i]] = len(items)
            items.append(row[i])
        text = review_words(row[r])
        try:
            ids = list(map(lookup, text))
        except KeyError:                        # words never seen before: classify them once
            for w in text:
                if w not in word_id:
                    candidate = is_candidate(w, stop_words)
                    word_id[w] = len(words) if candidate else -1
                    if candidate:
                        words.append(w)
            ids = list(map(lookup, text))
        pairs.add(item, ids)
        kept += 1
    pairs.flush()
    counts = KeywordCounts(items, words, pairs.buckets, pairs.bucket_items)
    logger.info("read %d reviews of %d items from %s (%d evaluation-time reviews left out; %d distinct "
                "words, %d distinct item-word pairs)", kept, len(items), review_path, dropped, len(words),
                counts.n_pairs)
    return counts


def check_review_columns(path, columns, text_column="review"):
    """A review source needs ``item_id`` and its text column: else a :class:`ConfigError` naming the fix."""
    for needed in ("item_id", text_column):
        if needed not in columns:
            raise ConfigError(f"{path} has no {needed} column (columns: {', '.join(columns)}); {REVIEW_HELP}")


def _timestamp(text, path, n):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{path}, review {n}: timestamp {text!r} is not a number (seconds, as in the .inter "
                          "file); fix the row, or leave timestamps out to match reviews by user and item") from None


@dataclass(frozen=True)
class ReviewSource:
    """Where an item's review text is: ``path`` and its ``text_column``; ``per_user``: the rows name their
    user, so each user's evaluation-time reviews can be left out."""

    path: str
    text_column: str
    per_user: bool

    @property
    def kind(self):
        if self.text_column in ITEM_REVIEW_COLUMNS and self.path.endswith(".item"):
            return f"the {self.text_column!r} column of {self.path}"
        return f"{self.path} ({'a user per review' if self.per_user else 'item-level text, no user_id column'})"


def review_source(dataset, data_path):
    """The dataset's :class:`ReviewSource` (module docstring: the ``.review`` file, else a review column
    of ``.item``), or None when it has no review text."""
    root = os.path.join(data_path, dataset)
    review_path = os.path.join(root, f"{dataset}.review")
    if os.path.isfile(review_path):
        columns, _, _ = iter_atomic(review_path)
        check_review_columns(review_path, columns)
        return ReviewSource(review_path, "review", "user_id" in columns)
    item_path = os.path.join(root, f"{dataset}.item")
    if os.path.isfile(item_path):
        columns, _, _ = iter_atomic(item_path)
        for column in ITEM_REVIEW_COLUMNS:
            if column in columns:
                return ReviewSource(item_path, column, False)
    return None


def top_keywords(counts, top_k=5):
    """The ``top_k`` most frequent entries of a Counter; ties alphabetical."""
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]


def keyword_cache_key(review_path, inter_path, top_k, reviews, stop_words, text_column="review"):
    """What the keywords depend on: the bytes of the review file (and of the interaction file when
    evaluation reviews are left out), the stop words, ``top_k``, the review rule and the format (and the
    text column, when it is not a ``.review`` file's ``review``)."""
    key = {"format": KEYWORD_CACHE_FORMAT, "review_sha256": file_sha256(review_path),
           "inter_sha256": file_sha256(inter_path) if inter_path else None,
           "stop_words": sorted(stop_words), "top_k": int(top_k), "reviews": reviews}
    if text_column != "review":
        key["text_column"] = text_column
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_keyword_cache(path):
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("format") != KEYWORD_CACHE_FORMAT or not isinstance(saved.get("keywords"), dict):
            raise ValueError("not a keyword cache file of this version")
        return saved["keywords"]
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable keyword cache %s (%s); counting again", path, e)
        return None


def item_keywords(dataset, data_path, top_k=5, reviews="exclude_eval", stop_words=ENGLISH_STOP_WORDS,
                  cache_dir=None):
    """``{item: [keyword, ...]}`` for the items that have reviews ({} when the dataset has no review text;
    where it is found: :func:`review_source`).

    With ``cache_dir`` the result is kept in ``<cache_dir>/<key>.json``, ``key`` covering the file
    contents and the settings (:func:`keyword_cache_key`): another run on the same dataset (another
    run folder, seed or backbone) reads it instead of counting the reviews again."""
    if reviews not in ("exclude_eval", "all"):
        raise ConfigError(f"fve_keyword_reviews must be 'exclude_eval' or 'all', got {reviews!r}")
    root = os.path.join(data_path, dataset)
    source = review_source(dataset, data_path)
    if source is None:
        logger.warning("no review file %s and no review column (%s) in %s: every initial prompt uses "
                       "initial_prompt_no_keywords (review shapes: docs/own-data.md, 'Reviews')",
                       os.path.join(root, f"{dataset}.review"), " or ".join(ITEM_REVIEW_COLUMNS),
                       os.path.join(root, f"{dataset}.item"))
        return {}
    review_path = source.path
    if not source.per_user:
        if reviews == "exclude_eval":
            logger.warning("review keywords from %s: item-level review text cannot leave out each user's "
                           "evaluation-time reviews (it names no user), so every review is used; "
                           "fve_keyword_reviews: all says you accept that, a 4-column .review (user_id item_id "
                           "timestamp review) lets them be left out (docs/own-data.md, 'Reviews')", source.kind)
        else:
            logger.info("review keywords from %s: every review is used (fve_keyword_reviews: all)", source.kind)
        reviews = "all"
    inter_path = None
    if reviews == "exclude_eval":
        inter_path = os.path.join(root, f"{dataset}.inter")
        if not os.path.isfile(inter_path):
            raise ConfigError(f"fve_keyword_reviews: exclude_eval needs {inter_path} to find the "
                              "evaluation interactions (or set fve_keyword_reviews: all)")
    cache_path = None
    if cache_dir:
        cache_path = os.path.join(cache_dir, keyword_cache_key(review_path, inter_path, top_k, reviews,
                                                               stop_words, source.text_column) + ".json")
        if os.path.isfile(cache_path):
            keywords = _read_keyword_cache(cache_path)
            if keywords is not None:
                logger.info("review keywords of %d items read from the keyword cache %s", len(keywords),
                            cache_path)
                return keywords
    holdout = evaluation_holdout(inter_path) if inter_path else None
    keywords = review_keyword_counts(review_path, holdout, stop_words, source.text_column).top(top_k)
    if cache_path:
        write_json_atomic(cache_path, {"format": KEYWORD_CACHE_FORMAT, "review_file": os.path.abspath(review_path),
                                       "top_k": int(top_k), "reviews": reviews, "keywords": keywords}, indent=None)
    return keywords


def keyword_cache_dir(settings, fve_dir):
    """The keyword cache folder of a run: ``fve_keyword_cache_dir``, else ``<embedding cache>/keywords``
    (``fve_cache_dir``, else ``<fve_dir>/cache``), so runs sharing an embedding cache share keywords."""
    if settings.get("fve_keyword_cache_dir"):
        return settings["fve_keyword_cache_dir"]
    return os.path.join(settings.get("fve_cache_dir") or os.path.join(fve_dir, "cache"), "keywords")
