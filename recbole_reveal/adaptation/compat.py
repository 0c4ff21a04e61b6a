"""Make RecBole 1.2.1 work on today's stack (numpy 2, torch >= 2.6, scipy >= 1.17).

:func:`apply` is called by the modules that use RecBole (the ``model`` and ``trainer`` packages,
``adaptation``, ``data/dataset.py``, ``utils.py``, ``config.py``, ``training.py``) before their first RecBole import, not
by ``import recbole_reveal``: the light modules stay free of torch and RecBole. To use RecBole's own
API in a process that has not imported one of those, call ``recbole_reveal.adaptation.compat.apply()`` first.

Each fix is scoped as narrowly as the problem allows:

* numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` and ``np.bool8``, which RecBole
  still uses while building a ``Config`` and a dataset: the aliases are restored (only when absent).
* torch >= 2.6 loads with ``weights_only=True`` by default; RecBole's checkpoints hold its
  ``Config`` object (RecBole's enums, the model class, yaml's loader class, numpy scalars), which torch
  refuses, so its trainer could not reload its own best model. RecBole's trainer module sees a
  ``torch`` whose ``load`` is :func:`load_checkpoint`: still ``weights_only=True``, with exactly those
  classes allowed (:func:`checkpoint_safe_globals`), so a checkpoint cannot run code when it is loaded.
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (torch's own switch) loads a trusted file that needs more.
  RecBole saves with ``pickle_protocol=4``, whose opcodes torch's ``weights_only`` reader does not
  implement: the same stand-in's ``save`` writes torch's default protocol (2; tensors are stored
  outside the pickle either way, so nothing is lost).
* importing ``recbole.model.sequential_recommender`` imports SINE, which switches on autograd anomaly
  detection for the whole process (~40 % slower training). We import that package here, once, and
  switch anomaly detection back off; a later import does not re-run SINE's module code.
* recent scipy (1.17 here) has no private ``dok_matrix._update`` that RecBole's graph models (LightGCN,
  NGCF, NCL, GCMC, SpectralCF, KGIN, MCCLK) call to build their adjacency matrix; it is restored as
  scipy's public ``dok_matrix.update`` (the same bulk insert, with index checks), only when absent.
* RecBole's own deprecated pandas / torch calls print a ``FutureWarning`` on every run: those messages,
  raised from those RecBole modules only, are filtered (``quiet_recbole_future_warnings``).
* RecBole's ``ensure_dir`` checks, then creates: processes that create ``./log`` at the same moment (the
  ranks of a distributed run) fail with ``FileExistsError``; it becomes ``os.makedirs(exist_ok=True)``
  (``race_free_ensure_dir``).
"""

import os
import types

import numpy as np
import torch

_NUMPY_ALIASES = {
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "bool8": "bool_",
}


def restore_numpy_aliases():
    """Restore numpy 1.x aliases RecBole 1.2.1 still uses; returns the names it added."""
    added = []
    for alias, target in _NUMPY_ALIASES.items():
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))
            added.append(alias)
    return added


def checkpoint_safe_globals():
    """What a RecBole checkpoint (``{"config": Config, "state_dict": ..., "optimizer": ..., ...}``) may
    reference besides tensors and containers: RecBole's ``Config`` and its subclasses (the plugin's), RecBole's
    enums, yaml's ``FullLoader`` class (``Config.yaml_loader``), numpy scalars (e.g. the best valid score),
    and the model classes imported in this process (``Config.model_class``; your own are imported when
    ``--model`` names them). A class is only referenced or rebuilt from its saved attributes, never
    called with code from the file."""
    import yaml
    from recbole.config import Config as RecBoleConfig
    from recbole.model.abstract_recommender import AbstractRecommender
    from recbole.utils import enum_type

    allowed = [yaml.FullLoader, np.dtype]
    allowed += [v for v in vars(enum_type).values() if isinstance(v, type) and issubclass(v, enum_type.Enum)]
    allowed += [getattr(np, "_core", getattr(np, "core", None)).multiarray.scalar]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    pending = [RecBoleConfig, AbstractRecommender]     # with every subclass imported in this process
    while pending:
        cls = pending.pop()
        allowed.append(cls)
        pending.extend(cls.__subclasses__())
    return allowed


def load_checkpoint(f, map_location=None, **kwargs):
    """``torch.load`` of a RecBole or plugin checkpoint with ``weights_only=True`` and
    :func:`checkpoint_safe_globals` allowed (``weights_only=False`` only under torch's
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``). A file that needs anything else is a ``CheckpointError``
    saying so, not code run."""
    import os
    import pickle

    from recbole_reveal.infra.errors import CheckpointError

    kwargs.pop("weights_only", None)
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        return torch.load(f, map_location=map_location, weights_only=False, **kwargs)
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(f, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{f}: torch refuses to load it with weights_only=True ({first}). Checkpoints are loaded so that "
            "they cannot run code; a file from an older version of the plugin or from elsewhere may need "
            "more: if you trust it, run with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (docs/usage.md, "
            "'Checkpoints')") from e


