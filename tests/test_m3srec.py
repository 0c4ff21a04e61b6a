"""M3SRec: the REVEAL masking contract, ranking consistency, and that it learns."""

import pytest
import torch

from recbole_reveal import run_recbole_reveal
from recbole_reveal.infra.errors import ConfigError
from helpers import TINY_ITEMS, assert_full_sort_matches_predict, build_pipeline, first_batch


@pytest.fixture
def m3srec(tiny_config):
    _, (train_data, _, test_data), model, _ = build_pipeline("M3SRec", tiny_config)
    model.eval()
    return model, first_batch(train_data), test_data


def _keep_first(store, key, inputs=False):
    """A forward hook that records a module's first call (inputs or output) and changes nothing."""

    def hook(module, args, output):
        store.setdefault(key, args if inputs else output)

    return hook


def _fusion_inputs(model, batch, *zeroed):
    """What the mean fusion receives as (id, vision, text), and the projections' own outputs."""
    seen = {}
    h1 = model.mean_fusion.register_forward_hook(_keep_first(seen, "fusion", inputs=True))
    h2 = model.text_mean_proj.register_forward_hook(_keep_first(seen, "text_proj"))
    h3 = model.vision_mean_proj.register_forward_hook(_keep_first(seen, "vision_proj"))
    with torch.no_grad(), model.zeroed_modalities(*zeroed):
        scores = model.full_sort_predict(batch)
    for h in (h1, h2, h3):
        h.remove()
    return seen, scores


@pytest.mark.parametrize("zeroed, kept", [("text", "vision"), ("vision", "text")])
def test_masking_zeroes_one_modality_after_its_projection(m3srec, zeroed, kept):
    model, batch, _ = m3srec
    full, full_scores = _fusion_inputs(model, batch)
    masked, masked_scores = _fusion_inputs(model, batch, zeroed)
    position = {"vision": 1, "text": 2}
    assert masked[f"{zeroed}_proj"].abs().sum() > 0, "the projection itself still runs"
    assert masked["fusion"][position[zeroed]].abs().sum() == 0
    torch.testing.assert_close(masked["fusion"][position[kept]], full["fusion"][position[kept]])
    torch.testing.assert_close(masked["fusion"][0], full["fusion"][0])
    assert not torch.allclose(masked_scores, full_scores)
    assert model._zeroed == frozenset(), "masking ends with the block"


def test_unknown_modality_is_rejected(m3srec):
    with pytest.raises(ValueError, match="unknown modalities"):
        with m3srec[0].zeroed_modalities("audio"):
            pass


def test_full_sort_predict_equals_predict_for_every_item(m3srec):
    model, batch, _ = m3srec
    batch = batch[torch.arange(5)]
    assert_full_sort_matches_predict(model, batch)


def test_history_items_are_fused_per_item_whatever_their_position(m3srec):
    """The default fusion depends on the item only (the reference's depends on positions 0-3)."""
    model, batch, _ = m3srec
    seq = model.left_align(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    with torch.no_grad():
        mean, cov = model.sequence_gaussians(seq)
        for position in range(seq.size(1)):
            own_mean, own_cov = model.sequence_gaussians(seq[:, position:position + 1])
            torch.testing.assert_close(mean[:, position:position + 1], own_mean)
            torch.testing.assert_close(cov[:, position:position + 1], own_cov)
        _, streams = model.mean_fusion(*[torch.randn(5, model.hidden_size) for _ in range(3)])
        mix = torch.softmax(model.mean_fusion.stream_mix(streams.flatten(-2)), -1)
    assert (mix - mix[0]).abs().max() > 1e-6, "stream weights must differ between items for this test to mean anything"


def test_gates_and_experts_have_the_reference_shapes(tiny_config):
    _, _, model, _ = build_pipeline("M3SRec", dict(tiny_config, hidden_size=16, gate_low_rank=4))
    gate = model.mean_fusion.vision_experts.gate
    assert gate[0].weight.shape == (16 // 4, 16) and gate[0].bias is None      # h -> h / low_rank
    assert isinstance(gate[1], torch.nn.GELU)
    assert gate[2].weight.shape == (4, 16 // 4) and gate[2].bias is None       # -> n_specific_experts
    assert model.mean_fusion.shared.gate[0].weight.shape == (4, 3 * 16)
    experts = model.mean_fusion.vision_experts.experts                          # Linear -> GELU -> Linear
    assert experts.weight1.shape == (4, 16, 16) and experts.weight2.shape == (4, 16, 16)


@pytest.mark.parametrize("reference_mode", [False, True])
def test_id_candidates_features_flow_on_the_history_side(tiny_config, reference_mode):
    """With ID-only candidates (the default, as the reference) the visual features still reach the
    ranking through the history: what FVE's features need, in every mode."""
    _, (train_data, _, _), model, _ = build_pipeline("M3SRec", dict(tiny_config, reference_mode=reference_mode))
    model.eval()
    batch = first_batch(train_data)
    items = torch.arange(model.n_items)
    with torch.no_grad():
        scores, candidates = model.full_sort_predict(batch), model.candidate_gaussians(items)
        with model.zeroed_modalities("vision"):
            blind_scores, blind_candidates = model.full_sort_predict(batch), model.candidate_gaussians(items)
    assert not torch.allclose(scores, blind_scores)
    for full, blind in zip(candidates, blind_candidates):
        torch.testing.assert_close(full, blind, rtol=0, atol=0)


def test_fused_candidates_see_the_features_and_rank_consistently(tiny_config):
    _, (train_data, _, _), model, _ = build_pipeline("M3SRec", dict(tiny_config, candidate_embedding="fused"))
    model.eval()
    items = torch.arange(1, model.n_items)
    with torch.no_grad():
        mean, _ = model.candidate_gaussians(items)
        with model.zeroed_modalities("vision"):
            blind_mean, _ = model.candidate_gaussians(items)
    assert not torch.allclose(mean, blind_mean)
    assert_full_sort_matches_predict(model, first_batch(train_data)[torch.arange(5)])


@pytest.mark.parametrize("overrides, message", [
    ({"candidate_embedding": "text"}, "candidate_embedding"),
    ({"fusion_mix": "average"}, "fusion_mix"),
    ({"mean_skips_layers": "maybe"}, "mean_skips_layers"),
    ({"gate_low_rank": 0}, "gate_low_rank"),
    ({"fusion_mix": "reference", "candidate_embedding": "fused"}, "candidate_embedding: id"),
    ({"reference_mode": True, "MAX_ITEM_LIST_LENGTH": 3}, "at least 4"),
])
def test_bad_switches_are_clear_errors(tiny_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_pipeline("M3SRec", dict(tiny_config, **overrides))


def test_m3srec_learns_far_better_than_random(tiny_config):
    result = run_recbole_reveal("M3SRec", "tiny", config_dict=dict(tiny_config, epochs=15))
    random_recall_at_10 = 10 / (TINY_ITEMS - 1)
    assert result["test_result"]["recall@10"] > 2 * random_recall_at_10
    assert result["test_result"]["ndcg@10"] > 0.25


def test_same_config_gives_the_same_numbers(tiny_config):
    first = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=tiny_config)
    second = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=tiny_config)
    assert dict(first["test_result"]) == dict(second["test_result"])


def test_modalities_zeroed_at_inference_are_reported(tiny_config):
    result = run_recbole_reveal(
        "M3SRec_REVEAL", "tiny", config_dict=dict(tiny_config, epochs=2, eval_zeroed_modalities=["text"])
    )
    assert set(result["masked_test_results"]) == {"text"}
    assert dict(result["masked_test_results"]["text"]) != dict(result["test_result"])
