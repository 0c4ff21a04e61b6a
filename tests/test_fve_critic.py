"""FVE critic and rewrite: reading the answer (a table of real-world answer shapes, accepted or rejected
with the reason), the request text, the prompt update, the acceptance checks, and end-to-end critic
calls on the tiny random Qwen2.5-VL (whose random answers are malformed: the fallback path, its counts,
deterministic batched generation, and resuming an interrupted critic from its answer log)."""

import os

import pytest

from recbole_reveal.fve.critic.critic import (
    CriticRecord, CriticRequest, LowAcceptance, acceptance, apply_rewrites, check_acceptance, critic_settings,
    critic_text, feedback_summary, read_critic_log, review_summary, run_critic, write_critic_log,
)
from recbole_reveal.fve.critic.generation.transformers_backend import TransformersGenerator
from recbole_reveal.fve.critic.rewrite_parser import RewriteParseError, parse_rewrite
from recbole_reveal.fve.prompts.records import read_prompts, write_prompts
from recbole_reveal.fve.prompts.templates import load_templates
from recbole_reveal.fve.vlm.load import load_vlm
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = [os.path.join(ROOT, "dataset_atomic", "synthetic-demo", "images", f"i000{k}.png") for k in range(3)]
GOOD = "ANALYSIS: The prompt ignores the strap colour.\nNEW_PROMPT: A blue Vertex backpack with black straps."


@pytest.fixture(scope="module")
def templates():
    return load_templates()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny"))


@pytest.fixture(scope="module")
def vlm(tiny_folder):
    return load_vlm(tiny_folder, device="cpu")


@pytest.fixture(scope="module")
def lively_vlm(tiny_folder):
    """The tiny model with its decoder matrices scaled by 30: at initialisation scale, greedy decoding
    just repeats one token whatever the input; scaled, the answers depend on image and text, so
    comparing them between paddings and between calls means something."""
    import torch

    vlm = load_vlm(tiny_folder, device="cpu")
    with torch.no_grad():
        for name, p in vlm.model.named_parameters():
            if "language_model.layers" in name and p.ndim == 2:
                p.mul_(30)
    return vlm


