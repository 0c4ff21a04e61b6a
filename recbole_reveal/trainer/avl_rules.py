r"""Modality-balancing rules behind AVL's trainer hook (``avl_rule``).

Every rule reads the same two probes of a training batch, the backbone's own loss with text zeroed
(``L_v``) and with vision zeroed (``L_t``) (paper eqs 5-8), and returns one gradient coefficient per
modality it modulates. The trainer multiplies that modality's declared parameters' gradients by it
(``avl_mode: grad``) or their learning rate (``avl_mode: lr``). Equations, citations and where each rule
departs from its paper: ``docs/avl-rules.md``.

- ``paper`` (REVEAL §4.4, eqs 9-13; the authors' ``REVEAL/AVL/trainers.py``):
  ``K_v = exp(alpha (exp(L_v - L_t) - exp(mean L_v - mean L_t)))``, vision only.
- ``reference`` (the authors' ``M3SRec/trainers.py``, which their ``main.py`` runs):
  ``k_v = exp(-alpha (exp(L_t - L_v) - exp(mean L_t - mean L_v)))`` and the mirror ``k_t`` on the text
  parameters, both clamped to [0.2, 2.0].
- ``agm`` (Li et al., ICCV 2023, adaptive gradient modulation): the same two coefficients from
  running means of the *previous* steps (AGM's order), no clamp.
- ``ogm_ge`` (Peng et al., CVPR 2022, on-the-fly gradient modulation with generalisation
  enhancement): ``rho_v = s_v / s_t`` with ``s = exp(-L)``; the dominant modality's coefficient is
  ``1 - tanh(alpha rho)``, the other's 1; Gaussian noise with the gradient's own standard deviation
  is added to both modalities' gradients.
- ``ckd`` (Zhang et al., MM 2024, modality-balanced learning: the counterfactual weights of its
  distillation losses): with ``s = exp(-L)`` and a third probe, the full model's loss ``L_j``,
  ``c_t = clip((s_j - s_v) / s_t)``, ``c_v = clip((s_j - s_t) / s_v)`` (each modality's gain given the
  other, relative to its own), ``w_t = 2 c_v / (c_t + c_v)``, ``w_v = 2 - w_t``; the coefficient is
  ``1 + alpha (w - 1)`` (alpha = 1: the paper's weights), clamped to [0, 2].

Running means (all but OGM-GE) cover every probed step of the run (never reset) and travel with the
checkpoint. A probe whose loss is not finite leaves the state untouched (the trainer applies 1).
"""

import math

import torch

from recbole_reveal.config_keys.schema import require
from recbole_reveal.infra.errors import ConfigError

# the reference's clamp: M3SRec/main.py's agm_kappa_min / agm_kappa_max defaults
REFERENCE_CLAMP = (0.2, 2.0)
# REVEAL/AVL/trainers.py's avl_kappa_min / avl_kappa_max: the paper rule's default clamp
PAPER_CLAMP = (0.1, 10.0)
# Balanced-Multimodal-Rec's train_kd.py: the clip of each modality's counterfactual gain
CKD_GAIN_CLIP = (1e-8, 10.0)


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def avl_scale(loss_v, loss_t, mean_loss_v, mean_loss_t, alpha):
    """Paper eqs 9-13: ``K = exp(alpha * (exp(L_v - L_t) - exp(mean_L_v - mean_L_t)))``."""
    return math.exp(alpha * (math.exp(loss_v - loss_t) - math.exp(mean_loss_v - mean_loss_t)))


def agm_coefficient(loss_m, loss_other, mean_m, mean_other, alpha):
    """AGM's (and the reference's) coefficient of modality m with the score ``s = -L``:
    ``exp(-alpha * (exp(s_m - s_o) - exp(mean s_m - mean s_o)))``."""
    return _exp(-alpha * (_exp(loss_other - loss_m) - _exp(mean_other - mean_m)))


