"""FVE's recommendation feedback (paper §4.3.2): rankings vs ground truth -> per-item statistics ->
the items whose prompts are rewritten, each labelled ``pos`` or ``neg``.

Two layers:

* :func:`compute_rankings` runs a trained RecBole model over a full-sort evaluation loader exactly as
  RecBole's ``Trainer._full_sort_batch_eval`` scores it (``full_sort_predict`` in eval mode, the
  padding item 0 and -- where RecBole masks it, i.e. for non-sequential models -- the user's history
  set to -inf) and returns a :class:`Rankings`: per evaluation row the user, the ground-truth item,
  its rank among all items, and the top-N items.
* pure functions over those arrays: :func:`item_statistics`, :func:`priority_scores`,
  :func:`select_items`, :func:`feedback_examples`.

Ranking order: score descending, ties broken by the lower internal item id (a stable sort), so a
ranking is a deterministic function of the scores. Ranks are 1-based.

Statistics per item (``k1, k2 = fve_feedback_k`` (10, 20), ``E = fve_exposure_k`` (50)):

========================  ===================================================================
``target_count``          evaluation rows whose ground truth is the item
``target_hits``           ... of which the item is ranked within the top ``k2``
``mean_rank``             mean rank of the item over those rows (NaN when never a target)
``top_k1_rate``           share of those rows with rank <= k1 (the reference's "top-10 rate")
``top_k2_rate``           share with rank <= k2 ("top-20 rate")
``wrong``                 rows in whose top ``k2`` the item appears although it is not the target
``wrong_top_k1``          share of the wrong hits at rank <= k1 ("wrong_top10")
``danger``                share of the wrong hits in which the item outranks that row's target,
                          i.e. pushes the true item down (not defined by the reference notes)
``exposure``              rows in whose top ``E`` the item appears
========================  ===================================================================

Priority (the reference code's rule)::

    pos = log(1 + target_count) * (mean_rank / max_rank + 0.5 (1 - top_k1_rate) + 0.5 (1 - top_k2_rate))
    neg = log(1 + wrong) * (0.5 danger + 0.5 wrong_top_k1)
    priority = log(1 + exposure) * (pos / max_pos + neg / max_neg)

``max_*`` are maxima over all items (a zero maximum makes its term 0). The reference notes call the
first factor of ``pos`` "hits"; here it is the number of times the item is the target (its "hits"
as ground truth), because with top-k hits an item that is never found -- the most under-ranked --
would get ``pos = 0``. Selection: the ``ceil(fve_rewrite_fraction * n_items)`` items of highest
priority among those with priority > 0, ties by lower internal id. Label: ``pos`` (under-ranked when
it is the target) when ``pos / max_pos >= neg / max_neg``, else ``neg`` (over-ranked when it is not).
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from recbole_reveal.fve.config import fve_settings
from recbole_reveal.infra.files import atomic_open

logger = logging.getLogger(__name__)

# keys of properties/fve/fve.yaml (their defaults are there)
FEEDBACK_KEYS = ("fve_feedback_k", "fve_exposure_k", "fve_rewrite_fraction")
STAT_FIELDS = ("target_count", "target_hits", "mean_rank", "top_k1_rate", "top_k2_rate", "wrong",
               "wrong_top_k1", "danger", "exposure", "pos", "neg", "priority")


def feedback_settings(config=None):
    """``fve_feedback_k``, ``fve_exposure_k``, ``fve_rewrite_fraction`` from ``config`` (a dict or a
    RecBole ``Config``; missing keys take their defaults in ``fve.yaml``), checked by the one pass."""
    return fve_settings(config, FEEDBACK_KEYS)


@dataclass
class Rankings:
    """Full-ranking results of the evaluation rows (internal RecBole ids; item 0 is padding)."""

    users: np.ndarray        # [n] int64 user id of each evaluation row
    targets: np.ndarray      # [n] int64 ground-truth item
    target_rank: np.ndarray  # [n] int64 1-based rank of the target among all items
    top: np.ndarray          # [n, N] int64 the N best items, best first (0 where fewer are rankable)
    n_items: int             # number of item ids including the padding id 0
    _examples: object = field(default=None, init=False, repr=False, compare=False)   # ExampleIndex, built on use

    def __post_init__(self):
        n = len(self.targets)
        if self.top.ndim != 2 or len(self.top) != n or len(self.users) != n or len(self.target_rank) != n:
            raise ValueError("Rankings: users, targets, target_rank and top must have one row per evaluation row")

    def recall(self, k):
        """Recall@k of the rows (one ground-truth item each), as RecBole computes it."""
        return float(np.mean(self.target_rank <= k)) if len(self.targets) else 0.0

    def ndcg(self, k):
        r = self.target_rank
        return float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0))) if len(r) else 0.0

    def save(self, path, item_tokens):
        """Write the arrays and the internal id -> item token map to ``path`` (.npz) atomically."""
        with atomic_open(path, "wb") as f:
            np.savez(f, users=self.users, targets=self.targets, target_rank=self.target_rank, top=self.top,
                     n_items=self.n_items, item_tokens=np.array([str(t) for t in item_tokens]))
        return path

    @classmethod
    def load(cls, path):
        """``(Rankings, item_tokens)`` from a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            rankings = cls(users=z["users"], targets=z["targets"], target_rank=z["target_rank"], top=z["top"],
                           n_items=int(z["n_items"]))
            return rankings, [str(t) for t in z["item_tokens"]]


