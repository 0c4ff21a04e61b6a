"""recbole-reveal: REVEAL (arXiv 2606.09082) for multimodal sequential recommendation, on RecBole 1.2.1.

The public API (``run_recbole_reveal``, ``build_config``, ``objective_function``, ``get_model``,
``get_trainer``, ``create_dataset``) is imported on first use: ``import recbole_reveal`` and its light
modules (``recbole_reveal.data.feature_store``, ``errors``, ``files``, ``arguments``, ...) load neither
torch nor RecBole. The modules that use RecBole make it work on today's stack first
(:mod:`recbole_reveal.adaptation.compat`).
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "build_config": "recbole_reveal.config",
    "objective_function": "recbole_reveal.quick_start",
    "run_recbole_reveal": "recbole_reveal.quick_start",
    "create_dataset": "recbole_reveal.utils",
    "get_model": "recbole_reveal.utils",
    "get_trainer": "recbole_reveal.utils",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recbole_reveal' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
