"""The wiring between AVL and every backbone, asked the same way of each (M3SRec, MISSRec, HM4SR and
the example backbone of examples/custom_backbone):

* the trainer's probes are (loss with text zeroed, loss with vision zeroed), in that order, each with
  only its own modality zeroed -- equal to ``calculate_loss`` under ``zeroed_modalities`` computed
  separately -- and K is computed from them in that order;
* a zeroed modality never reaches the loss or the scores: shuffling the rows of any of its feature
  tables (M3SRec: the mean AND the covariance table) changes nothing while it is zeroed, and changes
  the loss while only the other modality is zeroed (so the shuffle is seen at all).

docs/testing.md lists these among the swap points of the package.
"""

import math
import os
from contextlib import contextmanager

import pytest
import torch

from recbole_reveal.trainer import AVLTrainer, PaperRule
from helpers import build_pipeline, first_batch, write_tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "custom_backbone", "mmgru4rec.py")
DATASET = "wiring"

# backbone -> (REVEAL model spec, its config on top of the tiny settings)
BACKBONES = {
    "M3SRec": ("M3SRec_REVEAL", {}),
    "MISSRec": ("MISSRec_REVEAL", {"hidden_dropout_prob": 0.1}),
    "HM4SR": ("HM4SR_REVEAL", {"time_unit": 1, "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                                                           "item": ["item_id", "categories"]}}),
    "MMGRU4Rec": (f"{EXAMPLE}:MMGRU4Rec_REVEAL", {}),
}


@pytest.fixture(scope="module")
def wiring_root(tmp_path_factory):
    """The tiny dataset plus a categories column (HM4SR's category loss reads it; the others ignore it)."""
    root = str(tmp_path_factory.mktemp("atomic_wiring"))
    folder, tokens, _, _ = write_tiny_dataset(root, name=DATASET)
    with open(os.path.join(folder, f"{DATASET}.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tcategories:token_seq\n")
        for index, token in enumerate(tokens):
            f.write(f"{token}\ttop{index % 3} leaf{index % 5}\n")
    return root


@pytest.fixture(scope="module")
def base_config(wiring_root, tmp_path_factory):
    return {
        "data_path": wiring_root, "checkpoint_dir": str(tmp_path_factory.mktemp("saved")), "epochs": 1,
        "hidden_size": 16, "inner_size": 32, "n_heads": 2, "train_batch_size": 64, "eval_batch_size": 256,
        "MAX_ITEM_LIST_LENGTH": 10, "stopping_step": 100, "avl_clamp": None, "avl_alpha": 1.0,
    }


def build(backbone, base_config, **extra):
    spec, own = BACKBONES[backbone]
    _, (train_data, _, _), model, trainer = build_pipeline(spec, dict(base_config, **own, **extra), dataset=DATASET)
    assert isinstance(trainer, AVLTrainer)
    return model, trainer, first_batch(train_data)


def loss_with(model, batch, *zeroed):
    with torch.no_grad(), model.zeroed_modalities(*zeroed):
        return float(model.calculate_loss(batch))


def feature_tables(model, modality):
    """The backbone's feature tables of ``modality``: its declared ``vision_feature_tables``, and the
    text tables named alike."""
    names = list(model.vision_feature_tables)
    if modality == "text":
        names = [n.replace("vision", "text") for n in names]
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    assert not missing, f"{type(model).__name__} has no {missing}: the test's naming rule needs updating"
    return names


@contextmanager
def rows_shuffled(model, table):
    """Every item takes another item's feature row (padding row 0 stays); restored afterwards."""
    weight = dict(model.named_modules())[table].weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[1:] = weight[1:].roll(1, dims=0)
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def _seeded(seed, fn, *args):
    torch.manual_seed(seed)
    return fn(*args)


# -- the probes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("probe_mode", ["eval", "train"])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_probes_are_text_zeroed_then_vision_zeroed_each_alone(backbone, probe_mode, base_config):
    model, trainer, batch = build(backbone, base_config, avl_probe_mode=probe_mode)
    # what the probes must be: calculate_loss with one modality zeroed, computed separately, each from the
    # same random state -- the real step's (train mode: its dropout draws, HM4SR's placeholder positions)
    # or, in eval mode, the run's fixed probe seed -- so L_v - L_t holds no draw noise
    model.train(probe_mode == "train")
    seed = 11 if probe_mode == "train" else trainer._probe_seed
    loss_v, loss_t, both = (_seeded(seed, loss_with, model, batch, *zeroed)
                            for zeroed in (("text",), ("vision",), ("text", "vision")))
    assert abs(loss_v - loss_t) > 1e-3, "the two probes must differ for their order to be visible"
    assert min(abs(both - loss_v), abs(both - loss_t)) > 1e-4, "zeroing both must differ from either"

    torch.manual_seed(11)
    state = torch.get_rng_state()
    got = trainer.unimodal_losses(batch)
    assert got == pytest.approx((loss_v, loss_t), rel=1e-5, abs=1e-6)
    # the probes leave no trace: random stream, train mode, nothing zeroed afterwards
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training
    model.eval()
    with torch.no_grad():
        torch.manual_seed(3)
        after = float(model.calculate_loss(batch))
    torch.manual_seed(3)
    assert after == loss_with(model, batch)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_k_of_a_step_is_driven_by_l_v_minus_l_t(backbone, base_config):
    model, trainer, batch = build(backbone, base_config, avl_probe_mode="eval")
    history = {"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0}
    trainer.balance.load_state_dict(history)
    model.eval()
    loss_v, loss_t = (_seeded(trainer._probe_seed, loss_with, model, batch, z) for z in ("text", "vision"))
    expected = PaperRule(1.0, None)
    expected.load_state_dict(history)
    k = expected.update(loss_v, loss_t)
    swapped = PaperRule(1.0, None)
    swapped.load_state_dict(history)
    assert not math.isclose(k, swapped.update(loss_t, loss_v), rel_tol=1e-3)

    torch.manual_seed(5)
    trainer._train_epoch([batch], epoch_idx=0)
    assert trainer.current_k == pytest.approx(k, rel=1e-5)
    summary = trainer.epoch_avl_summary()
    assert (summary["L_v"]["mean"], summary["L_t"]["mean"]) == pytest.approx((loss_v, loss_t), rel=1e-5)
    assert trainer.balance.mean_loss_v == pytest.approx((0.0 * 10 + loss_v) / 11, rel=1e-5)


# -- masking ------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["vision", "text"])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_a_zeroed_modality_never_reaches_loss_or_scores(backbone, modality, base_config):
    model, _, batch = build(backbone, base_config)
    model.eval()
    other = "text" if modality == "vision" else "vision"

    def observe():
        torch.manual_seed(0)
        zeroed = loss_with(model, batch, modality)
        torch.manual_seed(0)
        kept = loss_with(model, batch, other)
        with torch.no_grad(), model.zeroed_modalities(modality):
            scores = model.full_sort_predict(batch)
        return zeroed, kept, scores

    reference = observe()
    tables = feature_tables(model, modality)
    for table in tables:                      # M3SRec: the mean and the covariance table, one at a time
        with rows_shuffled(model, table):
            zeroed, kept, scores = observe()
        assert zeroed == pytest.approx(reference[0], rel=1e-6, abs=1e-7), \
            f"{table} reaches the loss while {modality} is zeroed"
        torch.testing.assert_close(scores, reference[2], rtol=1e-5, atol=1e-6,
                                   msg=f"{table} reaches the scores while {modality} is zeroed")
        assert abs(kept - reference[1]) > 1e-6, f"shuffling {table} must change the loss with only {other} zeroed"


def test_missrec_interest_ids_belong_to_their_own_modality(base_config):
    """MISSRec clusters text and image tokens together; each item's text interest must be the
    centroid nearest its text token and its image interest the one nearest its image token."""
    model, _, _ = build("MISSRec", base_config)
    with torch.no_grad():
        text, vision = model.modality_embeddings()
        centroids = model.interest_embeddings[1:]
        for ids, tokens in ((model.text_interest_ids, text), (model.vision_interest_ids, vision)):
            nearest = torch.cdist(tokens[1:], centroids).argmin(1) + 1
            assert torch.equal(ids[1:], nearest)
        assert not torch.equal(model.text_interest_ids, model.vision_interest_ids)
