"""FVE's critic and prompt rewrite (paper eqs. 3-4), run in one generation per item as the reference
code does: the VLM sees the item image and ``rewrite_instruction`` (templates.yaml) filled with the
evaluation instruction, the current prompt, the item's review keywords, a ground-truth-vs-result
summary and the ``pos``/``neg`` goal, and answers::

    ANALYSIS: <text>
    NEW_PROMPT: <text>

Parsing is strict (:func:`parse_rewrite`); any violation keeps the old prompt and records the reason:

* generation must reach an end-of-turn token within ``max_new_tokens`` (the answer is the text
  before it), and the answer must contain no chat special tokens;
* after stripping, it must start with ``ANALYSIS:``; ``ANALYSIS:`` and ``NEW_PROMPT:`` each occur
  exactly once, in that order, at the start of a line; the analysis may span lines, is non-empty;
* the new prompt is the rest of the ``NEW_PROMPT:`` line: non-empty, nothing after that line, at
  most ``max_words`` words (templates' ``rewrite_max_words``, 40) after whitespace normalisation;
  one pair of enclosing quotes is removed.

Decoding is greedy (``do_sample=False``) under a fixed torch seed, batched with left padding. Items
whose image is unusable get no critic (their embedding is the missing-image row whatever the
prompt) and keep their prompt, with the reason recorded.
"""

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass

import torch

from recbole_reveal.errors import ConfigError
from recbole_reveal.fve.images import decode_image
from recbole_reveal.fve.prompts import render, write_jsonl
from recbole_reveal.fve.vlm import QWEN_SPECIAL_TOKENS
from recbole_reveal.locations import fve_defaults

logger = logging.getLogger(__name__)

# keys of properties/fve/fve.yaml (their defaults are there)
CRITIC_KEYS = ("fve_rewrite_max_new_tokens", "fve_rewrite_batch_size", "fve_rewrite_seed")
_ANALYSIS, _NEW = "ANALYSIS:", "NEW_PROMPT:"
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "`": "`"}


