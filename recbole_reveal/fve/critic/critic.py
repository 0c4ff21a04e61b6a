"""FVE's critic and prompt rewrite (paper eqs. 3-4), run in one generation per item as the reference
code does: the VLM sees ``rewrite_instruction`` (templates.yaml) filled with the evaluation instruction,
the current prompt, the item's review keywords, a ground-truth-vs-result summary and the ``pos``/``neg``
goal, then the item image, and answers::

    ANALYSIS: <text>
    NEW_PROMPT: <text>

The answers come from a generation backend (:mod:`~recbole_reveal.fve.critic.generation.transformers_backend`: the run's VLM with
transformers, or an OpenAI-compatible endpoint), each appended to an answer log as it arrives so an
interrupted critic resumes at the next item. :mod:`~recbole_reveal.fve.critic.rewrite_parser` reads each answer
(tolerant of the common shapes of a correct one, strict about truncation and special tokens); a rejected
answer keeps the old prompt and records the reason. Items whose image is unusable get no critic (their
embedding is the missing-image row whatever the prompt) and keep their prompt, with the reason recorded.
"""

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field

from recbole_reveal.fve.config import fve_settings
from recbole_reveal.fve.critic.generation.base import AnswerLog, GenerationItem, item_key
from recbole_reveal.fve.critic.rewrite_parser import RewriteParseError, parse_rewrite
from recbole_reveal.fve.prompts.records import write_jsonl
from recbole_reveal.fve.prompts.templates import render
from recbole_reveal.fve.vlm.families import QWEN_SPECIAL_TOKENS
from recbole_reveal.infra.errors import RevealUserError

logger = logging.getLogger(__name__)

# keys of properties/fve/fve.yaml (their defaults are there)
CRITIC_KEYS = ("fve_rewrite_max_new_tokens", "fve_rewrite_batch_size", "fve_rewrite_seed", "fve_acceptance_warning",
               "fve_min_acceptance")


class LowAcceptance(RevealUserError):
    """Fewer critic rewrites were accepted than ``fve_min_acceptance`` asks for."""


