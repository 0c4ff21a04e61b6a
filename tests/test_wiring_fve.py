"""FVE wiring that the unit tests of each piece cannot see:

* the feedback that drives the prompt rewrites is computed on the validation users (never the test
  users), on the fresh path (feedback right after training) and on the resumed path (a later call
  that reloads the saved backbone);
* a critic answer that hit the token limit is never accepted, even when what was generated parses;
* the review hold-out drops each user's last two interactions by timestamp, not by file order.

docs/testing.md lists these among the swap points of the package.
"""

import csv
import json
import os
import random

import numpy as np
import pytest

from recbole_reveal import build_config, create_dataset
from recbole_reveal.data.feature_store import save_item_features
from recbole_reveal.data.synthetic import generate_dataset
from recbole_reveal.fve.critic.critic import CriticRequest, run_critic
from recbole_reveal.fve.critic.generation.transformers_backend import TransformersGenerator
from recbole_reveal.fve.loop.run import run_fve
from recbole_reveal.fve.prompts.templates import build_initial_prompts, load_templates
from recbole_reveal.fve.vlm.load import load_vlm
from recbole_reveal.testing.vlms import build_scripted_qwen2_5_vl, build_tiny_qwen2_5_vl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "fvewiring"


# -- feedback on the validation users ------------------------------------------------------------
def leave_one_out_targets(inter_path):
    """``{user token: (validation target, test target)}``: each user's second-to-last and last item
    by timestamp, read from the .inter file itself."""
    per_user = {}
    with open(inter_path, encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        header = [c.split(":")[0] for c in next(rows)]
        u, i, t = header.index("user_id"), header.index("item_id"), header.index("timestamp")
        for row in rows:
            per_user.setdefault(row[u], []).append((float(row[t]), row[i]))
    return {user: (sorted(ev)[-2][1], sorted(ev)[-1][1]) for user, ev in per_user.items()}


def ranked_pairs(run_dir, cfg):
    """(user token, target token) of every row of cycle 0's saved rankings, and the saved recall."""
    config = build_config("M3SRec_REVEAL", NAME, config_dict=dict(cfg, vision_feature="fve/cycle_0"))
    users = create_dataset(config).field2id_token["user_id"]
    with np.load(os.path.join(run_dir, "cycle_0", "rankings.npz")) as z:
        items = [str(t) for t in z["item_tokens"]]
        pairs = {(str(users[u]), items[t]) for u, t in zip(z["users"], z["targets"])}
    with open(os.path.join(run_dir, "cycle_0", "feedback.json"), encoding="utf-8") as f:
        return pairs, json.load(f)["valid_recall@k2"]


def test_feedback_ranks_the_validation_users_on_the_fresh_and_the_resumed_path(tmp_path):
    root = str(tmp_path / "data")
    generate_dataset(root, NAME, n_users=40, n_items=24, seed=3, image_size=48)
    tokens = [line.split("\t")[0] for line in open(os.path.join(root, NAME, f"{NAME}.item")).read().splitlines()[1:]]
    fdir = str(tmp_path / "features")
    save_item_features(fdir, "text_minilm", tokens, np.random.default_rng(0).normal(size=(len(tokens), 8)))
    cfg = {
        "data_path": root, "feature_dir": fdir, "vlm_path": build_tiny_qwen2_5_vl(str(tmp_path / "vlm")),
        "fve_device": "cpu", "fve_cycles": 1, "fve_preprocess_workers": 0, "fve_vision_cache_mb": 16,
        "epochs": 1, "hidden_size": 8, "inner_size": 16, "n_heads": 2, "train_batch_size": 128,
        "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 8, "show_progress": False, "fve_exposure_k": 20,
    }
    truth = leave_one_out_targets(os.path.join(root, NAME, f"{NAME}.inter"))
    valid = {(u, v) for u, (v, _) in truth.items()}
    test = {(u, t) for u, (_, t) in truth.items()}
    assert len(valid - test) >= len(valid) // 2, "validation and test targets must differ to tell them apart"

    # resumed path: training in one call, the feedback in the next (the backbone is reloaded)
    first = run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, fve_stop_after="cycle_0/train"))
    resumed = run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    assert resumed["executed"] == ["cycle_0/feedback"]
    pairs, recall = ranked_pairs(first["run_dir"], cfg)
    assert pairs == valid
    assert recall == pytest.approx(resumed["table"][0]["valid"]["recall@20"])

    # fresh path: with the backbone gone, training and feedback run in the same call
    os.remove(os.path.join(first["run_dir"], "cycle_0", "model.pth"))
    fresh = run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    assert fresh["executed"] == ["cycle_0/train", "cycle_0/feedback"]
    pairs, recall = ranked_pairs(first["run_dir"], cfg)
    assert pairs == valid
    assert recall == pytest.approx(fresh["table"][0]["valid"]["recall@20"])


