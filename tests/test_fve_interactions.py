"""FVE in interaction scope (paper §4.3.3) on tiny generated data with the tiny random / scripted Qwen2.5-VL:
one prompt and embedding per interaction read at history positions, item-level features for candidates and
targets; no target's review reaches a feature its prediction reads (the leak tests); resume and caches."""

import filecmp
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from recbole_reveal.data.atomic import read_atomic
from recbole_reveal.data.feature_store import load_item_features, save_item_features
from recbole_reveal.data.synthetic import generate_dataset
from recbole_reveal.fve.loop.run import run_fve
from recbole_reveal.fve.prompts.interactions import (
    derive_tokens, instantiate, interaction_keywords, read_interactions, read_keywords,
)
from recbole_reveal.fve.prompts.records import ItemMeta
from recbole_reveal.fve.prompts.templates import load_templates
from recbole_reveal.testing.vlms import build_scripted_qwen2_5_vl, build_tiny_qwen2_5_vl
from recbole_reveal.config import build_config
from recbole_reveal.training import close_run_logs, prepare_run

NAME = "fveinter"
NEW_PROMPT = "Describe the fabric, colour and shape of this product."
ANSWER = ["ANALYSIS:", " The image hides the material.\n", "NEW_PROMPT:", " " + NEW_PROMPT]


def make_data(root, edit_reviews=None):
    """A tiny generated dataset (24 users, 12 items, 32x32 images); ``edit_reviews(rows)`` may rewrite the
    review rows ``[user, item, timestamp, text]`` in place."""
    generate_dataset(root, NAME, n_users=24, n_items=12, seed=11, image_size=32)
    if edit_reviews is not None:
        path = os.path.join(root, NAME, f"{NAME}.review")
        columns, types, rows = read_atomic(path)
        edit_reviews(rows)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\t".join(f"{c}:{t}" for c, t in zip(columns, types)) + "\n")
            f.writelines("\t".join(r) + "\n" for r in rows)
    return root


def feature_dir(root, folder):
    """A feature folder of its own with random 8-d text features."""
    items = [r[0] for r in read_atomic(os.path.join(root, NAME, f"{NAME}.item"))[2]]
    text = np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32)
    save_item_features(str(folder), "text_minilm", items, text)
    return str(folder)


def config(root, vlm, fdir, **extra):
    return dict({
        "data_path": root, "feature_dir": fdir, "vlm_path": vlm, "fve_device": "cpu", "fve_cycles": 2,
        "fve_preprocess_workers": 0, "fve_vision_cache_mb": 64, "fve_rewrite_max_new_tokens": 12,
        "fve_rewrite_batch_size": 8, "fve_rewrite_fraction": 0.25, "epochs": 2, "hidden_size": 16,
        "inner_size": 32, "n_heads": 2, "train_batch_size": 128, "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 10,
        "stopping_step": 100, "show_progress": False, "topk": [5, 10], "valid_metric": "NDCG@10",
    }, **extra)


def last_two(rows):
    """Per user, the review rows of the last (test) and second-last (validation) interaction."""
    by_user = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    return [sorted(r, key=lambda x: float(x[2]))[-1] for r in by_user.values()], \
        [sorted(r, key=lambda x: float(x[2]))[-2] for r in by_user.values()]


@pytest.fixture(scope="module")
def scripted_vlm(tmp_path_factory):
    return build_scripted_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "scripted"), ANSWER)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def full_run(data_root, scripted_vlm, tmp_path_factory):
    fdir = feature_dir(data_root, tmp_path_factory.mktemp("features"))
    cfg = config(data_root, scripted_vlm, fdir)
    return cfg, run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)


