"""Reading the critic's answer: the analysis and the new prompt, from the shapes a correct answer takes
in practice, or a rejection with a short, countable reason.

The templates ask for two lines, ``ANALYSIS: ...`` and ``NEW_PROMPT: ...``. Instruction-tuned models
often write the same content in another shape; these are accepted, and each tolerance is recorded as a
note on the answer (counted per cycle):

=====================================  ==========================================================
shape                                  handling (note)
=====================================  ==========================================================
``**ANALYSIS:**``, ``## New prompt``,  markers are found at the start of a line, with markdown
``- Analysis:``, ``NEW PROMPT:``       heading/list/emphasis around them (``markdown``), in any
                                       case, ``_`` / space / ``-`` (``marker spelling``)
marker alone on its line               the text starts on the next non-empty line (``heading on its own line``)
a sentence before ``ANALYSIS``         dropped (``text before ANALYSIS``)
text after the new prompt's line       dropped (``trailing text``); the new prompt is one line
``"..."``, ``**...**``, `` `...` ``    enclosing quotes / emphasis around the prompt removed
more than ``max_words`` words          cut at a word boundary (``too long: 52 -> 40 words``)
a JSON object (guided output)          ``{"analysis": ..., "new_prompt": ...}``, fenced or not (``json``)
the token limit hit after the prompt   accepted: the prompt line ended (``cut in trailing text``)
=====================================  ==========================================================

Rejected (the old prompt is kept; the reason is recorded and counted): chat special tokens anywhere,
an empty answer, a missing / repeated / empty marker, ``NEW_PROMPT`` not at the start of a line or
before ``ANALYSIS``, the template's placeholder echoed, and a truly truncated answer: the generation hit
its token limit before the new prompt's line ended (``truncated``, saying where it was cut).
"""

import json
import re
from dataclasses import dataclass, field

from recbole_reveal.fve.vlm.families import QWEN_SPECIAL_TOKENS

_EMPH = r"(?:\*\*|__|\*|_)?"
# a marker at the start of a line: optional heading / list / quote prefix, optional emphasis, the
# label, optional emphasis, then a colon (or nothing else on the line: a heading of its own)
_MARKER = re.compile(
    r"^\s*(?P<prefix>#{1,6}\s*|[-*+]\s+|>\s*|\d+[.)]\s+)?(?P<open>\*\*|__|\*|_)?\s*"
    r"(?P<label>analysis|new[ _-]?prompt)\s*(?P<close>\*\*|__|\*|_)?\s*(?P<colon>[:：])?\s*"
    r"(?(open)(?(close)|" + _EMPH + r"))\s*(?P<rest>.*)$", re.IGNORECASE)
_INLINE = {label: re.compile(pattern + r"\s*" + _EMPH + r"\s*:", re.IGNORECASE)
           for label, pattern in (("analysis", "analysis"), ("new_prompt", r"new[ _-]?prompt"))}
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`", "\u00ab": "\u00bb"}
_WRAPPERS = ("**", "__", "*", "_", "`")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


