"""Name resolvers that look in this plugin first and fall back to RecBole's (as RecBole-GNN does)."""

import importlib
import pkgutil

from recbole.data.utils import create_dataset as recbole_create_dataset
from recbole.utils import ModelType
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_reveal.data.dataset import MultimodalDataset, MultimodalSequentialDataset
from recbole_reveal.errors import UnknownModelError
from recbole_reveal.model import general_recommender, sequential_recommender
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender

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


def get_model(model_name):
    """Model class for ``model_name``: a plugin model, else one of RecBole's."""
    model_class = _plugin_model(model_name) or _recbole_model(model_name)
    if model_class is None:
        raise UnknownModelError(
            f"unknown model '{model_name}'. Plugin models: {', '.join(plugin_model_names())}; "
            "any RecBole 1.2.1 model name (e.g. SASRec, BERT4Rec, LightGCN) also works."
        )
    return model_class


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
    return model_class.__module__.startswith("recbole_reveal.")


def get_trainer(model_type, model_name):
    """Trainer class: ``AVLTrainer`` for REVEAL variants, ``PluginTrainer`` (RecBole's ``Trainer`` plus
    the per-epoch model callback) for other plugin models, else RecBole's choice for the model."""
    model_class = get_model(model_name)
    if getattr(model_class, "reveal", False):
        from recbole_reveal.trainer import AVLTrainer

        return AVLTrainer
    if is_plugin_model(model_class):
        from recbole_reveal.trainer import PluginTrainer

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
    if dataset_class is None:
        return recbole_create_dataset(config)
    return dataset_class(config)
