"""The commands ``run_recbole_reveal`` and ``run_hyper`` (``run_experiments`` is
:mod:`recbole_reveal.experiments.cli`): installed as console scripts by the package, and run from a
checkout as ``python run_recbole_reveal.py`` / ``python run_hyper.py``."""
