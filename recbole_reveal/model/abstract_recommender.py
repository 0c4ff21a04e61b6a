"""The small contract between REVEAL and a multimodal sequential backbone.

REVEAL needs two things from a backbone, and nothing else:

(a) *modality masking*: run the ordinary forward pass with the text or the visual modality replaced
    by zeros right after its projection (paper eqs 5-6). A backbone routes each projected modality
    through :meth:`MultimodalSequentialRecommender.mask_modality`; callers switch masking on with the
    :meth:`zeroed_modalities` context manager.
(b) *vision-related parameters*: the backbone lists, in ``vision_modules``, the sub-modules whose
    parameters belong to the visual modality (image feature tables, image projections,
    image-specific experts and gates; not shared experts or final mixing layers). AVL scales exactly
    these parameters' gradients. ``text_modules`` lists the text counterparts: the balancing rules
    that modulate both modalities (``avl_rule``) scale those, and AVL's diagnostics compare the two
    gradient norms.

FVE's interaction scope adds one optional part:

(c) *history-side visual features*: where the backbone builds the visual input of its **history**
    positions, it passes it through :meth:`MultimodalSequentialRecommender.history_vision_features`
    together with the history's interaction ids (:meth:`interaction_seq`). With an interaction-level
    feature set loaded, each position then carries its own interaction's embedding; candidates and
    targets keep the item-level input. A backbone that does not call it keeps working on item-level
    features everywhere.
"""

import difflib
from contextlib import contextmanager

import torch
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_reveal.infra.errors import ModelContractError
from recbole_reveal.model.missing_features import MissingModalityMixin

MODALITIES = ("text", "vision")


