"""Items without a modality, as a backbone sees them (part (d) of the backbone contract).

A feature set records which items lack its modality (``NAME.missing``, docs/data-format.md); the dataset
hook exposes it as ``item_availability``. The config key ``missing_modality`` decides what the backbone
is fed in a missing item's row:

* ``zero``    -- the all-zero row (the paper's inputs, the default; a backbone that fine-tunes its feature
  tables trains that row like any other);
* ``mean``    -- the mean of the rows of the items that have the modality;
* ``learned`` -- one learned placeholder row per feature table (initialised with that mean), shared by
  every item without the modality; the item's own row is never read. A modality no item lacks gets no
  placeholder (there is nothing to learn it from); masked at test time, its items get the mean.

The backbone needs no code for it: :meth:`MissingModalityMixin.item_feature_table` hands out the table
with ``mean``'s rows filled in, and after the backbone's ``__init__`` every parameter or buffer that holds
the handed-out table (an ``nn.Embedding.from_pretrained`` copy, a trainable table initialised from it)
gets a parametrization that substitutes the placeholder row (``learned``).

The robustness protocol masks items *at test time*: :meth:`MissingModalityMixin.masked_items` treats the
given items as missing the modality (they get the handling's row: zeros, the present items' mean, the
placeholder) in the history, in the candidates, or both. The two sides are told apart by
:meth:`MissingModalityMixin.reading_history`, the block in which a backbone looks up its history's
features; a backbone without it supports ``both`` only (said so by name).
"""

import functools
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from recbole_reveal.infra.errors import ConfigError, ModelContractError

HANDLINGS = ("zero", "learned", "mean")
SCOPES = ("history", "candidates", "both")


class MissingRows(nn.Module):
    """Parametrization of a feature table: the rows to fill (the model says which: items without the
    modality under ``learned``, items masked at test time) become the handling's row."""

    def __init__(self, owner, modality, placeholder=None):
        super().__init__()
        self.__dict__["_owner"] = owner         # not a sub-module: the model owns this module
        self.modality = modality
        self.placeholder = placeholder

    def forward(self, weight):
        rows = self._owner.rows_to_fill(self.modality)
        if rows is None:
            return weight
        rows = rows.to(weight.device)
        if self.placeholder is not None:
            fill = self.placeholder.to(weight.dtype)
        elif self._owner.missing_modality != "zero":     # mean; learned without a placeholder: its initial value
            fill = present_mean(weight, self._owner.feature_availability(self.modality).to(weight.device) & ~rows)
        else:
            fill = torch.zeros_like(weight[0])
        return torch.where(rows.unsqueeze(1), fill.expand_as(weight), weight)


def present_mean(table, present):
    """Mean of the rows where ``present`` (zeros when no row is)."""
    if not bool(present.any()):
        return torch.zeros_like(table[0])
    return table[present].mean(0)


