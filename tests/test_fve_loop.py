"""The FVE loop end to end on a tiny synthetic dataset with images and the tiny random Qwen2.5-VL:
two cycles, the embedding cache across cycles, a free re-run, resume after a clean stop between
stages (identical artefacts), and a changed config reported with the key's name.

The random VLM's critic answers are malformed (docs/fve.md), so every selected item keeps its prompt:
cycle 1 changes no prompt and re-encodes no item. That is asserted as such, not mocked away."""

import filecmp
import json
import logging
import os
import shutil

import numpy as np
import pytest

from recbole_reveal.data.feature_store import load_item_features, save_item_features
from recbole_reveal.data.synthetic import generate_dataset
from recbole_reveal.fve.critic.critic import read_critic_log
from recbole_reveal.fve.loop.run import run_fve, stage_names
from recbole_reveal.fve.prompts.records import read_prompts
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.testing.vlms import build_scripted_qwen2_5_vl, build_tiny_qwen2_5_vl

N_ITEMS = 24
NAME = "fveloop"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fve_loop_data"))
    generate_dataset(root, NAME, n_users=60, n_items=N_ITEMS, seed=7, image_size=64)
    return root


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory):
    return build_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "tiny"))


def feature_dir_with_text(data_root, folder):
    """A feature folder of its own per run (the loop writes fve/cycle_<x> there) with random text features."""
    tokens = [f"i{i:04d}" for i in range(N_ITEMS)]
    with open(os.path.join(data_root, NAME, f"{NAME}.item"), encoding="utf-8") as f:
        tokens = [line.split("\t")[0] for line in f.read().splitlines()[1:] if line]
    text = np.random.default_rng(0).normal(size=(len(tokens), 8)).astype(np.float32)
    save_item_features(str(folder), "text_minilm", tokens, text)
    return str(folder), tokens


def loop_config(data_root, vlm_folder, feature_dir, **extra):
    return dict({
        "data_path": data_root, "feature_dir": feature_dir, "vlm_path": vlm_folder, "fve_device": "cpu",
        "fve_cycles": 2, "fve_preprocess_workers": 0, "fve_vision_cache_mb": 64,
        "fve_rewrite_max_new_tokens": 8, "fve_rewrite_batch_size": 8, "fve_rewrite_fraction": 0.25,
        "epochs": 2, "hidden_size": 16, "inner_size": 32, "n_heads": 2, "train_batch_size": 128,
        "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 10, "stopping_step": 100, "show_progress": False,
    }, **extra)


@pytest.fixture(scope="module")
def full_run(data_root, vlm_folder, tmp_path_factory):
    fdir, tokens = feature_dir_with_text(data_root, tmp_path_factory.mktemp("features_a"))
    cfg = loop_config(data_root, vlm_folder, fdir)
    return cfg, run_fve("M3SRec_REVEAL", NAME, config_dict=cfg), tokens