class RewriteParseError(ValueError):
    """The critic's answer cannot be used; ``reason`` is a short, countable label."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Rewrite:
    analysis: str
    new_prompt: str
    notes: list = field(default_factory=list)   # the tolerances applied, e.g. "markdown", "too long: 52 -> 40 words"


def normalise_space(text):
    return " ".join(text.split())


def parse_rewrite(answer, max_words=40, reserved=QWEN_SPECIAL_TOKENS, finished=True, max_new_tokens=None):
    """The :class:`Rewrite` in a critic answer, or :class:`RewriteParseError` (module docstring).

    ``finished``: whether generation ended on its own (an end-of-turn token, ``finish_reason: stop``)
    rather than at ``max_new_tokens``.
    """
    bad = [t for t in reserved if t in answer]
    if bad:
        raise RewriteParseError("special tokens", ", ".join(bad))
    text = answer.strip()
    if not text:
        raise _missing("empty answer", finished, max_new_tokens, "any text")
    fenced = _FENCE.match(text)
    if text.startswith("{") or (fenced and fenced.group(1).startswith("{")):
        return _parse_json(fenced.group(1) if fenced else text, max_words, finished, max_new_tokens)
    notes = []
    lines = text.split("\n")
    markers = []
    for n, line in enumerate(lines):
        m = _MARKER.match(line)
        if m and (m.group("colon") or not m.group("rest").strip(" *_#")):
            label = "analysis" if m.group("label").lower() == "analysis" else "new_prompt"
            markers.append((n, label, m))
    found = {label: [n for n, lab, _ in markers if lab == label] for label in ("analysis", "new_prompt")}
    if not found["new_prompt"]:
        if _INLINE["new_prompt"].search(text):
            raise RewriteParseError("NEW_PROMPT not on its own line")
        raise _missing("missing NEW_PROMPT", finished, max_new_tokens, "NEW_PROMPT")
    if not found["analysis"]:
        inline = _INLINE["analysis"].search(text)
        raise RewriteParseError("ANALYSIS not on its own line" if inline else "missing ANALYSIS")
    for label in ("analysis", "new_prompt"):
        if len(found[label]) > 1:
            raise RewriteParseError(f"repeated {label.upper()}")
    (a_line,), (p_line,) = found["analysis"], found["new_prompt"]
    if p_line < a_line:
        raise RewriteParseError("NEW_PROMPT before ANALYSIS")
    if any(normalise_space(line) for line in lines[:a_line]):
        notes.append("text before ANALYSIS")
    by_line = {n: m for n, _, m in markers}
    for note in ("markdown", "marker spelling"):
        if any(note in _marker_notes(m) for m in by_line.values()):
            notes.append(note)
    a_match, p_match = by_line[a_line], by_line[p_line]
    analysis = _clean(" ".join([a_match.group("rest")] + lines[a_line + 1:p_line]))
    if not analysis:
        raise RewriteParseError("empty analysis")
    rest = lines[p_line + 1:]
    prompt_line = p_match.group("rest")
    if not prompt_line.strip(" *_`"):
        following = [k for k, line in enumerate(rest) if line.strip()]
        if not following:
            raise _missing("empty new prompt", finished, max_new_tokens, "the new prompt")
        notes.append("heading on its own line")
        prompt_line, rest = rest[following[0]], rest[following[0] + 1:]
    if not finished and not rest:
        raise RewriteParseError("truncated", _limit(max_new_tokens, "the NEW_PROMPT line ended"))
    if any(line.strip() for line in rest):
        notes.append("trailing text")
    if not finished:
        notes.append("cut in trailing text")
    return _finish(analysis, prompt_line, max_words, notes)


def _parse_json(text, max_words, finished, max_new_tokens):
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if not finished:
            raise _missing("invalid JSON", finished, max_new_tokens, "the JSON object closed") from e
        raise RewriteParseError("invalid JSON", str(e)) from e
    if not isinstance(obj, dict):
        raise RewriteParseError("invalid JSON", "not an object")
    keys = {re.sub(r"[ _-]", "", str(k)).lower(): v for k, v in obj.items()}
    if "newprompt" not in keys:
        raise RewriteParseError("missing NEW_PROMPT")
    if "analysis" not in keys:
        raise RewriteParseError("missing ANALYSIS")
    analysis = _clean(str(keys["analysis"] or ""))
    if not analysis:
        raise RewriteParseError("empty analysis")
    return _finish(analysis, str(keys["newprompt"] or ""), max_words, ["json"])


def _finish(analysis, prompt_line, max_words, notes):
    prompt = _clean(prompt_line)
    if not prompt:
        raise RewriteParseError("empty new prompt")
    if prompt.startswith("<") and prompt.endswith(">"):
        raise RewriteParseError("template placeholder echoed", prompt[:60])
    words = prompt.split()
    if len(words) > max_words:
        notes.append(f"too long: {len(words)} -> {max_words} words")
        prompt = " ".join(words[:max_words])
    return Rewrite(analysis, prompt, notes)


def _marker_notes(match):
    """How a marker line differs from the templates' ``ANALYSIS: ...``: markdown around it, or another
    spelling of the label (case, space or hyphen)."""
    notes = []
    if match.group("prefix") or match.group("open") or re.search(
            r"[*_#`]", match.string[match.end("label"):match.start("rest")]):
        notes.append("markdown")
    if match.group("label") not in ("ANALYSIS", "NEW_PROMPT"):
        notes.append("marker spelling")
    return notes


def _clean(text):
    """Whitespace normalised; enclosing emphasis and one pair of enclosing quotes removed."""
    text = normalise_space(text)
    changed = True
    while changed and text:
        changed = False
        for w in _WRAPPERS:
            if len(text) > 2 * len(w) and text.startswith(w) and text.endswith(w):
                text, changed = normalise_space(text[len(w):-len(w)]), True
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
            text, changed = normalise_space(text[1:-1]), True
    return text


def _missing(reason, finished, max_new_tokens, what):
    """``reason`` for a finished answer; for one cut at the token limit, ``truncated`` saying where."""
    if finished:
        return RewriteParseError(reason)
    return RewriteParseError("truncated", _limit(max_new_tokens, what))


def _limit(max_new_tokens, what):
    budget = f"max_new_tokens ({max_new_tokens})" if max_new_tokens else "the token limit"
    return f"the answer hit {budget} before {what}; raise fve_rewrite_max_new_tokens"