class MultimodalSequentialRecommender(MissingModalityMixin, SequentialRecommender):
    """A RecBole sequential recommender that consumes per-item text and visual features.

    Subclasses set ``vision_modules`` (names of sub-modules, dotted paths allowed) and call
    :meth:`mask_modality` on each projected modality in their forward pass.
    """

    vision_modules = ()
    # the text counterparts (text feature tables, projections, text experts), for the balancing rules
    # that modulate both modalities
    text_modules = ()
    # sub-modules initialised from the visual feature matrix (re-initialised, not carried over, when
    # the FVE loop warm-starts a cycle from the previous cycle's weights)
    vision_feature_tables = ()

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # config key ``zeroed_modalities``: zeroed for the model's whole life, training and
        # inference (the uni-modal runs of paper §2 / Table 4's V-only setting)
        always = list(config["zeroed_modalities"] or [])
        unknown = set(always) - set(MODALITIES)
        if unknown:
            raise ValueError(
                f"config key 'zeroed_modalities' lists {sorted(unknown)}; expected a subset of {MODALITIES}"
            )
        self._zeroed = frozenset(always)
        # (c) interaction-level visual features at history positions (FVE interaction scope)
        interaction = getattr(dataset, "interaction_features", None) or {}
        self.INTERACTION_SEQ = None
        self._history_tables = None
        self.reads_history_vision = False     # set by the first history_vision_features call with interaction ids
        self._history_on_cpu = config["fve_history_table_device"] == "cpu"
        if "vision" in interaction:
            self.INTERACTION_SEQ = dataset.interaction_field + config["LIST_SUFFIX"]
            # plain tensors, not buffers: not saved in checkpoints, not broadcast by DDP (one row per
            # interaction can be gigabytes); moved to the model's device on first use
            self._history_tables = (interaction["vision"], dataset.item_features["vision"])
        self._kept = {}     # modality -> factor, set by kept_modalities (AVL's stacked probes)
        # (d) items without a modality: the missing_modality handling, test-time masking
        self.init_missing(config, dataset)

    # -- (a) modality masking -------------------------------------------------------------
    @contextmanager
    def zeroed_modalities(self, *modalities):
        """Within the block, the named modalities are zero vectors after their projection."""
        unknown = set(modalities) - set(MODALITIES)
        if unknown:
            raise ModelContractError(f"zeroed_modalities: unknown modalities {sorted(unknown)}; expected a subset "
                                     f"of {MODALITIES}")
        previous, previous_masked = self._zeroed, self.__dict__.get("_masked")
        self._zeroed = previous | frozenset(modalities)
        self.__dict__["_masked"] = masked = set()
        try:
            yield self
        finally:
            self._zeroed = previous
            self.__dict__["_masked"] = previous_masked if previous_masked is None else previous_masked | masked
        skipped = [m for m in modalities if m not in masked]
        if masked and skipped:      # the block ran the model, which never masked a zeroed modality
            raise ModelContractError(
                f"{type(self).__name__} never passed {', '.join(map(repr, skipped))} through mask_modality while "
                f"it was zeroed (it did pass {', '.join(map(repr, sorted(masked)))}): call "
                f"self.mask_modality({skipped[0]!r}, projected) right after that modality's projection "
                "(docs/design.md, 'The backbone contract')")

    @contextmanager
    def kept_modalities(self, **factors):
        """Within the block, each named modality is multiplied by its factor after its projection
        (``text=t, vision=v``; 0 zeroes it). AVL passes 0/1 tensors batched by ``torch.func.vmap``, so one
        forward computes the text-zeroed and the vision-zeroed loss together."""
        unknown = set(factors) - set(MODALITIES)
        if unknown:
            raise ModelContractError(f"kept_modalities({', '.join(sorted(unknown))}=...): unknown modalities; "
                                     f"expected a subset of {MODALITIES}")
        previous = getattr(self, "_kept", {})
        self._kept = dict(previous, **factors)
        try:
            yield self
        finally:
            self._kept = previous

    def mask_modality(self, modality, projected):
        """Return ``projected`` or, while ``modality`` is zeroed, zeros of the same shape (while it is
        scaled by :meth:`kept_modalities`, ``projected`` times the factor)."""
        if modality not in MODALITIES:
            raise ModelContractError(f"{type(self).__name__} calls mask_modality({modality!r}, ...): the modality "
                                     f"must be one of {', '.join(MODALITIES)}")
        masked = self.__dict__.get("_masked")
        if masked is not None:
            masked.add(modality)
        if modality in self._zeroed:
            return torch.zeros_like(projected)
        factor = getattr(self, "_kept", {}).get(modality)
        if factor is not None:
            return projected * factor.to(projected.dtype)
        return projected

    # -- (b) vision-related (and text-related) parameters ---------------------------------------
    def vision_parameters(self):
        """``(name, parameter)`` pairs of every parameter of the declared ``vision_modules``."""
        return MultimodalSequentialRecommender.modality_parameters(self, "vision")

    def text_parameters(self):
        """``(name, parameter)`` pairs of every parameter of the declared ``text_modules`` (the rules that
        modulate both modalities, ``avl_rule: reference | agm | ogm_ge | ckd``, and the gradient-norm ratio)."""
        return MultimodalSequentialRecommender.modality_parameters(self, "text")

    def modality_parameters(self, modality):
        """``(name, parameter)`` pairs of the sub-modules the backbone declares for ``modality``."""
        attribute = {"vision": "vision_modules", "text": "text_modules"}[modality]
        declared = getattr(self, attribute)
        if not declared:
            example = "vision_projection" if modality == "vision" else "text_projection"
            raise ModelContractError(f"{type(self).__name__} declares no {attribute}: list the sub-modules of "
                                     f"the {modality} modality (e.g. {attribute} = ('{example}',)) in the "
                                     "class, for AVL to scale their gradients")
        modules = dict(self.named_modules())
        params = []
        for name in declared:
            if name not in modules:
                children = [n for n, m in modules.items() if n and "." not in n and any(True for _ in m.parameters())]
                close = difflib.get_close_matches(name, list(modules), n=1)
                raise ModelContractError(
                    f"{type(self).__name__}.{attribute} names '{name}', which is not a sub-module"
                    + (f" (did you mean '{close[0]}'?)" if close else "")
                    + f"; its sub-modules with parameters: {', '.join(children) or 'none'}"
                )
            params.extend(
                (f"{name}.{p_name}", p) for p_name, p in modules[name].named_parameters()
            )
        return params

    # -- (c) history-side visual features ----------------------------------------------------------
    def interaction_seq(self, interaction):
        """The history's interaction ids ``[B, L]`` (aligned with ``item_seq``), or None without an
        interaction-level feature set."""
        return interaction[self.INTERACTION_SEQ] if self.INTERACTION_SEQ is not None else None

    def history_vision_features(self, item_seq, interaction_seq, item_vision):
        """The visual input of history positions: ``item_vision`` (the backbone's own item-level input at
        ``item_seq``, ``[..., dim]``, e.g. its feature table's rows) shifted by each interaction's offset
        ``I[interaction] - V[item]`` from the item-level features ``V``. With a frozen table this is exactly
        the interaction's embedding; with a trained table, the trained row plus the personal offset.
        Padding positions (id 0) get no offset; without interaction features ``item_vision`` is returned."""
        if interaction_seq is not None:
            self.reads_history_vision = True    # the model passes its history's interaction ids
        if interaction_seq is None or self._history_tables is None:
            return item_vision
        interactions, items = self._history_tables
        device = item_vision.device
        if self._history_on_cpu:           # gather the rows on the host, move only them
            offset = interactions[interaction_seq.cpu()] - items[item_seq.cpu()]
            return item_vision + offset.to(device, item_vision.dtype)
        if interactions.device != device:
            interactions, items = interactions.to(device), items.to(device)
            self._history_tables = (interactions, items)
        offset = interactions[interaction_seq] - items[item_seq]
        return item_vision + offset.to(item_vision.dtype)
