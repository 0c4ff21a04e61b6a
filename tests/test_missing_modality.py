"""Items without a modality (issue 25): availability as data, missing_modality zero / mean / learned through
the backbone contract, AVL's probes on the rows that have the measured modality, the test-time robustness
protocol and the popularity buckets, on the tiny dataset with a quarter of its images missing."""

import os

import numpy as np
import pytest
import torch

from helpers import TINY_ITEMS, build_pipeline, first_batch, write_tiny_dataset
from recbole_reveal import run_recbole_reveal
from recbole_reveal.data.availability import mark_missing, masked_draw
from recbole_reveal.data.feature_store import load_item_features, load_missing_items, save_item_features
from recbole_reveal.infra.errors import ConfigError, FeatureFileError
from recbole_reveal.commands.run_experiments import main as cli_main

DATASET = "tinymiss"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "custom_backbone", "mmgru4rec.py")
HM4SR_KEYS = {"time_unit": 1, "category_weight": 0}


@pytest.fixture(scope="module")
def miss_root(tmp_path_factory):
    """The tiny dataset; its vision set has a quarter of the items marked missing (rows zeroed)."""
    root = str(tmp_path_factory.mktemp("atomic_missing"))
    folder, tokens, _, _ = write_tiny_dataset(root, name=DATASET)
    features = os.path.join(folder, "features")
    missing = mark_missing(features, "vision_efficientnet_lite0", "vision_efficientnet_lite0", 0.25, seed=3)
    return root, features, tokens, missing


@pytest.fixture
def cfg(miss_root, tiny_config):
    return dict(tiny_config, data_path=miss_root[0], epochs=1, state="warning")


def _ids(dataset, tokens):
    return torch.tensor([dataset.field2token_id[dataset.iid_field][t] for t in tokens])


# -- availability as data ----------------------------------------------------------------------------
def test_a_set_records_its_missing_items_and_the_dataset_exposes_them(miss_root, cfg):
    _, features, tokens, missing = miss_root
    assert len(missing) == TINY_ITEMS // 4
    assert load_missing_items(features, "vision_efficientnet_lite0", tokens) == missing
    _, matrix = load_item_features(features, "vision_efficientnet_lite0")     # checksums in the .json hold
    assert int((~matrix.any(1)).sum()) == len(missing)
    assert load_missing_items(features, "text_minilm", tokens) == []

    _, (train_data, _, _), _, _ = build_pipeline("M3SRec", cfg, dataset=DATASET)
    dataset = train_data._dataset
    available = dataset.item_availability["vision"]
    assert not available[0] and int(available.sum()) == TINY_ITEMS - len(missing)
    assert not available[_ids(dataset, missing)].any()
    assert dataset.item_availability["text"][1:].all()


def test_bad_missing_files_are_errors(tmp_path):
    tokens = ["a", "b", "c"]
    save_item_features(str(tmp_path), "s", tokens, np.ones((3, 2), np.float32), {"x": 1}, missing=["b"])
    assert (tmp_path / "s.missing").read_text() == "b\n"
    with pytest.raises(ValueError, match="missing items z are not among its tokens"):
        save_item_features(str(tmp_path), "s", tokens, np.ones((3, 2), np.float32), missing=["z"])
    (tmp_path / "s.missing").write_text("b\nq\n")
    with pytest.raises(FeatureFileError, match=r"s\.missing: lists 1 items that are not in the set's \.items file \(q\)"):
        load_missing_items(str(tmp_path), "s", tokens)
    # a set written before .missing files existed: the extractor's zero_rows are its missing items
    save_item_features(str(tmp_path), "old", tokens, np.ones((3, 2), np.float32), {"zero_rows": ["c"]})
    assert load_missing_items(str(tmp_path), "old", tokens) == ["c"]


def test_the_draw_depends_on_the_items_only_and_is_nested():
    tokens = [f"i{k}" for k in range(200)]
    half = masked_draw(tokens, "vision", 0.5, seed=1)
    assert half.sum() == 100 and masked_draw(tokens, "vision", 0.25, seed=1).sum() == 50
    assert not (masked_draw(tokens, "vision", 0.25, seed=1) & ~half).any()          # nested in r
    shuffled = tokens[::-1]
    assert {t for t, m in zip(shuffled, masked_draw(shuffled, "vision", 0.5, 1)) if m} == \
        {t for t, m in zip(tokens, half) if m}                                          # order-free
    assert not np.array_equal(half, masked_draw(tokens, "text", 0.5, seed=1))


# -- the row the backbone receives -------------------------------------------------------------------
def _m3srec(model, items):
    model.fusion_parts(items)
    return "vision_mean_proj"


