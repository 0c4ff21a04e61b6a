"""HM4SR and HM4SR_REVEAL: learning, ranking consistency, the REVEAL contract, the temporal experts
(which the reference never trained) and the category targets read from the dataset's .item file."""

import logging
import os

import pytest
import torch

from recbole_reveal import run_recbole_reveal
from recbole_reveal.model.hm4sr_layers import interval_buckets
from recbole_reveal.trainer import AVLTrainer
from helpers import (TINY_ITEMS, assert_full_sort_matches_predict, build_pipeline, first_batch, gradients_at_step,
                     seeded_gradients, write_tiny_dataset)

DATASET = "tinycat"


def item_categories(index):
    """Categories of tiny item ``i<index>``: one top-level category, and a leaf for odd items."""
    return [f"top{index % 3}"] + ([f"leaf{index % 5}"] if index % 2 else [])


@pytest.fixture(scope="module")
def tinycat_root(tmp_path_factory):
    """The tiny dataset plus a .item file with a ``categories:token_seq`` column."""
    root = str(tmp_path_factory.mktemp("atomic_hm4sr"))
    folder, tokens, _, _ = write_tiny_dataset(root, name=DATASET)
    with open(os.path.join(folder, f"{DATASET}.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tcategories:token_seq\n")
        for index, token in enumerate(tokens):
            f.write(f"{token}\t{' '.join(item_categories(index))}\n")
    return root


@pytest.fixture
def hm4sr_config(tinycat_root, tmp_path):
    return {
        "data_path": tinycat_root,
        "checkpoint_dir": str(tmp_path / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]},
        "epochs": 3,
        "hidden_size": 16,
        "inner_size": 32,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "MAX_ITEM_LIST_LENGTH": 10,
        "stopping_step": 100,
        "time_unit": 1,  # the tiny timestamps are seconds apart
    }


@pytest.fixture
def hm4sr(hm4sr_config):
    _, (train_data, _, _), model, trainer = build_pipeline("HM4SR", hm4sr_config, dataset=DATASET)
    return model, trainer, train_data


def _metrics(result):
    return {k: float(v) for k, v in result.items()}


def test_hm4sr_learns_far_better_than_random(hm4sr_config):
    result = run_recbole_reveal("HM4SR", DATASET, config_dict=dict(hm4sr_config, epochs=8))
    random_recall_at_10 = 10 / (TINY_ITEMS - 1)
    assert result["test_result"]["recall@10"] > 2 * random_recall_at_10
    assert result["test_result"]["ndcg@10"] > 0.25


def test_full_sort_predict_equals_predict_for_every_item(hm4sr):
    model, _, train_data = hm4sr
    model.eval()
    batch = first_batch(train_data)[torch.arange(5)]
    assert_full_sort_matches_predict(model, batch)


def _record(model, batch, *zeroed):
    """Projection outputs, the streams entering the alignment MoE, and the scores."""
    seen = {}
    hooks = [
        model.text_proj.register_forward_hook(lambda m, a, out: seen.setdefault("text_proj", out)),
        model.vision_proj.register_forward_hook(lambda m, a, out: seen.setdefault("vision_proj", out)),
        model.align_moe.register_forward_hook(lambda m, args, out: seen.setdefault("streams", args)),
    ]
    with torch.no_grad(), model.zeroed_modalities(*zeroed):
        scores = model.full_sort_predict(batch)
        tables = model.item_tables()
    for hook in hooks:
        hook.remove()
    return seen, tables, scores


@pytest.mark.parametrize("zeroed, kept", [("text", "vision"), ("vision", "text")])
def test_masking_zeroes_one_modality_after_its_projection(hm4sr, zeroed, kept):
    model, _, train_data = hm4sr
    model.eval()
    batch = first_batch(train_data)
    full, full_tables, full_scores = _record(model, batch)
    masked, masked_tables, masked_scores = _record(model, batch, zeroed)
    stream = {"text": 1, "vision": 2}
    positions = model.position_embedding.weight[: batch[model.ITEM_SEQ].size(1)]
    assert masked[f"{zeroed}_proj"].abs().sum() > 0, "the projection itself still runs"
    assert masked_tables[stream[zeroed]].abs().sum() == 0
    # what enters the streams is the masked projection (zeros) plus the position embedding
    torch.testing.assert_close(masked["streams"][stream[zeroed]], positions.expand_as(full["streams"][0]))
    torch.testing.assert_close(masked["streams"][stream[kept]], full["streams"][stream[kept]])
    torch.testing.assert_close(masked["streams"][0], full["streams"][0])
    assert not torch.allclose(masked_scores, full_scores)
    assert model._zeroed == frozenset()


def test_vision_parameters_are_exactly_the_declared_modules(hm4sr):
    model, _, _ = hm4sr
    names = {name for name, _ in model.vision_parameters()}
    expected = {
        name for name, _ in model.named_parameters()
        if any(name.startswith(module + ".") for module in model.vision_modules)
    }
    assert names == expected
    assert {"temporal_moe.vision_experts.weight", "align_moe.vision_experts.gate.weight",
            "vision_proj.weight", "vision_placeholder.weight"} <= names
    assert any(n.startswith("vision_encoder.") for n in names)
    assert not any(n.startswith(("text", "id_", "item_", "position_", "category_", "temporal_moe.gate",
                                 "temporal_moe.interval", "align_moe.text", "align_moe.id")) for n in names)