def ckd_weights(loss_v, loss_t, loss_joint):
    """Zhang et al. (MM 2024) counterfactual weights from the three probe losses, ``s = exp(-L)``:
    ``c_t = clip((s_j - s_v) / s_t, 1e-8, 10)``, ``c_v = clip((s_j - s_t) / s_v, 1e-8, 10)``,
    ``w_t = 1 - (c_t - c_v) / (c_t + c_v)``, ``w_v = 2 - w_t``. Returns ``(w_v, w_t)``."""
    s_v, s_t, s_j = math.exp(-loss_v), math.exp(-loss_t), math.exp(-loss_joint)
    c_t = min(max((s_j - s_v) / s_t, CKD_GAIN_CLIP[0]), CKD_GAIN_CLIP[1])
    c_v = min(max((s_j - s_t) / s_v, CKD_GAIN_CLIP[0]), CKD_GAIN_CLIP[1])
    w_t = 1.0 - (c_t - c_v) / (c_t + c_v)
    return 2.0 - w_t, w_t


def ogm_coefficients(loss_v, loss_t, alpha):
    """OGM-GE eq 10 with ``s = exp(-L)``: ``rho_v = s_v / s_t``; the modality with ``rho > 1`` gets
    ``1 - tanh(alpha * rho)``, the other 1. Returns ``(k_v, k_t)``."""
    rho_v = _exp(loss_t - loss_v)
    if rho_v > 1:
        return 1.0 - math.tanh(alpha * rho_v), 1.0
    return 1.0, 1.0 - math.tanh(alpha / rho_v)


class BalanceRule:
    """One rule: ``step(L_v, L_t[, L_j])`` -> ``{modality: coefficient}`` or None (a non-finite probe)."""

    name = None
    modalities = ("vision",)          # whose gradients the rule modulates
    default_clamp = None
    needs_joint = False               # the trainer also probes the full model's loss L_j (no graph)

    def __init__(self, alpha, clamp="auto"):
        self.alpha = require("avl_alpha", alpha)       # the schema's rules, for a rule built outside a run
        clamp = require("avl_clamp", clamp)
        if clamp == "auto":
            clamp = self.default_clamp
        self.clamp = None if clamp is None else tuple(float(c) for c in clamp)
        self.steps = 0
        self.mean_loss_v = 0.0
        self.mean_loss_t = 0.0

    def step(self, loss_v, loss_t, loss_joint=None):
        losses = (loss_v, loss_t) + ((loss_joint,) if self.needs_joint else ())
        if self.needs_joint and loss_joint is None:
            raise ValueError(f"avl_rule {self.name} needs the full model's probe loss")
        if not all(math.isfinite(x) for x in losses):
            return None
        coefficients = self.coefficients(*(float(x) for x in losses))
        for modality, k in coefficients.items():
            if self.clamp is not None:
                k = min(max(k, self.clamp[0]), self.clamp[1])
            elif not math.isfinite(k):
                raise FloatingPointError(
                    f"avl_rule {self.name}: the {modality} coefficient overflowed (L_v={loss_v:.4f}, "
                    f"L_t={loss_t:.4f}, alpha={self.alpha}); lower avl_alpha or set avl_clamp")
            coefficients[modality] = k
        return coefficients

    def coefficients(self, loss_v, loss_t):
        raise NotImplementedError

    def _update_means(self, loss_v, loss_t):
        self.steps += 1
        self.mean_loss_v += (loss_v - self.mean_loss_v) / self.steps
        self.mean_loss_t += (loss_t - self.mean_loss_t) / self.steps

    def modulate(self, grad, k, generator):
        """Scale one parameter's gradient in place by its modality's coefficient."""
        grad.mul_(k)

    def state_dict(self):
        return {"steps": self.steps, "mean_loss_v": self.mean_loss_v, "mean_loss_t": self.mean_loss_t}

    def load_state_dict(self, state):
        self.steps, self.mean_loss_v, self.mean_loss_t = state["steps"], state["mean_loss_v"], state["mean_loss_t"]