# Real-world answer shapes: (answer, finished, expected new prompt or None, expected notes or rejection reason)
ANSWER_SHAPES = [
    # the format asked for
    (GOOD, True, "A blue Vertex backpack with black straps.", []),
    ('\n ANALYSIS: too coarse;\n misses the  zipper.\nNEW_PROMPT:  "A red   tent."  \n\n', True, "A red tent.", []),
    ("ANALYSIS: a\nNEW_PROMPT: " + " ".join(["word"] * 40), True, " ".join(["word"] * 40), []),
    # markdown emphasis and headings
    ("**ANALYSIS:** too coarse.\n**NEW_PROMPT:** A red tent.", True, "A red tent.", ["markdown"]),
    ("**ANALYSIS**: too coarse.\n\n**NEW_PROMPT**: **A red tent.**", True, "A red tent.", ["markdown"]),
    ("## Analysis\nThe prompt misses the zipper.\n\n## New Prompt\nA red tent with a zipper.", True,
     "A red tent with a zipper.", ["markdown", "marker spelling", "heading on its own line"]),
    ("- Analysis: ok\n- New prompt: `A tent.`", True, "A tent.", ["markdown", "marker spelling"]),
    ("1. ANALYSIS: ok\n2. NEW_PROMPT: A tent.", True, "A tent.", ["markdown"]),
    ("analysis: ok\nnew_prompt: A tent.", True, "A tent.", ["marker spelling"]),
    ("ANALYSIS: ok\nNEW_PROMPT:\nA tent with a red fly.", True, "A tent with a red fly.", ["heading on its own line"]),
    # text around the answer
    ("Here you go.\nANALYSIS: ok\nNEW_PROMPT: A tent.", True, "A tent.", ["text before ANALYSIS"]),
    ("ANALYSIS: ok\nNEW_PROMPT: A tent.\n\nThis prompt is better because it names the colour.", True, "A tent.",
     ["trailing text"]),
    ("ANALYSIS: ok\nNEW_PROMPT: A tent.\nNote: keep it short", False, "A tent.",
     ["trailing text", "cut in trailing text"]),
    # over-long prompt: cut at a word boundary, with the count
    ("ANALYSIS: ok\nNEW_PROMPT: " + " ".join(f"w{k}" for k in range(52)), True,
     " ".join(f"w{k}" for k in range(40)), ["too long: 52 -> 40 words"]),
    # guided / JSON output
    ('{"analysis": "ok", "new_prompt": "A tent."}', True, "A tent.", ["json"]),
    ('```json\n{"Analysis": "ok", "New Prompt": "A tent."}\n```', True, "A tent.", ["json"]),
    # rejected, with the reason
    ("", True, None, "empty answer"),
    ("   \n ", True, None, "empty answer"),
    ("ANALYSIS: ok\nNEW_PROMPT: A tent with", False, None, "truncated"),
    ("ANALYSIS: the prompt misses the colour and", False, None, "truncated"),
    ('{"analysis": "ok", "new_prompt": "A te', False, None, "truncated"),
    ("NEW_PROMPT: A tent.", True, None, "missing ANALYSIS"),
    ("ANALYSIS: fine as is.", True, None, "missing NEW_PROMPT"),
    ("ANALYSIS: ok\nNEW_PROMPT:   ", True, None, "empty new prompt"),
    ('ANALYSIS: ok\nNEW_PROMPT: ""', True, None, "empty new prompt"),
    ("ANALYSIS:  \nNEW_PROMPT: A tent.", True, None, "empty analysis"),
    ("ANALYSIS: ok\nNEW_PROMPT: A tent.<|im_end|>", True, None, "special tokens"),
    ("ANALYSIS: ok\nNEW_PROMPT: <|image_pad|> A tent.", True, None, "special tokens"),
    ("Sure! ANALYSIS: ok\nNEW_PROMPT: A tent.", True, None, "ANALYSIS not on its own line"),
    ("ANALYSIS: ok NEW_PROMPT: A tent.", True, None, "NEW_PROMPT not on its own line"),
    ("ANALYSIS: ok\nANALYSIS: again\nNEW_PROMPT: A tent.", True, None, "repeated ANALYSIS"),
    ("ANALYSIS: ok\nNEW_PROMPT: A tent.\nNEW_PROMPT: A lamp.", True, None, "repeated NEW_PROMPT"),
    ("NEW_PROMPT: A tent.\nANALYSIS: ok", True, None, "NEW_PROMPT before ANALYSIS"),
    ("ANALYSIS: <why>\nNEW_PROMPT: <the improved prompt, at most 40 words>", True, None,
     "template placeholder echoed"),
    ('{"analysis": "ok"}', True, None, "missing NEW_PROMPT"),
]


@pytest.mark.parametrize("answer, finished, prompt, expected", ANSWER_SHAPES)
def test_answer_shapes_are_accepted_or_rejected_with_their_reason(answer, finished, prompt, expected):
    if prompt is None:
        with pytest.raises(RewriteParseError) as e:
            parse_rewrite(answer, finished=finished, max_new_tokens=192)
        assert e.value.reason == expected
        if expected == "truncated":     # says why: the token limit, and what to raise
            assert "max_new_tokens (192)" in str(e.value) and "fve_rewrite_max_new_tokens" in str(e.value)
    else:
        rewrite = parse_rewrite(answer, finished=finished, max_new_tokens=192)
        assert rewrite.new_prompt == prompt and rewrite.notes == expected and rewrite.analysis


def test_word_limit_is_configurable():
    rewrite = parse_rewrite("ANALYSIS: a\nNEW_PROMPT: one two three four five six", max_words=5)
    assert rewrite.new_prompt == "one two three four five" and rewrite.notes == ["too long: 6 -> 5 words"]