def test_two_cycles_encode_train_and_rewrite(full_run):
    cfg, out, tokens = full_run
    fdir = cfg["feature_dir"]
    assert out["executed"] == stage_names(2) and out["stopped_after"] is None
    assert [r["cycle"] for r in out["table"]] == [0, 1]
    c0, c1 = out["table"]
    # cycle 0 encodes every item (fresh cache); both cycles trained and evaluated
    assert c0["prompts_changed"] == N_ITEMS and c0["items_reencoded"] == N_ITEMS and c0["cache_hits"] == 0
    # the backbone is re-initialised each cycle: identical features give identical metrics
    assert c0["valid"] == c1["valid"] and c0["test"] == c1["test"]
    import torch

    state = torch.load(os.path.join(out["run_dir"], "cycle_1", "model.pth"))
    assert tuple(state["vision_mean_table.weight"].shape) == (N_ITEMS + 1, 64)   # trained on the VLM features
    for row in out["table"]:
        assert 0.0 <= row["valid"]["ndcg@20"] <= 1.0 and 0.0 <= row["test"]["recall@20"] <= 1.0
        assert all(row["seconds"][k] is not None for k in ("encode", "train", "feedback"))
    assert c1["seconds"]["critic"] is None and c1["critic"] is None
    m0 = load_item_features(fdir, "fve/cycle_0")
    m1 = load_item_features(fdir, "fve/cycle_1")
    assert m0[1].shape == (N_ITEMS, 64) and sorted(m0[0]) == sorted(tokens)
    np.testing.assert_allclose(np.linalg.norm(m0[1], axis=1), 1.0, atol=1e-5)
    # the critic ran on the selected items; the random VLM's answers are all malformed -> fallbacks
    critic = read_critic_log(os.path.join(fdir, "fve", "critic_cycle_0.jsonl"))
    assert len(critic) == c0["selected"] == 6            # ceil(0.25 * 24), all with priority > 0
    assert c0["critic"]["fallback"] == len(critic) and c0["critic"].get("accepted", 0) == 0
    assert sum(v for k, v in c0["critic"].items() if k.startswith("fallback: ")) == len(critic)
    assert all(r.fallback and r.new_prompt == r.old_prompt for r in critic)
    p0 = read_prompts(os.path.join(fdir, "fve", "prompts_cycle_0.jsonl"))
    p1 = read_prompts(os.path.join(fdir, "fve", "prompts_cycle_1.jsonl"))
    assert [r["prompt"] for r in p0] == [r["prompt"] for r in p1]
    # unchanged prompts: nothing re-encoded in cycle 1, every row bit-identical
    assert c1["prompts_changed"] == 0 and c1["items_reencoded"] == 0 and c1["cache_hits"] == N_ITEMS
    r0, r1 = dict(zip(m0[0], m0[1])), dict(zip(m1[0], m1[1]))
    for t in tokens:
        assert np.array_equal(r0[t], r1[t]), t
    # the stage record and the table on disk
    state = json.load(open(os.path.join(out["run_dir"], "stages.json")))
    assert sorted(state["stages"]) == sorted(stage_names(2))
    assert json.load(open(os.path.join(out["run_dir"], "table.json"))) == out["table"]
    log = open(os.path.join(out["run_dir"], "fve.log"), encoding="utf-8").read()
    assert "FVE per-cycle table" in log and "kept the old prompt" in log and "FVE run cost" in log
    # the cost report (Table 7): FVE stages vs the backbone's training, saved in the run folder
    cost = out["cost"]
    assert cost["calls"]["fit"] == 2 and cost["calls"]["fve_encode"] == 2 and cost["calls"]["fve_critic"] == 1
    assert cost["fve_encode_s"] > 0 and cost["fit_s"] > 0 and cost["backbone_s"] >= cost["fit_s"]
    assert cost["peak_rss_mb"] > 0 and cost["cycles"] == 2
    assert json.load(open(out["cost_file"])) == cost


def test_rerun_of_a_finished_run_runs_nothing(full_run):
    cfg, out, _ = full_run
    npy = os.path.join(cfg["feature_dir"], "fve", "cycle_0.npy")
    mtime = os.stat(npy).st_mtime_ns
    again = run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    assert again["executed"] == [] and again["table"] == out["table"]
    assert "fit" not in again["cost"]["calls"] and again["cost"]["executed"] == 0
    assert os.stat(npy).st_mtime_ns == mtime


def test_changed_config_is_reported_with_its_key(full_run):
    cfg, _, _ = full_run
    with pytest.raises(ConfigError, match=r"learning_rate.*0\.001.*0\.005"):
        run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, learning_rate=0.005))
    with pytest.raises(ConfigError, match="fve_pooling"):
        run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, fve_pooling="last_token"))
    with pytest.raises(ConfigError, match="fve_stop_after must be one of"):
        run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, fve_stop_after="cycle_1/critic"))


