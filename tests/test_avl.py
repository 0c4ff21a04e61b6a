"""AVL (paper eqs 5-15): the scale K, which gradients it touches, and what stays unchanged."""

import math

import pytest
import torch

from recbole_reveal import run_recbole_reveal
from recbole_reveal.trainer import AVLTrainer, ModalityBalance
from helpers import build_pipeline, first_batch


def test_k_follows_eqs_9_to_13_for_a_known_loss_sequence():
    alpha = 0.5
    balance = ModalityBalance(alpha, clamp=None)
    losses = [(1.0, 0.5), (0.8, 0.6), (1.2, 0.4)]
    # hand computation: running means after each step are (1.0, 0.5), (0.9, 0.55), (1.0, 0.5)
    expected = [
        math.exp(alpha * (math.exp(0.5) - math.exp(0.5))),
        math.exp(alpha * (math.exp(0.2) - math.exp(0.35))),
        math.exp(alpha * (math.exp(0.8) - math.exp(0.5))),
    ]
    got = [balance.update(lv, lt) for lv, lt in losses]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[0] == 1.0 and got[1] < 1 < got[2]
    assert (balance.mean_loss_v, balance.mean_loss_t) == pytest.approx((1.0, 0.5))


def test_clamp_bounds_k_and_unclamped_overflow_is_an_error():
    clamped = ModalityBalance(1.0, clamp=[0.1, 10.0])
    clamped.update(0.0, 0.0)
    assert clamped.update(8.0, 0.0) == 10.0
    unclamped = ModalityBalance(1.0, clamp=None)
    unclamped.update(0.0, 0.0)
    with pytest.raises(FloatingPointError, match="avl_alpha"):
        unclamped.update(50.0, 0.0)
    with pytest.raises(FloatingPointError, match="not finite"):
        unclamped.update(float("nan"), 0.0)
    with pytest.raises(ValueError, match="avl_clamp"):
        ModalityBalance(1.0, clamp=[2.0, 10.0])


def _grads_at_step(trainer):
    """Capture every gradient as the optimizer sees it (hooks run in registration order, so this
    one runs after AVL's)."""
    seen = {}

    def capture(optimizer, args, kwargs):
        for name, p in trainer.model.named_parameters():
            if p.grad is not None:
                seen[name] = p.grad.detach().clone()

    trainer.optimizer.register_step_pre_hook(capture)
    return seen


