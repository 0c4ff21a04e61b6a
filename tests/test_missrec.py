"""MISSRec: interest clustering, the REVEAL contract, ranking consistency, and that it learns."""

import pytest
import torch

from recbole_reveal import run_recbole_reveal
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.model.kmeans import cluster_sums, kmeans
from recbole_reveal.trainer import AVLTrainer
from helpers import (TINY_ITEMS, assert_full_sort_matches_predict, build_pipeline, first_batch, gradients_at_step,
                     seeded_gradients)


@pytest.fixture
def missrec_config(tiny_config):
    # lighter dropout than the reference's 0.5: the tiny dataset trains for a few epochs only
    return dict(tiny_config, hidden_dropout_prob=0.1)


@pytest.fixture
def missrec(missrec_config):
    _, (train_data, _, _), model, trainer = build_pipeline("MISSRec", missrec_config)
    model.eval()
    return model, first_batch(train_data), train_data, trainer


def _metrics(result):
    return {k: float(v) for k, v in result.items()}


# -- k-means ---------------------------------------------------------------------------------------
def _blobs(seed=0, per_blob=30, dim=8):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, dim, generator=generator) * 10
    points = centres.repeat_interleave(per_blob, 0) + torch.randn(4 * per_blob, dim, generator=generator)
    return points, torch.arange(4).repeat_interleave(per_blob)


def test_kmeans_is_deterministic_for_a_seed_and_depends_on_seed_and_input():
    points = torch.randn(200, 6, generator=torch.Generator().manual_seed(1))
    first, again = kmeans(points, 25, n_iter=5, seed=3), kmeans(points, 25, n_iter=5, seed=3)
    assert torch.equal(first.centroids, again.centroids) and torch.equal(first.assignment, again.assignment)
    other_seed = kmeans(points, 25, n_iter=5, seed=4)
    assert not torch.equal(first.assignment, other_seed.assignment)
    moved = kmeans(points + 0.5 * torch.randn_like(points), 25, n_iter=5, seed=3)
    assert not torch.equal(first.centroids, moved.centroids)


def test_kmeans_finds_separated_blobs_and_returns_consistent_centroids():
    points, blob = _blobs()
    centroids, assignment = kmeans(points, 4, n_iter=20, seed=0)
    # every blob is one cluster and every cluster one blob
    pairs = set(zip(blob.tolist(), assignment.tolist()))
    assert len(pairs) == 4 and len({c for _, c in pairs}) == 4
    # each centroid is the mean of its points, and each point's nearest centroid is its own
    for cluster in range(4):
        torch.testing.assert_close(centroids[cluster], points[assignment == cluster].mean(0))
    assert torch.equal(torch.cdist(points, centroids).argmin(1), assignment)


def test_one_hot_sums_equal_index_add_sums():
    """The CUDA path (one-hot products, bit-reproducible there) computes the CPU path's sums."""
    points = torch.randn(100, 5, generator=torch.Generator().manual_seed(2))
    assignment = torch.randint(0, 7, (100,), generator=torch.Generator().manual_seed(3))
    index_sums, index_counts = cluster_sums(points, assignment, 7, rows=16, one_hot=False)
    hot_sums, hot_counts = cluster_sums(points, assignment, 7, rows=16, one_hot=True)
    torch.testing.assert_close(hot_sums, index_sums)
    assert torch.equal(hot_counts, index_counts) and index_counts.sum() == 100


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(torch.randn(5, 2), 6)


# -- interests in the model --------------------------------------------------------------------------
def _interest_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "interest" in k}


def test_interests_are_reclustered_each_epoch_deterministically(missrec):
    model, _, train_data, trainer = missrec
    n_real = model.n_items - 1
    assert model.n_interests == n_real  # ceil(0.5 x 2 tokens per item)
    initial = _interest_state(model)
    ids = torch.cat([initial["text_interest_ids"][1:], initial["vision_interest_ids"][1:]])
    assert ids.min() >= 1 and ids.max() <= model.n_interests
    assert initial["text_interest_ids"][0] == 0 and initial["vision_interest_ids"][0] == 0
    # each interest embedding is the mean of its items' projected features
    with torch.no_grad():
        text, vision = model.modality_embeddings()
    tokens = torch.cat([text[1:], vision[1:]])
    used = ids.unique()
    for interest in used[:5].tolist():
        torch.testing.assert_close(initial["interest_embeddings"][interest], tokens[ids == interest].mean(0))

    model.discover_interests(epoch_idx=0)
    assert all(torch.equal(v, initial[k]) for k, v in _interest_state(model).items()), "same seed, same clusters"
    model.discover_interests(epoch_idx=1)
    assert not torch.equal(_interest_state(model)["text_interest_ids"], initial["text_interest_ids"])

    # the trainer re-clusters before an epoch, with the adaptors as they are then
    trainer._train_epoch(train_data, epoch_idx=0)
    after_one_epoch = _interest_state(model)
    trainer._train_epoch(train_data, epoch_idx=0)
    assert not torch.equal(_interest_state(model)["interest_embeddings"], after_one_epoch["interest_embeddings"])


