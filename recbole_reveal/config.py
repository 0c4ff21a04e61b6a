"""The one configuration reader: a RecBole ``Config`` that knows the plugin's property files.

Precedence, lowest first (RecBole's own order, with the plugin's files among RecBole's defaults):

1. RecBole's defaults (for RecBole's own models, also RecBole's model YAML);
2. ``properties/overall.yaml``;
3. for ``*_REVEAL`` models, ``properties/fve/fve.yaml`` (FVE's keys; other models never see them);
4. ``properties/model/<Class>.yaml`` for every class in the model's hierarchy, backbone first
   (``M3SRec.yaml`` < ``REVEAL.yaml`` < ``M3SRec_REVEAL.yaml``; for your own model classes,
   ``<Class>.yaml`` beside their file);
5. ``properties/dataset/<dataset>.yaml``, then the dataset's own ``<data_path>/<dataset>/<dataset>.yaml``
   (beside its atomic files; ``data_path`` from any source below or above, resolved first);
6. ``config_file_list``, in order;
7. ``config_dict``;
8. ``cmd_args`` (``--key=value`` strings; the real ``sys.argv`` is never read).

Every entry point builds its configuration here: ``run_recbole_reveal.py``, ``run_hyper.py``,
``run_experiments.py``, the Python API and the FVE loop (docs/design.md, "Configuration").

Every key is checked before anything is loaded (:mod:`recbole_reveal.config_keys`): a key nothing reads is
an error naming where it was set and the closest known names, values are converted to their declared
type and range-checked, and RecBole's own checks of the merged config raise :class:`ConfigError`.
"""

import os
import sys
from contextlib import contextmanager
from logging import getLogger

import yaml

from recbole_reveal.adaptation import compat

compat.apply()

from recbole.config import Config as RecBoleConfig  # noqa: E402
from recbole.model.abstract_recommender import AbstractRecommender  # noqa: E402

from recbole_reveal.config_keys.check import check_keys  # noqa: E402
from recbole_reveal.config_keys.known import KnownKeys  # noqa: E402
from recbole_reveal.config_keys.schema import EXTRA_KEYS  # noqa: E402
from recbole_reveal.config_keys.yaml_text import key_lines, yaml_problem  # noqa: E402
from recbole_reveal.infra import locations  # noqa: E402
from recbole_reveal.infra.arguments import parse_overrides, split_override  # noqa: E402
from recbole_reveal.infra.errors import ConfigError, RevealUserError  # noqa: E402
from recbole_reveal.utils import get_model  # noqa: E402


def is_reveal_model(model_class):
    """Whether ``model_class`` is a ``*_REVEAL`` model (the ``REVEAL`` mix-in sets ``reveal = True``)."""
    return bool(getattr(model_class, "reveal", False))


def property_files(model_class, dataset):
    """The plugin's YAML files that apply to ``model_class`` on ``dataset``, lowest precedence first."""
    return [locations.property_file("overall.yaml")] + model_property_files(model_class) + \
        dataset_property_files(dataset)


def model_property_files(model_class):
    """``fve.yaml`` for ``*_REVEAL`` models, then ``<Class>.yaml`` of every class of the hierarchy that has
    one (backbone first)."""
    files = [locations.property_file("fve", "fve.yaml")] if is_reveal_model(model_class) else []
    for cls in reversed(model_class.__mro__):
        path = os.path.join(_model_yaml_dir(cls), f"{cls.__name__}.yaml")
        if os.path.isfile(path):
            files.append(path)
    return files


def dataset_property_files(dataset):
    """``properties/dataset/<dataset>.yaml`` when it exists (the dataset's own YAML beside its data is
    found once ``data_path`` is known: :meth:`Config._load_internal_config_dict`)."""
    path = locations.property_file("dataset", f"{dataset}.yaml")
    return [path] if os.path.isfile(path) else []


def _model_yaml_dir(model_class):
    """Where ``<Class>.yaml`` lives: ``properties/model/`` for this plugin's models (and RecBole's, which
    have none there), the folder of the model's own file for your own models."""
    module_file = getattr(sys.modules.get(model_class.__module__), "__file__", None)
    own = not model_class.__module__.startswith(("recbole.", "recbole_reveal."))
    if own and issubclass(model_class, AbstractRecommender) and module_file:
        return os.path.dirname(os.path.abspath(module_file))
    return locations.property_file("model")