# ---- units ------------------------------------------------------------------------------------------
def test_tokens_history_flags_and_an_explicit_field(tmp_path):
    assert derive_tokens(["u1", "u1", "u1"], ["i1", "i1", "i2"], [5.0, 5.0, 7.5]) == \
        ["u1:i1:5", "u1:i1:5#2", "u1:i2:7.5"]
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    "u1\ti1\t3\nu2\ti1\t1\nu1\ti2\t2\nu1\ti3\t3\n")
    inter = read_interactions(str(path))
    assert [it.token for it in inter] == ["u1:i1:3", "u2:i1:1", "u1:i2:2", "u1:i3:3"]
    # each user's last by timestamp, ties by file order: u1's i3 (line 4), u2's only interaction
    assert [it.history for it in inter] == [True, False, True, False]
    assert [it.role for it in inter] == ["valid", "test", "train", "test"]
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\tinteraction_id:token\n"
                    "u1\ti1\t3\ta\nu2\ti1\t1\tb\n")
    assert [it.token for it in read_interactions(str(path))] == ["a", "b"]
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\tinteraction_id:token\nu1\ti1\t3\ta\nu2\ti1\t1\ta\n")
    with pytest.raises(ValueError, match="repeated"):
        read_interactions(str(path))


def test_keywords_come_from_the_interactions_own_review_and_never_a_test_review(tmp_path):
    inter, review = tmp_path / "x.inter", tmp_path / "x.review"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\t2\nu2\ti1\t1\nu2\ti2\t2\n")
    review.write_text("user_id:token\titem_id:token\ttimestamp:float\treview:token\n"
                      "u1\ti1\t1\tblue blue zipper\nu1\ti2\t2\tsecret secret\nu2\ti1\t1\tred straps red\n"
                      "u3\ti9\t4\tunmatched\n")
    keywords, stats = interaction_keywords(str(review), read_interactions(str(inter)), top_k=5)
    assert keywords == {"u1:i1:1": ["blue", "zipper"], "u2:i1:1": ["red", "straps"]}
    assert stats == {"used": 2, "test_skipped": 1, "unmatched": 1}


def test_item_level_reviews_give_every_interaction_its_items_prompt_and_a_bad_file_is_one_error(tmp_path, caplog):
    from recbole_reveal.infra.errors import ConfigError

    inter, review = tmp_path / "x.inter", tmp_path / "x.review"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\t2\n")
    review.write_text("item_id:token\treview:token\ni1\tblue zipper\n")          # item level: no user
    with caplog.at_level(logging.WARNING, logger="recbole_reveal.fve.prompts.interactions"):
        assert interaction_keywords(str(review), read_interactions(str(inter)))[0] == {}
    assert "names no user" in caplog.text and "fve_prompt_scope: item" in caplog.text
    review.write_text("user_id:token\titem_id:token\ttext:token\nu1\ti1\tblue\n")
    with pytest.raises(ConfigError, match=r"x\.review has no review column"):
        interaction_keywords(str(review), read_interactions(str(inter)))


def test_prompt_instantiation_follows_the_item_prompt():
    templates = load_templates()
    item = ItemMeta("i1", "Vertex backpack", ("Bags", "Backpacks"), "Vertex", "images/i1.png")
    initial = ("An item image of a Backpacks. Item name: Vertex backpack. Users often mention: x. "
               "Focus on the overall appearance of the item.")
    # before any rewrite: the interaction's keywords fill the template (the paper's template verbatim)
    assert instantiate(item, initial, initial, ["blue", "zipper"], templates) == (
        "An item image of a Backpacks. Item name: Vertex backpack. Users often mention: blue, zipper. "
        "Focus on the overall appearance of the item.")
    # after a rewrite: the shared interaction clause adds them
    assert instantiate(item, NEW_PROMPT, initial, ["blue"], templates) == NEW_PROMPT + " Users often mention: blue."
    assert instantiate(item, NEW_PROMPT, initial, [], templates) == NEW_PROMPT