def test_critic_text_carries_prompt_feedback_goal_and_instruction(templates):
    stat = {"target_count": 3, "mean_rank": 17.25, "top_k1_rate": 0.0, "top_k2_rate": 1 / 3}
    fb = feedback_summary("pos", stat, [7, 9], lambda i: f"item {i}")
    assert fb == ("This item was the next purchase of 3 evaluation users; its mean rank was 17.2, in the top 10 "
                  "for 0% and in the top 20 for 33% of them. Ranked first for those users instead: item 7; item 9.")
    req = CriticRequest("i1", IMAGES[0], "An item image of a tent.", "pos", fb, title="Trail tent",
                        review_summary=review_summary(["roomy", "green"]))
    text = critic_text(templates, req)
    for part in (templates["evaluation_instruction"], "Current prompt: An item image of a tent.", fb,
                 templates["rewrite_goals"]["pos"], "frequent review words: roomy, green", "Trail tent",
                 "at most 40 words", "brand: unknown brand", "ANALYSIS:", "NEW_PROMPT:"):
        assert part in text
    assert "{" not in text
    neg = feedback_summary("neg", {"wrong": 4, "wrong_top_k1": 0.5, "danger": 0.25}, [], str)
    assert neg.startswith("This item appeared in the top 20 of 4 evaluation users who did not choose it")
    assert templates["rewrite_goals"]["neg"] in critic_text(templates, CriticRequest("i", "", "p", "neg", neg))
    with pytest.raises(ValueError, match="label"):
        critic_text(templates, CriticRequest("i", "", "p", "up", neg))


def test_apply_rewrites_changes_only_accepted_items(tmp_path):
    prompts = [{"item_id": f"i{k}", "prompt": f"old {k}", "keywords": ["x"]} for k in range(4)]
    critic = [CriticRecord("i2", "pos", "old 2", "new 2", "why", GOOD, None, True),
              CriticRecord("i0", "neg", "old 0", "old 0", "", "junk", "missing ANALYSIS")]
    out = apply_rewrites(prompts, critic, cycle=1)
    assert [r["prompt"] for r in out] == ["old 0", "old 1", "new 2", "old 3"]
    assert out[2] == {"item_id": "i2", "prompt": "new 2", "keywords": ["x"], "analysis": "why", "cycle": 1}
    assert prompts[2]["prompt"] == "old 2"                     # input untouched
    write_prompts(str(tmp_path / "p.jsonl"), out)
    assert read_prompts(str(tmp_path / "p.jsonl")) == out
    write_critic_log(str(tmp_path / "critic.jsonl"), critic)
    assert read_critic_log(str(tmp_path / "critic.jsonl")) == critic
    with pytest.raises(ValueError, match="without a prompt"):
        apply_rewrites(prompts[:1], critic)


def test_critic_settings():
    assert critic_settings() == {"fve_rewrite_max_new_tokens": 192, "fve_rewrite_batch_size": "auto",
                                 "fve_rewrite_seed": 0, "fve_acceptance_warning": 0.5, "fve_min_acceptance": 0.0}
    with pytest.raises(ConfigError, match="fve_rewrite_batch_size"):
        critic_settings({"fve_rewrite_batch_size": 0})
    with pytest.raises(ConfigError, match="fve_min_acceptance"):
        critic_settings({"fve_min_acceptance": 1.5})


def test_auto_batch_size_fits_the_gpu():
    """``fve_rewrite_batch_size: auto`` from the card's memory, the weights and the KV cache per sequence."""
    import torch

    from recbole_reveal.fve.critic.generation.transformers_backend import auto_batch_size, batch_for_memory
    from recbole_reveal.testing.vlms import REAL_SHAPES

    seven_b = dict(REAL_SHAPES["7b"]["text"])
    assert auto_batch_size(seven_b, 16.6e9, "cpu", 192) == 4
    gib = 2 ** 30
    assert [batch_for_memory(m * gib, seven_b, 16.6e9, 192) for m in (24, 40, 80, 141)] == [16, 32, 32, 32]
    assert batch_for_memory(17.5 * gib, seven_b, 16.6e9, 192) == 1        # barely fits the weights
    assert batch_for_memory(24 * gib, seven_b, 16.6e9 / 4, 192) == 32     # 4-bit weights leave room
    if torch.cuda.is_available():
        assert 1 <= auto_batch_size(seven_b, 16.6e9, "cuda", 192) <= 32


def tiny_generator(vlm, batch_size=2, max_new_tokens=12):
    return TransformersGenerator(vlm, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=0,
                                 max_pixels=112 * 112)