class _TorchWithSafeCheckpoints(types.ModuleType):
    """A stand-in for the ``torch`` module inside RecBole's trainer: everything is torch's, except
    ``load`` (:func:`load_checkpoint`) and ``save`` (torch's default pickle protocol)."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        return load_checkpoint(f, *args, **kwargs)

    @staticmethod
    def save(obj, f, *args, **kwargs):
        kwargs.pop("pickle_protocol", None)     # protocol 4 is unreadable with weights_only=True
        return torch.save(obj, f, *args, **kwargs)


def trust_recbole_checkpoints():
    """Let RecBole's trainer (and only it) reload the checkpoints it writes itself."""
    import recbole.trainer.trainer as recbole_trainer

    if not isinstance(recbole_trainer.torch, _TorchWithSafeCheckpoints):
        recbole_trainer.torch = _TorchWithSafeCheckpoints()


def import_recbole_models_without_anomaly_detection():
    """Import RecBole's model packages, then undo SINE's global ``set_detect_anomaly(True)``."""
    was_enabled = torch.is_anomaly_enabled()
    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py once)

    torch.autograd.set_detect_anomaly(was_enabled)


def restore_dok_matrix_update():
    """Give scipy's ``dok_matrix`` back the ``_update`` RecBole's graph models call; returns whether
    it was added."""
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        return False
    sp.dok_matrix._update = sp.dok_matrix.update
    return True


def count_pop_per_interaction():
    """RecBole 1.2.1's ``Pop`` counts with ``item_cnt[item] = item_cnt[item] + 1``: an item that occurs
    several times in a batch is counted once for that batch (on the demo 9,999 of 15,047 training
    interactions), and a pointwise batch's sampled negatives are counted as if they were interactions.
    Replaced by a count of every positive interaction (``index_add_``; label 1, or every row without a
    label field); returns whether it was replaced."""
    from recbole.model.general_recommender.pop import Pop

    if getattr(Pop, "_counts_interactions", False):
        return False
    recbole_init = Pop.__init__

    def __init__(self, config, dataset):
        recbole_init(self, config, dataset)
        self.LABEL = config["LABEL_FIELD"]

    def calculate_loss(self, interaction):
        item = interaction[self.ITEM_ID]
        positive = interaction[self.LABEL] > 0 if self.LABEL in interaction.interaction else torch.ones_like(item)
        self.item_cnt.index_add_(0, item, positive.long().unsqueeze(1))
        self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1)).to(self.device)

    Pop.__init__, Pop.calculate_loss, Pop._counts_interactions = __init__, calculate_loss, True
    return True


_applied = False


# RecBole's own deprecated calls on pandas 2 / torch 2.x: (message, RecBole module that makes the call)
_RECBOLE_FUTURE_WARNINGS = (
    # Dataset._fill_nan: feat[field].fillna(..., inplace=True); still fills under pandas < 3 (constraints.txt)
    (r"A value is trying to be set on a copy of a DataFrame or Series through chained assignment",
     r"recbole\.data\.dataset\."),
    # Trainer.__init__ / fit: torch.cuda.amp.GradScaler(enabled=...)
    (r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"recbole\.trainer\."),
)


def quiet_recbole_future_warnings():
    """Hide the ``FutureWarning``s RecBole 1.2.1's own code raises on every run (pandas' chained-assignment
    ``fillna(inplace=True)``, torch's ``torch.cuda.amp.GradScaler``): nothing a user runs can change them,
    and pandas is pinned below 3, where the fill still works. Each filter matches one message raised from
    RecBole's module that makes the call; the same warning from any other code still shows."""
    import warnings

    for message, module in _RECBOLE_FUTURE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning, module=module)


def _ensure_dir(dir_path):
    """RecBole's ``ensure_dir`` without its check-then-create race."""
    os.makedirs(dir_path, exist_ok=True)


def race_free_ensure_dir():
    """RecBole's ``ensure_dir`` checks ``os.path.exists`` and then calls ``os.makedirs``: the processes of a
    distributed run (or seeds run in parallel) that create ``./log`` or ``checkpoint_dir`` at the same moment
    make all but one fail with ``FileExistsError``. Every RecBole module's reference to it is replaced by
    ``os.makedirs(..., exist_ok=True)``."""
    import sys

    import recbole.data.dataset.dataset  # noqa: F401  (the modules that imported ensure_dir by name)
    import recbole.data.utils  # noqa: F401
    import recbole.trainer.trainer  # noqa: F401
    import recbole.utils.logger  # noqa: F401
    import recbole.utils.utils as recbole_utils

    original = recbole_utils.ensure_dir
    for name, module in list(sys.modules.items()):
        if (name == "recbole" or name.startswith("recbole.")) and getattr(module, "ensure_dir", None) is original:
            module.ensure_dir = _ensure_dir


def apply():
    """Apply every fix (idempotent: a second call does nothing)."""
    global _applied
    if _applied:
        return
    _applied = True
    restore_numpy_aliases()
    restore_dok_matrix_update()
    import_recbole_models_without_anomaly_detection()
    trust_recbole_checkpoints()
    quiet_recbole_future_warnings()
    race_free_ensure_dir()
    count_pop_per_interaction()
