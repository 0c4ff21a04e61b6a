"""FVE in interaction scope (``fve_prompt_scope: interaction``, paper §4.3.3): one prompt, and one visual
embedding, per user-item interaction.

* **Which interaction.** An interaction is a row of ``<name>.inter``, named by a token: the column
  ``fve_interaction_field`` (default ``interaction_id``) when the file has it, else a token derived from
  the row, ``<user>:<item>:<timestamp>`` (``#2``, ``#3`` ... for repeats). The dataset hook derives the
  same tokens when it loads the file, so RecBole carries them through its sequence augmentation as
  ``<field>_list`` beside ``item_id_list``.
* **Which interactions get an embedding.** Every interaction that can be a *history* position of some
  prediction: all but each user's last (the test target of the leave-one-out split, in RecBole's order: a
  stable sort on float32 timestamps, so timestamps closer than float32 resolves keep their file order). The test interaction's review is never read; its feature row is the
  item-level embedding, which nothing reads at a history position.
* **Its keywords.** The top-``fve_keywords_topk`` keyword candidates (the same tokenisation and stop words
  as item prompts) of the reviews of that interaction: the ``.review`` rows with its user, item and
  timestamp (a review without a timestamp belongs to every interaction of its user and item).
* **Its prompt.** The item's prompt of the cycle instantiated with those keywords: while the item still has
  its initial prompt, the template's ``{keywords}`` slot is filled with the interaction's keywords (the
  paper's template verbatim); once the critic has rewritten the item's prompt, the keywords are added by
  the shared ``interaction_clause`` template (``templates.yaml``). An interaction without keywords reads
  the item's prompt as it is. Only the item part is refined (docs/differences.md, "FVE").

Light: no torch, no RecBole.
"""

import json
import logging
import os
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass

from recbole_reveal.data.atomic import iter_atomic, iter_interactions
from recbole_reveal.data.interaction_tokens import derive_tokens, format_timestamp
from recbole_reveal.fve.prompts.keywords import ENGLISH_STOP_WORDS, tokenize_review, top_keywords
from recbole_reveal.fve.prompts.templates import item_fields, render, template_fields
from recbole_reveal.infra.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_FIELD = "interaction_id"
DEFAULT_CLAUSE = "Users often mention: {keywords}."


def feature_set(x):
    """The interaction-level feature set of cycle ``x``."""
    return f"fve/interactions_cycle_{x}"


@dataclass(frozen=True)
class Interaction:
    token: str
    user: str
    item: str
    timestamp: float      # None when the file has no timestamp
    role: str             # "test": the user's last; "valid": the one before (history of the test prediction
                          # only); "train": every earlier one

    @property
    def history(self):
        """Whether the interaction is a history position of some prediction (all but the user's last)."""
        return self.role != "test"


def read_interactions(inter_path, field=DEFAULT_FIELD):
    """The interactions of ``inter_path`` in file order (see the module docstring for tokens and
    ``history``). A ``field`` column, when present, must hold unique non-empty tokens."""
    if not os.path.isfile(inter_path):
        raise FileNotFoundError(f"interaction file not found: {inter_path}")
    has_field = field in iter_atomic(inter_path)[0]
    users, items, stamps, given = [], [], [], []
    for user, item, ts, token in iter_interactions(inter_path, extra=field):
        users.append(user)
        items.append(item)
        stamps.append(ts)
        if has_field:
            given.append(token.strip())
    if not has_field:
        tokens = derive_tokens(users, items, stamps)
    else:
        tokens = given
        empty = [n + 2 for n, tok in enumerate(tokens) if not tok]
        if empty:
            raise ValueError(f"{inter_path}: column {field} is empty on lines {empty[:5]}")
        dupes = sorted({tok for tok, c in Counter(tokens).items() if c > 1})
        if dupes:
            raise ValueError(f"{inter_path}: column {field} must name each interaction once; repeated: {dupes[:5]}")
    order = {}
    for n, (user, ts) in enumerate(zip(users, stamps)):
        # RecBole orders a user's interactions by a stable sort on its float32 timestamps: the same here
        order.setdefault(user, []).append((_float32(ts if ts is not None else 0.0), n))
    role = {}
    for events in order.values():
        events.sort()
        role[events[-1][1]] = "test"
        if len(events) > 1:
            role[events[-2][1]] = "valid"
    return [Interaction(tok, user, item, ts, role.get(n, "train"))
            for n, (tok, user, item, ts) in enumerate(zip(tokens, users, items, stamps))]


def _float32(value):
    return struct.unpack("f", struct.pack("f", value))[0]