# ---- the loop ------------------------------------------------------------------------------------------
def test_interaction_scope_end_to_end(full_run, data_root):
    cfg, out = full_run
    fdir, inter = cfg["feature_dir"], read_interactions(os.path.join(data_root, NAME, f"{NAME}.inter"))
    history = [it for it in inter if it.history]
    c0, c1 = out["table"]
    # every history interaction encoded once (a prompt repeated across the train / valid calls: a cache hit)
    assert c0["interactions"] == len(history)
    assert c0["interactions_reencoded"] + c0["interaction_cache_hits"] == len(history)
    assert c0["interactions_reencoded"] > 0.9 * len(history)
    assert c0["items_reencoded"] == 12 and c0["vision_passes"] == 12      # the vision tower once per image
    assert c0["lm_passes"] <= 12 + len(history) and c0["tflop"] > 0 and c0["est_gpu_s"] > 0
    tokens, matrix = load_item_features(fdir, "fve/interactions_cycle_0")
    assert tokens == [it.token for it in inter]                            # every interaction has a row
    items = dict(zip(*load_item_features(fdir, "fve/cycle_0")))
    rows = dict(zip(tokens, matrix))
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    for it in inter:
        if not it.history:                                                 # a user's last: the item's row
            assert np.array_equal(rows[it.token], items[it.item])
    keywords = read_keywords(os.path.join(fdir, "fve", "interaction_keywords.jsonl"))
    assert set(keywords) <= {it.token for it in history}
    assert sum(not np.allclose(rows[it.token], items[it.item], atol=1e-6) for it in history) > 0.9 * len(history)
    # cycle 1: the critic rewrote the selected items; their interactions' prompts change (the clause),
    # the others come from the cache, and the vision tower does not run again
    selected = c0["selected"]
    assert c1["prompts_changed"] == selected == 3 and c1["items_reencoded"] == selected
    rewritten = {r["item_id"] for r in __import__("json").load(
        open(os.path.join(out["run_dir"], "cycle_0", "feedback.json")))["selection"]}
    n_rewritten = sum(it.item in rewritten for it in history)
    assert c1["interaction_prompts_changed"] == n_rewritten
    assert c1["interactions_reencoded"] + c1["interaction_cache_hits"] == len(history)
    assert n_rewritten - 3 <= c1["interactions_reencoded"] <= n_rewritten and c1["vision_passes"] == 0
    assert "inter. changed" in out["table_text"] and "est. s on 8x4090" in out["table_text"]
    # the backbone read the interaction-level features
    log = open(os.path.join(out["run_dir"], "fve.log"), encoding="utf-8").read()
    assert "never called history_vision_features" not in log


def test_a_second_run_on_the_same_cache_encodes_nothing_and_reproduces_the_table(full_run, tmp_path):
    cfg, out = full_run
    again = run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, fve_run_dir=str(tmp_path / "run2")))
    assert [r["lm_passes"] for r in again["table"]] == [0, 0]
    assert [r["interaction_cache_hits"] for r in again["table"]] == [r["interactions"] for r in out["table"]]
    for a, b in zip(again["table"], out["table"]):
        assert a["valid"] == b["valid"] and a["test"] == b["test"]


def test_resume_in_interaction_scope_gives_the_same_files(full_run, data_root, scripted_vlm, tmp_path):
    """Stopped after cycle 0's encoding, then resumed: cycle 0's sets are byte-identical; cycle 1 re-encodes
    the rewritten items' interactions in a new process, whose vision-tower outputs are recomputed in other
    batches than the uninterrupted run kept in memory, so they agree to float noise (docs/fve.md)."""
    cfg, out = full_run
    fdir = feature_dir(data_root, tmp_path / "features")
    resumed = config(data_root, scripted_vlm, fdir, fve_cache_dir=str(tmp_path / "cache"))
    first = run_fve("M3SRec_REVEAL", NAME, config_dict=dict(resumed, fve_stop_after="cycle_0/encode"))
    assert first["stopped_after"] == "cycle_0/encode"
    second = run_fve("M3SRec_REVEAL", NAME, config_dict=resumed)
    assert second["executed"][0] == "cycle_0/train"
    for name in ("fve/interactions_cycle_0", "fve/cycle_0"):
        for ext in (".npy", ".items"):
            assert filecmp.cmp(os.path.join(fdir, name + ext), os.path.join(cfg["feature_dir"], name + ext),
                               shallow=False), name + ext
    for name in ("fve/interactions_cycle_1", "fve/cycle_1"):
        ours, theirs = load_item_features(fdir, name), load_item_features(cfg["feature_dir"], name)
        assert ours[0] == theirs[0]
        np.testing.assert_allclose(ours[1], theirs[1], atol=1e-5)
    assert second["table"][0]["valid"] == out["table"][0]["valid"]
    assert [r["interactions_reencoded"] for r in second["table"]] == [r["interactions_reencoded"] for r in out["table"]]


