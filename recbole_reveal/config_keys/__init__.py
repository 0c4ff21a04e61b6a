"""Which config keys exist, what type and range each takes, and the one check of a run's keys.

A key given to a run (command line, ``--config_files``, ``config_dict``, a HyperTuning params file) must
be one that something reads: RecBole (its YAML files, argument lists and the keys its non-model code
reads), the plugin (``properties/overall.yaml``; for ``*_REVEAL`` models ``REVEAL.yaml`` and
``fve/fve.yaml``), the model (the YAML of every class of its hierarchy and the keys its source reads),
the dataset (``properties/dataset/<dataset>.yaml``) or you (``extra_config_keys``).

``schema`` (ranges, choices, relations: the declarative table), ``declared`` (types from the YAML
``# (type)`` comments, keys read by source files), ``known`` (the keys of one run, the family reading
each key), ``values`` (conversion to the declared type), ``check`` (the one pass), ``yaml_text``
(``file:line`` in messages). Light: no torch, no RecBole import (RecBole's files are read as text).
"""