class PaperRule(BalanceRule):
    """REVEAL eqs 9-13; running means include the current batch (eq 11)."""

    name = "paper"
    default_clamp = PAPER_CLAMP

    def coefficients(self, loss_v, loss_t):
        self._update_means(loss_v, loss_t)
        try:
            k = avl_scale(loss_v, loss_t, self.mean_loss_v, self.mean_loss_t, self.alpha)
        except OverflowError:
            k = math.inf
        return {"vision": k}

    def update(self, loss_v, loss_t):
        """The vision scale ``K`` of one step, or None for a non-finite probe (the trainer's K = 1)."""
        coefficients = self.step(loss_v, loss_t)
        return None if coefficients is None else coefficients["vision"]


class ReferenceRule(BalanceRule):
    """``M3SRec/trainers.py`` as run: AGM's two coefficients, means updated with the current batch first,
    clamped to [0.2, 2.0]."""

    name = "reference"
    modalities = ("vision", "text")
    default_clamp = REFERENCE_CLAMP

    def coefficients(self, loss_v, loss_t):
        self._update_means(loss_v, loss_t)
        return self._pair(loss_v, loss_t)

    def _pair(self, loss_v, loss_t):
        mv, mt, a = self.mean_loss_v, self.mean_loss_t, self.alpha
        return {"vision": agm_coefficient(loss_v, loss_t, mv, mt, a),
                "text": agm_coefficient(loss_t, loss_v, mt, mv, a)}


class AGMRule(ReferenceRule):
    """AGM (Li et al., ICCV 2023): the coefficients use the running means of the previous steps (zero
    before the first), which are updated afterwards; no clamp."""

    name = "agm"
    default_clamp = None

    def coefficients(self, loss_v, loss_t):
        pair = self._pair(loss_v, loss_t)
        self._update_means(loss_v, loss_t)
        return pair


class OGMGERule(BalanceRule):
    """OGM-GE (Peng et al., CVPR 2022): the dominant modality's gradient is damped by
    ``1 - tanh(alpha rho)``; every modulated gradient gets Gaussian noise of its own standard deviation
    (the generalisation enhancement)."""

    name = "ogm_ge"
    modalities = ("vision", "text")

    def coefficients(self, loss_v, loss_t):
        self.steps += 1
        k_v, k_t = ogm_coefficients(loss_v, loss_t, self.alpha)
        return {"vision": k_v, "text": k_t}

    def modulate(self, grad, k, generator):
        std = grad.std().item() if grad.numel() > 1 else 0.0
        noise = torch.empty(grad.shape, dtype=grad.dtype).normal_(0.0, std + 1e-8, generator=generator)
        grad.mul_(k).add_(noise.to(grad.device))


class CKDRule(BalanceRule):
    """Zhang et al. (MM 2024): the weights its counterfactual inference gives each modality's
    distillation loss, here on each modality's gradients (no teachers), from batch probes; strength
    ``1 + alpha (w - 1)``."""

    name = "ckd"
    modalities = ("vision", "text")
    default_clamp = (0.0, 2.0)
    needs_joint = True

    def coefficients(self, loss_v, loss_t, loss_joint):
        self.steps += 1
        w_v, w_t = ckd_weights(loss_v, loss_t, loss_joint)
        return {"vision": 1.0 + self.alpha * (w_v - 1.0), "text": 1.0 + self.alpha * (w_t - 1.0)}


RULES = {rule.name: rule for rule in (PaperRule, ReferenceRule, AGMRule, OGMGERule, CKDRule)}


def make_rule(name, alpha, clamp="auto"):
    """The rule called ``name`` (config key ``avl_rule``)."""
    return RULES[require("avl_rule", name)](alpha, clamp)