def _reference_grads(model, batch, seed):
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    model.calculate_loss(batch).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def test_only_vision_gradients_are_scaled_and_by_exactly_k(tiny_config):
    cfg = dict(tiny_config, avl_alpha=1.0, avl_clamp=None)
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    assert isinstance(trainer, AVLTrainer)
    # a history whose mean gap differs from this batch's makes K clearly != 1
    trainer.balance.load_state_dict({"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0})
    batch = first_batch(train_data)
    reference = _reference_grads(model, batch, seed=7)
    seen = _grads_at_step(trainer)

    torch.manual_seed(7)
    trainer._train_epoch([batch], epoch_idx=0)

    k = trainer.current_k
    assert abs(k - 1) > 0.05
    vision = {name for name, _ in model.vision_parameters()}
    assert vision and set(seen) == set(reference)
    for name, grad in seen.items():
        expected = reference[name] * k if name in vision else reference[name]
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-8)
    scaled = [n for n in seen if n in vision and reference[n].abs().sum() > 0]
    assert scaled, "no vision gradient was non-zero"


def test_vision_parameters_are_exactly_the_declared_modules(tiny_config):
    _, _, model, _ = build_pipeline("M3SRec_REVEAL", tiny_config)
    names = {name for name, _ in model.vision_parameters()}
    assert any(n.startswith("vision_mean_table") for n in names)
    assert any(n.startswith("mean_fusion.vision_experts.gate") for n in names)
    assert not any("shared" in n or "stream_mix" in n or "text" in n or "id_experts" in n for n in names)
    assert all(n.split(".")[0] in {"vision_mean_table", "vision_cov_table", "vision_mean_proj",
                                  "vision_cov_proj", "mean_fusion", "cov_fusion"} for n in names)


def test_lr_mode_scales_the_vision_learning_rate_for_one_step(tiny_config):
    cfg = dict(tiny_config, learner="sgd", learning_rate=0.1, avl_mode="lr", avl_alpha=1.0, avl_clamp=None)
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    trainer.balance.load_state_dict({"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0})
    batch = first_batch(train_data)
    reference = _reference_grads(model, batch, seed=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    vision = {name for name, _ in model.vision_parameters()}

    torch.manual_seed(3)
    trainer._train_epoch([batch], epoch_idx=0)

    k = trainer.current_k
    assert abs(k - 1) > 0.05
    for name, p in model.named_parameters():
        if name not in reference:
            continue
        lr = 0.1 * k if name in vision else 0.1
        torch.testing.assert_close(p.detach(), before[name] - lr * reference[name], rtol=1e-5, atol=1e-7)
    assert trainer._vision_group["lr"] == 0.1  # restored after the step


def test_epoch_statistics_are_logged(tiny_config, caplog):
    cfg = dict(tiny_config, epochs=1)
    _, (train_data, _, _), _, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    with caplog.at_level("INFO"):
        trainer._train_epoch(train_data, epoch_idx=0)
    summary = trainer.epoch_avl_summary()
    assert len(trainer._epoch_stats) == len(train_data)
    for name in ("K", "L_v", "L_t"):
        assert summary[name]["min"] <= summary[name]["mean"] <= summary[name]["max"]
    assert summary["L_v"]["mean"] > 0 and summary["L_t"]["mean"] > 0
    assert any("epoch 0 AVL" in r.getMessage() for r in caplog.records)


def test_sampled_estimate_uses_part_of_the_batch(tiny_config):
    cfg = dict(tiny_config, avl_sample_fraction=0.25)
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    batch = first_batch(train_data)
    sizes = []
    original = model.calculate_loss

    def recording_loss(interaction):
        sizes.append(len(interaction))
        return original(interaction)

    model.calculate_loss = recording_loss
    trainer._train_epoch([batch], epoch_idx=0)
    # two probes on a quarter of the batch, then the real step on all of it
    assert sizes == [round(len(batch) / 4)] * 2 + [len(batch)]


def _metrics(result):
    return {k: float(v) for k, v in result.items()}


def test_reveal_with_avl_off_is_the_plain_backbone_run(tiny_config):
    plain = run_recbole_reveal("M3SRec", "tiny", config_dict=tiny_config)
    off = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=dict(tiny_config, avl=False))
    assert _metrics(off["test_result"]) == _metrics(plain["test_result"])
    assert _metrics(off["best_valid_result"]) == _metrics(plain["best_valid_result"])


def test_avl_with_alpha_zero_trains_exactly_like_the_backbone(tiny_config):
    """The probes fork the random state, so with K == 1 AVL must not change a single number;
    with alpha > 0 it must."""
    plain = run_recbole_reveal("M3SRec", "tiny", config_dict=tiny_config)
    zero = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=dict(tiny_config, avl_alpha=0.0))
    strong = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=dict(tiny_config, avl_alpha=5.0))
    assert _metrics(zero["test_result"]) == _metrics(plain["test_result"])
    assert _metrics(strong["best_valid_result"]) != _metrics(plain["best_valid_result"])


def test_avl_running_means_travel_with_the_checkpoint(tiny_config, tmp_path, caplog):
    """Eq 11 averages over every step of the run: a resumed run continues the means, not from zero."""
    cfg = dict(tiny_config, avl_sample_fraction=0.5)
    _, (train_data, valid_data, _), _, trainer = build_pipeline("M3SRec_REVEAL", dict(cfg, epochs=1))
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    saved = trainer.balance.state_dict()
    assert saved["steps"] == len(train_data) and saved["mean_loss_v"] > 0
    generator_state = trainer._sample_generator.get_state()

    _, _, _, resumed = build_pipeline("M3SRec_REVEAL", dict(cfg, epochs=2))
    assert resumed.balance.state_dict()["steps"] == 0
    resumed.resume_checkpoint(trainer.saved_model_file)
    assert resumed.start_epoch == 1
    assert resumed.balance.state_dict() == saved
    assert torch.equal(resumed._sample_generator.get_state(), generator_state)

    # a checkpoint without AVL state (written by an older version): said, not silently zero
    checkpoint = torch.load(trainer.saved_model_file, weights_only=False)
    del checkpoint["plugin_trainer_state"]
    older = str(tmp_path / "older.pth")
    torch.save(checkpoint, older)
    _, _, _, from_older = build_pipeline("M3SRec_REVEAL", dict(cfg, epochs=2))
    with caplog.at_level("WARNING"):
        from_older.resume_checkpoint(older)
    assert "holds no AVL state" in caplog.text and from_older.balance.state_dict()["steps"] == 0
