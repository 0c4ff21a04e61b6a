"""UniSRec and MMSBR through the plugin's entry point: they train and evaluate on a dataset with text and
vision feature sets, rank consistently, follow the modality contract, and UniSRec's pre-training on
merged datasets transfers to fine-tuning."""

import math
import os

import pytest
import torch

from helpers import assert_full_sort_matches_predict, build_pipeline, first_batch, write_tiny_dataset
from recbole_reveal import run_recbole_reveal
from recbole_reveal.commands.merge_datasets import main as merge_main
from recbole_reveal.data.merge import merge_datasets
from recbole_reveal.infra.errors import ConfigError, exit_status


def _learns(result):
    metrics = dict(result["test_result"])
    assert set(metrics) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in metrics.values())
    return metrics


@pytest.mark.parametrize("model, settings, keys", [
    ("UniSRec", {"train_stage": "inductive_ft"}, {"n_exps": 8, "temperature": 0.07, "train_batch_size": 2048}),
    ("MMSBR", {}, {"n_pivots": 4, "n_tokens": 4, "contrastive_weight": 0.01, "train_batch_size": 100}),
])
def test_trains_and_evaluates_with_its_yaml(tiny_config, model, settings, keys):
    config = {k: v for k, v in tiny_config.items() if k != "train_batch_size"}
    result = run_recbole_reveal(model, "tiny", config_dict=dict(config, epochs=3, **settings))
    for key, value in keys.items():
        assert result["config"][key] == value, f"{model}.yaml: {key}"
    metrics = _learns(result)
    if model == "UniSRec":
        # the tiny data's item chain is learnable: far above random ranking (10 of 40 items: recall@10 ~ 0.25)
        assert metrics["recall@10"] > 0.4


def test_mmsbr_fits_a_batch(tiny_config):
    # MMSBR's session readout ignores order (the reference's) and its items start nearly alike (the
    # reference's uniform init): on the tiny item chain it learns slowly, so the check is that every
    # part trains: a batch is fitted
    _, (train_data, _, _), model, _ = build_pipeline("MMSBR", dict(tiny_config, token_dropout_prob=0.0,
                                                                   hidden_dropout_prob=0.0))
    batch = first_batch(train_data)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("model, settings", [
    ("UniSRec", {"train_stage": "transductive_ft"}), ("UniSRec", {"train_stage": "inductive_ft"}), ("MMSBR", {}),
])
def test_full_sort_matches_predict(tiny_config, model, settings):
    _, (train_data, _, _), net, _ = build_pipeline(model, dict(tiny_config, **settings))
    net.eval()
    assert_full_sort_matches_predict(net, first_batch(train_data))


def test_mmsbr_masks_each_modality_and_declares_its_vision_parameters(tiny_config):
    _, (train_data, _, _), model, _ = build_pipeline("MMSBR", tiny_config)
    model.eval()
    batch = first_batch(train_data)
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        for modality in ("text", "vision"):
            with model.zeroed_modalities(modality):
                assert not torch.allclose(model.full_sort_predict(batch), full)
    names = {name.split(".")[0] for name, _ in model.vision_parameters()}
    assert names == {"vision_table", "vision_tokenizers", "vision_layers"}     # no pseudo-vision set here
    assert not model.has_prices      # the tiny dataset has no .item file: interest scores only


def test_unisrec_reads_no_visual_features(tiny_config, tmp_path):
    root = str(tmp_path / "textonly")
    folder, *_ = write_tiny_dataset(root, name="textonly")
    os.remove(os.path.join(folder, "features", "vision_efficientnet_lite0.npy"))
    _, (train_data, _, _), model, _ = build_pipeline("UniSRec", dict(tiny_config, data_path=root), dataset="textonly")
    assert set(train_data.dataset.item_features) == {"text"}


def test_bad_settings_are_one_line_errors(tiny_config):
    with pytest.raises(ConfigError, match="train_stage"):
        build_pipeline("UniSRec", dict(tiny_config, train_stage="finetune"))
    with pytest.raises(ConfigError, match="n_exps"):
        build_pipeline("UniSRec", dict(tiny_config, n_exps=0))
    with pytest.raises(ConfigError, match="pivot_softmax"):
        build_pipeline("MMSBR", dict(tiny_config, pivot_softmax="rows"))
    with pytest.raises(ConfigError, match="MMSBR .*train_neg_sample_args"):
        build_pipeline("MMSBR", dict(tiny_config, train_neg_sample_args={"distribution": "uniform", "sample_num": 1}))


def test_pretraining_on_merged_datasets_transfers_to_fine_tuning(tmp_path):
    root = str(tmp_path / "atomic")
    for k, name in enumerate(("shopA", "shopB", "target")):
        write_tiny_dataset(root, name=name, seed=k, n_items=30 + 5 * k)
    summary = merge_datasets(root, ["shopA", "shopB"], "shopAB")
    assert summary["items"] == 30 + 35
    assert exit_status(merge_main, ["--data_path", root, "--datasets", "shopA", "--name", "x"]) == 2
    sizes = dict(data_path=root, hidden_size=16, inner_size=32, n_heads=2, MAX_ITEM_LIST_LENGTH=10,
                 train_batch_size=64, stopping_step=100, checkpoint_dir=str(tmp_path / "saved"))
    pretrained = run_recbole_reveal("UniSRec", "shopAB", config_dict=dict(sizes, train_stage="pretrain", epochs=2))
    _learns(pretrained)
    (checkpoint,) = [os.path.join(sizes["checkpoint_dir"], f) for f in os.listdir(sizes["checkpoint_dir"])
                     if f.endswith(".pth")]
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    config, (train_data, valid_data, _), model, trainer = build_pipeline(
        "UniSRec", dict(sizes, pretrained_file=checkpoint, epochs=1), dataset="target")
    for name, param in model.named_parameters():
        if name.startswith(("moe_adaptor.", "trm_encoder.", "position_embedding.")):
            torch.testing.assert_close(param.detach(), state[name])
    trainer.fit(train_data, valid_data, saved=False)
    # the Transformer and position embeddings stay the pre-trained ones; the adaptor is fine-tuned
    assert torch.equal(model.trm_encoder.layer[0].multi_head_attention.query.weight,
                       state["trm_encoder.layer.0.multi_head_attention.query.weight"])
    assert not torch.equal(model.moe_adaptor.experts[0].lin.weight, state["moe_adaptor.experts.0.lin.weight"])
    with pytest.raises(ConfigError, match="pretrained_file"):
        build_pipeline("UniSRec", dict(sizes, pretrained_file=checkpoint, hidden_size=32), dataset="target")
