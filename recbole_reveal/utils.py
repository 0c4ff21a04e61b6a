"""Name resolvers that look in this plugin first and fall back to RecBole's (as RecBole-GNN does)."""

import importlib
import pkgutil

from recbole.data.utils import create_dataset as recbole_create_dataset
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_reveal.data.dataset import MultimodalSequentialDataset
from recbole_reveal.errors import UnknownModelError
from recbole_reveal.model import sequential_recommender as plugin_models
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender


def plugin_model_names():
    """Names of the models this plugin adds (one module per model, RecBole's convention)."""
    names = []
    for module in pkgutil.iter_modules(plugin_models.__path__):
        mod = importlib.import_module(f"{plugin_models.__name__}.{module.name}")
        names += [n for n in dir(mod) if n.lower() == module.name]
    return sorted(names)


def get_model(model_name):
    """Model class for ``model_name``: a plugin model, else one of RecBole's."""
    module_path = f"{plugin_models.__name__}.{model_name.lower()}"
    if importlib.util.find_spec(module_path) is not None:
        module = importlib.import_module(module_path)
        if hasattr(module, model_name):
            return getattr(module, model_name)
    model_class = _recbole_model(model_name)
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
    if issubclass(model_class, MultimodalSequentialRecommender):
        return MultimodalSequentialDataset
    return None


def create_dataset(config):
    """Dataset for ``config``: the multimodal hook for plugin multimodal models, else RecBole's.

    The multimodal dataset is always built from the files (RecBole's ``save_dataset`` cache is not
    used for it): its feature matrices must follow the current feature files and config.
    """
    dataset_class = get_dataset_class(get_model(config["model"]))
    if dataset_class is None:
        return recbole_create_dataset(config)
    return dataset_class(config)