def binds_feature_tables(init):
    """Wrap a backbone's ``__init__`` so that, when the outermost constructor returns, the feature tables
    it built are found and bound (:meth:`MissingModalityMixin.bind_feature_tables`)."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        outermost = "_constructing" not in self.__dict__
        self.__dict__["_constructing"] = True
        try:
            init(self, *args, **kwargs)
        finally:
            if outermost:
                del self.__dict__["_constructing"]
        if outermost:
            self.bind_feature_tables()

    __init__.binds_feature_tables = True
    return __init__


class MissingModalityMixin:
    """The missing-modality part of :class:`~recbole_reveal.model.abstract_recommender.MultimodalSequentialRecommender`."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "binds_feature_tables", False):
            cls.__init__ = binds_feature_tables(init)

    def init_missing(self, config, dataset):
        handling = config["missing_modality"] or "zero"
        if handling not in HANDLINGS:
            raise ConfigError(f"config key 'missing_modality' must be one of {', '.join(HANDLINGS)}, got {handling!r}")
        self.missing_modality = handling
        self._handed_out = {}                    # modality -> the table item_feature_table returned
        self._feature_tables = {}                # modality -> [(module, tensor name)] holding it
        self._test_masks = {}                    # modality -> {"history": bool [n_items] | None, "candidates": ...}
        self._scope = "candidates"
        self.marks_history = False               # set the first time the backbone enters reading_history
        for modality, available in (getattr(dataset, "item_availability", None) or {}).items():
            self.register_buffer(f"_available_{modality}", available.clone(), persistent=False)

    # -- what the backbone is fed -------------------------------------------------------------------
    def feature_availability(self, modality):
        """``[n_items]`` bool: True where the item has ``modality`` (all real items when the dataset
        does not say; padding False)."""
        available = getattr(self, f"_available_{modality}", None)
        if available is None:
            available = torch.ones(self.n_items, dtype=torch.bool)
            available[0] = False
        return available

    def dataset_missing(self, modality):
        missing = ~self.feature_availability(modality)
        missing[0] = False
        return missing

    def item_feature_table(self, dataset, modality):
        """The dataset's ``[n_items, dim]`` float tensor for ``modality`` (row 0 = padding), with the rows
        of items without the modality filled as ``missing_modality`` says (``mean``; ``learned`` starts
        from the mean and substitutes its placeholder after ``__init__``)."""
        features = getattr(dataset, "item_features", None)
        if features is None or modality not in features:
            raise ValueError(
                f"the dataset has no '{modality}' item features: multimodal models need the "
                "MultimodalSequentialDataset hook (set by run_recbole_reveal / create_dataset)"
            )
        table = features[modality]
        handling = getattr(self, "missing_modality", "zero")
        if handling != "zero" and bool(self.dataset_missing(modality).any()):
            available = self.feature_availability(modality)
            table = table.clone()
            table[self.dataset_missing(modality)] = present_mean(table, available)
        if hasattr(self, "_handed_out"):
            self._handed_out[modality] = table
        return table

    def bind_feature_tables(self):
        """Find every parameter or buffer that holds a table :meth:`item_feature_table` handed out; under
        ``learned``, give each a placeholder row for the items without the modality."""
        for modality, table in self._handed_out.items():
            found = []
            for module in self.modules():
                for name, tensor in list(module.named_parameters(recurse=False)) + list(
                        module.named_buffers(recurse=False)):
                    if tensor.shape == table.shape and torch.equal(tensor.detach().cpu(), table):
                        found.append((module, name))
            self._feature_tables[modality] = found
            if self.missing_modality == "learned" and bool(self.dataset_missing(modality).any()):
                if not found:
                    raise ModelContractError(
                        f"{type(self).__name__} keeps no copy of the {modality} table item_feature_table returned, so "
                        "missing_modality: learned has no row to replace: keep it as a parameter or buffer (e.g. "
                        "nn.Embedding.from_pretrained(table)) and transform it in forward")
                for module, name in found:
                    placeholder = nn.Parameter(present_mean(table, self.feature_availability(modality)).clone())
                    parametrize.register_parametrization(module, name, MissingRows(self, modality, placeholder))
        self._handed_out = {}

    def rows_to_fill(self, modality):
        """``[n_items]`` bool of the rows a table of ``modality`` shows as missing now, or None."""
        rows = None
        if self.missing_modality == "learned":
            missing = self.dataset_missing(modality)
            rows = missing if bool(missing.any()) else None
        masked = self.test_masked(modality, self._scope)
        if masked is not None:
            rows = masked if rows is None else rows | masked.to(rows.device)
        return rows

    def probe_rows(self, interaction):
        """AVL's probes count only rows whose target has the modality they measure: ``{modality: bool [B]}``,
        or None when no item of the dataset lacks a modality (the probes then see the whole batch, and may
        run stacked). Decided by the dataset, not the batch, so every DDP rank takes the same path."""
        if not any(bool(self.dataset_missing(m).any()) for m in ("text", "vision")):
            return None
        targets = interaction[self.POS_ITEM_ID]
        return {m: self.feature_availability(m).to(targets.device)[targets] for m in ("text", "vision")}

    # -- test-time masking (the robustness protocol) ------------------------------------------------------
    @contextmanager
    def reading_history(self):
        """The block in which the backbone looks up its history's features: test-time masking tells the
        history from the candidates by it."""
        previous, self._scope = self._scope, "history"
        self.marks_history = True
        try:
            yield self
        finally:
            self._scope = previous

    def test_masked(self, modality, scope):
        """The ``[n_items]`` bool mask of items whose ``modality`` is masked at test time in ``scope``
        (``history`` / ``candidates``), or None."""
        return self._test_masks.get(modality, {}).get(scope)

    def history_rows_differ(self):
        """True while a test-time mask applies to the history only or to the candidates only: a backbone that
        computes its items' features once for both must then compute the history's inside
        :meth:`reading_history`."""
        return any(m["history"] is not m["candidates"] for m in self._test_masks.values())

    @contextmanager
    def masked_items(self, modality, items, scope="both"):
        """Within the block, the items of the bool mask ``items`` (``[n_items]``) miss ``modality`` in the
        history, the candidates, or ``both`` (they get the handling's row)."""
        if scope not in SCOPES:
            raise ConfigError(f"masked_items: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if not self._feature_tables.get(modality):
            raise ModelContractError(
                f"{type(self).__name__} keeps no copy of the {modality} table item_feature_table returned, so its "
                f"{modality} rows cannot be masked: keep it as a parameter or buffer (e.g. nn.Embedding.from_pretrained)")
        items = items.to(torch.bool).clone()
        items[0] = False
        added = []
        for module, name in self._feature_tables[modality]:
            if not parametrize.is_parametrized(module, name):
                parametrize.register_parametrization(module, name, MissingRows(self, modality))
                added.append((module, name))
        self._test_masks[modality] = {"history": items if scope in ("history", "both") else None,
                                      "candidates": items if scope in ("candidates", "both") else None}
        if scope == "both":
            self._test_masks[modality]["candidates"] = self._test_masks[modality]["history"]
        try:
            yield self
        finally:
            del self._test_masks[modality]
            for module, name in added:
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
