"""The balancing rules behind ``avl_rule``: each coefficient against its source's formula restated on
fixed losses, which gradients each rule touches, every rule on every ``*_REVEAL`` backbone, the
per-epoch diagnostics, and a misspelt rule."""

import math

import numpy as np
import pytest
import torch

from recbole_reveal import run_recbole_reveal
from recbole_reveal.config_keys.schema import RANGES
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.trainer import RULES, make_rule
from helpers import build_pipeline, first_batch, gradients_at_step, seeded_gradients

LOSSES = [(1.0, 0.5), (0.8, 0.6), (1.2, 0.4), (0.3, 0.9)]     # (L_v, L_t) per step
HM4SR = {"category_weight": 0, "time_unit": 1}
BACKBONES = {"M3SRec_REVEAL": {}, "MISSRec_REVEAL": {"hidden_dropout_prob": 0.1}, "HM4SR_REVEAL": HM4SR}


def _run(rule, losses=LOSSES, alpha=0.5, clamp="auto"):
    r = make_rule(rule, alpha, clamp)
    return [r.step(lv, lt) for lv, lt in losses]


def test_reference_rule_is_m3srec_trainers_kappas_with_scores_minus_loss_and_its_clamp():
    # M3SRec/trainers.py::_agm_compute_kappas: s = -L; means of s updated with this batch first;
    # kappa_img = exp(-a (exp(s_img - s_txt) - exp(hat_img - hat_txt))), mirror for text, clamp [0.2, 2]
    alpha, hat_img, hat_txt, expected = 2.0, 0.0, 0.0, []
    for t, (lv, lt) in enumerate(LOSSES, start=1):
        s_img, s_txt = -lv, -lt
        hat_img = hat_img * (t - 1) / t + s_img / t
        hat_txt = hat_txt * (t - 1) / t + s_txt / t
        k_img = np.exp(-alpha * (np.exp(s_img - s_txt) - np.exp(hat_img - hat_txt)))
        k_txt = np.exp(-alpha * (np.exp(s_txt - s_img) - np.exp(hat_txt - hat_img)))
        expected.append({"vision": float(np.clip(k_img, 0.2, 2.0)), "text": float(np.clip(k_txt, 0.2, 2.0))})
    got = _run("reference", alpha=alpha)
    assert got == [pytest.approx(e, rel=1e-12) for e in expected]
    assert any(e["vision"] in (0.2, 2.0) for e in expected)          # the clamp binds at some step
    assert any(0.2 < e["text"] < 2.0 and e["text"] != 1.0 for e in expected)


def test_agm_rule_is_agm_codes_ratio_to_the_previous_steps_mean_without_clamp():
    # AGM (Li et al. 2023, official run/*_main.py), scores = per-modality CE (our L); the running means
    # start at 0 and are updated after the coefficients; ratio_m = exp(2 (mean_score - score_m))
    alpha, run_v, run_t, expected = 2.0, 0.0, 0.0, []
    for it, (lv, lt) in enumerate(LOSSES, start=1):
        mean = (lv + lt) / 2
        ratio_v, ratio_t = math.exp((mean - lv) * 2), math.exp((mean - lt) * 2)
        optimal = (run_v + run_t) / 2
        optimal_v, optimal_t = math.exp((optimal - run_v) * 2), math.exp((optimal - run_t) * 2)
        expected.append({"vision": math.exp(alpha * (optimal_v - ratio_v)),
                         "text": math.exp(alpha * (optimal_t - ratio_t))})
        run_v = run_v * (it - 1) / it + lv / it
        run_t = run_t * (it - 1) / it + lt / it
    got = _run("agm", alpha=alpha)
    assert got == [pytest.approx(e, rel=1e-12) for e in expected]
    assert max(e["vision"] for e in expected) > 2.0            # no clamp


def test_ogm_ge_rule_is_eq_10_on_probe_scores():
    # OGM-GE eq. 10: rho_v = s_v / s_a; k_u = 1 - tanh(alpha rho_u) when rho_u > 1, else 1; s = exp(-L)
    alpha, expected = 0.3, []
    for lv, lt in LOSSES:
        s_v, s_t = math.exp(-lv), math.exp(-lt)
        rho_v, rho_t = s_v / s_t, s_t / s_v
        expected.append({"vision": 1 - math.tanh(alpha * rho_v) if rho_v > 1 else 1.0,
                         "text": 1 - math.tanh(alpha * rho_t) if rho_t > 1 else 1.0})
    assert _run("ogm_ge", alpha=alpha) == [pytest.approx(e, rel=1e-12) for e in expected]
    assert {k for e in expected for k, v in e.items() if v < 1} == {"vision", "text"}


JOINT = [(1.0, 0.5, 0.45), (0.8, 0.6, 0.5), (1.2, 0.4, 0.5), (0.3, 0.9, 0.2), (1.0, 5.0, 0.5)]   # (L_v, L_t, L_j)


