"""Adaptive Visual Learning (AVL, paper §4.4, eqs 5-15) as a RecBole trainer.

Per training batch:

1. without building a graph, the backbone's own training loss with text zeroed (``L_v``, eq 7) and
   with vision zeroed (``L_t``, eq 8), after the modality projection (the backbone contract): one
   forward of the two masked copies stacked (``torch.func.vmap`` over the two masks) where the
   backbone runs under it, else two forwards; both probes see the same random draws;
2. under DDP, ``L_v`` and ``L_t`` are averaged over the ranks (weighted by their rows): the paper's
   batch is the global batch, and every rank must apply the same ``K`` (docs/design.md);
3. ``r = exp(L_v - L_t)`` (eqs 9-10), running means of ``L_v`` and ``L_t`` over all probed steps so
   far (eq 11), ``r_bar = exp(mean L_v - mean L_t)`` (eq 12), ``K = exp(alpha * (r - r_bar))`` (eq 13),
   optionally clamped; a probe whose loss is not finite leaves ``K = 1`` and the means untouched, and is
   counted in the epoch's log line;
4. the ordinary step (full forward, backward, gradient clipping, AMP unscale), then, just before the
   optimizer updates, the gradients of the backbone's declared vision parameters are multiplied by
   ``K`` (eq 14; ``avl_mode: grad``) -- or, with ``avl_mode: lr``, the vision parameter group's
   learning rate is multiplied by ``K`` for that step (eq 15's update, which keeps its meaning under
   Adam, whose update is invariant to a constant gradient scale).

``avl_probe_every: n`` probes every n-th batch only and holds that batch's ``K`` for the next n-1
steps (the cheap mode: each ``K`` is still eq 13 of a whole batch, without the noise and the upward bias
that estimating ``L_v - L_t`` on a part of the batch adds; ``benchmarks/avl_overhead.py``).

Inference is untouched. With ``avl: False`` the trainer is RecBole's ``Trainer``, step for step.
"""

import math
from contextlib import contextmanager

import torch

from recbole.utils import set_color

from recbole_reveal.adaptation.trainer import PluginTrainer
from recbole_reveal.infra.collectives import all_reduce_weighted_mean, is_distributed
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.trainer.avl_diagnostics import DiagnosticsMixin, _stats
from recbole_reveal.trainer.avl_rules import make_rule

# a stacked probe must agree with the two separate probes to this relative tolerance (float rounding)
STACKED_PROBE_RTOL = 1e-4