@torch.no_grad()
def compute_rankings(model, eval_data, top_n=50):
    """Rank every item for every row of the full-sort loader ``eval_data`` with ``model``.

    Scores follow RecBole's ``_full_sort_batch_eval``; each row must have exactly one ground-truth
    item (leave-one-out sequential evaluation). The model's train/eval mode is restored afterwards.
    """
    dataset = eval_data._dataset
    n_items = int(dataset.item_num)
    top_n = int(min(top_n, n_items - 1))
    device = next(model.parameters()).device
    uid_field = dataset.uid_field
    was_training = model.training
    model.eval()
    users, targets, ranks, tops = [], [], [], []
    try:
        for interaction, history_index, positive_u, positive_i in eval_data:
            scores = model.full_sort_predict(interaction.to(device)).view(-1, n_items).float()
            scores[:, 0] = -np.inf
            if history_index is not None:
                scores[history_index] = -np.inf
            if torch.isnan(scores).any():
                raise ValueError(f"{type(model).__name__}.full_sort_predict returned NaN scores")
            rows = scores.shape[0]
            counts = torch.bincount(positive_u.long(), minlength=rows)
            if len(positive_u) != rows or not bool((counts == 1).all()):
                raise ValueError("FVE feedback needs exactly one ground-truth item per evaluation row "
                                 "(leave-one-out sequential evaluation); this loader has "
                                 f"{len(positive_u)} positives for {rows} rows")
            order = torch.argsort(positive_u.long())
            target = positive_i.long()[order].to(device)
            t_score = scores.gather(1, target[:, None])
            ids = torch.arange(n_items, device=device)[None, :]
            rank = 1 + (scores > t_score).sum(1) + ((scores == t_score) & (ids < target[:, None])).sum(1)
            top_scores, top = torch.sort(scores, dim=1, descending=True, stable=True)
            top = top[:, :top_n].masked_fill(torch.isinf(top_scores[:, :top_n]), 0)   # masked: no item
            users.append(interaction[uid_field].cpu().long())
            targets.append(target.cpu())
            ranks.append(rank.cpu())
            tops.append(top.cpu())
    finally:
        model.train(was_training)
    if not targets:
        raise ValueError("the evaluation loader is empty: no rankings to analyse")
    cat = lambda xs: torch.cat(xs).numpy().astype(np.int64)  # noqa: E731
    return Rankings(users=cat(users), targets=cat(targets), target_rank=cat(ranks), top=cat(tops), n_items=n_items)