def test_stop_between_stages_then_resume_gives_identical_artefacts(full_run, data_root, vlm_folder, tmp_path):
    cfg_a, out_a, _ = full_run
    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_b")
    cfg = loop_config(data_root, vlm_folder, fdir)
    first = run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, fve_stop_after="cycle_0/feedback"))
    assert first["stopped_after"] == "cycle_0/feedback"
    assert first["executed"] == ["init", "cycle_0/encode", "cycle_0/train", "cycle_0/feedback"]
    assert not os.path.exists(os.path.join(fdir, "fve", "cycle_1.npy"))
    # a second stop point on the way, then to the end
    second = run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, fve_stop_after="cycle_1/encode"))
    assert second["executed"] == ["cycle_0/critic", "cycle_1/encode"]
    rest = run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    assert rest["executed"] == ["cycle_1/train", "cycle_1/feedback"]
    strip = lambda rows: [dict(r, seconds=None) for r in rows]  # noqa: E731
    assert strip(rest["table"]) == strip(out_a["table"])
    a_fve, b_fve = os.path.join(cfg_a["feature_dir"], "fve"), os.path.join(fdir, "fve")
    for name in ("cycle_0.npy", "cycle_1.npy", "cycle_0.items", "prompts_cycle_0.jsonl", "prompts_cycle_1.jsonl",
                 "critic_cycle_0.jsonl", "run/cycle_0/feedback.json", "run/cycle_1/feedback.json"):
        assert filecmp.cmp(os.path.join(a_fve, name), os.path.join(b_fve, name), shallow=False), name
    for x in (0, 1):
        with np.load(os.path.join(a_fve, f"run/cycle_{x}/rankings.npz")) as za, \
                np.load(os.path.join(b_fve, f"run/cycle_{x}/rankings.npz")) as zb:
            for key in za.files:
                assert np.array_equal(za[key], zb[key]), (x, key)


def test_lost_artefact_reruns_from_its_stage(full_run, data_root, vlm_folder, tmp_path):
    cfg_a, _, _ = full_run
    fdir = str(tmp_path / "features_c")
    shutil.copytree(cfg_a["feature_dir"], fdir)
    cfg = dict(cfg_a, feature_dir=fdir)
    os.remove(os.path.join(fdir, "fve", "run", "cycle_1", "model.pth"))
    out = run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    assert out["executed"] == ["cycle_1/train", "cycle_1/feedback"]


def test_features_rewritten_by_another_run_are_detected_and_remade(full_run, tmp_path, caplog):
    cfg_a, out_a, _ = full_run
    fdir = str(tmp_path / "features_e")
    shutil.copytree(cfg_a["feature_dir"], fdir)
    npy = os.path.join(fdir, "fve", "cycle_1.npy")
    other = np.load(npy) * -1.0            # what another run sharing this feature_dir could leave there
    np.save(npy, other)
    with caplog.at_level(logging.WARNING):
        out = run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg_a, feature_dir=fdir))
    assert out["executed"] == ["cycle_1/encode", "cycle_1/train", "cycle_1/feedback"]
    assert "cycle_1.npy changed since it wrote them" in caplog.text
    assert filecmp.cmp(npy, os.path.join(cfg_a["feature_dir"], "fve", "cycle_1.npy"), shallow=False)
    strip = lambda rows: [dict(r, seconds=None, items_reencoded=None, cache_hits=None) for r in rows]  # noqa: E731
    assert strip(out["table"]) == strip(out_a["table"])


def test_more_cycles_extend_a_finished_run(full_run, tmp_path):
    cfg_a, out_a, _ = full_run
    fdir = str(tmp_path / "features_d")
    shutil.copytree(cfg_a["feature_dir"], fdir)
    out = run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg_a, feature_dir=fdir, fve_cycles=3))
    assert out["executed"] == ["cycle_1/critic", "cycle_2/encode", "cycle_2/train", "cycle_2/feedback"]
    assert out["table"][:1] == out_a["table"][:1] and len(out["table"]) == 3
    assert out["table"][2]["items_reencoded"] == 0 and out["table"][2]["cache_hits"] == N_ITEMS


def test_without_a_vlm_the_loop_says_what_to_download(data_root, tmp_path):
    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_e")
    cfg = loop_config(data_root, None, fdir)
    with pytest.raises(ConfigError, match="vlm_path.*hf download"):
        run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    assert not os.path.exists(os.path.join(fdir, "fve"))


