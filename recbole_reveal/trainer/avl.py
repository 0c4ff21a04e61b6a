"""Adaptive Visual Learning (AVL, paper §4.4, eqs 5-15) as a RecBole trainer.

Per training batch:

1. without building a graph, the backbone's own training loss with text zeroed (``L_v``, eq 7) and
   with vision zeroed (``L_t``, eq 8), after the modality projection (the backbone contract);
2. ``r = exp(L_v - L_t)`` (eqs 9-10), running means of ``L_v`` and ``L_t`` over all steps so far
   (eq 11), ``r_bar = exp(mean L_v - mean L_t)`` (eq 12), ``K = exp(alpha * (r - r_bar))`` (eq 13),
   optionally clamped;
3. the ordinary step (full forward, backward, gradient clipping, AMP unscale), then, just before the
   optimizer updates, the gradients of the backbone's declared vision parameters are multiplied by
   ``K`` (eq 14; ``avl_mode: grad``) -- or, with ``avl_mode: lr``, the vision parameter group's
   learning rate is multiplied by ``K`` for that step (eq 15's update, which keeps its meaning under
   Adam, whose update is invariant to a constant gradient scale).

Inference is untouched. With ``avl: False`` the trainer is RecBole's ``Trainer``, step for step.
"""

import math

import numpy as np
import torch

from recbole.utils import set_color

from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.trainer.trainer import PluginTrainer

def avl_scale(loss_v, loss_t, mean_loss_v, mean_loss_t, alpha):
    """Eqs 9-13: ``K = exp(alpha * (exp(L_v - L_t) - exp(mean_L_v - mean_L_t)))``."""
    r = math.exp(loss_v - loss_t)
    r_bar = math.exp(mean_loss_v - mean_loss_t)
    return math.exp(alpha * (r - r_bar))

class ModalityBalance:
    """Running state of AVL: means of the unimodal losses over every step so far (eq 11)."""

    def __init__(self, alpha, clamp=None):
        if alpha < 0:
            raise ValueError(f"avl_alpha must be >= 0, got {alpha}")
        if clamp is not None and not (len(clamp) == 2 and 0 < clamp[0] <= 1 <= clamp[1]):
            raise ValueError(f"avl_clamp must be null or [low, high] with 0 < low <= 1 <= high, got {clamp}")
        self.alpha = alpha
        self.clamp = clamp
        self.steps = 0
        self.mean_loss_v = 0.0
        self.mean_loss_t = 0.0

    def update(self, loss_v, loss_t):
        """Add one step's unimodal losses; return that step's scale ``K``."""
        if not (math.isfinite(loss_v) and math.isfinite(loss_t)):
            raise FloatingPointError(
                f"AVL probe loss is not finite (L_v={loss_v}, L_t={loss_t}): the backbone diverged "
                "with a modality zeroed"
            )
        self.steps += 1
        self.mean_loss_v += (loss_v - self.mean_loss_v) / self.steps
        self.mean_loss_t += (loss_t - self.mean_loss_t) / self.steps
        try:
            k = avl_scale(loss_v, loss_t, self.mean_loss_v, self.mean_loss_t, self.alpha)
        except OverflowError:
            k = math.inf
        if self.clamp is not None:
            k = min(max(k, self.clamp[0]), self.clamp[1])
        elif not math.isfinite(k):
            raise FloatingPointError(
                f"AVL scale overflowed (L_v={loss_v:.4f}, L_t={loss_t:.4f}, alpha={self.alpha}); "
                "lower avl_alpha or set avl_clamp"
            )
        return k

    def state_dict(self):
        return {"steps": self.steps, "mean_loss_v": self.mean_loss_v, "mean_loss_t": self.mean_loss_t}

    def load_state_dict(self, state):
        self.steps, self.mean_loss_v, self.mean_loss_t = state["steps"], state["mean_loss_v"], state["mean_loss_t"]

