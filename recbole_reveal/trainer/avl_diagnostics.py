"""AVL's per-epoch training diagnostics (the quantities behind the paper's Figs. 1(e) and 4).

With ``avl_diagnostics: True`` (also when ``avl`` is off, so a user can look before choosing a rule) a
``*_REVEAL`` model's trainer records, per epoch, in the log, TensorBoard (``AVL/...``) and the run's
result (``avl_epochs``):

- the validation metric with text zeroed and with vision zeroed (two more validation passes, in
  their own random state: the run's numbers do not change);
- the ratio of the vision to the text gradient norm of the backbone's loss (before any modulation),
  over the declared ``vision_modules`` and ``text_modules``: mean, min and max over the epoch's steps;
- the rule's coefficient per modulated modality and the probe losses: mean, min and max.
"""

import math

import numpy as np
import torch
from recbole.utils import set_color

from recbole_reveal.infra.errors import ModelContractError


def _stats(values):
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def _grad_norm(params):
    total = 0.0
    for p in params:
        if p.grad is not None:
            total += float(p.grad.detach().float().pow(2).sum())
    return math.sqrt(total)


class DiagnosticsMixin:
    """Mixed into the AVL trainer (before RecBole's ``Trainer`` in the MRO)."""

    def _init_diagnostics(self, config, model):
        self.avl_diagnostics = bool(config["avl_diagnostics"])
        self.avl_history = []            # one dict per trained epoch
        self._grad_ratios = []
        self._diag_params = None
        if not self.avl_diagnostics:
            return
        try:
            self._diag_params = tuple(
                [p for _, p in model.modality_parameters(m) if p.requires_grad] for m in ("vision", "text"))
        except ModelContractError:       # a backbone without text_modules: no gradient-norm ratio
            self._diag_params = None

    def _record_grad_norms(self):
        """Called by the optimizer pre-hook before any coefficient is applied."""
        if self._diag_params is None:
            return
        vision, text = (_grad_norm(params) for params in self._diag_params)
        self._grad_ratios.append(vision / text if text > 0 else math.nan)

    def _start_epoch_diagnostics(self, epoch_idx):
        self._grad_ratios = []
        self.avl_history.append({"epoch": int(epoch_idx)})

    def _finish_train_diagnostics(self, epoch_idx, coefficient_stats):
        """Store the epoch's gradient-norm ratio and coefficients; log and plot them."""
        entry = self.avl_history[-1]
        entry["grad_norm_ratio_vision_text"] = _stats([r for r in self._grad_ratios if math.isfinite(r)])
        entry.update(coefficient_stats)
        ratio = entry["grad_norm_ratio_vision_text"]
        if self._diag_params is not None:
            self.logger.info(set_color(f"epoch {epoch_idx} AVL diagnostics", "blue") +
                             f": |grad vision| / |grad text| mean {ratio['mean']:.4f} "
                             f"[min {ratio['min']:.4f}, max {ratio['max']:.4f}]")
        for stat, value in ratio.items():      # (the coefficients are plotted by the AVL epoch log)
            self.tensorboard.add_scalar(f"AVL/grad_norm_ratio_vision_text_{stat}", value, epoch_idx)

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        if not (self.avl_diagnostics and self.avl_history):
            return valid_score, valid_result
        entry = self.avl_history[-1]
        devices = [self.device] if self.device.type == "cuda" else []
        for zeroed in ("text", "vision"):
            with torch.random.fork_rng(devices=devices), self.model.zeroed_modalities(zeroed):
                score, result = super()._valid_epoch(valid_data, show_progress=False)
            entry[f"valid_{zeroed}_zeroed"] = float(score)
            entry[f"valid_result_{zeroed}_zeroed"] = {k: float(v) for k, v in result.items()}
            self.tensorboard.add_scalar(f"AVL/valid_{zeroed}_zeroed", float(score), entry["epoch"])
        entry["valid"] = float(valid_score)
        self.logger.info(
            set_color(f"epoch {entry['epoch']} unimodal valid", "blue") + f" ({self.valid_metric}): "
            f"both {valid_score:.4f}, text zeroed (vision only) {entry['valid_text_zeroed']:.4f}, "
            f"vision zeroed (text only) {entry['valid_vision_zeroed']:.4f}")
        return valid_score, valid_result