class Config(RecBoleConfig):
    """RecBole's ``Config`` with the plugin's models (names, ``<file.py>:<Class>`` or classes), its
    property files (module docstring) and a command line given as a list.

    Args:
        model: a plugin or RecBole model name, ``"<file.py>:<Class>"``, or a model class.
        dataset: the dataset name (a folder ``<data_path>/<dataset>/``).
        config_file_list: YAML files, in increasing precedence.
        config_dict: a dict of config keys (above the files).
        cmd_args: ``--key=value`` strings (the highest precedence).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=()):
        for path in config_file_list or []:
            if not os.path.isfile(path):
                raise ConfigError(f"config file not found: {path}")
        self._cmd_args = list(cmd_args or ())
        # what the config was built from: a worker process of a distributed run builds its own from them
        self.inputs = (model, dataset, list(config_file_list or []), dict(config_dict or {}), list(cmd_args or ()))
        self.key_sources = {}           # key -> where the user set it ("--k=v", "file:line", "config_dict")
        self._internal_sources = {}     # key -> the property file that last set it
        self.files_read = []            # every property file read, lowest precedence first (RecBole's too)
        self.config_files = list(config_file_list or [])
        self.dataset_yaml_file = None   # <data_path>/<dataset>/<dataset>.yaml when there is one
        super().__init__(model, dataset, config_file_list, config_dict)
        self.final_config_dict["data_path"] = locations.resolve_data_path(self["data_path"], self.dataset)

    # ---- the user's keys, with where each was set ------------------------------------------------
    def _load_config_files(self, file_list):
        merged = {}
        for path in file_list or []:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            try:
                values = yaml.load(text, Loader=self.yaml_loader)
            except yaml.YAMLError as e:
                raise ConfigError(yaml_problem(e, path)) from e
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: a config file holds 'key: value' lines, got a {type(values).__name__}")
            lines = key_lines(text)
            for key in values:
                self.key_sources[key] = f"{path}:{lines[key]}" if key in lines else path
            merged.update(values)
        return merged

    def _load_variable_config_dict(self, config_dict):
        for key in config_dict or {}:
            self.key_sources[key] = f"config_dict[{key!r}]"
        return super()._load_variable_config_dict(dict(config_dict) if config_dict else None)

    def _load_cmd_line(self):
        for item in self._cmd_args:
            key, text = split_override(item)
            self.key_sources[key] = f"--{key}={text}"
        return parse_overrides(self._cmd_args)

    def _update_internal_config_dict(self, file):
        values = super()._update_internal_config_dict(file)
        for key in values or {}:
            self._internal_sources[key] = file
        self.files_read.append(file)
        return values

    # ---- checks, before RecBole's own and before anything is loaded ------------------------------
    def _set_default_parameters(self):
        self._check_keys()
        with _recbole_check():
            super()._set_default_parameters()

    def _set_train_neg_sample_args(self):
        with _recbole_check():
            super()._set_train_neg_sample_args()
        from recbole.utils import InputType

        negatives = self.final_config_dict["train_neg_sample_args"]
        if self.final_config_dict.get("MODEL_INPUT_TYPE") == InputType.PAIRWISE and \
                negatives.get("distribution") == "none":
            where = self.key_sources.get("train_neg_sample_args", self._internal_sources.get(
                "train_neg_sample_args", "train_neg_sample_args"))
            raise ConfigError(f"{where}: {self.model} trains on (positive, negative) pairs: it needs one sampled "
                              "negative per positive, train_neg_sample_args: {distribution: uniform, sample_num: 1}")

    def _set_eval_neg_sample_args(self, phase):
        with _recbole_check():
            super()._set_eval_neg_sample_args(phase)

    def check_values(self, values, sources):
        """Check keys this config did not get, e.g. the values a HyperTuning params file will give each
        trial (``{key: [value, ...]}``), as the keys it got were checked; ``sources`` names where each
        was set. Raises :class:`ConfigError`."""
        known = self._known_keys()
        errors = []
        for key, candidates in values.items():
            where = sources.get(key, key)
            if not known.knows(key):
                is_error, text = known.problem_with_unknown(key)
                if is_error:
                    errors.append(f"{where}: {text}")
                    continue
                getLogger(__name__).warning("%s: %s", where, text)
            merged = dict(self.final_config_dict)
            for value in candidates:
                merged[key] = value
                try:
                    check_keys(merged, {key: where}, known, [])
                except ConfigError as e:
                    errors.append(str(e))
                    break
        if errors:
            raise ConfigError("; ".join(errors))

    def _known_keys(self):
        extra = self.final_config_dict.get(EXTRA_KEYS) or []
        if not isinstance(extra, (list, tuple)) or not all(isinstance(k, str) for k in extra):
            raise ConfigError(f"{self.key_sources.get(EXTRA_KEYS, EXTRA_KEYS)}: "
                              f"{EXTRA_KEYS} must be a list of key names; got {extra!r}")
        return KnownKeys.for_run(self.model_class, model_property_files(self.model_class),
                                             self._dataset_files(), extra)

    def _dataset_files(self):
        own = [self.dataset_yaml_file] if self.dataset_yaml_file else []
        return dataset_property_files(self.dataset) + own

    def _check_keys(self):
        """Unknown keys, types, ranges and relations of the merged config, FVE's keys among them: the one
        pass (:func:`recbole_reveal.config_keys.check.check_keys`)."""
        values = self.final_config_dict
        known = self._known_keys()
        sources = dict(self._internal_sources, **self.key_sources)
        for note in check_keys(values, sources, known, list(self.external_config_dict)):
            getLogger(__name__).warning(note)

    def __getitem__(self, item):
        reads = self.__dict__.get("_missing_reads")
        if reads is not None and item not in self.final_config_dict and item not in reads:
            reads.append(item)
        return super().__getitem__(item)

    @contextmanager
    def missing_key_reads(self):
        """Within the block, the keys read but not set (``config[key]`` is then ``None``), in order."""
        self._missing_reads = []
        try:
            yield self._missing_reads
        finally:
            self._missing_reads = None

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
        if model is None or dataset is None:
            raise ConfigError("a config needs 'model' and 'dataset' (arguments, a config file, config_dict "
                              "or the command line)")
        model_class = get_model(model)
        return model_class.__name__, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in property_files(model_class, dataset):
            self._update_internal_config_dict(path)
        own = locations.dataset_yaml(self.external_config_dict.get("data_path", self.internal_config_dict.get(
            "data_path")), dataset)
        if own:
            if "data_path" in (locations.read_yaml(own)):
                raise ConfigError(f"{own}: data_path cannot be set in the dataset's own YAML (data_path is how "
                                  "this file is found); remove the line")
            self._update_internal_config_dict(own)
            self.dataset_yaml_file = own


@contextmanager
def _recbole_check():
    """RecBole's configurator checks the merged config with ValueError / TypeError / ...: a
    :class:`ConfigError` (one ``error:`` line) for the user."""
    try:
        yield
    except RevealUserError:
        raise
    except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError, SyntaxError) as e:
        raise ConfigError(f"RecBole's config check: {e}") from e


def build_config(model, dataset, config_file_list=None, config_dict=None, cmd_args=()):
    """A :class:`Config` for a plugin or RecBole model, with the precedence in the module docstring."""
    return Config(model, dataset, config_file_list, config_dict, cmd_args)


def fve_requested(config):
    """The one decision "FVE loop or single run" for a built config.

    A ``*_REVEAL`` model runs the FVE loop when ``fve: True`` (which needs ``vlm_path``) or when ``fve``
    is unset (``~``) and ``vlm_path`` is given; ``fve: False`` never. ``fve`` and ``avl`` are the two
    ablation switches of a ``*_REVEAL`` model. Another model never runs the loop: ``fve: True`` is an
    error, a ``vlm_path`` (e.g. from a config file shared by a table's rows) is logged and ignored.
    """
    fve, vlm_path = config["fve"], config["vlm_path"]
    if not is_reveal_model(get_model(config["model"])):
        if fve:
            raise ConfigError(f"fve=True: {config['model']} is not a REVEAL model; FVE runs for "
                              f"{config['model']}_REVEAL-style models (<Backbone>_REVEAL), or unset fve")
        if vlm_path:
            getLogger(__name__).info("%s is not a REVEAL model: vlm_path is not used (a single run on the "
                                     "static visual features)", config["model"])
        return False
    # fve=True without vlm_path: the FVE loop refuses it before any stage, with the download hint
    return bool(vlm_path) if fve is None else bool(fve)