class AVLTrainer(PluginTrainer):
    r"""RecBole trainer with Adaptive Visual Learning for ``*_REVEAL`` models.

    Config keys (``properties/model/REVEAL.yaml``): ``avl`` (on/off), ``avl_alpha``, ``avl_clamp``,
    ``avl_mode`` (``grad`` | ``lr``), ``avl_probe_mode`` (``train`` | ``eval``: dropout in the two
    probe passes), ``avl_sample_fraction`` (estimate ``L_v``/``L_t`` on a random part of the batch;
    1.0 = exact).
    """

    def __init__(self, config, model):
        self.avl_enabled = bool(config["avl"])
        if self.avl_enabled:
            if not isinstance(model, MultimodalSequentialRecommender):
                raise TypeError(f"AVL needs a MultimodalSequentialRecommender, got {type(model).__name__}")
            self.avl_mode = config["avl_mode"]
            if self.avl_mode not in ("grad", "lr"):
                raise ValueError(f"avl_mode must be 'grad' or 'lr', got {self.avl_mode!r}")
            self.avl_probe_mode = config["avl_probe_mode"]
            if self.avl_probe_mode not in ("train", "eval"):
                raise ValueError(f"avl_probe_mode must be 'train' or 'eval', got {self.avl_probe_mode!r}")
            self.avl_sample_fraction = float(config["avl_sample_fraction"])
            if not 0 < self.avl_sample_fraction <= 1:
                raise ValueError(f"avl_sample_fraction must be in (0, 1], got {self.avl_sample_fraction}")
            self.vision_params = [p for _, p in model.vision_parameters() if p.requires_grad]
            if not self.vision_params:
                raise ValueError(f"{type(model).__name__} has no trainable vision parameters for AVL")
            self.balance = ModalityBalance(float(config["avl_alpha"]), config["avl_clamp"])
            self.current_k = 1.0
            self._epoch_stats = []
            # a private generator keeps subsampling from shifting the global random stream
            self._sample_generator = torch.Generator().manual_seed(int(config["seed"]))
        super().__init__(config, model)
        if self.avl_enabled:
            self._vision_group = next(g for g in self.optimizer.param_groups if g.get("avl_vision"))
            self._vision_lr = self._vision_group["lr"]
            self.optimizer.register_step_pre_hook(self._apply_k)
            self.optimizer.register_step_post_hook(self._restore_lr)

    def _build_optimizer(self, **kwargs):
        if self.avl_enabled and "params" not in kwargs:
            vision_ids = {id(p) for p in self.vision_params}
            others = [p for p in self.model.parameters() if id(p) not in vision_ids]
            kwargs["params"] = [
                {"params": others},
                {"params": self.vision_params, "avl_vision": True},
            ]
        return super()._build_optimizer(**kwargs)

    # -- per batch ----------------------------------------------------------------------------
    def unimodal_losses(self, interaction):
        """``(L_v, L_t)``: the backbone's loss with text zeroed and with vision zeroed, no graph.

        With ``avl_probe_mode: train`` (the reference code) dropout stays on, and the random state is
        forked so the probes draw the same dropout stream as the real step and leave it untouched;
        ``eval`` switches dropout off for the probes (a noise-free estimate, and cheaper on CPU where
        drawing dropout masks is a large part of a forward pass).
        """
        if self.avl_sample_fraction < 1:
            n = len(interaction)
            size = max(1, int(round(n * self.avl_sample_fraction)))
            index = torch.randperm(n, generator=self._sample_generator)[:size].to(self.device)
            interaction = interaction[index]
        devices = [self.device] if self.device.type == "cuda" else []
        losses = []
        if self.avl_probe_mode == "eval":
            self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for zeroed in ("text", "vision"):
                with self.model.zeroed_modalities(zeroed), torch.autocast(
                    device_type=self.device.type, enabled=self.enable_amp
                ):
                    loss = self.model.calculate_loss(interaction)
                losses.append(float(sum(loss) if isinstance(loss, tuple) else loss))
        self.model.train()
        return tuple(losses)

    def _avl_loss(self, interaction):
        loss_v, loss_t = self.unimodal_losses(interaction)
        self.current_k = self.balance.update(loss_v, loss_t)
        self._epoch_stats.append((self.current_k, loss_v, loss_t))
        return self.model.calculate_loss(interaction)

    def _apply_k(self, optimizer, args, kwargs):
        """Optimizer step pre-hook: runs after backward, clipping and AMP unscaling."""
        if self.avl_mode == "grad":
            for p in self.vision_params:
                if p.grad is not None:
                    p.grad.mul_(self.current_k)
        else:
            self._vision_group["lr"] = self._vision_lr * self.current_k

    def _restore_lr(self, optimizer, args, kwargs):
        self._vision_group["lr"] = self._vision_lr

    # -- checkpoints ---------------------------------------------------------------------------
    def trainer_state(self):
        """AVL's running means (eq 11 averages over every step of the run) and its sampling generator."""
        if not self.avl_enabled:
            return None
        return {"avl": self.balance.state_dict(), "avl_sample_generator": self._sample_generator.get_state()}

    def load_trainer_state(self, state):
        if not self.avl_enabled:
            return
        if not state or "avl" not in state:
            self.logger.warning("the checkpoint holds no AVL state (made without AVL or by an older version): "
                                "AVL's running loss means restart from this epoch")
            return
        self.balance.load_state_dict(state["avl"])
        self._sample_generator.set_state(state["avl_sample_generator"])

    # -- per epoch ---------------------------------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if not self.avl_enabled:
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self._epoch_stats = []
        total_loss = super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func or self._avl_loss, show_progress=show_progress
        )
        self._log_avl_epoch(epoch_idx)
        return total_loss

    def epoch_avl_summary(self):
        """Mean/min/max of K, L_v and L_t over the batches of the last epoch."""
        stats = np.asarray(self._epoch_stats, dtype=np.float64)
        summary = {}
        for column, name in enumerate(("K", "L_v", "L_t")):
            values = stats[:, column]
            summary[name] = {"mean": values.mean(), "min": values.min(), "max": values.max()}
        return summary

    def _log_avl_epoch(self, epoch_idx):
        if not self._epoch_stats:
            return
        summary = self.epoch_avl_summary()
        parts = [
            f"{name} mean {s['mean']:.4f} [min {s['min']:.4f}, max {s['max']:.4f}]"
            for name, s in summary.items()
        ]
        self.logger.info(set_color(f"epoch {epoch_idx} AVL", "blue") + ": " + "; ".join(parts))
        for name, s in summary.items():
            for stat, value in s.items():
                self.tensorboard.add_scalar(f"AVL/{name}_{stat}", value, epoch_idx)