def test_end_to_end_critic_on_the_tiny_vlm_falls_back_and_is_deterministic(vlm, templates, caplog):
    requests = [CriticRequest(f"i{k}", IMAGES[k], f"An item image of a thing number {k}.", "pos" if k % 2 else "neg",
                              "This item appeared in the top 20 of 2 evaluation users.", title=f"Item {k}")
                for k in range(3)]
    requests.append(CriticRequest("gone", os.path.join(ROOT, "no-such-image.png"), "A lamp.", "pos", "fb"))
    with caplog.at_level("INFO", logger="recbole_reveal.fve.critic.critic"):
        records, counts = run_critic(tiny_generator(vlm), requests, templates)
    assert "FVE critic: 4 items, 0 rewrites accepted (0 changed), 4 kept the old prompt" in caplog.text
    assert "no usable image: 1" in caplog.text
    assert [r.item_id for r in records] == ["i0", "i1", "i2", "gone"]
    # random weights never produce the format: every item keeps its prompt, with a reason
    assert all(r.fallback and r.new_prompt == r.old_prompt == q.prompt and not r.changed
               for r, q in zip(records, requests))
    assert records[3].fallback == "no usable image (file not found)" and records[3].raw_answer == ""
    assert all(r.raw_answer or r.fallback.startswith("truncated") for r in records[:3])
    assert counts["fallback"] == 4 and counts["accepted"] == 0 and counts["fallback: no usable image"] == 1
    assert sum(v for k, v in counts.items() if k.startswith("fallback: ")) == 4
    assert acceptance(counts) == {"accepted": 0, "answered": 3, "rate": 0.0}
    again, counts_again = run_critic(tiny_generator(vlm), requests, templates)
    assert [r.raw_answer for r in again] == [r.raw_answer for r in records] and counts_again == counts
    # the items' prompts survive into the next cycle unchanged
    prompts = [{"item_id": q.item_id, "prompt": q.prompt} for q in requests]
    assert apply_rewrites(prompts, records, cycle=1) == prompts


def test_left_padded_batches_generate_what_single_items_do(lively_vlm):
    from PIL import Image

    vlm = lively_vlm
    images = [Image.open(p).convert("RGB") for p in IMAGES]
    texts = ["Describe it.", "Describe the colour and the shape of this item in detail.", "Shape?"]
    side = vlm.tokenizer.padding_side
    gen = tiny_generator(vlm, max_new_tokens=8)
    batched = gen.generate_texts(images, texts)
    single = [gen.generate_texts([im], [t])[0] for im, t in zip(images, texts)]
    assert batched == single
    assert len({answer for answer, _ in batched}) == 3         # the answers differ per input
    assert gen.generate_texts(images, texts) == batched
    assert vlm.tokenizer.padding_side == side                 # restored


def test_lively_answers_are_rejected_and_counted(lively_vlm, templates):
    requests = [CriticRequest(f"i{k}", IMAGES[k], f"An item image of a thing number {k}.", "pos", "fb")
                for k in range(3)]
    records, counts = run_critic(tiny_generator(lively_vlm, 3, 16), requests, templates)
    assert counts["fallback"] == 3 and counts["accepted"] == 0
    reasons = {r.fallback.split(":")[0] for r in records}
    assert reasons <= {"truncated", "special tokens", "missing ANALYSIS", "missing NEW_PROMPT",
                       "ANALYSIS not on its own line"}
    again, _ = run_critic(tiny_generator(lively_vlm, 1, 16), requests, templates)
    assert [r.raw_answer for r in again] == [r.raw_answer for r in records]


def test_an_interrupted_critic_resumes_at_the_next_item(lively_vlm, templates, tmp_path):
    """The answer log of a critic killed after its first batch (and in the middle of writing the second)
    resumes there: the remaining batches only, with the records an uninterrupted critic gives."""
    requests = [CriticRequest(f"i{k}", IMAGES[k % 3], f"An item image of a thing number {k}.", "pos", "fb")
                for k in range(5)]
    full, _ = run_critic(tiny_generator(lively_vlm, 2, 8), requests, templates, answers_dir=str(tmp_path / "full"))
    log = tmp_path / "full" / "answers.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 5
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "answers.jsonl").write_text("".join(lines[:3]) + lines[3][:25])   # batch 1, then half a line
    calls = []

    class Counting(TransformersGenerator):
        def answer_batch(self, batch):
            calls.append([item.item_id for item in batch])
            return super().answer_batch(batch)

    resumed, _ = run_critic(Counting(lively_vlm, max_new_tokens=8, batch_size=2, seed=0, max_pixels=112 * 112),
                            requests, templates, answers_dir=str(killed))
    assert calls == [["i2", "i3"], ["i4"]]          # batch 0 was logged; batch 1 reruns whole (same padding)
    assert resumed == full
    # a finished log answers everything: no generation at all
    calls.clear()
    assert run_critic(Counting(lively_vlm, max_new_tokens=8, batch_size=2, seed=0, max_pixels=112 * 112),
                      requests, templates, answers_dir=str(killed))[0] == full and calls == []
    # answers logged for another request (changed budget) are not reused
    other, _ = run_critic(Counting(lively_vlm, max_new_tokens=6, batch_size=2, seed=0, max_pixels=112 * 112),
                          requests, templates, answers_dir=str(killed))
    assert len(calls) == 3