def test_ckd_rule_is_the_counterfactual_kd_weights_of_balanced_multimodal_rec():
    # Balanced-Multimodal-Rec codes/train_kd.py ("calculate kd weight"), with the scores s = exp(-L):
    # coeff_txt_given_vis = clamp((joint - visual) / textual, 1e-8, 10), the mirror for vision,
    # textual_ratio = 1 - (c_t - c_v) / (c_t + c_v), visual_ratio = 2 - textual_ratio
    alpha, expected, gains = 0.7, [], []
    for lv, lt, lj in JOINT:
        joint, visual, textual = (torch.tensor([math.exp(-x)], dtype=torch.float64) for x in (lj, lv, lt))
        gains += [((joint - visual) / textual).item(), ((joint - textual) / visual).item()]
        c_t = torch.clamp((joint - visual) / textual, 1e-8, 10)
        c_v = torch.clamp((joint - textual) / visual, 1e-8, 10)
        textual_ratio = 1 - (c_t - c_v) / (c_t + c_v)
        visual_ratio = 2 - textual_ratio
        expected.append({"vision": 1 + alpha * (visual_ratio.item() - 1), "text": 1 + alpha * (textual_ratio.item() - 1)})
    rule = make_rule("ckd", alpha)
    got = [rule.step(*losses) for losses in JOINT]
    assert got == [pytest.approx(e, rel=1e-12) for e in expected]
    assert {k for e in expected for k, v in e.items() if v < 1} == {"vision", "text"}
    assert min(gains) < 0 and max(gains) > 10                   # both clips bind
    assert any(min(e.values()) == pytest.approx(1 - alpha) for e in expected)   # a gain clipped to 1e-8
    # vision adds nothing given text (s_j < s_t): vision gets all the weight; alpha > 1 would turn the
    # text gradient around: clamped to [0, 2]
    assert make_rule("ckd", 3.0).step(1.2, 0.4, 0.5) == {"vision": 2.0, "text": 0.0}
    with pytest.raises(ValueError, match="ckd"):
        rule.step(1.0, 0.5)


def test_paper_rule_keeps_its_clamp_and_vision_only():
    got = _run("paper", losses=[(0.0, 0.0), (8.0, 0.0)], alpha=1.0)
    assert got == [{"vision": 1.0}, {"vision": 10.0}]
    assert _run("paper", losses=[(0.0, 0.0), (2.0, 0.0)], alpha=1.0, clamp=None)[1]["vision"] == pytest.approx(
        math.exp(math.exp(2.0) - math.exp(1.0)))


def test_ogm_ge_adds_noise_of_the_gradients_own_spread():
    rule, generator = make_rule("ogm_ge", 0.5), torch.Generator().manual_seed(0)
    grad = torch.linspace(-1, 1, 4000).reshape(40, 100)
    noisy = grad.clone()
    rule.modulate(noisy, 0.6, generator)
    noise = noisy - 0.6 * grad
    assert noise.std().item() == pytest.approx(grad.std().item(), rel=0.05)
    assert abs(noise.mean().item()) < 0.05


def test_rule_names_agree_with_the_config_check_and_a_misspelt_rule_names_the_choices():
    assert RANGES["avl_rule"].choices == tuple(RULES)
    with pytest.raises(ConfigError, match="avl_rule.*paper, reference, agm, ogm_ge.*'papr'"):
        make_rule("papr", 0.1)