def test_entry_script_runs_the_loop_when_a_vlm_is_configured(data_root, vlm_folder, tmp_path, capsys):
    import sys

    import yaml

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import run_recbole_reveal as script

    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_cli")
    cfg_file = tmp_path / "fve.yaml"
    cfg_file.write_text(yaml.safe_dump(loop_config(data_root, vlm_folder, fdir, fve_cycles=1)))
    code = script.main(["--model=M3SRec_REVEAL", f"--dataset={NAME}", f"--config_files={cfg_file}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "cycle" in out
    tokens, matrix = load_item_features(fdir, "fve/cycle_0")
    assert len(tokens) == N_ITEMS and matrix.shape[0] == N_ITEMS


# ---- accepted rewrites: a scripted VLM whose critic answer is always well-formed ---------------------
NEW_PROMPT = "Describe the fabric, colour and shape of this product."
ANSWER = ["ANALYSIS:", " The image hides the material.\n", "NEW_PROMPT:", " " + NEW_PROMPT]


@pytest.fixture(scope="module")
def scripted_vlm_folder(tmp_path_factory):
    return build_scripted_qwen2_5_vl(str(tmp_path_factory.mktemp("vlm") / "scripted"), ANSWER)


@pytest.fixture(scope="module")
def rewriting_run(data_root, scripted_vlm_folder, tmp_path_factory):
    fdir, tokens = feature_dir_with_text(data_root, tmp_path_factory.mktemp("features_rewrite"))
    cfg = loop_config(data_root, scripted_vlm_folder, fdir, fve_rewrite_max_new_tokens=12)
    return cfg, run_fve("M3SRec_REVEAL", NAME, config_dict=cfg), tokens


def test_accepted_rewrites_reencode_exactly_the_rewritten_items(rewriting_run):
    cfg, out, tokens = rewriting_run
    fdir = cfg["feature_dir"]
    c0, c1 = out["table"]
    critic = read_critic_log(os.path.join(fdir, "fve", "critic_cycle_0.jsonl"))
    assert len(critic) == c0["selected"] == 6
    assert c0["critic"]["accepted"] == 6 and c0["critic"].get("fallback", 0) == 0
    assert all(r.new_prompt == NEW_PROMPT and r.analysis == "The image hides the material." for r in critic)
    rewritten = {r.item_id for r in critic}
    p0 = {r["item_id"]: r["prompt"] for r in read_prompts(os.path.join(fdir, "fve", "prompts_cycle_0.jsonl"))}
    p1 = {r["item_id"]: r["prompt"] for r in read_prompts(os.path.join(fdir, "fve", "prompts_cycle_1.jsonl"))}
    assert {t for t in tokens if p0[t] != p1[t]} == rewritten and all(p1[t] == NEW_PROMPT for t in rewritten)
    # cycle 1 encodes the rewritten items only; the others come from the cache, bit-identical
    assert c1["prompts_changed"] == 6 and c1["items_reencoded"] == 6 and c1["cache_hits"] == N_ITEMS - 6
    m0, m1 = load_item_features(fdir, "fve/cycle_0"), load_item_features(fdir, "fve/cycle_1")
    r0, r1 = dict(zip(m0[0], m0[1])), dict(zip(m1[0], m1[1]))
    for t in tokens:
        if t in rewritten:   # the embedding depends on the prompt (fve_pooling image_after_prompt)
            assert not np.allclose(r0[t], r1[t], atol=1e-4), t
        else:
            assert np.array_equal(r0[t], r1[t]), t
    # new features -> a different backbone (re-initialised each cycle by default)
    assert c0["valid"] != c1["valid"]


def test_warm_start_continues_from_the_previous_cycle(rewriting_run, tmp_path):
    cfg, out, _ = rewriting_run
    fdir, _ = feature_dir_with_text(cfg["data_path"], tmp_path / "features_warm")
    warm_cfg = dict(cfg, feature_dir=fdir, fve_warm_start=True)
    warm = run_fve("M3SRec_REVEAL", NAME, config_dict=warm_cfg)
    # cycle 0 is the same either way; cycle 1 starts from cycle 0's weights instead of a fresh init
    assert warm["table"][0]["valid"] == out["table"][0]["valid"]
    assert warm["table"][1]["valid"] != out["table"][1]["valid"]
    log = open(os.path.join(warm["run_dir"], "fve.log"), encoding="utf-8").read()
    assert "warm start from cycle 0's backbone" in log and "vision_mean_table.weight" in log


def test_warm_start_loads_all_but_the_new_feature_tables(tiny_config):
    import torch

    from helpers import build_pipeline
    from recbole_reveal.fve.loop.stages import warm_start

    _, (train_data, _, _), fresh, _ = build_pipeline("M3SRec", tiny_config)
    _, _, other, _ = build_pipeline("M3SRec", dict(tiny_config, seed=7))
    previous = {k: v + 1.0 for k, v in other.state_dict().items()}     # stands for cycle x-1's weights
    vision = train_data._dataset.item_features["vision"]
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    kept = warm_start(fresh, previous, vision)
    assert kept == ["vision_cov_table.weight", "vision_mean_table.weight"]
    for key, value in fresh.state_dict().items():
        if key in kept:
            assert torch.equal(value, before[key]) and torch.equal(value, vision), key
        else:
            assert torch.equal(value, previous[key]), key
    # a feature table the model does not declare would carry the old features over: refused by name
    _, _, undeclared, _ = build_pipeline("M3SRec", tiny_config)
    undeclared.vision_feature_tables = ("vision_cov_table",)
    with pytest.raises(ConfigError, match="vision_mean_table.weight"):
        warm_start(undeclared, previous, vision)


def test_data_parallel_encoding_in_the_loop(full_run, data_root, vlm_folder, tmp_path):
    cfg, out, tokens = full_run
    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_dp")
    dp = run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, feature_dir=fdir, fve_cycles=1, fve_num_processes=2))
    row = dp["table"][0]
    assert row["items_reencoded"] == N_ITEMS and row["cache_hits"] == 0
    state = json.load(open(os.path.join(dp["run_dir"], "stages.json")))
    assert state["stages"]["cycle_0/encode"]["processes"] == 2
    single = dict(zip(*load_item_features(cfg["feature_dir"], "fve/cycle_0")))
    merged = dict(zip(*load_item_features(fdir, "fve/cycle_0")))
    for t in tokens:
        np.testing.assert_allclose(merged[t], single[t], atol=1e-5)


