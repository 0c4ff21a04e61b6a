"""The keys one run knows (RecBole's, the plugin's, its model's, its dataset's, ``extra_config_keys``) and
which model family reads each key (for the message on a key this run does not read). Light."""

import difflib
import functools
import glob
import os
from dataclasses import dataclass, field

from recbole_reveal.config_keys.declared import (
    class_source_files, declared_keys, keys_read_by, plugin_types, recbole_dir, recbole_general_keys,
    recbole_model_yamls, recbole_none_defaults, recbole_types, Declared,
)
from recbole_reveal.config_keys.schema import EXTRA_KEYS, REMOVED_KEYS
from recbole_reveal.infra import locations


@functools.lru_cache(maxsize=None)
def families():
    """``{key: sorted model names}`` over every model YAML (RecBole's and the plugin's) and the source of
    RecBole's and the plugin's model packages (for hints on keys another model reads)."""
    index = {}

    def add(key, owner):
        index.setdefault(key, set()).add(owner)

    for path in glob.glob(os.path.join(recbole_dir(), "properties", "model", "*.yaml")):
        for key in declared_keys(path):
            add(key, os.path.splitext(os.path.basename(path))[0])
    for path in glob.glob(os.path.join(locations.properties_dir(), "model", "*.yaml")):
        name = os.path.splitext(os.path.basename(path))[0]
        for key in declared_keys(path):
            add(key, "*_REVEAL models" if name == "REVEAL" else name)
    for key in declared_keys(locations.property_file("fve", "fve.yaml")):
        add(key, "*_REVEAL models")
    in_yaml = set(index)
    for package in (os.path.join(recbole_dir(), "model"), os.path.join(locations.PACKAGE_DIR, "model")):
        for path in glob.glob(os.path.join(package, "**", "*.py"), recursive=True):
            for key in keys_read_by(path) - in_yaml:
                add(key, os.path.basename(path))
    return {k: tuple(sorted(v)) for k, v in index.items()}


@dataclass
class KnownKeys:
    """The keys one run knows: ``general`` (any model), ``model`` (this model's), ``extra``
    (``extra_config_keys``), and the types declared by this model's own YAML files."""

    model_name: str
    general: frozenset
    model: frozenset
    extra: frozenset = frozenset()
    model_types: dict = field(default_factory=dict)

    @classmethod
    def for_run(cls, model_class, model_yaml_files, dataset_yaml_files=(), extra=()):
        """``model_yaml_files``: the plugin's / your own YAML files of the model's classes (REVEAL's and
        fve.yaml for ``*_REVEAL`` models); ``dataset_yaml_files``: the dataset's property files."""
        general = set(recbole_general_keys())
        general |= set(declared_keys(locations.property_file("overall.yaml")))
        for path in dataset_yaml_files:
            general |= set(declared_keys(path))
        model_files = list(model_yaml_files) + recbole_model_yamls(model_class)
        model = set()
        types = {}
        for path in model_files:
            declared = declared_keys(path)
            model |= set(declared)
            types.update({k: d for k, d in declared.items() if d.types})
        for path in class_source_files(model_class):
            model |= keys_read_by(path)
        return cls(model_class.__name__, frozenset(general | {EXTRA_KEYS}), frozenset(model), frozenset(extra),
                   types)

    def knows(self, key):
        return key in self.general or key in self.model or key in self.extra

    def types(self):
        """``{key: Declared}`` with a type: RecBole's, the plugin's, then this model's own YAML files; ``~``
        is accepted wherever RecBole's own default is ``~``."""
        table = dict(recbole_types())
        table.update(plugin_types())
        for key, d in self.model_types.items():      # the model's own types; ~ wherever any file allows it
            table[key] = Declared(d.types, d.none_ok or (key in table and table[key].none_ok), d.path)
        for key in recbole_none_defaults() & set(table):
            table[key] = Declared(table[key].types, True, table[key].path)
        return table

    def problem_with_unknown(self, key):
        """``(is_error, text)`` for a key this run does not know."""
        if key in REMOVED_KEYS:
            return True, f"config key '{key}' {REMOVED_KEYS[key]}"
        owners = families().get(key)
        if owners:
            return False, (f"'{key}' is not read by {self.model_name} (a key of {', '.join(owners[:4])}"
                           f"{', ...' if len(owners) > 4 else ''}); ignored")
        close = difflib.get_close_matches(key, sorted(self.general | self.model | self.extra), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return True, (f"unknown config key '{key}'{hint} (your own model's keys: declare them in its "
                      f"<Class>.yaml or list them in {EXTRA_KEYS}, see docs/usage.md)")
