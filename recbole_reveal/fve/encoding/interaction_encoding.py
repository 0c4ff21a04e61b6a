"""One cycle's encoding in interaction scope: the item-level features (candidates and targets) and the
interaction-level features (history positions).

Items, the interactions that training and validation read (``train``: every interaction before a user's
last two) and the validation targets (``valid``: history of the test prediction only) are encoded in
separate calls, so no embedding depends on the prompts that share its batches (batch composition moves a
float by ~1e-7): the item set is the one item scope computes, and no review of a validation target reaches,
even through padding, a feature that training or validation reads. The calls alternate over chunks of
``CHUNK_ITEMS`` items (their item requests, then their interactions'), so the vision-tower outputs of a
chunk are still in the in-memory vision cache when its interactions need them: the vision tower runs once
per image (``fve_vision_cache_mb`` must hold a chunk: 256 images are ~460 MB at the 7B shape and 448x448).
With several processes (``fve_num_processes``) the calls are the parts of one launch: each worker encodes
its shard of every part as a call of its own; an item's interactions are spread over the workers, each
computing that image's vision output once.

Rows: the item set ``fve/cycle_<x>`` has one row per item (the item's prompt, as in item scope); the
interaction set ``fve/interactions_cycle_<x>`` has one row per interaction of the ``.inter`` file: history
interactions get their own embedding, each user's last interaction (never a history position) the item's.
"""

import numpy as np

from recbole_reveal.fve.encoding.encoder import EncodeResult, ItemRequest, item_requests
from recbole_reveal.fve.prompts.interactions import interaction_prompts

CHUNK_ITEMS = 256


def cycle_requests(ctx, records, initial_records, keywords):
    """``(item requests, {item token: [interaction requests]}, prompts)`` for one cycle, ``prompts`` =
    ``{token: prompt}`` of the history interactions."""
    items = item_requests(ctx.items, records, ctx.dataset_dir)
    prompts = interaction_prompts(ctx.interactions, keywords, ctx.items, records, initial_records, ctx.templates)
    image = {req.token: req.image_path for req in items}
    of_item = {}
    for it in ctx.interactions:
        if it.history:
            of_item.setdefault(it.item, {}).setdefault(it.role, []).append(
                ItemRequest(it.token, image[it.item], prompts[it.token]))
    return items, of_item, prompts


def plan(items, of_item, chunk=CHUNK_ITEMS):
    """The encoder calls of a cycle, in order: ``[(kind, requests)]`` with ``kind`` ``items`` / ``train`` /
    ``valid``, chunk by chunk (a chunk's items, then their train interactions, then their validation
    interactions)."""
    calls = []
    for lo in range(0, len(items), chunk):
        part = items[lo:lo + chunk]
        calls.append(("items", part))
        for role in ("train", "valid"):
            inter = [req for item in part for req in of_item.get(item.token, {}).get(role, [])]
            if inter:
                calls.append((role, inter))
    return calls


def encode_cycle(encode, items, of_item, chunk=CHUNK_ITEMS):
    """``(item result, history-interaction result, description)``: ``encode(requests)`` (an EncodeResult
    and the encoder's description) called once per call of :func:`plan`."""
    item_parts, inter_parts, description = [], [], None
    for kind, requests in plan(items, of_item, chunk):
        result, description = encode(requests)
        (item_parts if kind == "items" else inter_parts).append(result)
    return merge(item_parts), merge(inter_parts), description


def encode_cycle_parallel(encode_parts, items, of_item, chunk=CHUNK_ITEMS):
    """As :func:`encode_cycle` with one data-parallel launch: ``encode_parts(requests, parts)`` encodes the
    concatenated calls, each worker running every part of its shard as a call of its own."""
    calls = plan(items, of_item, chunk)
    result, description = encode_parts([r for _, reqs in calls for r in reqs], [len(reqs) for _, reqs in calls])
    item_parts, inter_parts, lo = [], [], 0
    for kind, requests in calls:
        (item_parts if kind == "items" else inter_parts).append(_slice(result, lo, lo + len(requests)))
        lo += len(requests)
    item_result, inter_result = merge(item_parts), merge(inter_parts)
    item_result.vision, item_result.work = result.vision, result.work     # the launch's counters, once
    inter_result.vision, inter_result.work = {}, {}
    return item_result, inter_result, description


def _slice(result, lo, hi):
    tokens = result.tokens[lo:hi]
    names = set(tokens)
    return EncodeResult(tokens=tokens, matrix=result.matrix[lo:hi],
                        encoded=[t for t in result.encoded if t in names],
                        cached=[t for t in result.cached if t in names],
                        missing={t: why for t, why in result.missing.items() if t in names})


def merge(results):
    """One EncodeResult from several (rows concatenated, counters summed)."""
    if not results:
        return EncodeResult(tokens=[], matrix=np.zeros((0, 0), dtype=np.float32))
    out = EncodeResult(tokens=[t for r in results for t in r.tokens],
                       matrix=np.concatenate([r.matrix for r in results]),
                       encoded=[t for r in results for t in r.encoded], cached=[t for r in results for t in r.cached],
                       missing={t: why for r in results for t, why in r.missing.items()},
                       seconds=sum(r.seconds for r in results))
    for attr in ("vision", "work"):
        keys = {k for r in results for k in (getattr(r, attr) or {})}
        setattr(out, attr, {k: _sum(getattr(r, attr).get(k) for r in results) for k in sorted(keys)})
    return out


def _sum(values):
    values = [v for v in values if v is not None]
    return round(sum(values), 6) if values and any(isinstance(v, float) for v in values) else sum(values)


def interaction_rows(history, item_result, ctx):
    """The interaction set: rows in ``.inter`` order; a history interaction's own embedding, a user's last
    interaction its item's row."""
    own = dict(zip(history.tokens, history.matrix))
    item_row = dict(zip(item_result.tokens, item_result.matrix))
    tokens = [it.token for it in ctx.interactions]
    matrix = np.stack([own[it.token] if it.history else item_row[it.item] for it in ctx.interactions]) \
        if tokens else np.zeros((0, item_result.matrix.shape[1]), dtype=np.float32)
    return EncodeResult(tokens=tokens, matrix=matrix, encoded=history.encoded, cached=history.cached,
                        missing=history.missing, seconds=history.seconds, vision=history.vision, work=history.work)


def prompt_changes(previous, current):
    """Interactions whose prompt differs from the previous cycle's."""
    return sum(1 for t, p in current.items() if previous.get(t) != p)