def test_acceptance_warns_and_stops_below_the_thresholds(caplog):
    from collections import Counter

    counts = Counter({"accepted": 1, "fallback": 4, "fallback: truncated": 3, "fallback: no usable image": 1})
    share = acceptance(counts)
    assert share == {"accepted": 1, "answered": 4, "rate": 0.25}
    with caplog.at_level("WARNING"):
        check_acceptance(share, counts, 0, warn_below=0.5, stop_below=0.0)
    assert "1 of 4 rewrites accepted (25%)" in caplog.text and "truncated: 3" in caplog.text
    with pytest.raises(LowAcceptance, match="fve_min_acceptance is 0.3"):
        check_acceptance(share, counts, 0, warn_below=0.5, stop_below=0.3)
    caplog.clear()
    check_acceptance(share, counts, 0, warn_below=0.2, stop_below=0.0)
    assert not caplog.text


def test_requests_from_feedback_reach_the_vlm(vlm, templates):
    import numpy as np

    from recbole_reveal.fve.feedback.rankings import Rankings, item_statistics, select_items
    from recbole_reveal.fve.prompts.records import read_items

    demo = os.path.join(ROOT, "dataset_atomic", "synthetic-demo")
    items = read_items(os.path.join(demo, "synthetic-demo.item"))[:5]
    tokens = ["[PAD]"] + [it.item_id for it in items]            # internal id -> token
    prompts = [{"item_id": it.item_id, "prompt": f"An item image of {it.title}.", "keywords": ["sturdy"] if k else []}
               for k, it in enumerate(items)]
    # item 3 is the target of row 2 but ranked last; item 2 is ranked first for users who chose others
    r = Rankings(users=np.arange(1, 5), targets=np.array([1, 1, 3, 2]), target_rank=np.array([2, 1, 5, 1]),
                 top=np.array([[2, 1, 3, 4, 5], [1, 2, 3, 4, 5], [2, 4, 5, 1, 3], [2, 3, 1, 4, 5]]), n_items=6)
    stats = item_statistics(r, feedback_k=(1, 2), exposure_k=3)
    selection = select_items(stats, 0.25)
    assert selection == [(2, "neg"), (3, "pos")]
    from recbole_reveal.fve.critic.critic import build_requests

    requests = build_requests(selection, stats, r, tokens, items, prompts, demo, feedback_k=(1, 2))
    neg, pos = requests
    assert (neg.item_id, neg.label, pos.item_id, pos.label) == (tokens[2], "neg", tokens[3], "pos")
    assert neg.image_path == os.path.join(demo, items[1].image) and os.path.isfile(neg.image_path)
    assert neg.prompt == prompts[1]["prompt"] and neg.review_summary == "frequent review words: sturdy"
    assert neg.brand == items[1].brand and neg.category == items[1].categories[-1]
    # neg: rows 0 and 2 chose items 1 and 3 (shown by title); pos: row 2 got item 2 first instead
    assert neg.feedback.endswith(f"Those users actually chose: {items[0].title}; {items[2].title}.")
    assert "top 2 of 3 evaluation users who did not choose it" in neg.feedback
    assert pos.feedback.startswith("This item was the next purchase of 1 evaluation users; its mean rank was 5.0")
    assert pos.feedback.endswith(f"Ranked first for those users instead: {items[1].title}.")
    records, counts = run_critic(tiny_generator(vlm, 2, 8), requests, templates)
    assert [r.item_id for r in records] == [tokens[2], tokens[3]] and counts["fallback"] == 2
    with pytest.raises(ValueError, match="no prompt"):
        build_requests(selection, stats, r, tokens, items, prompts[:1], demo, feedback_k=(1, 2))
