"""Make RecBole 1.2.1 work on today's stack (numpy 2, torch >= 2.6, scipy >= 1.17).

:func:`apply` is called by the modules that use RecBole (the ``model`` and ``trainer`` packages,
``data/dataset.py``, ``utils.py``, ``config.py``, ``training.py``) before their first RecBole import, not
by ``import recbole_reveal``: the light modules stay free of torch and RecBole. To use RecBole's own
API in a process that has not imported one of those, call ``recbole_reveal.compat.apply()`` first.

Each fix is scoped as narrowly as the problem allows:

* numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` and ``np.bool8``, which RecBole
  still uses while building a ``Config`` and a dataset: the aliases are restored (only when absent).
* torch >= 2.6 loads with ``weights_only=True`` by default; RecBole's checkpoints hold its
  ``Config`` object, so its trainer cannot reload its own best model. Only RecBole's trainer module
  sees a ``torch`` whose ``load`` defaults to ``weights_only=False``; torch's global default is
  untouched.
* importing ``recbole.model.sequential_recommender`` imports SINE, which switches on autograd anomaly
  detection for the whole process (~40 % slower training). We import that package here, once, and
  switch anomaly detection back off; a later import does not re-run SINE's module code.
* recent scipy (1.17 here) has no private ``dok_matrix._update`` that RecBole's graph models (LightGCN,
  NGCF, NCL, GCMC, SpectralCF, KGIN, MCCLK) call to build their adjacency matrix; it is restored as
  scipy's public ``dok_matrix.update`` (the same bulk insert, with index checks), only when absent.
* RecBole's own deprecated pandas / torch calls print a ``FutureWarning`` on every run: those messages,
  raised from those RecBole modules only, are filtered (``quiet_recbole_future_warnings``).
"""

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


class _TorchWithTrustedCheckpoints(types.ModuleType):
    """A stand-in for the ``torch`` module inside RecBole's trainer: everything is torch's, except
    that ``load`` defaults to ``weights_only=False`` (RecBole checkpoints pickle its Config)."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch.load(f, *args, **kwargs)


def trust_recbole_checkpoints():
    """Let RecBole's trainer (and only it) reload the checkpoints it writes itself."""
    import recbole.trainer.trainer as recbole_trainer

    if not isinstance(recbole_trainer.torch, _TorchWithTrustedCheckpoints):
        recbole_trainer.torch = _TorchWithTrustedCheckpoints()


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
