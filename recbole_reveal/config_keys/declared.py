"""What the YAML files and the source files declare: a key's type from its ``# (type)`` comment, the keys
a Python file reads (``config["..."]``), and RecBole's own keys, found by reading RecBole's files as text
(RecBole is not imported). Light."""

import ast
import functools
import glob
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from typing import Tuple

import yaml

from recbole_reveal.config_keys.yaml_text import yaml_problem
from recbole_reveal.infra import locations
from recbole_reveal.infra.arguments import _ConfigValueLoader
from recbole_reveal.infra.errors import ConfigError

TYPE_NAMES = ("bool", "int", "float", "str", "list", "dict")
# Keys RecBole sets or reads itself that no YAML lists (the configurator's and DDP's own).
RECBOLE_INTERNAL_KEYS = {
    "model", "dataset", "config_files", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec",
    "local_rank", "nproc", "world_size", "offset", "ip", "port", "valid_neg_sample_args",
    "test_neg_sample_args", "verbose",
    "ddp_init_method",      # set by recbole_reveal.adaptation.launch for its workers (env:// or tcp://ip:port)
}
# RecBole modules under recbole/model/ that every model shares (their keys are general, not a model's).
RECBOLE_SHARED_MODEL_FILES = ("abstract_recommender.py", "layers.py", "loss.py", "init.py", "__init__.py")

_KEY_READ = re.compile(
    r"""config\w*\s*(?:\[\s*|\.get\(\s*)["']([A-Za-z_][A-Za-z0-9_]*)["']"""
    r"""|["']([A-Za-z_][A-Za-z0-9_]*)["']\s+(?:not\s+)?in\s+(?:self\.)?\w*config\w*\b""")
_YAML_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)$")
_TYPE_COMMENT = re.compile(r"#\s*\(([^)]*)\)(.*)$")


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