def test_your_own_backbone_runs_the_loop_with_warm_start(data_root, scripted_vlm_folder, tmp_path):
    """The example backbone of examples/custom_backbone, given by file path: the loop rebuilds it per
    cycle by name and its declared vision_feature_tables take each cycle's new features."""
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "examples", "custom_backbone", "mmgru4rec.py")
    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_own")
    cfg = loop_config(data_root, scripted_vlm_folder, fdir, fve_rewrite_max_new_tokens=12, fve_warm_start=True)
    out = run_fve(f"{example}:MMGRU4Rec_REVEAL", NAME, config_dict=cfg)
    c0, c1 = out["table"]
    assert c1["prompts_changed"] == 6 and c1["items_reencoded"] == 6
    log = open(os.path.join(out["run_dir"], "fve.log"), encoding="utf-8").read()
    assert "warm start from cycle 0's backbone" in log and "vision_table.weight" in log


# ---- the critic through an OpenAI-compatible endpoint (a real HTTP server on 127.0.0.1) -------------
def endpoint_answer(text):
    """A well-formed rewrite (in markdown, with a trailing note) for about half of the titles, a chatty
    non-answer for the others: which prompts change is decided by the server alone."""
    import re
    import zlib

    title = re.search(r'The image shows the item "([^"]*)"', text).group(1)
    if zlib.crc32(title.encode()) % 2:
        return "Sure, this prompt looks fine to me.", "stop"
    return (f"**ANALYSIS:** The prompt ignores the colour.\n\n**NEW_PROMPT:** A close photo of {title}, "
            "its colour and material.\n\nThis focuses on what buyers notice."), "stop"


def endpoint_config(data_root, vlm, fdir, url, **extra):
    """The vision-tower cache is off: with it, a later cycle's re-encoded items take their vision outputs
    from memory (computed with other images in one batch) in one process but recompute them after a
    restart, which changes them by float noise (docs/fve.md); without it, the run is bit-reproducible
    across a kill."""
    extra.setdefault("fve_vision_cache_mb", 0)
    return loop_config(data_root, vlm, fdir, **dict(dict(fve_generation_backend="endpoint", fve_generation_endpoint=url,
                                                         fve_generation_timeout=1.0, fve_generation_retries=2), **extra))


def data_root_of(fdir):
    return json.load(open(os.path.join(fdir, "fve", "run", "stages.json")))["config"]["data_path"]


@pytest.fixture(scope="module")
def endpoint_run(data_root, vlm_folder, tmp_path_factory):
    from openai_server import ScriptedServer

    fdir, tokens = feature_dir_with_text(data_root, tmp_path_factory.mktemp("features_endpoint"))
    with ScriptedServer(endpoint_answer, faults={0: "slow", 1: "500", 2: "drop"}, slow_s=2.0) as server:
        out = run_fve("M3SRec_REVEAL", NAME, config_dict=endpoint_config(data_root, vlm_folder, fdir, server.url))
        requests = list(server.requests)
    return fdir, out, requests


