"""Configuration and the train-and-evaluate entry point (``run_recbole_reveal``).

Configuration precedence, lowest first (RecBole's own order, with the plugin's files in it):
RecBole's defaults < ``properties/overall.yaml`` < ``properties/model/<Class>.yaml`` for every class
in the model's hierarchy (backbone first, e.g. M3SRec.yaml < REVEAL.yaml < M3SRec_REVEAL.yaml; for
your own model classes, ``<Class>.yaml`` beside their file) <
``properties/dataset/<dataset>.yaml`` < ``config_file_list`` (in order) < ``config_dict`` < command line.
"""

import logging
import os
import sys
from contextlib import contextmanager
from logging import getLogger

from recbole.config import Config
from recbole.data import data_preparation
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import init_logger, init_seed, set_color

from recbole_reveal.cost import CostMeter, cost_path, format_cost, write_cost
from recbole_reveal.errors import ConfigError, DatasetNotFoundError
from recbole_reveal.utils import create_dataset, get_model, get_trainer, is_plugin_model

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROPERTIES_DIR = os.path.join(PROJECT_ROOT, "properties")


def property_files(model_class, dataset):
    """The plugin's YAML files that apply to ``model_class`` on ``dataset``, lowest precedence first."""
    files = [os.path.join(PROPERTIES_DIR, "overall.yaml")]
    for cls in reversed(model_class.__mro__):
        path = os.path.join(_model_yaml_dir(cls), f"{cls.__name__}.yaml")
        if os.path.isfile(path):
            files.append(path)
    dataset_file = os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")
    if os.path.isfile(dataset_file):
        files.append(dataset_file)
    return files


def _model_yaml_dir(model_class):
    """Where ``<Class>.yaml`` lives: ``properties/model/`` for this plugin's models (and RecBole's, which
    have none there), the folder of the model's own file for your own models."""
    module_file = getattr(sys.modules.get(model_class.__module__), "__file__", None)
    own = not model_class.__module__.startswith(("recbole.", "recbole_reveal."))
    if own and issubclass(model_class, AbstractRecommender) and module_file:
        return os.path.dirname(os.path.abspath(module_file))
    return os.path.join(PROPERTIES_DIR, "model")


@contextmanager
def _command_line(args):
    """RecBole's Config always parses ``sys.argv``; show it exactly ``args`` (``--key=value`` items)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_reveal"] + list(args)
    try:
        yield
    finally:
        sys.argv = saved


def build_config(model, dataset, config_file_list=None, config_dict=None, cmd_args=()):
    """A RecBole ``Config`` for a plugin or RecBole model, with the precedence in the module docstring.

    ``cmd_args`` are ``--key=value`` strings; the real ``sys.argv`` is never read here.
    """
    model_class = get_model(model)
    for path in config_file_list or []:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
    files = property_files(model_class, dataset) + list(config_file_list or [])
    # RecBole resolves its own models by name (and then also reads its own model YAML); plugin
    # models must be passed as classes.
    model_arg = model_class if is_plugin_model(model_class) else model_class.__name__
    with _command_line(cmd_args):
        config = Config(model=model_arg, dataset=dataset, config_file_list=files, config_dict=config_dict)
    _resolve_data_path(config)
    return config


def _resolve_data_path(config):
    """A relative ``data_path`` is taken from the working directory; if the dataset is not there, from
    the project root (so the default ``dataset_atomic/`` works from any directory)."""
    path = config["data_path"]
    if not os.path.isabs(path) and not os.path.isdir(path):
        candidate = os.path.join(PROJECT_ROOT, path)
        if os.path.isdir(candidate):
            config["data_path"] = candidate
    inter_file = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    if not os.path.isfile(inter_file):
        root = os.path.dirname(os.path.normpath(config["data_path"]))
        available = sorted(
            d for d in (os.listdir(root) if os.path.isdir(root) else [])
            if os.path.isfile(os.path.join(root, d, f"{d}.inter"))
        )
        raise DatasetNotFoundError(
            f"dataset '{config['dataset']}' not found: no {inter_file}. "
            f"Datasets under {root}: {', '.join(available) or 'none'}. "
            "Generate the demo with `python -m recbole_reveal.data.synthetic`, or put RecBole atomic "
            "files at <data_path>/<dataset>/<dataset>.inter (see docs/data-format.md)."
        )


def _check_topk(config, data):
    """RecBole's full ranking fails deep inside torch.topk when a cut-off exceeds the item count."""
    n_items = data.item_num - 1          # id 0 is padding
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if max(topk) > n_items:
        raise ConfigError(f"topk {topk}: dataset '{config['dataset']}' has only {n_items} items, so no "
                          f"cut-off can exceed {n_items} (e.g. --topk=\"[5,{min(10, n_items)}]\" with a "
                          "matching valid_metric)")