def interaction_keywords(review_path, interactions, top_k=5, stop_words=ENGLISH_STOP_WORDS):
    """``{token: [keyword, ...]}`` of the history interactions that have reviews (the file is streamed; a
    test interaction's review is skipped unread). Returns ``(keywords, counts)`` with counts of reviews
    used / skipped (test) / unmatched."""
    by_key, by_pair = {}, defaultdict(list)
    for it in interactions:
        by_key[(it.user, it.item, format_timestamp(it.timestamp))] = it
        by_pair[(it.user, it.item)].append(it)
    counts = defaultdict(Counter)
    stats = Counter()
    if not os.path.isfile(review_path):
        logger.warning("no review file %s: every interaction prompt is its item's prompt", review_path)
        return {}, dict(stats)
    columns, _, rows = iter_atomic(review_path)
    for needed in ("item_id", "review"):
        if needed not in columns:
            raise ConfigError(f"{review_path} has no {needed} column (columns: {', '.join(columns)}); interaction "
                              "scope reads 'user_id:token item_id:token timestamp:float review:token' rows "
                              "(docs/own-data.md 'Reviews')")
    if "user_id" not in columns:            # item-level text: nothing to personalise with
        logger.warning("%s names no user (item-level reviews): in interaction scope every interaction prompt is "
                       "its item's prompt (set fve_prompt_scope: item to skip encoding interactions)", review_path)
        return {}, dict(stats)
    u, i, r = columns.index("user_id"), columns.index("item_id"), columns.index("review")
    t = columns.index("timestamp") if "timestamp" in columns else None
    for row in rows:
        ts = format_timestamp(row[t]) if t is not None else ""
        if ts:
            match = by_key.get((row[u], row[i], ts))
            targets = [match] if match is not None else []
        else:                               # no timestamp: every interaction of the pair
            targets = by_pair.get((row[u], row[i]), [])
        if not targets:
            stats["unmatched"] += 1
            continue
        history = [it for it in targets if it.history]
        if not history:
            stats["test_skipped"] += 1      # the text is never tokenised
            continue
        words = tokenize_review(row[r], stop_words)
        for it in history:
            counts[it.token].update(words)
        stats["used"] += 1
    keywords = {token: top_keywords(c, top_k) for token, c in counts.items()}
    return {k: v for k, v in keywords.items() if v}, dict(stats)


def write_keywords(path, keywords):
    """``{token: [keyword, ...]}`` as JSON lines (sorted by token), written atomically."""
    from recbole_reveal.fve.prompts.records import write_jsonl

    write_jsonl(path, [{"interaction": token, "keywords": keywords[token]} for token in sorted(keywords)])


def read_keywords(path):
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["interaction"]: row["keywords"] for row in rows}


def interaction_clause(templates):
    """The ``interaction_clause`` template (a ``{keywords}`` placeholder, nothing else), default
    :data:`DEFAULT_CLAUSE` when the templates file has none."""
    clause = templates.get("interaction_clause", DEFAULT_CLAUSE)
    if not isinstance(clause, str) or template_fields(clause) != {"keywords"}:
        raise ConfigError(f"{templates.get('_path')}: interaction_clause must be a string with the one placeholder "
                          f"{{keywords}}; got {clause!r}")
    return clause


def instantiate(item, item_prompt, initial_prompt, keywords, templates):
    """The prompt of one interaction of ``item`` whose reviews give ``keywords``, under the item's current
    prompt ``item_prompt`` (``initial_prompt``: the item's cycle-0 prompt)."""
    if not keywords:
        return item_prompt
    if item_prompt == initial_prompt:
        fields = item_fields(item, keywords, templates)
        return " ".join(render(templates, "initial_prompt", **fields).split())
    clause = interaction_clause(templates).format(keywords=", ".join(keywords))
    return " ".join(f"{item_prompt} {clause}".split())


def interaction_prompts(interactions, keywords, items, records, initial_records, templates):
    """``{token: prompt}`` for the history interactions, under the item prompts ``records`` (this cycle)
    and ``initial_records`` (cycle 0)."""
    meta = {it.item_id: it for it in items}
    now = {r["item_id"]: r["prompt"] for r in records}
    first = {r["item_id"]: r["prompt"] for r in initial_records}
    unknown = sorted({it.item for it in interactions if it.item not in meta})
    if unknown:
        raise ValueError(f"{len(unknown)} items of the interaction file are not in the .item file (e.g. {unknown[:5]})")
    return {it.token: instantiate(meta[it.item], now[it.item], first[it.item], keywords.get(it.token, []), templates)
            for it in interactions if it.history}

