"""Which config keys exist, what type and range each takes, and the check of a run's keys.

A key given to a run (command line, ``--config_files``, ``config_dict``, a HyperTuning params file) must
be one that something reads:

- **RecBole** — its ``overall.yaml``, ``dataset/*.yaml``, ``quick_start_config/*.yaml``, the argument
  lists of ``recbole.utils.argument_list`` and every key its non-model code reads (``config["..."]``);
- **the plugin** — ``properties/overall.yaml`` (and, for ``*_REVEAL`` models, ``REVEAL.yaml`` and
  ``fve/fve.yaml``);
- **the model** — the YAML of every class in its hierarchy (``properties/model/``, RecBole's
  ``properties/model/``, or ``<Class>.yaml`` beside your own model's file) and every key its classes'
  source files read;
- **the dataset** — ``properties/dataset/<dataset>.yaml``;
- **you** — the list ``extra_config_keys`` (any config source) declares keys of your own.

A key nobody reads is an error naming where it came from and the closest known names; a key only other
models read (``avl_alpha`` for a model without REVEAL, a shared config file's ``n_shared_experts`` for
SASRec) is logged as ignored.

Types come from the ``# (type) meaning`` comment of each key in the plugin's YAML files (and from
RecBole's ``overall.yaml``): ``(bool)`` accepts true/false/yes/no/on/off/1/0 in any case and becomes a
Python bool, ``(int)`` an integer (an integral float such as HyperTuning's ``64.0`` becomes ``64``),
``(float)`` a finite number, ``(str)``, ``(list)``, ``(dict)``; ``~`` (None) only where the key's default is
``~`` or its comment says what ``~`` means. Ranges and choices are :data:`RANGES`. Light: no torch, no
RecBole import (RecBole's files are read as text).
"""

import ast
import difflib
import functools
import glob
import importlib.util
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import yaml

from recbole_reveal import locations
from recbole_reveal.arguments import _ConfigValueLoader
from recbole_reveal.errors import ConfigError

EXTRA_KEYS = "extra_config_keys"
MODALITIES = ("text", "vision")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
TYPE_NAMES = ("bool", "int", "float", "str", "list", "dict")

# Keys RecBole sets or reads itself that no YAML lists (the configurator's and DDP's own).
RECBOLE_INTERNAL_KEYS = {
    "model", "dataset", "config_files", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec",
    "local_rank", "nproc", "world_size", "offset", "ip", "port", "valid_neg_sample_args",
    "test_neg_sample_args", "verbose",
    "ddp_init_method",      # set by recbole_reveal.distributed for its workers (env:// or tcp://ip:port)
}
# Keys earlier versions read: an error saying what replaced them (before the closest-name guess).
REMOVED_KEYS = {
    "avl_sample_fraction": "was removed: the loss of a random part of the batch adds noise 2-3x larger than the "
                           "batch-to-batch variation of L_v - L_t, which exp() turns into an upward bias of K. "
                           "For a cheaper AVL use avl_probe_every: n (probe every n-th whole batch, hold K in "
                           "between; docs/design.md, 'Cheap mode')",
}
# RecBole modules under recbole/model/ that every model shares (their keys are general, not a model's).
RECBOLE_SHARED_MODEL_FILES = ("abstract_recommender.py", "layers.py", "loss.py", "init.py", "__init__.py")

_KEY_READ = re.compile(
    r"""config\w*\s*(?:\[\s*|\.get\(\s*)["']([A-Za-z_][A-Za-z0-9_]*)["']"""
    r"""|["']([A-Za-z_][A-Za-z0-9_]*)["']\s+(?:not\s+)?in\s+(?:self\.)?\w*config\w*\b""")
_YAML_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)$")
_TYPE_COMMENT = re.compile(r"#\s*\(([^)]*)\)(.*)$")