def test_the_loop_with_an_endpoint_changes_exactly_the_prompts_the_server_rewrote(endpoint_run):
    import zlib

    fdir, out, requests = endpoint_run
    c0, c1 = out["table"]
    critic = read_critic_log(os.path.join(fdir, "fve", "critic_cycle_0.jsonl"))
    titles = {t for t, _ in requests}
    assert len(critic) == c0["selected"] == 6 == len(titles)
    assert len(requests) == 6 + 3                       # the slow reply, the 500 and the dropped one retried once
    rewritten = {r.item_id for r in critic if r.fallback is None}
    p0 = {r["item_id"]: r["prompt"] for r in read_prompts(os.path.join(fdir, "fve", "prompts_cycle_0.jsonl"))}
    p1 = {r["item_id"]: r["prompt"] for r in read_prompts(os.path.join(fdir, "fve", "prompts_cycle_1.jsonl"))}
    assert {t for t in p0 if p0[t] != p1[t]} == rewritten
    from recbole_reveal.fve.prompts.records import read_items

    title_of = {it.item_id: it.title for it in read_items(os.path.join(data_root_of(fdir), f"{NAME}.item"))}
    well_formed = {t for t in titles if not zlib.crc32(t.encode()) % 2}
    assert 0 < len(well_formed) < 6 and {title_of[i] for i in rewritten} == well_formed
    for r in critic:
        if r.fallback is None:
            assert r.new_prompt == f"A close photo of {title_of[r.item_id]}, its colour and material."
            assert r.notes == ["markdown", "trailing text"]
        else:
            assert r.fallback == "missing NEW_PROMPT"
    assert c0["acceptance"] == {"accepted": len(rewritten), "answered": 6, "rate": round(len(rewritten) / 6, 4)}
    assert f"{len(rewritten)}/6 (" in out["table_text"]
    assert c1["prompts_changed"] == len(rewritten) == c1["items_reencoded"]


def test_transformers_and_endpoint_give_the_same_prompt_files(rewriting_run, data_root, scripted_vlm_folder, tmp_path):
    """The scripted VLM's answer through transformers, and the same answer from a server: the same files."""
    from openai_server import ScriptedServer

    cfg, out, _ = rewriting_run
    answer = read_critic_log(os.path.join(cfg["feature_dir"], "fve", "critic_cycle_0.jsonl"))[0].raw_answer
    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_same")
    with ScriptedServer(lambda text: (answer, "stop")) as server:
        run_fve("M3SRec_REVEAL", NAME, config_dict=endpoint_config(data_root, scripted_vlm_folder, fdir, server.url,
                                                                   fve_rewrite_max_new_tokens=12, fve_cycles=1))
        # one cycle has no critic: extend to the rewriting run's two cycles through the endpoint
        run_fve("M3SRec_REVEAL", NAME, config_dict=endpoint_config(data_root, scripted_vlm_folder, fdir, server.url,
                                                                   fve_rewrite_max_new_tokens=12, fve_stop_after="cycle_0/critic"))
    for name in ("prompts_cycle_1.jsonl", "critic_cycle_0.jsonl"):
        assert filecmp.cmp(os.path.join(cfg["feature_dir"], "fve", name), os.path.join(fdir, "fve", name),
                           shallow=False), name


KILLED_RUN = """
import json, sys, torch
torch.set_num_threads(1)
from recbole_reveal.fve.loop.run import run_fve
run_fve("M3SRec_REVEAL", sys.argv[1], config_dict=json.load(open(sys.argv[2])))
"""


