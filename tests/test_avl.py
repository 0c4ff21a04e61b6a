"""AVL (paper eqs 5-15): the scale K, which gradients it touches, and what stays unchanged."""

import math

import pytest
import torch

from recbole_reveal import run_recbole_reveal
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.trainer import AVLTrainer, PaperRule
from helpers import build_pipeline, first_batch, gradients_at_step, seeded_gradients


def test_k_follows_eqs_9_to_13_for_a_known_loss_sequence():
    alpha = 0.5
    balance = PaperRule(alpha, clamp=None)
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
    clamped = PaperRule(1.0, clamp=[0.1, 10.0])
    clamped.update(0.0, 0.0)
    assert clamped.update(8.0, 0.0) == 10.0
    unclamped = PaperRule(1.0, clamp=None)
    unclamped.update(0.0, 0.0)
    with pytest.raises(FloatingPointError, match="avl_alpha"):
        unclamped.update(50.0, 0.0)
    with pytest.raises(ValueError, match="avl_clamp"):
        PaperRule(1.0, clamp=[2.0, 10.0])


def test_a_non_finite_probe_loss_is_skipped_without_touching_the_means():
    balance = PaperRule(0.5, clamp=None)
    balance.update(1.0, 0.5)
    before = balance.state_dict()
    assert balance.update(float("nan"), 0.5) is None
    assert balance.update(1.0, float("inf")) is None
    assert balance.state_dict() == before