def critic_settings(config=None):
    """The critic's keys (:data:`CRITIC_KEYS`) from ``config`` (dict or RecBole ``Config``; missing keys
    take their defaults in ``fve.yaml``), checked by the one pass."""
    return fve_settings(config, CRITIC_KEYS)


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
    notes: list = field(default_factory=list)   # tolerances the parser applied (rewrite_parser)


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

    ``stat`` is :func:`~recbole_reveal.fve.feedback.rankings.item_record` output, ``examples`` the ids from
    :func:`~recbole_reveal.fve.feedback.rankings.feedback_examples`, ``names`` maps an id to a display name.
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

    ``selection``: :func:`~recbole_reveal.fve.feedback.rankings.select_items` output (internal ids, labels);
    ``stats``/``rankings``: its inputs; ``item_tokens``: internal id -> item token (e.g.
    ``dataset.field2id_token[iid_field]``); ``items``: ``read_items`` output; ``prompt_records``: the
    current prompts (their ``keywords`` become the review summary); image paths are relative to
    ``dataset_dir``.
    """
    from recbole_reveal.fve.feedback.rankings import feedback_examples, item_record

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


def run_critic(generator, requests, templates, max_words=None, answers_dir=None):
    """Critique and rewrite the prompts of ``requests`` ([:class:`CriticRequest`]) with ``generator``
    (a backend of :mod:`~recbole_reveal.fve.critic.generation.transformers_backend`).

    Answers already in ``answers_dir`` (an :class:`~recbole_reveal.fve.critic.generation.base.AnswerLog` folder) for
    the same requests are reused; new ones are appended there as they come. Returns ``(records,
    counts)``: one :class:`CriticRecord` per request, in order, and a Counter with ``accepted``,
    ``changed``, ``fallback``, ``fallback: <reason>`` per reason and ``note: <tolerance>`` (also logged).
    """
    max_words = int(max_words or templates["rewrite_max_words"])
    reserved = sorted(set(QWEN_SPECIAL_TOKENS) | set(getattr(generator, "reserved_tokens", ())))
    items = [GenerationItem(n, req.item_id, req.image_path, critic_text(templates, req, max_words))
             for n, req in enumerate(requests)]
    identity = generator.identity()
    keys = {item.index: item_key(identity, item) for item in items}
    log = AnswerLog(answers_dir)
    done = log.load(keys)
    if done:
        logger.info("FVE critic: %d of %d answers already logged in %s; generating the rest",
                    len(done), len(items), answers_dir)
    if len(done) < len(items):
        generator.generate(items, set(done), log, keys)
    answers = log.load(keys)
    lost = [item.item_id for item in items if item.index not in answers]
    if lost:
        raise RuntimeError(f"FVE critic: no answer logged for {len(lost)} items ({lost[:5]}) in {answers_dir}")
    records, counts = [], Counter()
    for n, req in enumerate(requests):
        rec, reason = _record(req, answers[n], max_words, reserved, generator.max_new_tokens)
        records.append(rec)
        if reason is None:
            counts["accepted"] += 1
            counts["changed"] += rec.changed
        else:
            counts["fallback"] += 1
            counts["fallback: " + reason] += 1
        for note in rec.notes:
            counts["note: " + note.split(":")[0]] += 1
    logger.info("FVE critic: %d items, %d rewrites accepted (%d changed), %d kept the old prompt%s%s",
                len(records), counts["accepted"], counts["changed"], counts["fallback"],
                "".join(f"; {k[10:]}: {v}" for k, v in sorted(counts.items()) if k.startswith("fallback: ")),
                "".join(f"; accepted with {k[6:]}: {v}" for k, v in sorted(counts.items()) if k.startswith("note: ")))
    return records, counts


def _record(req, answer, max_words, reserved, max_new_tokens):
    """The :class:`CriticRecord` of one answer and the reason it was rejected (None: accepted)."""
    rec = CriticRecord(req.item_id, req.label, req.prompt, req.prompt, "", answer.text)
    if answer.error is not None:
        rec.fallback = f"no usable image ({answer.error})"
        return rec, "no usable image"
    if answer.invalid is not None:
        rec.fallback = f"unusable answer ({answer.invalid})"
        return rec, "unusable answer"
    try:
        rewrite = parse_rewrite(answer.text, max_words, reserved, answer.finished, max_new_tokens)
    except RewriteParseError as e:
        rec.fallback = str(e)
        return rec, e.reason
    rec.analysis, rec.new_prompt, rec.notes = rewrite.analysis, rewrite.new_prompt, rewrite.notes
    rec.changed = rec.new_prompt != req.prompt
    return rec, None


def acceptance(counts):
    """``{"accepted", "answered", "rate"}``: the share of answered items (an image to critique) whose
    rewrite was accepted; ``rate`` is None when nothing was answered."""
    answered = counts.get("accepted", 0) + counts.get("fallback", 0) - counts.get("fallback: no usable image", 0)
    return {"accepted": counts.get("accepted", 0), "answered": answered,
            "rate": round(counts.get("accepted", 0) / answered, 4) if answered else None}


def check_acceptance(share, counts, cycle, warn_below, stop_below, answers_dir=None):
    """Warn when fewer than ``warn_below`` of the answered rewrites were accepted; raise
    :class:`LowAcceptance` below ``stop_below`` (``fve_min_acceptance``)."""
    rate = share["rate"]
    if rate is None or rate >= max(warn_below, stop_below):
        return
    reasons = ", ".join(f"{k[10:]}: {v}" for k, v in sorted(counts.items()) if k.startswith("fallback: "))
    text = (f"FVE cycle {cycle} critic: {share['accepted']} of {share['answered']} rewrites accepted "
            f"({100 * rate:.0f}%); the others keep their prompt ({reasons}). See the critic log's raw_answer "
            "and fallback fields; raise fve_rewrite_max_new_tokens if answers are truncated, or use a model "
            "that follows the ANALYSIS / NEW_PROMPT format (or fve_generation_guided_json with a server)")
    if rate < stop_below:
        raise LowAcceptance(f"{text}. Stopped: fve_min_acceptance is {stop_below}. The answers are kept in "
                            f"{answers_dir}: a rerun with a lower fve_min_acceptance continues with them")
    logger.warning("%s", text)


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