def test_a_critic_killed_mid_stage_resumes_with_identical_artefacts(endpoint_run, data_root, vlm_folder, tmp_path):
    """A real process killed while its critic waits for the server, after two answers were logged; the
    rerun asks the server only for the other four and ends with the uninterrupted run's files.

    Synchronised on events, never on how fast the machine is: the server answers exactly two requests and
    holds the other four until released (never by itself), and the kill comes once the child has logged
    both answers and all four requests are held. The child's timeout is far beyond any wait here: a held
    request that timed out would be retried and then make the stage fail (not finish it)."""
    import subprocess
    import sys
    import time

    from openai_server import ScriptedServer

    ref_dir, ref, _ = endpoint_run
    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_killed")
    log = os.path.join(fdir, "fve", "run", "cycle_0", "critic_answers", "answers.jsonl")

    def logged():
        return open(log).read().count("\n") if os.path.isfile(log) else 0

    with ScriptedServer(endpoint_answer, hold_after=2) as server, open(tmp_path / "child.err", "w+") as err:
        cfg_file = tmp_path / "cfg.json"
        cfg_file.write_text(json.dumps(endpoint_config(data_root, vlm_folder, fdir, server.url,
                                                       fve_generation_timeout=3600.0)))
        proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, NAME, str(cfg_file)],
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + 1800          # only against a hang: the child's progress is awaited
            while not (server.held == 4 and logged() == 2):
                if proc.poll() is not None:
                    err.seek(0)
                    pytest.fail(f"the child ended (rc {proc.returncode}) with {logged()} answers logged and "
                                f"{server.held} requests held:\n{err.read()[-2000:]}")
                assert time.time() < deadline, "the run never reached its critic"
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait()
        assert logged() == 2 and len(server.requests) == 6
        stages = json.load(open(os.path.join(fdir, "fve", "run", "stages.json")))["stages"]
        assert "cycle_0/feedback" in stages and "cycle_0/critic" not in stages
        asked_before = len(server.requests)
        server.release()
        out = run_fve("M3SRec_REVEAL", NAME, config_dict=endpoint_config(data_root, vlm_folder, fdir, server.url))
        assert len(server.requests) - asked_before == 4            # the two logged answers are not asked again
    assert out["executed"] == ["cycle_0/critic", "cycle_1/encode", "cycle_1/train", "cycle_1/feedback"]
    strip = lambda rows: [dict(r, seconds=None) for r in rows]  # noqa: E731
    assert strip(out["table"]) == strip(ref["table"])
    for name in ("prompts_cycle_1.jsonl", "critic_cycle_0.jsonl", "cycle_0.npy", "cycle_1.npy",
                 "run/cycle_0/feedback.json", "run/cycle_1/feedback.json"):
        assert filecmp.cmp(os.path.join(ref_dir, "fve", name), os.path.join(fdir, "fve", name), shallow=False), name


def test_min_acceptance_stops_the_run_and_keeps_the_answers(full_run, tmp_path):
    """The random VLM's rewrites are never accepted: with fve_min_acceptance the critic stops the run
    unrecorded, its answers logged; a rerun with a lower threshold continues without generating again."""
    from recbole_reveal.fve.critic.critic import LowAcceptance

    cfg_a, _, _ = full_run
    fdir = str(tmp_path / "features_accept")
    shutil.copytree(cfg_a["feature_dir"], fdir)
    cfg = dict(cfg_a, feature_dir=fdir, fve_cycles=3, fve_stop_after="cycle_1/critic")
    with pytest.raises(LowAcceptance, match=r"0 of 6 rewrites accepted \(0%\).*fve_min_acceptance is 0.5"):
        run_fve("M3SRec_REVEAL", NAME, config_dict=dict(cfg, fve_min_acceptance=0.5))
    stages = json.load(open(os.path.join(fdir, "fve", "run", "stages.json")))["stages"]
    assert "cycle_1/critic" not in stages and not os.path.exists(os.path.join(fdir, "fve", "prompts_cycle_2.jsonl"))
    answers = os.path.join(fdir, "fve", "run", "cycle_1", "critic_answers", "answers.jsonl")
    logged = open(answers).read()
    assert logged.count("\n") == 6
    out = run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    assert out["executed"] == ["cycle_1/critic"] and open(answers).read() == logged     # nothing generated again
    assert out["table"][1]["acceptance"] == {"accepted": 0, "answered": 6, "rate": 0.0}