def test_only_vision_gradients_are_scaled_and_by_exactly_k(tiny_config):
    cfg = dict(tiny_config, avl_alpha=1.0, avl_clamp=None)
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    assert isinstance(trainer, AVLTrainer)
    # a history whose mean gap differs from this batch's makes K clearly != 1
    trainer.balance.load_state_dict({"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0})
    batch = first_batch(train_data)
    reference = seeded_gradients(model, batch, seed=7)
    seen = gradients_at_step(trainer)

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
    # the exact set, written out here (not read back from the model's own declaration): the mean and the
    # covariance stream each have their vision table, projection and fusion experts
    modules = ("vision_mean_table", "vision_cov_table", "vision_mean_proj", "vision_cov_proj",
               "mean_fusion.vision_experts", "cov_fusion.vision_experts")
    expected = {n for n, _ in model.named_parameters() if n.startswith(tuple(m + "." for m in modules))}
    assert names == expected
    for module in modules:
        assert any(n.startswith(module + ".") for n in names), module
    assert any(n.startswith("cov_fusion.vision_experts.gate") for n in names)
    assert not any("shared" in n or "stream_mix" in n or "text" in n or "id_experts" in n for n in names)


def test_lr_mode_scales_the_vision_learning_rate_for_one_step(tiny_config):
    cfg = dict(tiny_config, learner="sgd", learning_rate=0.1, avl_mode="lr", avl_alpha=1.0, avl_clamp=None)
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    trainer.balance.load_state_dict({"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0})
    batch = first_batch(train_data)
    reference = seeded_gradients(model, batch, seed=3)
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


def _k_at_each_step(trainer):
    """K as the optimizer step sees it, one entry per step (registered after AVL's own hook)."""
    seen = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: seen.append(trainer.current_k))
    return seen


def test_probe_every_n_probes_every_nth_whole_batch_and_holds_its_k(tiny_config):
    cfg = dict(tiny_config, avl_probe_every=3, avl_alpha=5.0, avl_clamp=None, avl_stacked_probes=False)
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    batches = list(train_data)[:7]
    sizes, original = [], model.calculate_loss

    def recording_loss(interaction):
        sizes.append((len(interaction), bool(model._zeroed)))
        return original(interaction)

    model.calculate_loss = recording_loss
    ks = _k_at_each_step(trainer)
    trainer._train_epoch(batches, epoch_idx=0)
    # probes (two masked forwards of the whole batch) before steps 0, 3 and 6 only
    probed = [i for i, b in enumerate(batches) for _ in range(1)]
    expected = []
    for i, b in enumerate(batches):
        if i % 3 == 0:
            expected += [(len(b), True), (len(b), True)]
        expected.append((len(b), False))
    assert sizes == expected and len(probed) == 7
    assert len(trainer._epoch_stats) == 3
    assert ks[1] == ks[2] == ks[0] and ks[4] == ks[5] == ks[3] and len(set(ks)) == 3
    assert [k for k, _, _ in trainer._epoch_stats] == [ks[0], ks[3], ks[6]]


def test_avl_sample_fraction_is_refused_with_its_replacement_named(tiny_config):
    with pytest.raises(ConfigError, match="avl_sample_fraction.*avl_probe_every"):
        build_pipeline("M3SRec_REVEAL", dict(tiny_config, avl_sample_fraction=0.25))


def test_a_non_finite_probe_skips_that_steps_k_and_is_counted(tiny_config, caplog):
    cfg = dict(tiny_config, avl_stacked_probes=False, avl_alpha=5.0, avl_clamp=None)
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    batches = list(train_data)[:3]
    original, probes = model.calculate_loss, []

    def diverging_probe(interaction):          # a backbone whose first probed batch diverges
        loss = original(interaction)
        if model._zeroed:
            probes.append(1)
            if len(probes) <= 2:
                return loss * float("nan")
        return loss

    model.calculate_loss = diverging_probe
    ks = _k_at_each_step(trainer)
    with caplog.at_level("WARNING"):
        trainer._train_epoch(batches, epoch_idx=0)
    assert ks[0] == 1.0 and trainer.balance.steps == 2 and len(trainer._epoch_stats) == 2
    assert trainer.epoch_avl_summary()["skipped"] == 1
    assert "1 probed batch(es) skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # a backbone whose probes never give a finite loss: AVL would do nothing, so the run stops
    probes.clear()
    model.calculate_loss = lambda interaction: original(interaction) * (float("nan") if model._zeroed else 1.0)
    with pytest.raises(FloatingPointError, match="every AVL probe loss was non-finite"):
        trainer._train_epoch(batches, epoch_idx=1)


def test_stacked_probes_give_the_separate_probes_k(tiny_config):
    """One vmapped forward of the two masked copies == two forwards, batch by batch (M3SRec, and HM4SR
    with its random placeholders and in-batch contrastive terms), so K is the same; a run with
    ``avl_stacked_probes: auto`` really takes the stacked path."""
    for model_name, extra in (("M3SRec_REVEAL", {}), ("HM4SR_REVEAL", {"category_weight": 0, "time_unit": 1})):
        cfg = dict(tiny_config, avl_alpha=1.0, avl_clamp=None, **extra)
        _, (train_data, _, _), model, trainer = build_pipeline(model_name, cfg)
        stacked, separate = PaperRule(1.0), PaperRule(1.0)
        for batch in train_data:
            with torch.no_grad():
                pair_stacked = trainer._stacked_probe(batch)
                pair_separate = trainer._separate_probes(batch)
            assert pair_stacked == pytest.approx(pair_separate, rel=1e-5)
            assert stacked.update(*pair_stacked) == pytest.approx(separate.update(*pair_separate), rel=1e-5)
        trainer._train_epoch(train_data, epoch_idx=0)
        assert trainer._stacked_ok is True, model_name


def test_joint_probe_is_the_unmasked_loss_under_the_probes_draws_stacked_or_not(tiny_config):
    """``avl_rule: ckd`` adds a third probe, the loss with nothing zeroed: it is the model's own loss
    under the probes' random draws (HM4SR draws placeholders), and the stacked forward of three copies
    gives the separate probes' three losses."""
    cfg = dict(tiny_config, avl_rule="ckd", category_weight=0, time_unit=1, avl_stacked_probes=False)
    _, (train_data, _, _), model, trainer = build_pipeline("HM4SR_REVEAL", cfg)
    batch = first_batch(train_data)
    loss_v, loss_t, loss_j = trainer.unimodal_losses(batch, joint=True)
    model.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(trainer._probe_seed)
        expected = float(model.calculate_loss(batch))
        torch.manual_seed(trainer._probe_seed + 1)
        other_draws = float(model.calculate_loss(batch))
    assert loss_j == pytest.approx(expected, rel=1e-6) and loss_j != pytest.approx(other_draws, rel=1e-6)
    assert (loss_v, loss_t) == trainer.unimodal_losses(batch)
    with torch.no_grad():
        separate = trainer._separate_probes(batch, joint=True)
        assert len(separate) == 3 and trainer._stacked_probe(batch, joint=True) == pytest.approx(separate, rel=1e-5)


def test_hm4sr_probes_share_their_random_draws(tiny_config):
    """HM4SR draws random placeholder positions even without dropout: eval probes are deterministic,
    train probes give L_v and L_t the same draws as each other."""
    cfg = dict(tiny_config, category_weight=0, time_unit=1, avl_stacked_probes=False)
    _, (train_data, _, _), model, trainer = build_pipeline("HM4SR_REVEAL", cfg)
    assert model.placeholder_weight > 0
    batch = first_batch(train_data)
    gaps = []
    for seed in range(4):
        torch.manual_seed(seed)
        loss_v, loss_t = trainer.unimodal_losses(batch)
        gaps.append(loss_v - loss_t)
    assert max(gaps) == min(gaps)                 # eval probes: no draw noise at all

    trainer.avl_probe_mode = "train"
    torch.manual_seed(0)
    stream = torch.get_rng_state()
    trainer.unimodal_losses(batch)
    assert torch.equal(torch.get_rng_state(), stream)   # the real step's stream is untouched
    # both probes draw exactly what a probe started from the step's state draws
    model.train()
    with model.zeroed_modalities("vision"), torch.no_grad():
        torch.set_rng_state(stream)
        expected_t = float(model.calculate_loss(batch))
    torch.set_rng_state(stream)
    assert trainer.unimodal_losses(batch)[1] == pytest.approx(expected_t, rel=1e-6)


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
    cfg = dict(tiny_config, avl_probe_every=2)
    _, (train_data, valid_data, _), _, trainer = build_pipeline("M3SRec_REVEAL", dict(cfg, epochs=1))
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    saved = trainer.balance.state_dict()
    assert saved["steps"] == (len(train_data) + 1) // 2 and saved["mean_loss_v"] > 0

    _, _, _, resumed = build_pipeline("M3SRec_REVEAL", dict(cfg, epochs=2))
    assert resumed.balance.state_dict()["steps"] == 0
    resumed.resume_checkpoint(trainer.saved_model_file)
    assert resumed.start_epoch == 1
    assert resumed.balance.state_dict() == saved
    assert (resumed._avl_step, resumed.current_k) == (trainer._avl_step, trainer.current_k)

    # a checkpoint without AVL state (written by an older version): said, not silently zero
    checkpoint = torch.load(trainer.saved_model_file, weights_only=False)
    del checkpoint["plugin_trainer_state"]
    older = str(tmp_path / "older.pth")
    torch.save(checkpoint, older)
    _, _, _, from_older = build_pipeline("M3SRec_REVEAL", dict(cfg, epochs=2))
    with caplog.at_level("WARNING"):
        from_older.resume_checkpoint(older)
    assert "holds no AVL state" in caplog.text and from_older.balance.state_dict()["steps"] == 0


def test_lr_mode_still_acts_after_resume_checkpoint(tiny_config):
    """optimizer.load_state_dict replaces the parameter-group dicts: K must edit the live one."""
    cfg = dict(tiny_config, avl_mode="lr", avl_alpha=1.0, avl_clamp=None, epochs=1)
    _, (train_data, valid_data, _), _, first = build_pipeline("M3SRec_REVEAL", cfg)
    first.fit(train_data, valid_data, saved=True, show_progress=False)

    _, (train_data, _, _), _, resumed = build_pipeline("M3SRec_REVEAL", dict(cfg, epochs=2))
    resumed.resume_checkpoint(first.saved_model_file)
    resumed.balance.load_state_dict({"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0})
    lrs = []
    resumed.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: lrs.append(
        (resumed.current_k, [g["lr"] for g in optimizer.param_groups if g.get("avl_vision")])))
    resumed._train_epoch([first_batch(train_data)], epoch_idx=1)
    (k, (vision_lr,)), = lrs
    assert abs(k - 1) > 0.05 and vision_lr == pytest.approx(cfg.get("learning_rate", 0.001) * k)
    assert resumed._vision_group["lr"] == pytest.approx(0.001)      # restored after the step


@pytest.mark.parametrize("saved_avl, resumed_avl", [(False, True), (True, False)])
def test_a_checkpoint_resumes_across_the_avl_switch(tiny_config, saved_avl, resumed_avl):
    """avl=False has RecBole's one parameter group, AVL two: Adam's state is mapped parameter by parameter."""
    cfg = dict(tiny_config, epochs=1)
    _, (train_data, valid_data, _), model, first = build_pipeline("M3SRec_REVEAL", dict(cfg, avl=saved_avl))
    first.fit(train_data, valid_data, saved=True, show_progress=False)
    by_param = {id(p): first.optimizer.state[p] for g in first.optimizer.param_groups for p in g["params"]
                if p in first.optimizer.state}
    names = {id(p): n for n, p in model.named_parameters()}
    saved_state = {names[i]: s for i, s in by_param.items()}

    _, (train_data, _, _), model2, resumed = build_pipeline("M3SRec_REVEAL", dict(cfg, avl=resumed_avl, epochs=2))
    resumed.resume_checkpoint(first.saved_model_file)
    assert len(resumed.optimizer.param_groups) == (2 if resumed_avl else 1)
    restored = {n: resumed.optimizer.state[p] for n, p in model2.named_parameters() if p in resumed.optimizer.state}
    assert restored.keys() == saved_state.keys() and saved_state
    for name, state in saved_state.items():
        torch.testing.assert_close(restored[name]["exp_avg"], state["exp_avg"])
    resumed._train_epoch([first_batch(train_data)], epoch_idx=1)     # and it trains on


