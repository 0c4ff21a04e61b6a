"""recbole-reveal: REVEAL (arXiv 2606.09082) for multimodal sequential recommendation, on RecBole 1.2.1.

Importing the package makes RecBole 1.2.1 work on today's stack (see :mod:`recbole_reveal.compat`).
"""

from recbole_reveal import compat

compat.apply()

from recbole_reveal.quick_start import build_config, objective_function, run_recbole_reveal  # noqa: E402
from recbole_reveal.utils import create_dataset, get_model, get_trainer  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "build_config",
    "create_dataset",
    "get_model",
    "get_trainer",
    "objective_function",
    "run_recbole_reveal",
]