class RewriteParseError(ValueError):
    """The critic's answer violates the format; ``reason`` is a short, countable label."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def critic_settings(config=None):
    """``fve_rewrite_max_new_tokens``, ``fve_rewrite_batch_size``, ``fve_rewrite_seed`` from
    ``config`` (dict or RecBole ``Config``; missing keys take their defaults in ``fve.yaml``), validated."""
    config = config if config is not None else {}
    keys = getattr(config, "final_config_dict", config)
    defaults = fve_defaults(CRITIC_KEYS)
    s = {k: (config[k] if k in keys and config[k] is not None else v) for k, v in defaults.items()}
    for key, low in (("fve_rewrite_max_new_tokens", 1), ("fve_rewrite_batch_size", 1), ("fve_rewrite_seed", 0)):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < low:
            raise ConfigError(f"{key} must be an integer >= {low}; got {s[key]!r}")
    return s


def normalise_space(text):
    return " ".join(text.split())


def parse_rewrite(answer, max_words=40, reserved=QWEN_SPECIAL_TOKENS):
    """``(analysis, new_prompt)`` from a critic answer, or :class:`RewriteParseError`."""
    bad = [t for t in reserved if t in answer]
    if bad:
        raise RewriteParseError("special tokens", ", ".join(bad))
    text = answer.strip()
    if not text:
        raise RewriteParseError("empty answer")
    for marker in (_ANALYSIS, _NEW):
        if marker not in text:
            raise RewriteParseError(f"missing {marker[:-1]}")
        if text.count(marker) > 1:
            raise RewriteParseError(f"repeated {marker[:-1]}")
    if not text.startswith(_ANALYSIS):
        raise RewriteParseError("text before ANALYSIS", text[:60])
    head, _, tail = text.partition(_NEW)
    if not head.rstrip(" \t").endswith("\n"):
        raise RewriteParseError("NEW_PROMPT not on its own line")
    analysis = normalise_space(head[len(_ANALYSIS):])
    if not analysis:
        raise RewriteParseError("empty analysis")
    line, newline, rest = tail.partition("\n")
    if newline and rest.strip():
        raise RewriteParseError("extra text after NEW_PROMPT", rest.strip()[:60])
    prompt = normalise_space(line)
    if len(prompt) >= 2 and prompt[0] in _QUOTES and prompt[-1] == _QUOTES[prompt[0]]:
        prompt = normalise_space(prompt[1:-1])
    if not prompt:
        raise RewriteParseError("empty new prompt")
    words = len(prompt.split())
    if words > max_words:
        raise RewriteParseError("too long", f"{words} words > {max_words}")
    return analysis, prompt


@dataclass
class CriticRequest:
    """One item to critique: its image, current prompt, label and the texts shown to the VLM."""

    item_id: str
    image_path: str
    prompt: str
    label: str                  # "pos" | "neg"
    feedback: str               # ground truth vs recommendation result, one paragraph
    title: str = ""
    category: str = ""
    brand: str = ""
    review_summary: str = ""


@dataclass
class CriticRecord:
    """What happened to one item (one JSON line of the critic log)."""

    item_id: str
    label: str
    old_prompt: str
    new_prompt: str
    analysis: str
    raw_answer: str
    fallback: str = None        # None: the rewrite was accepted; else the reason the old prompt was kept
    changed: bool = False


def critic_text(templates, request, max_words=None):
    """The instruction shown to the VLM for ``request`` (templates' ``rewrite_instruction``)."""
    if request.label not in ("pos", "neg"):
        raise ValueError(f"{request.item_id}: label must be 'pos' or 'neg', got {request.label!r}")
    empty = templates["empty_field"]
    return render(templates, "rewrite_instruction",
                  evaluation_instruction=templates["evaluation_instruction"], prompt=request.prompt,
                  title=request.title or empty.get("title", ""),
                  category=request.category or empty.get("category", ""),
                  brand=request.brand or empty.get("brand", ""),
                  review_summary=request.review_summary or "no reviews", feedback=request.feedback,
                  goal=templates["rewrite_goals"][request.label],
                  max_words=max_words or templates["rewrite_max_words"])


def review_summary(keywords):
    """The ``{review_summary}`` text from an item's review keywords."""
    return f"frequent review words: {', '.join(keywords)}" if keywords else "no reviews"


def feedback_summary(label, stat, examples, names, feedback_k=(10, 20)):
    """One paragraph comparing the ground truth with the recommendation result for an item.

    ``stat`` is :func:`~recbole_reveal.fve.feedback.item_record` output, ``examples`` the ids from
    :func:`~recbole_reveal.fve.feedback.feedback_examples`, ``names`` maps an id to a display name.
    """
    k1, k2 = feedback_k
    shown = "; ".join(names(i) for i in examples)
    if label == "pos":
        text = (f"This item was the next purchase of {stat['target_count']} evaluation users; its mean rank "
                f"was {stat['mean_rank']:.1f}, in the top {k1} for {100 * stat['top_k1_rate']:.0f}% and in the "
                f"top {k2} for {100 * stat['top_k2_rate']:.0f}% of them.")
        return text + (f" Ranked first for those users instead: {shown}." if shown else "")
    text = (f"This item appeared in the top {k2} of {stat['wrong']} evaluation users who did not choose it "
            f"({100 * stat['wrong_top_k1']:.0f}% of these in the top {k1}; above the item they chose for "
            f"{100 * stat['danger']:.0f}%).")
    return text + (f" Those users actually chose: {shown}." if shown else "")


def build_requests(selection, stats, rankings, item_tokens, items, prompt_records, dataset_dir,
                   feedback_k=(10, 20), n_examples=3):
    """:class:`CriticRequest` per selected item.

    ``selection``: :func:`~recbole_reveal.fve.feedback.select_items` output (internal ids, labels);
    ``stats``/``rankings``: its inputs; ``item_tokens``: internal id -> item token (e.g.
    ``dataset.field2id_token[iid_field]``); ``items``: ``read_items`` output; ``prompt_records``: the
    current prompts (their ``keywords`` become the review summary); image paths are relative to
    ``dataset_dir``.
    """
    from recbole_reveal.fve.feedback import feedback_examples, item_record

    meta = {it.item_id: it for it in items}
    prompts = {r["item_id"]: r for r in prompt_records}

    def name(i):
        token = str(item_tokens[i])
        title = meta[token].title if token in meta else ""
        return title or token

    requests = []
    for item, label in selection:
        token = str(item_tokens[item])
        if token not in meta or token not in prompts:
            raise ValueError(f"selected item {token!r} has no {'metadata' if token not in meta else 'prompt'}")
        it, rec = meta[token], prompts[token]
        summary = feedback_summary(label, item_record(stats, item),
                                   feedback_examples(rankings, item, label, n_examples), name, feedback_k)
        requests.append(CriticRequest(
            item_id=token, image_path=os.path.join(dataset_dir, it.image) if it.image else "",
            prompt=rec["prompt"], label=label, feedback=summary, title=it.title,
            category=it.categories[-1] if it.categories else "", brand=it.brand,
            review_summary=review_summary(rec.get("keywords") or [])))
    return requests


def _stop_ids(vlm):
    tok = vlm.tokenizer
    ids = vlm.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    ids.add(vlm.token_id("<|im_end|>"))
    pad = tok.pad_token_id if tok.pad_token_id is not None else vlm.token_id("<|endoftext|>")
    return sorted(ids), pad


@torch.inference_mode()
def generate_answers(vlm, images, texts, max_new_tokens=192, batch_size=4, seed=0, min_pixels=None,
                     max_pixels=None):
    """Greedy answers of ``vlm`` to one user turn [image, text] each: ``[(answer, finished)]``, the
    answer decoded up to (excluding) the first end-of-turn token, ``finished`` whether one came."""
    ip = vlm.image_processor
    size = {"shortest_edge": int(min_pixels or ip.size["shortest_edge"]),
            "longest_edge": int(max_pixels or ip.size["longest_edge"])}
    stop, pad = _stop_ids(vlm)
    tok = vlm.tokenizer
    side = tok.padding_side
    out = []
    try:
        tok.padding_side = "left"
        for start in range(0, len(texts), batch_size):
            chunk_t, chunk_i = texts[start:start + batch_size], images[start:start + batch_size]
            chats = [vlm.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
                tokenize=False, add_generation_prompt=True) for t in chunk_t]
            batch = vlm.processor(text=chats, images=chunk_i, padding=True, return_tensors="pt",
                                  images_kwargs={"size": size}).to(vlm.device)
            torch.manual_seed(seed)
            gen = vlm.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     temperature=None, top_p=None, top_k=None,
                                     eos_token_id=stop, pad_token_id=pad)
            for row in gen[:, batch["input_ids"].shape[1]:].tolist():
                cut = next((k for k, t in enumerate(row) if t in stop), None)
                ids = row if cut is None else row[:cut]
                out.append((tok.decode(ids, skip_special_tokens=False), cut is not None))
    finally:
        tok.padding_side = side
    return out