def item_statistics(rankings, feedback_k=(10, 20), exposure_k=50):
    """Per-item statistics (module docstring) as a dict of ``[n_items]`` arrays, plus ``pos``,
    ``neg`` and ``priority``."""
    k1, k2 = int(feedback_k[0]), int(feedback_k[1])
    if not 1 <= k1 <= k2 <= exposure_k:
        raise ValueError(f"need 1 <= k1 <= k2 <= exposure_k, got {k1}, {k2}, {exposure_k}")
    if rankings.top.shape[1] < min(exposure_k, rankings.n_items - 1):
        raise ValueError(f"rankings hold the top {rankings.top.shape[1]} items; the statistics need the top "
                         f"{exposure_k} (compute_rankings(..., top_n={exposure_k}))")
    n = rankings.n_items
    t, r, top = rankings.targets, rankings.target_rank, rankings.top
    count = np.bincount(t, minlength=n).astype(np.float64)
    hits = np.bincount(t, weights=r <= k2, minlength=n)
    rank_sum = np.bincount(t, weights=r.astype(np.float64), minlength=n)
    in_k1 = np.bincount(t, weights=r <= k1, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_rank = np.where(count > 0, rank_sum / np.maximum(count, 1), np.nan)
        top1_rate = np.where(count > 0, in_k1 / np.maximum(count, 1), 0.0)
        top2_rate = np.where(count > 0, hits / np.maximum(count, 1), 0.0)

    head = top[:, :k2]
    positions = np.broadcast_to(np.arange(1, head.shape[1] + 1), head.shape)
    wrong_mask = head != t[:, None]
    wrong_items = head[wrong_mask]
    wrong = np.bincount(wrong_items, minlength=n).astype(np.float64)
    wrong_in_k1 = np.bincount(wrong_items, weights=positions[wrong_mask] <= k1, minlength=n)
    outranks = positions < r[:, None]            # a listed item above the target's rank
    wrong_danger = np.bincount(wrong_items, weights=outranks[wrong_mask], minlength=n)
    exposure = np.bincount(top[:, :exposure_k].ravel(), minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        wrong_top = np.where(wrong > 0, wrong_in_k1 / np.maximum(wrong, 1), 0.0)
        danger = np.where(wrong > 0, wrong_danger / np.maximum(wrong, 1), 0.0)

    stats = {"target_count": count, "target_hits": hits, "mean_rank": mean_rank, "top_k1_rate": top1_rate,
             "top_k2_rate": top2_rate, "wrong": wrong, "wrong_top_k1": wrong_top, "danger": danger,
             "exposure": exposure}
    stats.update(priority_scores(stats))
    for key in stats:                            # the padding id 0 is never an item
        stats[key][0] = np.nan if key == "mean_rank" else 0.0
    return stats


def _normalise(x):
    m = float(np.max(x)) if len(x) else 0.0
    return x / m if m > 0 else np.zeros_like(x)


def priority_scores(stats):
    """``pos``, ``neg`` and ``priority`` arrays from the statistics (the reference rule)."""
    mean_rank = np.nan_to_num(stats["mean_rank"], nan=0.0)
    rank_term = _normalise(mean_rank)
    pos = np.log1p(stats["target_count"]) * (rank_term + 0.5 * (1 - stats["top_k1_rate"])
                                             + 0.5 * (1 - stats["top_k2_rate"]))
    pos = np.where(stats["target_count"] > 0, pos, 0.0)
    neg = np.log1p(stats["wrong"]) * (0.5 * stats["danger"] + 0.5 * stats["wrong_top_k1"])
    priority = np.log1p(stats["exposure"]) * (_normalise(pos) + _normalise(neg))
    return {"pos": pos, "neg": neg, "priority": priority}


def select_items(stats, fraction=0.25):
    """``[(item_id, label)]`` of the items to rewrite, highest priority first (ties: lower id).

    ``ceil(fraction * (n_items - 1))`` items at most, only among items with priority > 0; the label is
    ``pos`` when the item's normalised pos term is at least its normalised neg term, else ``neg``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fve_rewrite_fraction must be in (0, 1], got {fraction}")
    priority = np.asarray(stats["priority"], dtype=np.float64)
    n_real = len(priority) - 1
    budget = math.ceil(fraction * n_real - 1e-9)
    ids = np.arange(1, len(priority))
    eligible = ids[priority[1:] > 0]
    order = eligible[np.lexsort((eligible, -priority[eligible]))][:budget]
    pos_n, neg_n = _normalise(stats["pos"]), _normalise(stats["neg"])
    chosen = [(int(i), "pos" if pos_n[i] >= neg_n[i] else "neg") for i in order]
    n_pos = sum(label == "pos" for _, label in chosen)
    logger.info("FVE feedback: %d of %d items selected for rewriting (fraction %.3g; %d with priority > 0): "
                "%d pos, %d neg", len(chosen), n_real, fraction, len(eligible), n_pos, len(chosen) - n_pos)
    return chosen


def feedback_examples(rankings, item, label, limit=3):
    """Item ids that illustrate the item's error, most frequent first (ties: lower id).

    ``pos``: the rank-1 items of the rows where ``item`` was the target but not ranked first (what
    was recommended instead). ``neg``: the targets of the rows in whose top list ``item`` appeared
    above the target (what those users actually chose).

    The first call builds :class:`ExampleIndex` for every item in one pass over the rankings and keeps
    it on ``rankings``; later calls are lookups (a ``Rankings`` is not modified after it is built).
    """
    if label not in ("pos", "neg"):
        raise ValueError(f"label must be 'pos' or 'neg', got {label!r}")
    if rankings._examples is None:
        rankings._examples = ExampleIndex(rankings)
    return rankings._examples.examples(item, label, limit)


class _Grouped:
    """Distinct (owner, candidate) pairs with their counts, sorted by owner, then count descending,
    then candidate: an owner's examples are a slice of ``candidates``."""

    def __init__(self, codes, counts, n_items):
        # ``codes`` (owner * n_items + candidate) are sorted: a stable sort by (owner, -count) keeps
        # candidates ascending among equal counts
        top = int(counts.max()) + 1 if len(counts) else 1
        key = codes // n_items
        key *= top
        key += top - 1 - counts
        order = np.argsort(key, kind="stable")
        del key
        codes = codes[order]
        del order
        self.offsets = np.searchsorted(codes // n_items, np.arange(n_items + 1))
        self.candidates = (codes % n_items).astype(np.int32)

    def get(self, item, limit):
        lo = self.offsets[item]
        return [int(v) for v in self.candidates[lo:min(lo + max(limit, 0), self.offsets[item + 1])]]


def _count_pairs(chunks):
    """Distinct int64 codes (sorted) and their counts over an iterable of code arrays."""
    codes = np.concatenate([np.zeros(0, np.int64), *chunks])
    codes.sort()
    first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[first, len(codes)])
    return codes[first], counts


class ExampleIndex:
    """:func:`feedback_examples` of every item, from one pass over the rankings in blocks of rows.

    A row contributes to ``neg`` each listed item (its first place in the row) ranked above the row's
    target and not the target itself, paired with that target; to ``pos``, its target paired with its
    rank-1 item when the target was not first. Memory: the distinct pairs, at most the listed places
    above the targets.
    """

    def __init__(self, rankings, block_rows=1 << 13):
        n = int(rankings.n_items)
        top, targets, ranks = rankings.top, rankings.targets.astype(np.int64), rankings.target_rank
        missed = ranks > 1
        self._pos = _Grouped(*_count_pairs([targets[missed] * n + top[missed, 0]]), n) if top.shape[1] else None

        def neg_codes():
            places = np.arange(1, top.shape[1] + 1)
            for lo in range(0, len(targets), block_rows):
                block = top[lo:lo + block_rows].astype(np.int64)
                target, rank = targets[lo:lo + block_rows, None], ranks[lo:lo + block_rows, None]
                order = np.argsort(block, axis=1, kind="stable")      # first place of each value in its row
                ordered = np.take_along_axis(block, order, axis=1)
                repeat = np.zeros_like(block, dtype=bool)
                np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
                keep = ~repeat & (block != target) & (places[None, :] < rank)
                yield block[keep] * n + np.broadcast_to(target, block.shape)[keep]

        self._neg = _Grouped(*_count_pairs(neg_codes()), n)
        self.n_items = n

    def examples(self, item, label, limit=3):
        if not 0 <= int(item) < self.n_items:
            return []
        grouped = self._pos if label == "pos" else self._neg
        return grouped.get(int(item), limit) if grouped is not None else []


def item_record(stats, item):
    """The statistics of one item as a JSON-ready dict (NaN as None)."""
    out = {}
    for key in STAT_FIELDS:
        v = float(stats[key][item])
        out[key] = None if math.isnan(v) else (int(v) if key in ("target_count", "target_hits", "wrong",
                                                                   "exposure") else round(v, 6))
    return out
