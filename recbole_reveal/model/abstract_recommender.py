"""The small contract between REVEAL and a multimodal sequential backbone.

REVEAL needs two things from a backbone, and nothing else:

(a) *modality masking*: run the ordinary forward pass with the text or the visual modality replaced
    by zeros right after its projection (paper eqs 5-6). A backbone routes each projected modality
    through :meth:`MultimodalSequentialRecommender.mask_modality`; callers switch masking on with the
    :meth:`zeroed_modalities` context manager.
(b) *vision-related parameters*: the backbone lists, in ``vision_modules``, the sub-modules whose
    parameters belong to the visual modality (image feature tables, image projections,
    image-specific experts and gates; not shared experts or final mixing layers). AVL scales exactly
    these parameters' gradients.
"""

from contextlib import contextmanager

import torch
from recbole.model.abstract_recommender import SequentialRecommender

MODALITIES = ("text", "vision")


class MultimodalSequentialRecommender(SequentialRecommender):
    """A RecBole sequential recommender that consumes per-item text and visual features.

    Subclasses set ``vision_modules`` (names of sub-modules, dotted paths allowed) and call
    :meth:`mask_modality` on each projected modality in their forward pass.
    """

    vision_modules = ()
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
        self._kept = {}     # modality -> factor, set by kept_modalities (AVL's stacked probes)

    # -- (a) modality masking -------------------------------------------------------------
    @contextmanager
    def zeroed_modalities(self, *modalities):
        """Within the block, the named modalities are zero vectors after their projection."""
        unknown = set(modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        previous = self._zeroed
        self._zeroed = previous | frozenset(modalities)
        try:
            yield self
        finally:
            self._zeroed = previous

    @contextmanager
    def kept_modalities(self, **factors):
        """Within the block, each named modality is multiplied by its factor after its projection
        (``text=t, vision=v``; 0 zeroes it). AVL passes 0/1 tensors batched by ``torch.func.vmap``, so one
        forward computes the text-zeroed and the vision-zeroed loss together."""
        unknown = set(factors) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        previous = getattr(self, "_kept", {})
        self._kept = dict(previous, **factors)
        try:
            yield self
        finally:
            self._kept = previous

    def mask_modality(self, modality, projected):
        """Return ``projected`` or, while ``modality`` is zeroed, zeros of the same shape (while it is
        scaled by :meth:`kept_modalities`, ``projected`` times the factor)."""
        if modality in self._zeroed:
            return torch.zeros_like(projected)
        factor = getattr(self, "_kept", {}).get(modality)
        if factor is not None:
            return projected * factor.to(projected.dtype)
        return projected

    # -- (b) vision-related parameters --------------------------------------------------------
    def vision_parameters(self):
        """``(name, parameter)`` pairs of every parameter of the declared ``vision_modules``."""
        if not self.vision_modules:
            raise NotImplementedError(f"{type(self).__name__} declares no vision_modules")
        modules = dict(self.named_modules())
        params = []
        for name in self.vision_modules:
            if name not in modules:
                raise AttributeError(
                    f"{type(self).__name__}.vision_modules names '{name}', which is not a sub-module"
                )
            params.extend(
                (f"{name}.{p_name}", p) for p_name, p in modules[name].named_parameters()
            )
        return params

    # -- features -------------------------------------------------------------------------------
    @staticmethod
    def item_feature_table(dataset, modality):
        """The dataset's ``[n_items, dim]`` float tensor for ``modality`` (row 0 = padding)."""
        features = getattr(dataset, "item_features", None)
        if features is None or modality not in features:
            raise ValueError(
                f"the dataset has no '{modality}' item features: multimodal models need the "
                "MultimodalSequentialDataset hook (set by run_recbole_reveal / create_dataset)"
            )
        return features[modality]
