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

Rows: the item set ``fve/cycle_<x>`` has one row per item (the item's prompt, as in item scope); the
interaction set ``fve/interactions_cycle_<x>`` has one row per interaction of the ``.inter`` file: history
interactions get their own embedding, each user's last interaction (never a history position) the item's.
"""

import numpy as np

from recbole_reveal.fve.encoder import EncodeResult, ItemRequest, item_requests
from recbole_reveal.fve.interactions import interaction_prompts

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


def encode_cycle(encode, items, of_item, chunk=CHUNK_ITEMS):
    """``(item result, history-interaction result, description)``: ``encode(requests, kind)`` (returning an
    EncodeResult and the encoder's description; ``kind`` = ``items`` / ``interactions``) called on the item
    requests and then the interaction requests of each chunk of ``chunk`` items."""
    item_parts, inter_parts, description = [], [], None
    for lo in range(0, len(items), chunk):
        part = items[lo:lo + chunk]
        result, description = encode(part, "items")
        item_parts.append(result)
        for role in ("train", "valid"):
            inter = [req for item in part for req in of_item.get(item.token, {}).get(role, [])]
            if inter:
                inter_parts.append(encode(inter, "interactions")[0])
    return merge(item_parts), merge(inter_parts), description


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
