"""Every command-line entry point, on the top floor: ``run_recbole_reveal``, ``run_hyper`` and
``run_experiments`` (console scripts; ``python run_*.py`` in a checkout), and the ``python -m`` commands
``prepare_data`` (raw Amazon / Yelp files to atomic files), ``extract_features`` and ``synthetic_data``.
``console`` shows the FVE loop's stage lines. A command parses its command line and calls the API below it."""