def _missrec(model, items):
    model.modality_embeddings(items)
    return "vision_adaptor"


def _hm4sr(model, items):
    model.item_tables()
    return "vision_proj"


def _mmgru4rec(model, items):
    model.item_representation(items)
    return "vision_projection"


BACKBONES = {"M3SRec": _m3srec, "MISSRec": _missrec, "HM4SR": _hm4sr, f"{EXAMPLE}:MMGRU4Rec": _mmgru4rec}


def received_vision_rows(model, items, reader):
    """The rows the backbone feeds its vision projection for ``items`` (captured at the projection)."""
    captured = []
    name = reader(model, items)      # which projection: read the name first, then hook and run again
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: captured.append(i[0]))
    try:
        with torch.no_grad():
            reader(model, items)
    finally:
        handle.remove()
    rows = captured[0]
    return rows[items] if rows.shape[0] == model.n_items and len(items) != model.n_items else rows


@pytest.mark.parametrize("model_name", list(BACKBONES))
def test_no_missing_item_is_fed_a_zero_row_under_learned_or_mean(model_name, miss_root, cfg):
    _, _, tokens, missing = miss_root
    extra = HM4SR_KEYS if model_name == "HM4SR" else {}
    rows = {}
    for handling in ("zero", "mean", "learned"):
        _, (train_data, _, _), model, trainer = build_pipeline(
            model_name, dict(cfg, missing_modality=handling, **extra), dataset=DATASET)
        dataset = train_data._dataset
        gone, present = _ids(dataset, missing), _ids(dataset, [t for t in tokens if t not in missing])
        received = received_vision_rows(model, gone, BACKBONES[model_name])
        rows[handling] = received
        source = dataset.item_features["vision"]
        if handling == "zero":
            assert not received.any()
            continue
        assert received.abs().sum(1).min() > 0                      # never a zero row
        assert torch.allclose(received, source[present].mean(0).expand_as(received), atol=1e-6)
        np.testing.assert_allclose(received_vision_rows(model, present, BACKBONES[model_name]).numpy(),
                                   source[present].numpy(), atol=1e-6)    # present items: their own rows
        if handling == "learned":
            placeholders = [p for n, p in model.named_parameters() if n.endswith("placeholder")]
            assert placeholders and all(n.startswith("vision") for n, _ in model.named_parameters()
                                        if n.endswith("placeholder"))
            before = [p.detach().clone() for p in placeholders]
            trainer._train_epoch(train_data, epoch_idx=0)
            after = received_vision_rows(model, gone, BACKBONES[model_name])
            assert any(not torch.equal(b, p) for b, p in zip(before, placeholders))    # it learns
            assert after.abs().sum(1).min() > 0 and torch.allclose(after, after[0].expand_as(after))


@pytest.mark.parametrize("model_name", ["M3SRec_REVEAL", "MISSRec_REVEAL", "HM4SR_REVEAL", f"{EXAMPLE}:MMGRU4Rec_REVEAL"])
@pytest.mark.parametrize("handling", ["zero", "mean", "learned"])
def test_every_backbone_trains_under_each_handling(model_name, handling, cfg):
    extra = HM4SR_KEYS if model_name.startswith("HM4SR") else {}
    result = run_recbole_reveal(model_name, DATASET, config_dict=dict(cfg, missing_modality=handling, **extra),
                                saved=False)
    assert result["test_result"]["recall@20"] > 20 / TINY_ITEMS        # better than random


def test_bad_values_of_the_new_keys_are_one_line_errors(cfg):
    for key, value, expected in (("missing_modality", "median", "one of zero, learned, mean"),
                                 ("eval_missing_rates", [0.5, 1.5], "fractions in \\[0, 1\\]"),
                                 ("eval_missing_scopes", ["sideways"], "history"),
                                 ("eval_missing_modalities", ["audio"], "text"),
                                 ("eval_by_popularity", "maybe", "")):
        with pytest.raises(ConfigError, match=f"{key}.*{expected}") as info:
            build_pipeline("M3SRec", dict(cfg, **{key: value}), dataset=DATASET)
        assert "\n" not in str(info.value)