def run_critic(vlm, requests, templates, max_new_tokens=192, batch_size=4, seed=0, max_words=None,
               min_pixels=None, max_pixels=None):
    """Critique and rewrite the prompts of ``requests`` ([:class:`CriticRequest`]) with ``vlm``.

    Returns ``(records, counts)``: one :class:`CriticRecord` per request, in order, and a Counter with
    ``accepted``, ``changed``, ``fallback`` and ``fallback: <reason>`` per reason (also logged).
    """
    max_words = int(max_words or templates["rewrite_max_words"])
    reserved = sorted(set(QWEN_SPECIAL_TOKENS) | set(vlm.tokenizer.all_special_tokens))
    records, reasons, todo = [None] * len(requests), [None] * len(requests), []
    for n, req in enumerate(requests):
        image = decode_image(req.image_path)
        if isinstance(image, str):
            records[n] = CriticRecord(req.item_id, req.label, req.prompt, req.prompt, "", "",
                                      fallback=f"no usable image ({image})")
            reasons[n] = "no usable image"
        else:
            todo.append((n, image, critic_text(templates, req, max_words)))
    answers = generate_answers(vlm, [t[1] for t in todo], [t[2] for t in todo], max_new_tokens, batch_size,
                               seed, min_pixels, max_pixels) if todo else []
    for (n, _, _), (answer, finished) in zip(todo, answers):
        req = requests[n]
        rec = CriticRecord(req.item_id, req.label, req.prompt, req.prompt, "", answer)
        try:
            if not finished:
                raise RewriteParseError("truncated", f"no end of turn within {max_new_tokens} new tokens")
            rec.analysis, rec.new_prompt = parse_rewrite(answer, max_words, reserved)
            rec.changed = rec.new_prompt != req.prompt
        except RewriteParseError as e:
            rec.fallback, reasons[n] = str(e), e.reason
            rec.new_prompt = req.prompt
        records[n] = rec
    counts = Counter()
    for rec, reason in zip(records, reasons):
        if rec.fallback is None:
            counts["accepted"] += 1
            counts["changed"] += rec.changed
        else:
            counts["fallback"] += 1
            counts["fallback: " + reason] += 1
    logger.info("FVE critic: %d items, %d rewrites accepted (%d changed), %d kept the old prompt%s",
                len(records), counts["accepted"], counts["changed"], counts["fallback"],
                "".join(f"; {k[10:]}: {v}" for k, v in sorted(counts.items()) if k.startswith("fallback: ")))
    return records, counts


def apply_rewrites(prompt_records, critic_records, cycle=None):
    """The next cycle's prompt records: every item of ``prompt_records`` in order, with the new prompt
    (and ``analysis``, ``cycle``) where a critic record accepted one; other items keep theirs."""
    by_id = {r.item_id: r for r in critic_records}
    unknown = sorted(set(by_id) - {r["item_id"] for r in prompt_records})
    if unknown:
        raise ValueError(f"critic records for items without a prompt: {unknown[:10]}")
    out = []
    for rec in prompt_records:
        rec = dict(rec)
        crit = by_id.get(rec["item_id"])
        if crit is not None and crit.fallback is None:
            rec["prompt"] = crit.new_prompt
            rec["analysis"] = crit.analysis
            if cycle is not None:
                rec["cycle"] = cycle
        out.append(rec)
    return out


def write_critic_log(path, records):
    """Write :class:`CriticRecord` s (or dicts) as JSON lines, atomically."""
    return write_jsonl(path, (asdict(r) if isinstance(r, CriticRecord) else r for r in records))


def read_critic_log(path):
    with open(path, encoding="utf-8") as f:
        return [CriticRecord(**json.loads(line)) for line in f if line.strip()]
