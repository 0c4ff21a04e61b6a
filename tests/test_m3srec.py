"""M3SRec: the REVEAL masking contract, ranking consistency, and that it learns."""

import pytest
import torch

from recbole_reveal import run_recbole_reveal
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


def test_fusion_uses_each_positions_own_item_and_gates(m3srec):
    """The reference broadcast position 0's gates over the sequence; here every position is fused
    with its own item's gates (computed once per distinct item)."""
    model, batch, _ = m3srec
    seq = batch[model.ITEM_SEQ]
    gates = {}
    with torch.no_grad():
        (mean, cov), = model.gaussians_of(seq)
        for position in range(seq.size(1)):
            own_mean, own_cov = model.item_gaussians(seq[:, position])
            torch.testing.assert_close(mean[:, position], own_mean)
            torch.testing.assert_close(cov[:, position], own_cov)
        hook = model.mean_fusion.stream_mix.register_forward_hook(_keep_first(gates, "mix"))
        model.item_gaussians(torch.arange(1, model.n_items))
        hook.remove()
    mix = torch.softmax(gates["mix"], -1)
    assert (mix - mix[0]).abs().max() > 1e-6, "gates must differ between items for this test to mean anything"


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