def test_interest_state_travels_with_the_checkpoint(missrec, missrec_config):
    model, batch, train_data, trainer = missrec
    trainer._train_epoch(train_data, epoch_idx=0)
    model.discover_interests(epoch_idx=5)
    model.eval()
    _, _, fresh, _ = build_pipeline("MISSRec", missrec_config)
    fresh.eval()
    with torch.no_grad():
        expected = model.full_sort_predict(batch)
        assert not torch.allclose(fresh.full_sort_predict(batch), expected)
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh.full_sort_predict(batch), expected)


def test_interest_tokens_are_the_distinct_interests_of_the_history(missrec):
    model, batch, _, _ = missrec
    seq = batch[model.ITEM_SEQ]
    ids, embeddings = model.interest_tokens(seq)
    for row in range(seq.size(0)):
        items = seq[row][seq[row] > 0]
        expected = set(model.text_interest_ids[items].tolist()) | set(model.vision_interest_ids[items].tolist())
        got = ids[row][ids[row] > 0].tolist()
        assert len(got) == len(set(got)) and set(got) == expected
    torch.testing.assert_close(embeddings, model.interest_embeddings[ids])


# -- the REVEAL contract -------------------------------------------------------------------------------
def _keep_output(store, key):
    def hook(module, args, output):
        store.setdefault(key, output)

    return hook


@pytest.mark.parametrize("zeroed, kept", [("text", "vision"), ("vision", "text")])
def test_masking_zeroes_one_modality_after_its_adaptor(missrec, zeroed, kept):
    model, batch, _, _ = missrec
    seen = {}
    hook = getattr(model, f"{zeroed}_adaptor").register_forward_hook(_keep_output(seen, "adaptor"))
    with torch.no_grad():
        full = dict(zip(("text", "vision"), model.modality_embeddings()))
        full_scores = model.full_sort_predict(batch)
        with model.zeroed_modalities(zeroed):
            masked = dict(zip(("text", "vision"), model.modality_embeddings()))
            masked_scores = model.full_sort_predict(batch)
            masked_ids, _ = model.interest_tokens(batch[model.ITEM_SEQ])
            # with the modality zeroed, its features cannot reach the scores
            table = getattr(model, f"{zeroed}_table").weight
            saved = table.clone()
            table.add_(torch.randn_like(table))
            perturbed_scores = model.full_sort_predict(batch)
            table.copy_(saved)
    hook.remove()
    assert seen["adaptor"].abs().sum() > 0, "the adaptor itself still runs"
    assert masked[zeroed].abs().sum() == 0
    torch.testing.assert_close(masked[kept], full[kept])
    own_ids = getattr(model, f"{zeroed}_interest_ids")[batch[model.ITEM_SEQ]]
    other_ids = getattr(model, f"{kept}_interest_ids")[batch[model.ITEM_SEQ]]
    assert set(masked_ids[masked_ids > 0].tolist()) == set(other_ids[other_ids > 0].tolist())
    assert set(own_ids[own_ids > 0].tolist()) - set(other_ids.flatten().tolist()), "some interests came only from it"
    assert not torch.allclose(masked_scores, full_scores)
    torch.testing.assert_close(perturbed_scores, masked_scores)
    assert model._zeroed == frozenset(), "masking ends with the block"


def test_both_modalities_zeroed_still_gives_finite_scores(missrec):
    model, batch, _, _ = missrec
    with torch.no_grad(), model.zeroed_modalities("text", "vision"):
        assert torch.isfinite(model.full_sort_predict(batch)).all()


def test_vision_parameters_are_exactly_the_image_table_and_adaptor(missrec):
    model = missrec[0]
    names = {name for name, _ in model.vision_parameters()}
    expected = {f"vision_{m}.{p}" for m, ps in (("table", ["weight"]), ("adaptor", ["weight", "bias"])) for p in ps}
    assert names == expected
    assert not model.vision_table.weight.requires_grad, "frozen features, as the reference"


