"""Name resolvers that look in this plugin first and fall back to RecBole's (as RecBole-GNN does)."""

import hashlib
import importlib
import os
import pkgutil
import re
import sys

from recbole_reveal.adaptation import compat

compat.apply()

from recbole.data.utils import create_dataset as recbole_create_dataset  # noqa: E402
from recbole.model.abstract_recommender import AbstractRecommender  # noqa: E402
from recbole.utils import ModelType  # noqa: E402
from recbole.utils import get_trainer as recbole_get_trainer  # noqa: E402

from recbole_reveal.data.atomic import load_errors_explained  # noqa: E402
from recbole_reveal.data.dataset import MultimodalDataset, MultimodalSequentialDataset  # noqa: E402
from recbole_reveal.infra.errors import UnknownModelError  # noqa: E402
from recbole_reveal.model import general_recommender, sequential_recommender  # noqa: E402
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender  # noqa: E402

# The plugin's model packages, searched in this order (one module per model, RecBole's convention).
PLUGIN_MODEL_PACKAGES = (sequential_recommender, general_recommender)


def plugin_model_names():
    """Names of the models this plugin adds."""
    names = []
    for package in PLUGIN_MODEL_PACKAGES:
        for module in pkgutil.iter_modules(package.__path__):
            mod = importlib.import_module(f"{package.__name__}.{module.name}")
            names += [n for n in dir(mod) if n.lower() == module.name]
    return sorted(names)


def _plugin_model(model_name):
    for package in PLUGIN_MODEL_PACKAGES:
        module_path = f"{package.__name__}.{model_name.lower()}"
        if importlib.util.find_spec(module_path) is not None:
            module = importlib.import_module(module_path)
            if hasattr(module, model_name):
                return getattr(module, model_name)
    return None


def get_model(model):
    """Model class for ``model``, which is one of

    - a name: a plugin model, else a model given earlier in this process as a class or path, else
      one of RecBole's;
    - your own model: ``"<file.py>:<Class>"`` or ``"<module>:<Class>"``, or the class itself. It is
      registered under its class name, which is what RecBole's config and checkpoints record.
    """
    if isinstance(model, type):
        return register_model(model)
    if ":" in model:
        return register_model(_import_model(model))
    model_class = _plugin_model(model) or _EXTERNAL_MODELS.get(model) or _recbole_model(model)
    if model_class is None:
        raise UnknownModelError(
            f"unknown model '{model}'. Plugin models: {', '.join(plugin_model_names())}; "
            "any RecBole 1.2.1 model name (e.g. SASRec, BERT4Rec, LightGCN) also works; "
            "your own model: '<file.py>:<Class>' or '<module>:<Class>'."
        )
    return model_class


# Models from outside this package and RecBole, by class name (see get_model).
_EXTERNAL_MODELS = {}


def register_model(model_class):
    """Make ``model_class`` (your own RecBole model) resolvable by its class name in this process."""
    if not (isinstance(model_class, type) and issubclass(model_class, AbstractRecommender)):
        raise UnknownModelError(f"{model_class!r} is not a RecBole model class (a subclass of "
                                "recbole.model.abstract_recommender.AbstractRecommender)")
    name = model_class.__name__
    taken = _plugin_model(name) or _EXTERNAL_MODELS.get(name) or _recbole_model(name)
    if taken is not None and taken is not model_class:
        raise UnknownModelError(
            f"model class {model_class.__module__}.{name}: the name '{name}' is already "
            f"{taken.__module__}.{name}; RecBole's config and checkpoints know a model by its class "
            "name only, so rename your class"
        )
    _EXTERNAL_MODELS[name] = model_class
    return model_class


def _import_model(spec):
    """The class named by ``"<file.py>:<Class>"`` or ``"<module>:<Class>"``."""
    source, _, class_name = spec.rpartition(":")
    if source.endswith(".py"):
        module = _import_file(source, spec)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as err:
            raise UnknownModelError(f"model '{spec}': cannot import module '{source}' ({err}); give the "
                                    "module's file instead ('<path>/<file>.py:<Class>') or add its folder "
                                    "to PYTHONPATH") from err
    model_class = getattr(module, class_name, None)
    if model_class is None:
        raise UnknownModelError(f"model '{spec}': {source} defines no '{class_name}'")
    return model_class


def _import_file(path, spec):
    """Import a model file once per process, under a module name fixed by its absolute path (pickled
    RecBole checkpoints refer to the class by module name, so a re-run must find the same one)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise UnknownModelError(f"model '{spec}': no file {path}")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"_recbole_reveal_user_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    folder = os.path.dirname(path)
    if folder not in sys.path:      # so that it can import the modules beside it, as `python file.py` can
        sys.path.append(folder)
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def _recbole_model(model_name):
    """RecBole's own lookup, except that a package whose optional dependency is missing (the
    exlib models need lightgbm/xgboost) is skipped instead of failing every unknown name."""
    for package in _RECBOLE_MODEL_PACKAGES:
        module_path = f"recbole.model.{package}.{model_name.lower()}"
        try:
            if importlib.util.find_spec(module_path) is None:
                continue
            module = importlib.import_module(module_path)
        except ModuleNotFoundError:
            continue
        if hasattr(module, model_name):
            return getattr(module, model_name)
    return None


def is_plugin_model(model_class):
    """Whether ``model_class`` is not one of RecBole's own: a model of this plugin or your own."""
    return not model_class.__module__.startswith("recbole.")


def get_trainer(model_type, model_name):
    """Trainer class: ``AVLTrainer`` for REVEAL variants, ``PluginTrainer`` (RecBole's ``Trainer`` plus
    the per-epoch model callback) for other plugin models, else RecBole's choice for the model."""
    model_class = get_model(model_name)
    if getattr(model_class, "reveal", False):
        from recbole_reveal.trainer import AVLTrainer

        return AVLTrainer
    if is_plugin_model(model_class):
        from recbole_reveal.adaptation.trainer import PluginTrainer

        return PluginTrainer
    return recbole_get_trainer(model_type, model_name)


def get_dataset_class(model_class):
    """The plugin's dataset hook for a model that reads item features, else ``None`` (RecBole's own).

    A model reads item features if it is a ``MultimodalSequentialRecommender`` or declares the class
    attribute ``uses_item_features = True`` (general models such as VBPR); sequential models get
    :class:`MultimodalSequentialDataset`, the others :class:`MultimodalDataset`.
    """
    if not (issubclass(model_class, MultimodalSequentialRecommender)
            or getattr(model_class, "uses_item_features", False)):
        return None
    if model_class.type == ModelType.SEQUENTIAL:
        return MultimodalSequentialDataset
    return MultimodalDataset


def create_dataset(config):
    """Dataset for ``config``: a multimodal hook for models that read item features, else RecBole's.

    The multimodal dataset is always built from the files (RecBole's ``save_dataset`` cache is not
    used for it): its feature matrices must follow the current feature files and config.
    """
    dataset_class = get_dataset_class(get_model(config["model"]))
    with load_errors_explained(config):      # an unreadable atomic file: its name and line, not a traceback
        if dataset_class is None:
            return recbole_create_dataset(config)
        return dataset_class(config)