# -- AVL -------------------------------------------------------------------------------------------
def test_avl_probes_count_only_rows_whose_target_has_the_measured_modality(miss_root, cfg):
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg, dataset=DATASET)
    batch = first_batch(train_data)
    has_vision = model.feature_availability("vision")[batch[model.POS_ITEM_ID]]
    assert 0 < int(has_vision.sum()) < len(batch)
    loss_v, loss_t = trainer.unimodal_losses(batch)
    model.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(trainer._probe_seed)
        with model.zeroed_modalities("text"):
            expected_v = float(model.calculate_loss(batch[has_vision]))
        whole_v = float(model.calculate_loss(batch))
        torch.manual_seed(trainer._probe_seed)
        with model.zeroed_modalities("vision"):
            expected_t = float(model.calculate_loss(batch))
    assert loss_v == pytest.approx(expected_v, rel=1e-5) and loss_v != pytest.approx(whole_v, rel=1e-3)
    assert loss_t == pytest.approx(expected_t, rel=1e-5)
    # ckd's joint probe counts the rows whose target has both modalities
    has_text = model.feature_availability("text")[batch[model.POS_ITEM_ID]]
    both = has_vision & has_text
    loss_j = trainer.unimodal_losses(batch, joint=True)[2]
    model.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(trainer._probe_seed)
        expected_j = float(model.calculate_loss(batch[both]))
    assert loss_j == pytest.approx(expected_j, rel=1e-5) and loss_j != pytest.approx(whole_v, rel=1e-3)


# -- the robustness protocol and the popularity buckets -------------------------------------------------
def test_masking_and_buckets_on_tiny_data(miss_root, cfg):
    config = dict(cfg, epochs=2, eval_missing_rates=[0, 1], eval_missing_scopes=["history", "candidates", "both"],
                  eval_missing_modalities=["vision"], eval_by_popularity=True, missing_modality="mean")
    result = run_recbole_reveal("MISSRec", DATASET, config_dict=config, saved=False)
    views, test = result["masked_test_results"], result["test_result"]
    # r = 0 is RecBole's own test result, from the per-user ranks
    assert views["vision/both/0"]["recall@20"] == pytest.approx(float(test["recall@20"]), abs=1e-4)
    assert views["vision/both/0"]["ndcg@20"] == pytest.approx(float(test["ndcg@20"]), abs=1e-4)
    # every item masked changes the ranking, and the history alone differs from both sides
    assert views["vision/both/1"]["ndcg@20"] != pytest.approx(views["vision/both/0"]["ndcg@20"], abs=1e-6)
    assert views["vision/history/1"]["ndcg@20"] != pytest.approx(views["vision/both/1"]["ndcg@20"], abs=1e-6)
    # r = 1: no target keeps its image, so every user (all targets have text) has one modality observed
    assert views["vision/both/1/one_modality"]["users"] == views["vision/both/1"]["users"]
    assert views["vision/both/0/one_modality"]["users"] < views["vision/both/0"]["users"]
    buckets = {k: v for k, v in views.items() if k.startswith("popularity/")}
    assert set(buckets) == {"popularity/0", "popularity/1-4", "popularity/5-9", "popularity/>=10"}
    users = sum(b["users"] for b in buckets.values())
    assert users == views["vision/both/0"]["users"]
    weighted = sum(b["users"] * b.get("recall@20", 0.0) for b in buckets.values()) / users
    assert weighted == pytest.approx(views["vision/both/0"]["recall@20"], abs=1e-9)