def test_a_custom_stop_word_file_reaches_the_interaction_keywords(data_root, scripted_vlm, tmp_path):
    """``fve_stopwords`` replaces the built-in list for the interactions' keywords as for the items'."""
    from collections import Counter

    from recbole_reveal.fve.prompts.keywords import ENGLISH_STOP_WORDS

    def init_keywords(name, **extra):
        fdir = feature_dir(data_root, tmp_path / name)
        run_fve("M3SRec_REVEAL", NAME, config_dict=config(data_root, scripted_vlm, fdir, fve_stop_after="init",
                                                          fve_run_dir=str(tmp_path / f"run_{name}"), **extra))
        return read_keywords(os.path.join(fdir, "fve", "interaction_keywords.jsonl"))

    default = init_keywords("default")
    common = Counter(w for words in default.values() for w in words).most_common(2)
    stop_file = tmp_path / "stop.txt"
    stop_file.write_text("# the built-in list and two frequent review words\n"
                         + "\n".join(sorted(ENGLISH_STOP_WORDS) + [w.upper() for w, _ in common]) + "\n")
    custom = init_keywords("custom", fve_stopwords=str(stop_file))
    dropped = {w for w, _ in common}
    assert set(custom) <= set(default) and sum(map(len, custom.values())) > 0
    assert not any(dropped & set(words) for words in custom.values())
    for token, words in default.items():                  # the other words keep their order
        assert [w for w in words if w not in dropped] == custom.get(token, [])[:len(words) - len(dropped & set(words))]


# ---- two users, one item ---------------------------------------------------------------------------------
def test_same_item_in_two_histories_is_personal_exactly_when_the_reviews_differ(tmp_path):
    """Users A, B, C all have item X in their history; A and B wrote the same review of X, C another one. The
    history-side visual input the backbone reads at X (M3SRec, through history_vision_features) is the same
    for A and B and differs for C."""
    picked = {}

    def edit(rows):
        by_user, by_item = {}, {}
        for r in rows:
            by_user.setdefault(r[0], []).append(r)
        for user, mine in by_user.items():
            # history positions of the test prediction (the last 10 before it), the validation target excluded
            for r in sorted(mine, key=lambda x: float(x[2]))[-10:-2]:
                by_item.setdefault(r[1], {}).setdefault(user, r)
        item, users = max(by_item.items(), key=lambda kv: len(kv[1]))
        a, b, c = sorted(users)[:3]
        users[a][3] = users[b][3] = "sturdy zipper and bright blue straps"
        users[c][3] = "flimsy handle and faded red panels"
        picked.update(item=item, a=a, b=b, c=c)
        picked.update({f"token_{k}": f"{users[u][0]}:{item}:{users[u][2]}" for k, u in zip("abc", (a, b, c))})

    root = make_data(str(tmp_path / "data"), edit)
    vlm = build_tiny_qwen2_5_vl(str(tmp_path / "vlm"))
    fdir = feature_dir(root, tmp_path / "features")
    cfg = config(root, vlm, fdir, fve_cycles=1, fve_stop_after="cycle_0/encode")
    run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    train_cfg = dict(cfg, vision_feature="fve/cycle_0", vision_interaction_feature="fve/interactions_cycle_0",
                     vision_feature_dim=64)
    train_cfg.pop("fve_stop_after")
    _, (_, _, test), model, _ = prepare_run(build_config("M3SRec_REVEAL", NAME, config_dict=train_cfg))
    close_run_logs()
    data = test._dataset
    uid = {t: i for i, t in enumerate(data.field2id_token["user_id"])}
    iid = {t: i for i, t in enumerate(data.field2id_token[data.interaction_field])}
    x = int(np.where(data.field2id_token["item_id"] == picked["item"])[0][0])
    feat = data.inter_feat
    seqs, inters = feat["item_id_list"], feat[model.INTERACTION_SEQ]
    seen = {}
    for who in ("a", "b", "c"):
        row = int(torch.nonzero(feat["user_id"] == uid[picked[who]])[-1])    # the user's test prediction
        pos = int(torch.nonzero(inters[row] == iid[picked[f"token_{who}"]])[0])   # the edited interaction
        assert int(seqs[row, pos]) == x
        with torch.no_grad():
            vision = model.history_vision_features(seqs[row:row + 1], inters[row:row + 1],
                                                   model.vision_mean_table(seqs[row:row + 1]))
        seen[who] = vision[0, pos].numpy()
    item_level = data.item_features["vision"][x].numpy()
    assert np.array_equal(seen["a"], seen["b"])
    assert not np.allclose(seen["a"], seen["c"], atol=1e-5)
    assert not np.allclose(seen["a"], item_level, atol=1e-5) and not np.allclose(seen["c"], item_level, atol=1e-5)