def prepare_run(model, dataset, config_file_list=None, config_dict=None, cmd_args=()):
    """Config, data loaders, model and trainer, seeded exactly as a run builds them; returns
    ``(config, (train_data, valid_data, test_data), model, trainer)``."""
    config = build_config(model, dataset, config_file_list, config_dict, cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    data = create_dataset(config)
    logger.info(data)
    _check_topk(config, data)
    loaders = data_preparation(config, data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_obj = get_model(config["model"])(config, loaders[0]._dataset).to(config["device"])
    logger.info(model_obj)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_obj)
    trainer.saved_model_file = unique_checkpoint_file(trainer.saved_model_file)
    return config, loaders, model_obj, trainer


def unique_checkpoint_file(path):
    """RecBole names a checkpoint ``<model>-<local time to the second>.pth``: two runs of one model that
    start in the same second in one ``checkpoint_dir`` (seeds run in parallel) would write and then
    evaluate each other's file. A random suffix (``os.urandom``: the seeded generators stay untouched)
    makes the name unique."""
    root, ext = os.path.splitext(path)
    return f"{root}-{os.urandom(3).hex()}{ext}"


def fve_requested(config):
    """Whether a run is the FVE loop: ``fve: True`` (needs ``vlm_path``), ``fve: False`` (never), or
    unset (``~``: on exactly when ``vlm_path`` is given). ``fve`` and ``avl`` are the two ablation
    switches of a ``*_REVEAL`` model."""
    fve, vlm_path = config["fve"], config["vlm_path"]
    if fve and not vlm_path:
        raise ConfigError(
            "fve=True needs vlm_path, a local Qwen2.5-VL / Qwen3-VL folder: download one with "
            "`hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir /models/Qwen2.5-VL-7B-Instruct` "
            "and pass --vlm_path=/models/Qwen2.5-VL-7B-Instruct (or set fve=False for AVL only)"
        )
    return bool(vlm_path) if fve is None else bool(fve)


def run_recbole_reveal(model, dataset, config_file_list=None, config_dict=None, saved=True, cmd_args=()):
    """Train ``model`` on ``dataset`` and evaluate it; returns a dict with ``best_valid_score``,
    ``valid_score_bigger``, ``best_valid_result``, ``test_result``, ``masked_test_results``
    (test results with each modality in ``eval_zeroed_modalities`` zeroed at inference),
    ``cost`` (seconds per stage and peak memory, see :mod:`recbole_reveal.cost`), ``cost_file`` (that
    report as JSON beside the checkpoint) and ``config``. This is also the objective RecBole's
    HyperTuning calls (see ``objective_function``).
    """
    meter = CostMeter()
    meter.start_memory()
    with meter.stage("setup"):
        config, (train_data, valid_data, test_data), model_obj, trainer = prepare_run(
            model, dataset, config_file_list, config_dict, cmd_args
        )
    logger = getLogger()
    if getattr(model_obj, "reveal", False) and not config["fve"]:
        logger.info(
            set_color("REVEAL without FVE", "yellow") + f": {config['model']} trains on the static visual "
            f"features '{config['vision_feature']}' (AVL {'on' if config['avl'] else 'off'}); set vlm_path "
            "(run_recbole_reveal.py runs the FVE loop then) for feedback-guided visual extraction"
        )
    zeroed = config["eval_zeroed_modalities"] or []
    if zeroed and not hasattr(model_obj, "zeroed_modalities"):
        raise ConfigError(f"eval_zeroed_modalities={zeroed}: {config['model']} has no modalities to zero")
    # fit = the training run (Table 7's training time w/o FVE); train / valid = its epochs' parts
    with meter.stage("fit"), meter.timing(trainer, "_train_epoch", "train"), \
            meter.timing(trainer, "_valid_epoch", "valid"):
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
    with meter.stage("test_inference"):     # includes reading the best checkpoint back
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    masked_test_results = {}
    for modality in zeroed:
        with model_obj.zeroed_modalities(modality), meter.stage(f"test_inference_{modality}_zeroed"):
            masked_test_results[modality] = trainer.evaluate(
                test_data, load_best_model=False, show_progress=config["show_progress"]
            )
    cost = meter.report(device=config["device"], model=config["model"], dataset=config["dataset"],
                        seed=config["seed"], test_users=_n_users(test_data))
    cost_file = write_cost(cost_path(trainer.saved_model_file), cost)

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    for modality, result in masked_test_results.items():
        logger.info(set_color(f"test result, {modality} zeroed", "yellow") + f": {result}")
    logger.info(format_cost(cost, title=set_color("run cost", "yellow") + f" (also in {cost_file})"))
    _close_log_handlers()
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "masked_test_results": masked_test_results,
        "cost": cost,
        "cost_file": cost_file,
        "config": config,
    }


def _n_users(eval_data):
    """Users an evaluation loader ranks: one row per user for sequential models, ``uid_list`` else."""
    uids = getattr(eval_data, "uid_list", None)
    return int(len(uids)) if uids is not None else int(len(eval_data._dataset))


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole HyperTuning objective: ``model`` and ``dataset`` come from the config files or dict."""
    config_dict = dict(config_dict or {})
    model = config_dict.pop("model", None)
    dataset = config_dict.pop("dataset", None)
    if model is None or dataset is None:
        import yaml

        merged = {}
        for path in config_file_list or []:
            with open(path, encoding="utf-8") as f:
                merged.update(yaml.safe_load(f) or {})
        model, dataset = model or merged.get("model"), dataset or merged.get("dataset")
    if model is None or dataset is None:
        raise ValueError("objective_function needs 'model' and 'dataset' in config_dict or a config file")
    result = run_recbole_reveal(model, dataset, config_file_list, config_dict, saved=saved)
    config = result.pop("config")
    result["model"] = config["model"]   # HyperTuning.trial reads it to name the trial
    return result


def _close_log_handlers():
    """Remove the handlers RecBole's init_logger installed: it only configures a root logger that has
    none, so without this a second run in the same process would log to the first run's file."""
    import colorlog

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) or isinstance(
            handler.formatter, colorlog.ColoredFormatter
        ):
            handler.close()
            root.removeHandler(handler)