def test_avl_scales_only_the_vision_gradients_and_by_exactly_k(hm4sr_config):
    cfg = dict(hm4sr_config, avl_alpha=1.0, avl_clamp=None)
    _, (train_data, _, _), model, trainer = build_pipeline("HM4SR_REVEAL", cfg, dataset=DATASET)
    assert isinstance(trainer, AVLTrainer)
    trainer.balance.load_state_dict({"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0})
    batch = first_batch(train_data)
    reference = seeded_gradients(model, batch)
    seen = gradients_at_step(trainer)

    torch.manual_seed(7)
    trainer._train_epoch([batch], epoch_idx=0)

    k = trainer.current_k
    assert abs(k - 1) > 0.05
    vision = {name for name, _ in model.vision_parameters()}
    assert set(seen) == set(reference)
    for name, grad in seen.items():
        expected = reference[name] * k if name in vision else reference[name]
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-8)
    assert "temporal_moe.vision_experts.weight" in seen and "vision_encoder.layer.0.feed_forward.dense_1.weight" in seen


def test_reveal_with_avl_off_is_the_plain_backbone_run(hm4sr_config):
    plain = run_recbole_reveal("HM4SR", DATASET, config_dict=hm4sr_config)
    off = run_recbole_reveal("HM4SR_REVEAL", DATASET, config_dict=dict(hm4sr_config, avl=False))
    assert _metrics(off["test_result"]) == _metrics(plain["test_result"])
    assert _metrics(off["best_valid_result"]) == _metrics(plain["best_valid_result"])


def test_temporal_experts_train(hm4sr):
    """The reference's temporal experts were a plain list: no gradient, never in the optimizer."""
    model, trainer, train_data = hm4sr
    experts = {f"temporal_moe.{s}_experts.weight" for s in ("id", "text", "vision")}
    params = dict(model.named_parameters())
    assert experts <= set(params)
    batch = first_batch(train_data)
    model.train()
    model.calculate_loss(batch).backward()
    for name in experts:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    model.zero_grad()
    before = {name: params[name].detach().clone() for name in experts}
    trainer._train_epoch([batch], epoch_idx=0)
    for name in experts:
        assert not torch.equal(params[name].detach(), before[name]), name


def test_interval_buckets_follow_log2_gaps():
    times = torch.tensor([[0.0, 3.0, 3.0, 10.0, 0.0], [5.0, 5.0 + 1e6, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, True, False], [True, True, False, False, False]])
    # gaps 3, 0, 7 -> floor(log2(4)), floor(log2(1)), floor(log2(8)); 1e6 saturates at the last bucket
    expected = torch.tensor([[0, 2, 0, 3, 0], [0, 5, 0, 0, 0]])
    assert torch.equal(interval_buckets(times, valid, scale=1.0, n_buckets=6), expected)
    assert interval_buckets(times, valid, scale=2.0, n_buckets=100)[0].tolist() == [0, 4, 0, 6, 0]


def test_placeholder_positions_are_a_fraction_of_each_history(hm4sr):
    model, _, _ = hm4sr
    model.placeholder_ratio = 0.5
    lengths = torch.tensor([1, 4, 7, 10])
    chosen = model.placeholder_positions(lengths, 10)
    assert chosen.sum(dim=1).tolist() == [0, 2, 3, 5]
    assert not (chosen & (torch.arange(10) >= lengths.unsqueeze(1))).any(), "only real positions"


def test_category_multi_hot_matches_the_item_file(hm4sr):
    model, _, train_data = hm4sr
    dataset = train_data._dataset
    category_tokens = dataset.field2id_token["categories"]
    assert model.item_categories.shape == (model.n_items, len(category_tokens) - 1)
    for index in (0, 1, 7, 12, 39):
        item = dataset.token2id(dataset.iid_field, f"i{index}")
        columns = model.item_categories[item].nonzero().flatten().tolist()
        assert {category_tokens[c + 1] for c in columns} == set(item_categories(index))
    assert model.item_categories[0].sum() == 0, "padding has no category"


def test_without_a_category_field_the_category_loss_is_off_with_a_warning(tiny_config, caplog):
    """The shared tiny dataset has no .item file."""
    with caplog.at_level(logging.WARNING):
        _, _, model, _ = build_pipeline("HM4SR", dict(tiny_config, time_unit=1))
    assert model.category_head is None
    assert any("category loss is OFF" in r.getMessage() and "category_field" in r.getMessage()
               for r in caplog.records)


def test_hm4sr_reveal_with_avl_runs_end_to_end(hm4sr_config, caplog):
    with caplog.at_level(logging.INFO):
        result = run_recbole_reveal("HM4SR_REVEAL", DATASET, config_dict=dict(hm4sr_config, epochs=2))
    assert result["config"]["avl"] is True
    assert 0 < result["test_result"]["recall@20"] <= 1
    assert any("epoch 1 AVL" in r.getMessage() for r in caplog.records)