# ---- leaks --------------------------------------------------------------------------------------------
def _run_one_cycle(tmp_path, tag, vlm, edit=None):
    root = make_data(str(tmp_path / f"data_{tag}"), edit)
    fdir = feature_dir(root, tmp_path / f"features_{tag}")
    out = run_fve("M3SRec_REVEAL", NAME, config_dict=config(root, vlm, fdir, fve_cycles=1))
    features = {name: load_item_features(fdir, name) for name in ("fve/cycle_0", "fve/interactions_cycle_0")}
    state = torch.load(os.path.join(out["run_dir"], "cycle_0", "model.pth"))
    return out["table"][0], features, state, root


def _rewrite(rows, targets, text):
    keys = {(r[0], r[1], r[2]) for r in targets}
    for r in rows:
        if (r[0], r[1], r[2]) in keys:
            r[3] = text


@pytest.fixture(scope="module")
def leak_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leak")
    vlm = build_tiny_qwen2_5_vl(str(tmp / "vlm"))
    other = "horrible purple dragon umbrella dragon purple"
    return {
        "base": _run_one_cycle(tmp, "base", vlm),
        "test": _run_one_cycle(tmp, "test", vlm, lambda rows: _rewrite(rows, last_two(rows)[0], other)),
        "valid": _run_one_cycle(tmp, "valid", vlm, lambda rows: _rewrite(rows, last_two(rows)[1], other)),
    }


def test_a_test_targets_review_reaches_no_feature_and_no_prediction(leak_runs):
    """Rewriting every user's test review changes no row of either feature set (items: the review is held
    out; interactions: a user's last one is never encoded), hence not the trained weights nor a metric."""
    base, test = leak_runs["base"], leak_runs["test"]
    for name, (tokens, matrix) in base[1].items():
        assert test[1][name][0] == tokens and np.array_equal(test[1][name][1], matrix), name
    assert all(torch.equal(base[2][k], test[2][k]) for k in base[2])
    assert base[0]["valid"] == test[0]["valid"] and base[0]["test"] == test[0]["test"]


def test_a_validation_targets_review_reaches_only_test_time_histories(leak_runs):
    """Rewriting every user's validation review: item features unchanged (held out); interaction rows
    change only for the validation interactions, which are history only when predicting the test target.
    Training and validation read none of them: identical weights and validation metrics."""
    base, valid = leak_runs["base"], leak_runs["valid"]
    root = base[3]
    inter = read_interactions(os.path.join(root, NAME, f"{NAME}.inter"))
    held = {(r[0], r[1], r[2]) for r in last_two(read_atomic(os.path.join(root, NAME, f"{NAME}.review"))[2])[1]}
    validation = {it.token for it in inter if it.role == "valid"}
    assert validation == {it.token for it in inter if (it.user, it.item, f"{int(it.timestamp)}") in held}
    assert len(validation) == 24
    assert np.array_equal(base[1]["fve/cycle_0"][1], valid[1]["fve/cycle_0"][1])
    tokens, a = base[1]["fve/interactions_cycle_0"]
    b = valid[1]["fve/interactions_cycle_0"][1]
    changed = {t for t, x, y in zip(tokens, a, b) if not np.array_equal(x, y)}
    assert changed and changed <= validation                 # the review does reach test-time history...
    assert all(torch.equal(base[2][k], valid[2][k]) for k in base[2])
    assert base[0]["valid"] == valid[0]["valid"]               # ...and nothing before it