def test_a_misspelt_rule_on_the_command_line_is_one_error_line(tiny_root, capsys):
    from recbole_reveal.commands.run_recbole_reveal import main

    code = main(["--model=M3SRec_REVEAL", "--dataset=tiny", f"--data_path={tiny_root}", "--avl_rule=papr"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1
    assert "avl_rule" in errors[0] and "paper, reference, agm, ogm_ge" in errors[0]


@pytest.mark.parametrize("rule", ["reference", "agm", "ckd"])
def test_two_modality_rules_scale_vision_and_text_gradients_by_their_own_coefficient(tiny_config, rule):
    cfg = dict(tiny_config, avl_rule=rule, avl_alpha=1.0)
    _, (train_data, _, _), model, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    # one epoch first: at initialisation the full model is no better than either modality alone, and
    # ckd's counterfactual gains are both clipped (coefficients 1)
    trainer._train_epoch(train_data, epoch_idx=0)
    trainer.balance.load_state_dict({"steps": 10, "mean_loss_v": 0.0, "mean_loss_t": 1.0})
    batch = first_batch(train_data)
    reference = seeded_gradients(model, batch)
    seen = gradients_at_step(trainer)
    torch.manual_seed(7)
    trainer._train_epoch([batch], epoch_idx=1)
    k = trainer.current_coefficients
    assert abs(k["vision"] - 1) > 0.05 and abs(k["text"] - 1) > 0.05 and k["vision"] != k["text"]
    vision = {n for n, _ in model.vision_parameters()}
    text = {n for n, _ in model.text_parameters()}
    assert vision and text and not vision & text
    for name, grad in seen.items():
        factor = k["vision"] if name in vision else k["text"] if name in text else 1.0
        torch.testing.assert_close(grad, reference[name] * factor, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("rule", ["reference", "agm", "ogm_ge", "ckd"])
def test_every_rule_trains_every_reveal_backbone_with_diagnostics(tiny_config, backbone, rule):
    cfg = dict(tiny_config, epochs=2, avl_rule=rule, avl_alpha=0.5, **BACKBONES[backbone])
    result = run_recbole_reveal(backbone, "tiny", config_dict=cfg, saved=False)
    epochs = result["avl_epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    for entry in epochs:
        assert entry["rule"] == rule
        assert set(entry["coefficient_vision"]) == {"mean", "min", "max"}
        assert math.isfinite(entry["coefficient_text"]["mean"])
        assert entry["grad_norm_ratio_vision_text"]["mean"] > 0
        assert 0 <= entry["valid_text_zeroed"] <= 1 and 0 <= entry["valid_vision_zeroed"] <= 1
    moved = [e["coefficient_vision"]["min"] != e["coefficient_vision"]["max"] or
             e["coefficient_text"]["min"] != e["coefficient_text"]["max"] for e in epochs]
    assert any(moved)
    assert np.isfinite(list(result["test_result"].values())).all()


def test_diagnostics_change_no_number_and_also_run_with_avl_off(tiny_config):
    cfg = dict(tiny_config, epochs=2, avl=False)
    quiet = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=dict(cfg, avl_diagnostics=False), saved=False)
    watched = run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=cfg, saved=False)
    assert quiet["test_result"] == watched["test_result"] and quiet["avl_epochs"] == []
    entry = watched["avl_epochs"][-1]
    assert "coefficient_vision" not in entry and entry["grad_norm_ratio_vision_text"]["mean"] > 0
    # the text-zeroed validation is the model's validation with text zeroed: it differs from both
    assert entry["valid_text_zeroed"] != entry["valid"] or entry["valid_vision_zeroed"] != entry["valid"]


def test_ogm_ge_in_lr_mode_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="ogm_ge"):
        build_pipeline("M3SRec_REVEAL", dict(tiny_config, avl_rule="ogm_ge", avl_mode="lr"))


def test_the_run_record_keeps_the_diagnostics(tiny_config, tmp_path):
    import json

    from recbole_reveal.experiments.runs import ResultStore, RunSpec, execute

    overrides = {k: v for k, v in tiny_config.items() if k != "checkpoint_dir"}
    spec = RunSpec("M3SRec_REVEAL", dict(overrides, epochs=1, avl_rule="agm"))
    store = ResultStore(str(tmp_path / "results"))
    execute(spec, 5, "tiny", store)
    with open(store.path(spec, 5), encoding="utf-8") as f:
        saved = json.load(f)["avl_epochs"]
    assert [e["epoch"] for e in saved] == [0] and saved[0]["rule"] == "agm"
    assert {"valid_text_zeroed", "valid_vision_zeroed", "grad_norm_ratio_vision_text", "coefficient_text"} <= set(saved[0])


def test_the_diagnostics_reach_tensorboard(tiny_config, tmp_path, monkeypatch):
    """The per-epoch figures a user plots (RecBole's ./log_tensorboard): the same numbers as the result's
    avl_epochs, one point per epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    cfg = dict(tiny_config, epochs=2, avl_rule="agm", avl_alpha=0.5)
    _, (train_data, valid_data, _), _, trainer = build_pipeline("M3SRec_REVEAL", cfg)
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    trainer.tensorboard.flush()
    events = EventAccumulator(trainer.tensorboard.log_dir)
    events.Reload()
    history = trainer.avl_history
    assert [e["epoch"] for e in history] == [0, 1]

    def plotted(tag):
        return [(s.step, s.value) for s in events.Scalars(tag)]

    for key in ("valid_text_zeroed", "valid_vision_zeroed"):
        assert plotted(f"AVL/{key}") == [(e["epoch"], pytest.approx(e[key], rel=1e-6)) for e in history]
    # the coefficients under the names of the epoch's AVL log line (K, K_text)
    for tag, key in (("grad_norm_ratio_vision_text", "grad_norm_ratio_vision_text"), ("K", "coefficient_vision"),
                     ("K_text", "coefficient_text")):
        for stat in ("mean", "min", "max"):
            assert plotted(f"AVL/{tag}_{stat}") == [(e["epoch"], pytest.approx(e[key][stat], rel=1e-6))
                                                    for e in history]