def test_training_counts_are_the_training_part_of_each_sequence(cfg, miss_root):
    from recbole_reveal.robustness import training_counts

    _, (train_data, _, test_data), _, _ = build_pipeline("M3SRec", cfg, dataset=DATASET)
    dataset = train_data._dataset
    sequences = {}
    with open(os.path.join(miss_root[0], DATASET, f"{DATASET}.inter"), encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, time = line.split("\t")
            sequences.setdefault(user, []).append((float(time), item))
    expected = np.zeros(dataset.item_num, dtype=int)
    for seq in sequences.values():
        for _, item in sorted(seq)[:-2]:           # leave-one-out: the last two are valid and test
            expected[dataset.field2token_id["item_id"][item]] += 1
    np.testing.assert_array_equal(training_counts(dataset), expected)


def test_a_backbone_without_reading_history_supports_both_only(cfg):
    config = dict(cfg, eval_missing_rates=[0.5], eval_missing_scopes=["history"], eval_missing_modalities=["vision"])
    with pytest.raises(ConfigError, match="does not look up its history's features inside .*eval_missing_scopes: \\[both\\]"):
        run_recbole_reveal(f"{EXAMPLE}:MMGRU4Rec", DATASET, config_dict=config, saved=False)
    ok = run_recbole_reveal(f"{EXAMPLE}:MMGRU4Rec", DATASET, config_dict=dict(config, eval_missing_scopes=["both"]),
                            saved=False)
    assert "vision/both/0.5" in ok["masked_test_results"]


def test_missing_command_writes_the_degradation_table(miss_root, tmp_path, capsys):
    root = miss_root[0]
    args = ["missing", "--dataset", DATASET, "--data_path", root, "--models", "M3SRec", "--handlings", "zero", "mean",
            "--scopes", "both", "--modalities", "vision", "--seeds", "5", "--out", str(tmp_path),
            "--set", "epochs=1", "hidden_size=16", "inner_size=32", "n_heads=2", "MAX_ITEM_LIST_LENGTH=10",
            "state=warning"]
    assert cli_main(args + ["--rates", "0", "1"]) == 0
    out_dir = tmp_path / DATASET / "missing"
    table = (out_dir / "degradation.md").read_text()
    assert "| Setting | r = 0 | r = 1 |" in table and "| M3SRec [mean] |" in table
    assert "vision missing, in both; test users whose target has one modality observed" in table
    assert (out_dir / "degradation.png").stat().st_size > 0
    lines = (out_dir / "degradation.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 2 * 2           # 2 handlings x 2 subsets x 2 rates
    capsys.readouterr()
    assert cli_main(args + ["--rates", "0", "2"]) == 2
    assert "--rates must be fractions in [0, 1], got [2.0]" in capsys.readouterr().err


def test_missrec_gives_a_masked_history_item_the_interest_of_its_replacement_row(cfg):
    from recbole_reveal.model.kmeans import nearest_centroid

    _, (train_data, _, _), model, _ = build_pipeline("MISSRec", dict(cfg, missing_modality="mean"), dataset=DATASET)
    model.eval()
    items = torch.arange(1, model.n_items)
    masked = torch.zeros(model.n_items, dtype=torch.bool)
    masked[1::3] = True
    before = model._interest_ids("vision", items)
    with torch.no_grad(), model.masked_items("vision", masked, "history"):
        after = model._interest_ids("vision", items)
        fill = model.modality_embeddings()[1][1::3]      # candidates side: the real rows
        with model.reading_history():
            replaced = model.modality_embeddings()[1][1::3]
    assert not torch.allclose(fill, replaced)
    expected = nearest_centroid(replaced, model.interest_embeddings[1:], rows=64) + 1
    assert torch.equal(after[masked[1:]], expected) and len(set(expected.tolist())) == 1   # one row: one interest
    assert torch.equal(after[~masked[1:]], before[~masked[1:]])
    assert not torch.equal(after, before)


@pytest.mark.parametrize("model_name", ["M3SRec", "MISSRec", "HM4SR"])
def test_history_and_candidates_are_masked_apart(model_name, cfg):
    extra = HM4SR_KEYS if model_name == "HM4SR" else {}
    _, (train_data, _, _), model, _ = build_pipeline(model_name, dict(cfg, **extra), dataset=DATASET)
    model.eval()
    batch = first_batch(train_data)
    masked = torch.zeros(model.n_items, dtype=torch.bool)
    masked[1::2] = True
    scores = {}
    with torch.no_grad():
        scores["none"] = model.full_sort_predict(batch)
        for scope in ("history", "candidates", "both"):
            with model.masked_items("vision", masked, scope):
                scores[scope] = model.full_sort_predict(batch)
        assert torch.equal(model.full_sort_predict(batch), scores["none"])    # the blocks leave nothing behind
    assert not torch.allclose(scores["history"], scores["none"])
    assert not torch.allclose(scores["history"], scores["both"]) or model_name == "M3SRec"
    if model_name == "M3SRec":      # ID-only candidates (the reference code's): nothing to mask there
        assert torch.equal(scores["candidates"], scores["none"]) and torch.equal(scores["history"], scores["both"])
    else:
        assert not torch.allclose(scores["candidates"], scores["none"])
        assert not torch.allclose(scores["candidates"], scores["both"])


def test_seeds_by_popularity_rows_compare_each_bucket_with_the_backbones():
    from recbole_reveal.experiments.protocols import seeds_rows

    rows = seeds_rows(["M3SRec", "M3SRec_REVEAL"], {"epochs": 1}, by_popularity=True)
    buckets = [r for r in rows if r.view and r.view.startswith("popularity/")]
    assert [r.view for r in buckets[:4]] == ["popularity/0", "popularity/1-4", "popularity/5-9", "popularity/>=10"]
    assert all(r.spec.overrides["eval_by_popularity"] is True for r in rows)
    reveal = [r for r in buckets if r.spec.model == "M3SRec_REVEAL"]
    assert reveal[1].reference == buckets[1].label == "M3SRec, targets with 1-4 training interactions"
    with pytest.raises(ConfigError, match="eval_by_popularity"):
        seeds_rows(["M3SRec"], {"eval_by_popularity": True}, by_popularity=True)
