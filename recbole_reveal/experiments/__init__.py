"""The paper's experiment protocol as commands (``run_experiments.py``, ``run_hyper.py``;
docs/experiments.md).

- :mod:`.runs`: one run = (model, overrides, seed), saved as a JSON record when it finishes;
  finished runs are loaded, not retrained.
- :mod:`.protocols`: the rows of Table 2 (``seeds``), Table 3 (``variants``), Fig. 1d-e and Table 4
  (``modality``).
- :mod:`.stats`: mean ± std, relative improvement, the paired two-sided t-test.
- :mod:`.tables`: Markdown / CSV tables from saved records.
- :mod:`.plots`: Figs. 4-5 (sensitivity) and Fig. 1d-e (modality bars).
- :mod:`.hyper`: RecBole's HyperTuning over plugin models.
"""

from recbole_reveal.experiments.stats import paired_ttest

__all__ = ["paired_ttest"]