# ---- the critic's server checked before any stage; failures in fve.log (issue 24) ------------------------
def test_endpoint_problems_stop_the_run_before_any_stage(data_root, vlm_folder, tmp_path, monkeypatch):
    """An unset key variable, a URL that cannot work, https to a plain-HTTP server, a refused key, a model
    the server does not serve: each stops the run before ``init`` is recorded (not after cycle 0)."""
    from openai_server import ScriptedServer

    from recbole_reveal.fve.critic.generation.openai_http import EndpointError

    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_preflight")
    monkeypatch.delenv("FVE_UNSET_KEY", raising=False)
    monkeypatch.setenv("FVE_WRONG_KEY", "wrong")
    with ScriptedServer(endpoint_answer, api_key="sekret") as server:
        for extra, error, match in (
                ({"fve_generation_api_key_env": "FVE_UNSET_KEY"}, ConfigError, "FVE_UNSET_KEY, which is not set"),
                ({"fve_generation_endpoint": "http://[::1/v1"}, ConfigError, "is not a valid URL"),
                ({"fve_generation_endpoint": server.url.replace("http:", "https:")}, EndpointError, "TLS handshake"),
                ({"fve_generation_api_key_env": "FVE_WRONG_KEY"}, EndpointError, r"refused \(HTTP 401"),
        ):
            with pytest.raises(error, match=match):
                run_fve("M3SRec_REVEAL", NAME, config_dict=endpoint_config(data_root, vlm_folder, fdir, server.url,
                                                                           **extra))
            assert not os.path.exists(os.path.join(fdir, "fve", "run", "stages.json")), extra
        assert server.posts == 0
        log = open(os.path.join(fdir, "fve", "run", "fve.log"), encoding="utf-8").read().strip().splitlines()
        assert "FVE: the check of the critic's server failed: EndpointError: GET /models" in log[-1]


def test_the_command_line_prints_a_server_problem_as_one_line_with_rc_2(data_root, vlm_folder, tmp_path, capsys):
    import sys

    import yaml

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import run_recbole_reveal as script

    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_cli_preflight")
    cfg_file = tmp_path / "fve.yaml"
    cfg_file.write_text(yaml.safe_dump(endpoint_config(data_root, vlm_folder, fdir, "http://127.0.0.1:9/v1",
                                                       fve_generation_retries=0)))
    code = script.main(["--model=M3SRec_REVEAL", f"--dataset={NAME}", f"--config_files={cfg_file}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: GET /models at http://127.0.0.1:9/v1: connection failed") and "server running" in err[0]


def test_a_finished_run_needs_no_server_and_a_failed_stage_is_in_fve_log(endpoint_run, data_root, vlm_folder,
                                                                         tmp_path):
    """A finished run asks no server; extended by a cycle whose critic fails, the failure ends fve.log."""
    from openai_server import ScriptedServer

    from recbole_reveal.fve.critic.generation.endpoint import GenerationError

    ref_dir, _, _ = endpoint_run
    fdir = str(tmp_path / "features_failing")
    shutil.copytree(ref_dir, fdir)
    out = run_fve("M3SRec_REVEAL", NAME, config_dict=endpoint_config(data_root, vlm_folder, fdir, "http://127.0.0.1:9/v1"))
    assert out["executed"] == []
    with ScriptedServer(endpoint_answer, faults={k: "500" for k in range(6)}) as server:
        with pytest.raises(GenerationError, match="6 of 6 requests"):
            run_fve("M3SRec_REVEAL", NAME, config_dict=endpoint_config(data_root, vlm_folder, fdir, server.url, fve_cycles=3,
                                                                       fve_generation_retries=0))
    last = open(os.path.join(fdir, "fve", "run", "fve.log"), encoding="utf-8").read().strip().splitlines()[-1]
    assert "ERROR" in last and "FVE: stage cycle_1/critic failed: GenerationError: FVE critic: 6 of 6 requests" in last


def test_a_truncated_weight_file_is_refused_before_init_and_the_repaired_folder_resumes(data_root, vlm_folder,
                                                                                        tmp_path):
    from recbole_reveal.fve.vlm.folder import VLMUnavailable

    folder = shutil.copytree(vlm_folder, str(tmp_path / "vlm_download"))
    weights = os.path.join(folder, "model.safetensors")
    whole = open(weights, "rb").read()
    with open(weights, "wb") as f:
        f.write(whole[:-4096])                      # an interrupted download
    fdir, _ = feature_dir_with_text(data_root, tmp_path / "features_truncated")
    cfg = loop_config(data_root, folder, fdir, fve_stop_after="init")
    with pytest.raises(VLMUnavailable, match=rf"damaged weights: model\.safetensors: {len(whole) - 4096} bytes, but its "
                                             rf"header describes {len(whole)} \(truncated"):
        run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)
    assert not os.path.exists(os.path.join(fdir, "fve", "run", "stages.json"))
    with open(weights, "wb") as f:
        f.write(whole)                              # the download repaired: the same command runs
    assert run_fve("M3SRec_REVEAL", NAME, config_dict=cfg)["executed"] == ["init"]