class AVLTrainer(DiagnosticsMixin, PluginTrainer):
    r"""RecBole trainer with Adaptive Visual Learning for ``*_REVEAL`` models.

    Config keys (``properties/model/REVEAL.yaml``): ``avl`` (on/off), ``avl_rule`` (``paper`` |
    ``reference`` | ``agm`` | ``ogm_ge`` | ``ckd``: :mod:`recbole_reveal.trainer.avl_rules`), ``avl_alpha``,
    ``avl_clamp``, ``avl_mode`` (``grad`` | ``lr``), ``avl_probe_mode`` (``train`` | ``eval``: dropout in
    the two probe passes), ``avl_probe_every`` (probe every n-th batch, hold the coefficients in
    between; 1 = every batch), ``avl_stacked_probes`` (``auto`` | ``True`` | ``False``: both probes as
    one stacked forward), ``avl_diagnostics`` (per-epoch unimodal validation and gradient-norm ratio,
    :mod:`recbole_reveal.trainer.avl_diagnostics`).
    """

    def __init__(self, config, model):
        self.avl_enabled = bool(config["avl"])
        self._init_diagnostics(config, model)
        if self.avl_enabled:
            if not isinstance(model, MultimodalSequentialRecommender):
                raise TypeError(f"AVL needs a MultimodalSequentialRecommender, got {type(model).__name__}")
            # the keys' types and ranges were checked once, when the config was built (config_keys)
            self.avl_mode = config["avl_mode"]
            self.avl_probe_mode = config["avl_probe_mode"]
            stacked = config["avl_stacked_probes"]
            self.avl_stacked_probes = "auto" if stacked is None else stacked
            self.avl_probe_every = int(config["avl_probe_every"] or 1)
            self.balance = make_rule(config["avl_rule"] or "paper", float(config["avl_alpha"]), config["avl_clamp"])
            self.scaled_params = {m: [p for _, p in model.modality_parameters(m) if p.requires_grad]
                                  for m in self.balance.modalities}
            for modality, params in self.scaled_params.items():
                if not params:
                    raise ConfigError(f"{type(model).__name__} has no trainable {modality} parameters for "
                                      f"avl_rule {self.balance.name}")
            self.vision_params = self.scaled_params["vision"]
            self.current_coefficients = dict.fromkeys(self.balance.modalities, 1.0)
            self._avl_step = 0                 # batches trained so far (the avl_probe_every schedule)
            self._epoch_stats = []             # (K_vision, L_v, L_t) of each probed batch of the epoch
            self._epoch_text_k = []            # the text coefficient of each probed batch (two-modality rules)
            self._epoch_skipped = 0            # probed batches whose probe loss was not finite
            self._stacked_ok = None            # stacked probes checked and usable (None: not tried yet)
            self._probe_seed = int(config["seed"])
            # OGM-GE's gradient noise: its own generator, the same on every rank (replicas stay identical)
            self._noise = torch.Generator().manual_seed(int(config["seed"]))
        super().__init__(config, model)
        if self.avl_enabled:
            self._base_lr = {m: self._group(m)["lr"] for m in self.balance.modalities}
            self.optimizer.register_step_post_hook(self._restore_lr)
        if self.avl_enabled or self.avl_diagnostics:
            self.optimizer.register_step_pre_hook(self._apply_k)

    @property
    def current_k(self):
        """The vision coefficient applied at the current step (the paper's K)."""
        return self.current_coefficients["vision"]

    @current_k.setter
    def current_k(self, value):
        self.current_coefficients["vision"] = value

    def _build_optimizer(self, **kwargs):
        if self.avl_enabled and "params" not in kwargs:
            kwargs["params"] = [dict(group) for group in self._param_layout(self.balance.modalities)]
        return super()._build_optimizer(**kwargs)

    def _param_layout(self, modalities):
        """The optimizer's parameter groups: one group of every parameter (RecBole's, no ``modalities``)
        or the other parameters, then one group per modulated modality (flagged ``avl_modality``; the
        vision group also ``avl_vision``, as checkpoints of earlier versions have it)."""
        if not modalities:
            return [{"params": list(self.model.parameters())}]
        groups, taken = [], set()
        for modality in modalities:
            params = [p for _, p in self.model.modality_parameters(modality) if p.requires_grad]
            taken |= {id(p) for p in params}
            flags = {"avl_modality": modality, **({"avl_vision": True} if modality == "vision" else {})}
            groups.append(dict(params=params, **flags))
        return [{"params": [p for p in self.model.parameters() if id(p) not in taken]}] + groups

    def _group(self, modality):
        """The optimizer's group of ``modality``, looked up each time: ``optimizer.load_state_dict``
        (resuming) replaces the group dicts, and a kept reference would edit a dead copy."""
        return next(g for g in self.optimizer.param_groups
                    if g.get("avl_modality", "vision" if g.get("avl_vision") else None) == modality)

    @property
    def _vision_group(self):
        return self._group("vision")

    # -- the probes ---------------------------------------------------------------------------
    def unimodal_losses(self, interaction, joint=False):
        """``(L_v, L_t)`` of this process's rows: the backbone's loss with text zeroed and with vision
        zeroed, no graph; with ``joint`` also ``L_j``, the loss with nothing zeroed under the same
        random draws (the rules with ``needs_joint``, ``ckd``).

        Both probes draw the same random numbers (dropout, random positions such as HM4SR's
        placeholders) and leave the real step's random stream untouched. ``avl_probe_mode: eval``
        switches dropout off and draws from one fixed seed, so ``L_v`` and ``L_t`` are deterministic
        functions of the parameters and the batch (eqs 5-6 evaluate the model; also cheaper);
        ``train`` keeps dropout on and draws what the real step draws (the reference code).
        """
        if self.avl_probe_mode == "eval":
            self.model.eval()
        try:
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.enable_amp):
                # L_v (L_t) over the rows whose target has vision (text): differing rows, no stacking
                rows = getattr(self.model, "probe_rows", lambda _: None)(interaction)
                if rows is not None:
                    return self._separate_probes(interaction, rows, joint)
                if self._stacked_ok is None and self.avl_stacked_probes != False:  # noqa: E712  (True/'auto')
                    return self._first_stacked_probe(interaction, joint)
                if self._stacked_ok:
                    return self._stacked_probe(interaction, joint)
                return self._separate_probes(interaction, joint=joint)
        finally:
            self.model.train()

    @contextmanager
    def _forked(self):
        """A private copy of the random state for one probe: the real step's state (``train`` probes:
        the same dropout draws as the step) or, for ``eval`` probes, one fixed seed (a probe is then a
        deterministic function of the parameters and the batch: no draw noise in K at all)."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if self.avl_probe_mode == "eval":
                torch.manual_seed(self._probe_seed)
            yield

    def _loss_value(self, interaction):
        loss = self.model.calculate_loss(interaction)
        return sum(loss) if isinstance(loss, tuple) else loss

    def _separate_probes(self, interaction, rows=None, joint=False):
        """``rows``: {measured modality: bool [B]}, the rows each probe counts (all when None; the joint
        probe counts the rows with both); a probe with no row is NaN (K = 1 for the step)."""
        probes = [(("text",), rows and rows["vision"]), (("vision",), rows and rows["text"])]
        if joint:
            probes.append(((), rows and rows["vision"] & rows["text"]))
        losses = []
        for zeroed, kept_rows in probes:
            if rows is not None and not bool(kept_rows.any()):
                losses.append(math.nan)
                continue
            batch = interaction if rows is None else interaction[kept_rows]
            with self._forked(), self.model.zeroed_modalities(*zeroed):
                losses.append(float(self._loss_value(batch)))
        return tuple(losses)

    def _stacked_probe(self, interaction, joint=False):
        """The probes as one forward: the model's tensors get a leading dimension of 2 (text kept 0/1,
        vision kept 1/0; 3 with the joint probe, both kept) through ``torch.func.vmap``, every random
        draw shared."""
        keep_text = torch.tensor([0.0, 1.0] + [1.0] * joint, device=self.device)
        keep_vision = torch.tensor([1.0, 0.0] + [1.0] * joint, device=self.device)

        def probe(text, vision):
            with self.model.kept_modalities(text=text, vision=vision):
                return self._loss_value(interaction)

        with self._forked():
            losses = torch.func.vmap(probe, randomness="same")(keep_text, keep_vision)
        return tuple(losses.tolist())

    def _first_stacked_probe(self, interaction, joint=False):
        """Decide once whether the stacked probe runs for this backbone and gives the separate probes'
        losses (to float rounding); the decision is the same on every rank."""
        separate = self._separate_probes(interaction, joint=joint)
        reason = None
        try:
            stacked = self._stacked_probe(interaction, joint)
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:   # no vmap rule, .item(), OOM
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            if not all(math.isclose(a, b, rel_tol=STACKED_PROBE_RTOL, abs_tol=1e-6) or not math.isfinite(a)
                       for a, b in zip(stacked, separate)):
                reason = f"its losses {stacked} differ from the separate probes' {separate}"
        ok = all_reduce_weighted_mean([0.0 if reason else 1.0], 1, self.device)[0] == 1.0
        if not ok and reason is None:
            reason = "another rank could not run it"
        self._stacked_ok = ok
        name = type(self.model).__name__
        if ok:
            self.logger.info(f"AVL: {name} runs its two probes as one stacked forward")
        elif self.avl_stacked_probes is True:
            raise ConfigError(f"avl_stacked_probes=True, but {name} cannot run its two AVL probes as one "
                              f"stacked forward ({reason}); set avl_stacked_probes: auto or False")
        else:
            self.logger.info(f"AVL: {name} runs its two probes one after the other (stacked forward "
                             f"not usable: {reason})")
        return separate

    # -- per batch ----------------------------------------------------------------------------
    def _avl_loss(self, interaction):
        if self._avl_step % self.avl_probe_every == 0:
            probes = self.unimodal_losses(interaction, joint=self.balance.needs_joint)
            if is_distributed(self.config):      # the global batch's losses, identical on every rank
                probes = all_reduce_weighted_mean(list(probes), len(interaction), self.device)
            loss_v, loss_t = probes[:2]
            coefficients = self.balance.step(*probes)
            if coefficients is None:
                self._epoch_skipped += 1
                coefficients = dict.fromkeys(self.balance.modalities, 1.0)
            else:
                self._epoch_stats.append((coefficients["vision"], loss_v, loss_t))
                if "text" in coefficients:
                    self._epoch_text_k.append(coefficients["text"])
            self.current_coefficients = coefficients
        self._avl_step += 1
        return self.model.calculate_loss(interaction)

    def _apply_k(self, optimizer, args, kwargs):
        """Optimizer step pre-hook: runs after backward, clipping and AMP unscaling. The diagnostics'
        gradient norms are read first, before any coefficient."""
        if self.avl_diagnostics:
            self._record_grad_norms()
        if not self.avl_enabled:
            return
        for modality, k in self.current_coefficients.items():
            if self.avl_mode == "grad":
                for p in self.scaled_params[modality]:
                    if p.grad is not None:
                        self.balance.modulate(p.grad, k, self._noise)
            else:
                self._group(modality)["lr"] = self._base_lr[modality] * k

    def _restore_lr(self, optimizer, args, kwargs):
        if self.avl_mode == "lr":
            for modality, lr in self._base_lr.items():
                self._group(modality)["lr"] = lr

    # -- checkpoints ---------------------------------------------------------------------------
    def trainer_state(self):
        """The rule's running means (eq 11 averages over every probed step of the run), the step counter
        of the ``avl_probe_every`` schedule and the coefficients held until the next probe."""
        if not self.avl_enabled:
            return None
        return {"avl": self.balance.state_dict(), "avl_step": self._avl_step, "avl_current_k": self.current_k,
                "avl_coefficients": dict(self.current_coefficients)}

    def load_trainer_state(self, state):
        if not self.avl_enabled:
            return
        if not state or "avl" not in state:
            self.logger.warning("the checkpoint holds no AVL state (made without AVL or by an older version): "
                                "AVL's running loss means restart from this epoch")
            return
        self.balance.load_state_dict(state["avl"])
        self._avl_step = int(state.get("avl_step", 0))
        saved = state.get("avl_coefficients") or {"vision": state.get("avl_current_k", 1.0)}
        self.current_coefficients = {m: float(saved.get(m, 1.0)) for m in self.balance.modalities}

    def optimizer_layout(self):
        return self._param_layout(self.balance.modalities if self.avl_enabled else ())

    def layout_of_saved_optimizer(self, saved):
        modalities = [g.get("avl_modality", "vision" if g.get("avl_vision") else None) for g in saved["param_groups"]]
        return self._param_layout(tuple(m for m in modalities if m))

    # -- per epoch ---------------------------------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self.avl_diagnostics:
            self._start_epoch_diagnostics(epoch_idx)
        if not self.avl_enabled:
            total_loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        else:
            self._epoch_stats, self._epoch_text_k, self._epoch_skipped = [], [], 0
            total_loss = super()._train_epoch(
                train_data, epoch_idx, loss_func=loss_func or self._avl_loss, show_progress=show_progress
            )
            self._log_avl_epoch(epoch_idx)
        if self.avl_diagnostics:
            self._finish_train_diagnostics(epoch_idx, self._coefficient_record() if self.avl_enabled else {})
        return total_loss

    def _coefficient_record(self):
        summary = self.epoch_avl_summary()
        record = {"rule": self.balance.name, "coefficient_vision": summary["K"], "L_v": summary["L_v"],
                  "L_t": summary["L_t"], "skipped": summary["skipped"]}
        if "K_text" in summary:
            record["coefficient_text"] = summary["K_text"]
        return record

    def epoch_avl_summary(self):
        """Mean/min/max of the vision coefficient K (and, for the rules that modulate text, ``K_text``),
        L_v and L_t over the probed batches of the last epoch, and how many probed batches were skipped
        for a non-finite probe loss."""
        columns = list(zip(*self._epoch_stats)) or [(), (), ()]
        summary = {name: _stats(values) for name, values in zip(("K", "L_v", "L_t"), columns)}
        if "text" in self.balance.modalities:
            summary["K_text"] = _stats(self._epoch_text_k)
        summary["skipped"] = self._epoch_skipped
        return summary

    def _log_avl_epoch(self, epoch_idx):
        if self._epoch_skipped and not self._epoch_stats:
            raise FloatingPointError(
                f"epoch {epoch_idx}: every AVL probe loss was non-finite ({self._epoch_skipped} probed "
                f"batches), so AVL did nothing: {type(self.model).__name__}'s loss with a modality zeroed "
                "is not finite (check that the backbone handles a zero modality)")
        if not self._epoch_stats:
            return
        summary = self.epoch_avl_summary()
        parts = [
            f"{name} mean {s['mean']:.4f} [min {s['min']:.4f}, max {s['max']:.4f}]"
            for name, s in summary.items() if name != "skipped"
        ]
        message = set_color(f"epoch {epoch_idx} AVL ({self.balance.name})", "blue") + ": " + "; ".join(parts)
        if self._epoch_skipped:
            message += (f"; {self._epoch_skipped} probed batch(es) skipped (non-finite probe loss: coefficients "
                        "1, means unchanged)")
            self.logger.warning(message)
        else:
            self.logger.info(message)
        for name, s in summary.items():
            if name == "skipped":
                self.tensorboard.add_scalar("AVL/skipped", s, epoch_idx)
                continue
            for stat, value in s.items():
                self.tensorboard.add_scalar(f"AVL/{name}_{stat}", value, epoch_idx)