# ---- backbones ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["M3SRec_REVEAL", "MISSRec_REVEAL", "HM4SR_REVEAL",
                                   "examples/custom_backbone/mmgru4rec.py:MMGRU4Rec_REVEAL"])
def test_every_backbone_reads_history_features_and_candidates_stay_item_level(full_run, model):
    """With the interaction set loaded, each backbone's scores move when a history interaction's row moves,
    and do not when only a row never at a history position (a user's last interaction) moves."""
    cfg, _ = full_run
    train_cfg = dict(cfg, vision_feature="fve/cycle_0", vision_interaction_feature="fve/interactions_cycle_0",
                     vision_feature_dim=64)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    name = os.path.join(root, model) if model.startswith("examples/") else model
    _, (_, _, test_data), net, _ = prepare_run(build_config(name, NAME, config_dict=train_cfg))
    close_run_logs()
    net.eval()
    batch = next(iter(test_data))[0].to(net.device if hasattr(net, "device") else "cpu")
    with torch.no_grad():
        before = net.full_sort_predict(batch)
    assert net.reads_history_vision
    table, items = net._history_tables
    dataset = test_data._dataset
    last = [i for i, t in enumerate(dataset.field2id_token[dataset.interaction_field]) if i and t in
            {it.token for it in read_interactions(os.path.join(cfg["data_path"], NAME, f"{NAME}.inter"))
             if not it.history}]
    saved = table.clone()
    table[last] += 1.0                         # rows no history reads: no effect
    with torch.no_grad():
        assert torch.equal(net.full_sort_predict(batch), before)
    hist = batch[net.INTERACTION_SEQ]
    table[hist[hist > 0].unique()] += 1.0      # the rows this batch's histories read
    with torch.no_grad():
        assert not torch.allclose(net.full_sort_predict(batch), before)
    table.copy_(saved)


def test_a_backbone_without_the_contract_keeps_working_and_is_named_in_the_log(full_run, tmp_path, caplog):
    """A backbone that never calls history_vision_features trains on item-level features; the loop says so."""
    model_file = tmp_path / "plain.py"
    model_file.write_text(
        "from recbole_reveal.model.reveal import REVEAL\n"
        "from recbole_reveal.model.sequential_recommender.m3srec import M3SRec\n\n\n"
        "class ItemOnly(M3SRec):\n"
        "    def interaction_seq(self, interaction):\n"
        "        return None\n\n\n"
        "class ItemOnly_REVEAL(REVEAL, ItemOnly):\n"
        "    pass\n")
    cfg, _ = full_run
    fdir = feature_dir(cfg["data_path"], tmp_path / "features")
    with caplog.at_level(logging.WARNING, logger="recbole_reveal.fve"):
        out = run_fve(f"{model_file}:ItemOnly_REVEAL", NAME,
                      config_dict=dict(cfg, feature_dir=fdir, fve_cycles=1,
                                       fve_cache_dir=os.path.join(cfg["feature_dir"], "fve", "cache")))
    assert out["table"][0]["valid"]
    assert "ItemOnly_REVEAL never called history_vision_features" in caplog.text
    shutil.rmtree(fdir)


def test_the_history_table_can_stay_in_host_memory(full_run):
    """``fve_history_table_device: cpu`` gathers a batch's rows on the host: the same scores."""
    cfg, _ = full_run
    scores = {}
    for where in ("model", "cpu"):
        train_cfg = dict(cfg, vision_feature="fve/cycle_0", vision_interaction_feature="fve/interactions_cycle_0",
                         vision_feature_dim=64, fve_history_table_device=where)
        _, (_, _, test_data), net, _ = prepare_run(build_config("M3SRec_REVEAL", NAME, config_dict=train_cfg))
        close_run_logs()
        net.eval()
        with torch.no_grad():
            scores[where] = net.full_sort_predict(next(iter(test_data))[0])
        assert net._history_on_cpu == (where == "cpu")
    assert torch.equal(scores["model"], scores["cpu"])