def test_avl_scales_only_the_image_adaptor_gradients_by_exactly_k(missrec_config):
    cfg = dict(missrec_config, avl_alpha=1.0, avl_clamp=None)
    _, (train_data, _, _), model, trainer = build_pipeline("MISSRec_REVEAL", cfg)
    assert isinstance(trainer, AVLTrainer)
    # a history whose mean gap differs from this batch's makes K clearly != 1
    trainer.balance.load_state_dict({"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0})
    batch = first_batch(train_data)
    model.on_epoch_start(0)  # what the trainer's epoch will do first, so the reference sees the same clusters
    reference = seeded_gradients(model, batch)
    seen = gradients_at_step(trainer)
    torch.manual_seed(7)
    trainer._train_epoch([batch], epoch_idx=0)

    k = trainer.current_k
    assert abs(k - 1) > 0.05
    assert set(seen) == set(reference)
    vision = {"vision_adaptor.weight", "vision_adaptor.bias"}
    assert vision <= set(seen)
    for name, grad in seen.items():
        expected = reference[name] * k if name in vision else reference[name]
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-8)


# -- ranking and training -------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling, pooled", [
    # history 0: interests 5 and 3 (+ one padding slot), history 1: interest 2 (+ two padding slots)
    ("sum", [[1.0 + 2.0, 0.0], [4.0, 0.0]]),
    ("mean", [[(1.0 + 2.0) / 2, 0.0], [4.0, 0.0]]),
    # every slot, padding included (outputs 8 and 16 here), times the share of valid slots
    ("reference", [[(1.0 + 2.0 + 8.0) * 2 / 3, 0.0], [(4.0 + 16.0 + 16.0) / 3, 0.0]]),
])
def test_interest_penalty_pooling(missrec, pooling, pooled):
    model = missrec[0]
    model.interest_penalty_pooling = pooling
    ids = torch.tensor([[5, 3, 0], [2, 0, 0]])
    memory = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [8.0, 0.0]], [[4.0, 0.0], [16.0, 0.0], [16.0, 0.0]]])
    expected = (torch.tensor(pooled) ** 2).sum() / 2
    torch.testing.assert_close(model.interest_penalty(memory, ids, ids == 0), expected)


def test_scores_fuse_modalities_dynamically_then_mix_with_the_id(missrec):
    model = missrec[0]
    with torch.no_grad():
        model.fusion_factor.fill_(2.0)
        got = model.fused_logits(torch.tensor([0.5]), torch.tensor([-0.5]), torch.tensor([0.2]))
    w_text = torch.sigmoid(torch.tensor(2.0 * 0.5 - 2.0 * -0.5))  # softmax over two logits
    multimodal = 0.5 * w_text - 0.5 * (1 - w_text)
    expected = (0.2 + 2 * multimodal) / 3 / model.temperature
    torch.testing.assert_close(got, expected.reshape(1))


@pytest.mark.parametrize("use_item_id", [True, False])
def test_full_sort_predict_equals_predict_for_every_item(missrec_config, use_item_id):
    _, (train_data, _, _), model, _ = build_pipeline("MISSRec", dict(missrec_config, use_item_id=use_item_id))
    assert (model.item_embedding is not None) == use_item_id
    model.eval()
    batch = first_batch(train_data)[torch.arange(5)]
    assert_full_sort_matches_predict(model, batch)


def test_missrec_learns_far_better_than_random(missrec_config):
    result = run_recbole_reveal("MISSRec", "tiny", config_dict=dict(missrec_config, epochs=6))
    random_recall_at_10 = 10 / (TINY_ITEMS - 1)
    assert result["test_result"]["recall@10"] > 2 * random_recall_at_10
    assert result["test_result"]["ndcg@10"] > 0.25


def test_reveal_with_avl_off_is_the_plain_backbone_run(missrec_config):
    cfg = dict(missrec_config, epochs=2)
    plain = run_recbole_reveal("MISSRec", "tiny", config_dict=cfg)
    off = run_recbole_reveal("MISSRec_REVEAL", "tiny", config_dict=dict(cfg, avl=False))
    assert _metrics(off["test_result"]) == _metrics(plain["test_result"])
    assert _metrics(off["best_valid_result"]) == _metrics(plain["best_valid_result"])


def test_reveal_run_with_avl_finishes_and_reports_masked_results(missrec_config, caplog):
    cfg = dict(missrec_config, epochs=2, avl_alpha=1.0, eval_zeroed_modalities=["vision"])
    with caplog.at_level("INFO"):
        result = run_recbole_reveal("MISSRec_REVEAL", "tiny", config_dict=cfg)
    assert result["config"]["avl"] is True
    assert all(0 <= v <= 1 for v in _metrics(result["test_result"]).values())
    assert any("epoch 1 AVL" in r.getMessage() for r in caplog.records)
    assert _metrics(result["masked_test_results"]["vision"]) != _metrics(result["test_result"])


@pytest.mark.parametrize("key, value, message", [
    ("n_layers", 3, "n_layers"),
    ("interest_ratio", 1.5, "interest_ratio"),
    ("train_neg_sample_args", {"distribution": "uniform", "sample_num": 1}, "train_neg_sample_args"),
    ("interest_penalty_pooling", "max", "interest_penalty_pooling"),
])
def test_bad_config_is_a_clear_error(missrec_config, key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_pipeline("MISSRec", dict(missrec_config, **{key: value}))
