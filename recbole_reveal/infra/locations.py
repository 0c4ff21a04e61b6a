"""Where the plugin's files are: its property files (in a checkout or inside an installed wheel) and
the datasets. The one module that looks at the package's own location; light (no torch, no RecBole).

``properties/`` at the top of the repository is the folder people edit. A wheel carries a copy of it
as package data, ``recbole_reveal/properties/`` (see ``setup.py``); a checkout (editable install or
``PYTHONPATH``) has none and uses the top-level folder.
"""

import copy
import functools
import os

import yaml

from recbole_reveal.infra.errors import ConfigError, DatasetNotFoundError

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # recbole_reveal/


def checkout_root():
    """The repository folder this package runs from, or ``None`` for an installed copy."""
    root = os.path.dirname(PACKAGE_DIR)
    if os.path.isfile(os.path.join(root, "properties", "overall.yaml")) and os.path.isfile(
            os.path.join(root, "setup.cfg")):
        return root
    return None


def properties_dir():
    """The property folder: the wheel's copy when the package has one, else the checkout's."""
    packaged = os.path.join(PACKAGE_DIR, "properties")
    if os.path.isfile(os.path.join(packaged, "overall.yaml")):
        return packaged
    root = checkout_root()
    if root is not None:
        return os.path.join(root, "properties")
    raise ConfigError(f"recbole_reveal's property files are missing: neither {packaged} (an installed wheel) "
                      f"nor a checkout's properties/ beside {PACKAGE_DIR}; reinstall the package")


def property_file(*parts):
    """``properties/<parts...>`` (whether it exists or not)."""
    return os.path.join(properties_dir(), *parts)


def property_path(path):
    """``path`` as given when it exists; a path ``properties/<rest>`` that does not exist in the working
    directory is the package's own ``properties/<rest>`` (e.g. ``--params_file=properties/hyper/...``
    from an installed package)."""
    parts = os.path.normpath(path).split(os.sep)
    if os.path.exists(path) or os.path.isabs(path) or parts[0] != "properties" or len(parts) < 2:
        return path
    own = property_file(*parts[1:])
    return own if os.path.exists(own) else path


def read_yaml(path):
    """A YAML property file as a dict (an empty file is ``{}``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold 'key: value' lines, got {type(data).__name__}")
    return data


@functools.lru_cache(maxsize=None)
def _fve_defaults(path):
    return read_yaml(path)


def fve_defaults(keys=None):
    """FVE's keys and their defaults, ``properties/fve/fve.yaml`` (a fresh copy each call); only
    ``keys`` when given."""
    defaults = _fve_defaults(property_file("fve", "fve.yaml"))
    if keys is None:
        return copy.deepcopy(defaults)
    missing = [k for k in keys if k not in defaults]
    if missing:
        raise ConfigError(f"{property_file('fve', 'fve.yaml')} lacks the keys {missing}")
    return {k: copy.deepcopy(defaults[k]) for k in keys}


def reveal_only_keys():
    """Config keys only ``*_REVEAL`` models read: those of ``REVEAL.yaml`` and of ``fve.yaml``."""
    return set(read_yaml(property_file("model", "REVEAL.yaml"))) | set(fve_defaults())


def _in_checkout(folder):
    """``folder`` as given when absolute or present in the working directory, else inside the checkout
    when it exists there (so the default ``dataset_atomic/`` works from any directory of a checkout)."""
    root = checkout_root()
    if not os.path.isabs(folder) and not os.path.isdir(folder) and root is not None:
        candidate = os.path.join(root, folder)
        if os.path.isdir(candidate):
            return candidate
    return folder


def dataset_yaml(data_path, dataset):
    """The dataset's own property file ``<data_path>/<dataset>/<dataset>.yaml`` (``data_path`` as the
    config key gives it, the folder holding the datasets), or ``None`` when there is none."""
    if not data_path or not dataset:
        return None
    path = os.path.join(_in_checkout(os.path.join(str(data_path), str(dataset))), f"{dataset}.yaml")
    return path if os.path.isfile(path) else None


def resolve_data_path(folder, dataset):
    """The dataset folder ``folder`` (RecBole's ``data_path``, which ends in ``<dataset>``): as given
    when absolute or present in the working directory, else inside the checkout (so the default
    ``dataset_atomic/`` works from any directory of a checkout). Raises :class:`DatasetNotFoundError`,
    listing the datasets beside it, when ``<folder>/<dataset>.inter`` does not exist."""
    root = checkout_root()
    folder = _in_checkout(folder)
    inter_file = os.path.join(folder, f"{dataset}.inter")
    if not os.path.isfile(inter_file):
        parent = os.path.dirname(os.path.normpath(folder))
        available = sorted(
            d for d in (os.listdir(parent) if os.path.isdir(parent) else [])
            if os.path.isfile(os.path.join(parent, d, f"{d}.inter"))
        )
        installed = "" if root is not None else (
            " An installed recbole-reveal carries no datasets: make the demo in the working directory with "
            "`python -m recbole_reveal.commands.synthetic_data --out dataset_atomic --name synthetic-demo`, then its "
            "text and image features with `python -m recbole_reveal.commands.extract_features` (docs/data-format.md, "
            "'The demo dataset'), or pass --data_path=<a checkout>/dataset_atomic.")
        raise DatasetNotFoundError(
            f"dataset '{dataset}' not found: no {inter_file}. "
            f"Datasets under {parent}: {', '.join(available) or 'none'}. "
            "Generate the demo with `python -m recbole_reveal.commands.synthetic_data`, or put RecBole atomic "
            "files at <data_path>/<dataset>/<dataset>.inter (see docs/data-format.md)." + installed
        )
    return folder