# -- the critic's token limit --------------------------------------------------------------------
NEW_PROMPT = "A red mug with a curved handle."
PIECES = ["ANALYSIS:", " The handle is hidden.\n", "NEW_PROMPT:", " A red mug", " with a curved handle."]


@pytest.fixture(scope="module")
def scripted_folder(tmp_path_factory):
    return build_scripted_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "scripted"), PIECES)


@pytest.fixture(scope="module")
def scripted_vlm(scripted_folder):
    return load_vlm(scripted_folder, device="cpu")


def _generator(vlm, max_new_tokens):
    return TransformersGenerator(vlm, max_new_tokens=max_new_tokens, max_pixels=112 * 112)


def _mug_request():
    image = os.path.join(REPO, "dataset_atomic", "synthetic-demo", "images", "i0001.png")
    return [CriticRequest("i1", image, "An item image of a mug.", "pos", "It was ranked 30th.")]


def test_an_answer_cut_by_the_token_limit_is_never_accepted(scripted_vlm):
    requests = _mug_request()
    templates = load_templates()
    # the whole answer and its end of turn: accepted
    done, counts = run_critic(_generator(scripted_vlm, len(PIECES) + 1), requests, templates)
    assert counts["accepted"] == counts["changed"] == 1 and done[0].new_prompt == NEW_PROMPT
    # cut inside the new prompt: what came out still parses ("A red mug"), and must not be used
    cut, counts = run_critic(_generator(scripted_vlm, len(PIECES) - 1), requests, templates)
    assert cut[0].raw_answer.endswith("NEW_PROMPT: A red mug")
    assert cut[0].fallback.startswith("truncated") and cut[0].new_prompt == requests[0].prompt
    assert counts["fallback: truncated"] == 1 and counts.get("accepted", 0) == 0


def test_special_tokens_of_the_vlms_own_tokenizer_are_refused(scripted_folder):
    """Not only Qwen's chat tokens: any special token of the loaded tokenizer in an answer means the
    answer is not plain text."""
    vlm = load_vlm(scripted_folder, device="cpu")
    vlm.tokenizer.add_special_tokens({"additional_special_tokens": [PIECES[-1]]}, replace_extra_special_tokens=False)
    records, counts = run_critic(_generator(vlm, len(PIECES) + 1), _mug_request(), load_templates())
    assert records[0].fallback.startswith("special tokens") and counts["fallback: special tokens"] == 1


# -- the review hold-out -------------------------------------------------------------------------
def test_review_hold_out_follows_timestamps_not_file_order(tmp_path):
    """Each user's last two interactions by time are the evaluation targets; a user's own .inter
    file is often not sorted by time."""
    folder = tmp_path / "shuffled"
    folder.mkdir()
    (folder / "shuffled.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(
        f"{item}\tthing_{item}\n" for item in "abcd"))
    # per user: a(t=1) b(t=2) c(t=3) d(t=4); words name the interaction's time order
    events = [(u, item, t) for u in ("u1", "u2", "u3") for t, item in enumerate("abcd", start=1)]
    random.Random(4).shuffle(events)
    last_two_in_file = {u: set([item for user, item, _ in events if user == u][-2:]) for u in ("u1", "u2", "u3")}
    assert any(items != {"c", "d"} for items in last_two_in_file.values()), "file order must not be time order"
    with open(folder / "shuffled.inter", "w", encoding="utf-8") as inter, \
            open(folder / "shuffled.review", "w", encoding="utf-8") as review:
        inter.write("user_id:token\titem_id:token\ttimestamp:float\n")
        review.write("user_id:token\titem_id:token\ttimestamp:float\treview:token\n")
        for user, item, t in events:
            inter.write(f"{user}\t{item}\t{t}\n")
            review.write(f"{user}\t{item}\t{t}\t{'early' if t <= 2 else 'evaluation'} words\n")
    keywords = {r["item_id"]: r["keywords"] for r in build_initial_prompts("shuffled", str(tmp_path))}
    # items a and b were reviewed before the evaluation targets c and d of every user
    assert keywords == {"a": ["early", "words"], "b": ["early", "words"], "c": [], "d": []}