# ---------------------------------------------------------------------------------------------
# ranges and choices
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """A number's bounds (``low_open`` / ``high_open``: excluded), or a value's choices, or a custom check
    returning the problem (None when fine)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Optional[Tuple] = None
    check: Optional[Callable] = None

    def problem(self, value):
        if value is None:
            return None
        if self.check is not None:
            return self.check(value)
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(map(str, self.choices))}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return None

    def describe(self):
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high}")
        return " and ".join(parts)


def _modality_subset(value, non_empty=False):
    ok = isinstance(value, (list, tuple)) and all(m in MODALITIES for m in value) and (value or not non_empty)
    return None if ok else f"must be a {'non-empty ' if non_empty else ''}list drawn from {list(MODALITIES)}, e.g. [vision]"


def _clamp(value):
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
          and 0 < value[0] <= 1 <= value[1])
    return None if ok else "must be ~ or [low, high] with 0 < low <= 1 <= high, e.g. [0.1, 10.0]"


def _positive_int_list(value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    return None if ok else "must be a positive integer or a list of positive integers, e.g. [10, 20]"


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
AT_LEAST_ONE = Range(low=1)
PROBABILITY = Range(low=0, high=1, high_open=True)      # a dropout or masking rate

# Ranges of the plugin's keys and of RecBole's that every run uses. A key's *type* is its YAML comment.
RANGES = {
    # REVEAL / AVL (read by the AVLTrainer: checked here, before the dataset loads)
    "avl_alpha": NON_NEGATIVE,
    "avl_clamp": Range(check=_clamp),
    "avl_mode": Range(choices=("grad", "lr")),
    "avl_probe_mode": Range(choices=("eval", "train")),
    "avl_probe_every": AT_LEAST_ONE,
    "avl_stacked_probes": Range(check=lambda v: None if v in (True, False, "auto")
                                else "must be auto, true or false"),
    # modalities
    "zeroed_modalities": Range(check=_modality_subset),
    "eval_zeroed_modalities": Range(check=_modality_subset),
    "feature_modalities": Range(check=lambda v: _modality_subset(v, non_empty=True)),
    "missing_modality": Range(choices=("zero", "learned", "mean")),
    "eval_missing_rates": Range(check=lambda v: None if isinstance(v, (list, tuple)) and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 1 for r in v)
        else "must be a list of fractions in [0, 1], e.g. [0, 0.25, 0.5, 0.75, 1]"),
    "eval_missing_modalities": Range(check=lambda v: _modality_subset(v, non_empty=True)),
    "eval_missing_scopes": Range(check=lambda v: None if isinstance(v, (list, tuple)) and v and all(
        s in ("history", "candidates", "both") for s in v)
        else "must be a non-empty list drawn from ['history', 'candidates', 'both']"),
    "eval_missing_seed": Range(low=0),
    "text_feature_dim": AT_LEAST_ONE,
    "vision_feature_dim": AT_LEAST_ONE,
    # RecBole's training and evaluation
    "seed": Range(low=0, high=2**32 - 1),
    "epochs": AT_LEAST_ONE,
    "train_batch_size": AT_LEAST_ONE,
    "eval_batch_size": AT_LEAST_ONE,
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "stopping_step": AT_LEAST_ONE,
    "eval_step": AT_LEAST_ONE,
    "MAX_ITEM_LIST_LENGTH": AT_LEAST_ONE,
    "topk": Range(check=_positive_int_list),
    "worker": NON_NEGATIVE,
    "state": Range(check=lambda v: None if str(v).lower() in ("debug", "info", "warning", "error", "critical")
                   else "must be one of debug, info, warning, error, critical (any case)"),
    # backbones (M3SRec, STOSA, MISSRec, HM4SR, VBPR, and RecBole's SASRec / BERT4Rec / LightGCN)
    "hidden_size": AT_LEAST_ONE,
    "inner_size": AT_LEAST_ONE,
    "embedding_size": AT_LEAST_ONE,
    "visual_embedding_size": AT_LEAST_ONE,
    "n_layers": AT_LEAST_ONE,
    "n_heads": AT_LEAST_ONE,
    "hidden_dropout_prob": PROBABILITY,
    "attn_dropout_prob": PROBABILITY,
    "dropout_prob": PROBABILITY,
    "mask_ratio": Range(low=0, high=1, low_open=True, high_open=True),
    "ft_ratio": Range(low=0, high=1),
    "layer_norm_eps": POSITIVE,
    "initializer_range": NON_NEGATIVE,
    "pvn_weight": NON_NEGATIVE,
    "n_shared_experts": NON_NEGATIVE,
    "n_specific_experts": AT_LEAST_ONE,
    "gate_low_rank": AT_LEAST_ONE,
    "temperature": POSITIVE,
    "gamma": NON_NEGATIVE,
    "interest_ratio": POSITIVE,
    "interest_kmeans_iters": AT_LEAST_ONE,
    "align_experts": AT_LEAST_ONE,
    "temporal_experts": AT_LEAST_ONE,
    "interval_scale": POSITIVE,
    "time_unit": POSITIVE,
    "id_cl_weight": NON_NEGATIVE,
    "category_weight": NON_NEGATIVE,
    "placeholder_weight": NON_NEGATIVE,
    "placeholder_temperature": POSITIVE,
    "placeholder_ratio": PROBABILITY,
    "reg_weight": NON_NEGATIVE,
    "bias_reg_weight": NON_NEGATIVE,
    "visual_reg_weight": NON_NEGATIVE,
    # FVE (its module fve/config.py checks the relations between keys)
    "fve_cycles": AT_LEAST_ONE,
    "fve_batch_size": AT_LEAST_ONE,
    "fve_min_pixels": AT_LEAST_ONE,
    "fve_max_pixels": AT_LEAST_ONE,
    "fve_preprocess_workers": NON_NEGATIVE,
    "fve_vision_cache_mb": NON_NEGATIVE,
    "fve_keywords_topk": AT_LEAST_ONE,
    "fve_exposure_k": AT_LEAST_ONE,
    "fve_rewrite_fraction": Range(low=0, high=1, low_open=True),
    "fve_rewrite_max_new_tokens": AT_LEAST_ONE,
    "fve_rewrite_batch_size": AT_LEAST_ONE,
    "fve_rewrite_seed": NON_NEGATIVE,
    "fve_num_processes": Range(check=lambda v: None if v == "auto" or (
        isinstance(v, int) and not isinstance(v, bool) and v >= 1) else "must be 'auto' or an integer >= 1"),
}
# Relations between keys a model reads (checked when it reads all of them).
RELATIONS = (
    (("hidden_size", "n_heads"), lambda h, n: None if h % n == 0 else
     f"hidden_size ({h}) must be a multiple of n_heads ({n})"),
)


# ---------------------------------------------------------------------------------------------
# reading what the YAML files and the source files declare
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Declared:
    """A key as a YAML file declares it: its type names (from the ``# (type)`` comment), whether ``~``
    is accepted, and the file."""

    types: Tuple[str, ...] = ()
    none_ok: bool = True
    path: str = ""


def declared_keys(path):
    """``{key: Declared}`` for the top-level keys of a YAML property file (a missing file is ``{}``)."""
    return dict(_declared_keys(os.path.abspath(path), _mtime(path)))


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _declared_keys(path, _mtime_ns):
    if _mtime_ns is None:
        return ()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        values = yaml.load(text, Loader=_ConfigValueLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(yaml_problem(e, path)) from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold 'key: value' lines, got {type(values).__name__}")
    out = {str(k): Declared((), True, path) for k in values}
    for line in text.splitlines():
        m = _YAML_KEY_LINE.match(line)
        comment = _TYPE_COMMENT.search(m.group(2)) if m and m.group(1) in values else None
        if comment is None:
            continue
        key, types, tail = m.group(1), _type_names(comment.group(1)), comment.group(2)
        none_ok = values[key] is None or "~" in tail or "None" in comment.group(1)
        out[key] = Declared(types, none_ok, path)
    return tuple(out.items())


def _type_names(text):
    words = [w.strip() for w in re.split(r"\||\bor\b|,", text)]
    return tuple(w for w in words if w in TYPE_NAMES)


def keys_read_by(path):
    """Config keys a Python source file reads: ``config[<name>]``, ``config.get(<name>)``,
    ``<name> in config`` with ``<name>`` a string literal."""
    return _keys_read_by(os.path.abspath(path), _mtime(path))


@functools.lru_cache(maxsize=None)
def _keys_read_by(path, _mtime_ns):
    if _mtime_ns is None:
        return frozenset()
    with open(path, encoding="utf-8", errors="replace") as f:
        return frozenset(a or b for a, b in _KEY_READ.findall(f.read()))


def recbole_dir():
    """RecBole's package folder, found without importing it."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("RecBole is not installed: pip install recbole==1.2.1 (see constraints.txt)")
    return list(spec.submodule_search_locations)[0]


def _recbole_argument_lists():
    path = os.path.join(recbole_dir(), "utils", "argument_list.py")
    keys = set()
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
                keys |= {e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return keys


@functools.lru_cache(maxsize=None)
def recbole_general_keys():
    """Every key RecBole reads for any model: its general YAML files, its argument lists and the keys its
    non-model code reads."""
    root = recbole_dir()
    props = os.path.join(root, "properties")
    keys = set(RECBOLE_INTERNAL_KEYS) | _recbole_argument_lists()
    yamls = [os.path.join(props, "overall.yaml")] + glob.glob(os.path.join(props, "quick_start_config", "*.yaml"))
    yamls += [p for p in glob.glob(os.path.join(props, "dataset", "*.yaml"))
              if os.path.basename(p) not in ("url.yaml", "kg_url.yaml")]      # dataset-name -> URL maps
    for path in yamls:
        keys |= set(declared_keys(path))
    model_dir = os.path.join(root, "model") + os.sep
    for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
        if not path.startswith(model_dir) or os.path.dirname(path) + os.sep == model_dir and \
                os.path.basename(path) in RECBOLE_SHARED_MODEL_FILES:
            keys |= keys_read_by(path)
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def recbole_none_defaults():
    """Keys whose default in RecBole's ``overall.yaml`` is ``~``."""
    path = os.path.join(recbole_dir(), "properties", "overall.yaml")
    with open(path, encoding="utf-8") as f:
        values = yaml.load(f, Loader=_ConfigValueLoader) or {}
    return frozenset(k for k, v in values.items() if v is None)


@functools.lru_cache(maxsize=None)
def recbole_types():
    """Types of RecBole's ``overall.yaml`` keys that are single numbers or booleans."""
    out = {}
    for key, d in declared_keys(os.path.join(recbole_dir(), "properties", "overall.yaml")).items():
        if len(d.types) == 1 and d.types[0] in ("bool", "int", "float"):
            out[key] = d
    return out


def plugin_yaml_files():
    """The plugin's property files that hold config keys (not the FVE templates)."""
    props = locations.properties_dir()
    files = [os.path.join(props, "overall.yaml"), os.path.join(props, "fve", "fve.yaml")]
    files += sorted(glob.glob(os.path.join(props, "model", "*.yaml")))
    files += sorted(glob.glob(os.path.join(props, "dataset", "*.yaml")))
    return files


def plugin_types():
    """``{key: Declared}`` over every plugin property file (a key declared in several files accepts what
    any of them allows)."""
    return merge_declared(declared_keys(p) for p in plugin_yaml_files())


def merge_declared(tables):
    out = {}
    for table in tables:
        for key, d in table.items():
            old = out.get(key)
            if old is None or not old.types:
                out[key] = d
            elif d.types:
                out[key] = Declared(tuple(dict.fromkeys(old.types + d.types)), old.none_ok or d.none_ok, old.path)
    return out


@functools.lru_cache(maxsize=None)
def _other_models_index():
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


# ---------------------------------------------------------------------------------------------
# the keys of one run
# ---------------------------------------------------------------------------------------------

def class_source_files(model_class):
    """Source files of the classes of ``model_class``'s hierarchy (torch's and ``object`` left out)."""
    files = []
    for cls in model_class.__mro__:
        module = sys.modules.get(cls.__module__)
        if cls is object or module is None or cls.__module__.split(".")[0] in ("torch", "builtins", "abc"):
            continue
        try:
            path = inspect.getsourcefile(cls)
        except TypeError:
            continue
        if path and path not in files:
            files.append(path)
    return files


def recbole_model_yamls(model_class):
    """RecBole's ``properties/model/<Class>.yaml`` of each class in the hierarchy that has one."""
    folder = os.path.join(recbole_dir(), "properties", "model")
    return [p for p in (os.path.join(folder, f"{c.__name__}.yaml") for c in model_class.__mro__) if os.path.isfile(p)]


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
        owners = _other_models_index().get(key)
        if owners:
            return False, (f"'{key}' is not read by {self.model_name} (a key of {', '.join(owners[:4])}"
                           f"{', ...' if len(owners) > 4 else ''}); ignored")
        close = difflib.get_close_matches(key, sorted(self.general | self.model | self.extra), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return True, (f"unknown config key '{key}'{hint} (your own model's keys: declare them in its "
                      f"<Class>.yaml or list them in {EXTRA_KEYS}, see docs/usage.md)")


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------

def coerce(key, value, declared):
    """``value`` converted to ``declared``'s type: returns ``(value, problem)`` (problem None when fine)."""
    if value is None:
        return value, (None if declared.none_ok else f"{key} must be set (got ~)")
    problems = []
    for kind in declared.types:
        converted, problem = _COERCE[kind](value)
        if problem is None:
            return converted, None
        problems.append(problem)
    if not problems:
        return value, None
    return value, f"{key} must be {' or '.join(problems)}; got {value!r}"


def _as_bool(value):
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int) and value in (0, 1):
        return bool(value), None
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS, None
    return value, "true or false (also yes/no, on/off, 1/0)"


def _as_int(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return value, None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value), None
    return value, "an integer"


def _as_float(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return value, None
        return value, "a finite number"
    return value, "a number"


def _as_str(value):
    if isinstance(value, str):
        return value, None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), None
    return value, "a string"


def _as_list(value):
    if isinstance(value, (list, tuple)):
        return list(value), None
    return value, "a list (e.g. [a, b])"


def _as_dict(value):
    if isinstance(value, dict):
        return value, None
    return value, "a mapping (e.g. {a: 1})"


_COERCE = {"bool": _as_bool, "int": _as_int, "float": _as_float, "str": _as_str, "list": _as_list,
           "dict": _as_dict}


def check_value(key, value, types):
    """``(value, problem)``: ``value`` of ``key`` converted to its declared type and checked against
    :data:`RANGES`."""
    declared = types.get(key)
    if declared is not None:
        value, problem = coerce(key, value, declared)
        if problem:
            return value, problem
    rng = RANGES.get(key)
    if rng is not None:
        problem = rng.problem(value)
        if problem:
            return value, f"{key} {problem}; got {value!r}"
    return value, None


def check_keys(values, sources, known, external):
    """Check a run's config.

    Args:
        values: the merged config (``{key: value}``); converted values are written back.
        sources: ``{key: where it was set}`` (``--key=value``, ``file:line``, ``config_dict``, a property
            file), for the message.
        known: the run's :class:`KnownKeys`.
        external: the keys the user gave (files, dict, command line): only these can be unknown.

    Returns the notes on ignored keys (keys only other models read). Raises :class:`ConfigError`, one
    line naming each bad key and where it was set.
    """
    errors, notes = [], []
    for key in external:
        if not known.knows(key):
            is_error, text = known.problem_with_unknown(key)
            (errors if is_error else notes).append(f"{sources.get(key, key)}: {text}")
    types = known.types()
    for key in list(values):
        value, problem = check_value(key, values[key], types)
        if problem:
            errors.append(f"{sources.get(key, key)}: {problem}")
        else:
            values[key] = value
    for names, relation in RELATIONS:
        if all(n in known.model and isinstance(values.get(n), int) and values.get(n) > 0 for n in names):
            problem = relation(*(values[n] for n in names))
            if problem:
                errors.append(f"{', '.join(sources.get(n, n) for n in names)}: {problem}")
    if errors:
        raise ConfigError("; ".join(errors))
    return notes


def yaml_problem(error, path):
    """``path:line:column: YAML syntax error: ...`` (1-based) for a PyYAML error, on one line."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        context += f" (started at line {context_mark.line + 1}, column {context_mark.column + 1})"
    what = ", ".join(str(p) for p in (context, getattr(error, "problem", None)) if p)
    return f"{where}: YAML syntax error: {what or error}"


def key_lines(text):
    """``{top-level key: 1-based line}`` of a YAML document (keys whose line cannot be told are left out)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def check_vlm_path(path, key="vlm_path"):
    """``vlm_path`` must be a local Hugging Face model folder (a ``config.json`` and weights): checked
    before the FVE loop records any stage, so a mistyped path costs nothing. Returns the absolute path."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{key} must be a local VLM folder (Qwen2.5-VL, Qwen3-VL, Gemma-3, InternVL3-hf); "
                          f"got {path!r}")
    folder = os.path.abspath(os.path.expanduser(path))
    download = ("download one with `hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir "
                "/models/Qwen2.5-VL-7B-Instruct`")
    if not os.path.isdir(folder):
        raise ConfigError(f"{key}={path}: no such folder; {download}")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ConfigError(f"{key}={path}: the folder has no config.json, so it is not a Hugging Face model "
                          f"folder; {download}")
    weights = [n for n in os.listdir(folder) if n.endswith((".safetensors", ".bin")) or n.endswith(".index.json")]
    if not weights:
        raise ConfigError(f"{key}={path}: the folder has a config.json but no weights (*.safetensors); "
                          f"{download}")
    return folder
