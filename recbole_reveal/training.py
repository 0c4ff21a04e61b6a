"""One training run's life, shared by ``run_recbole_reveal`` and the FVE loop's train stage:
:func:`prepare_run` (config, seeded data loaders, model, trainer), :func:`fit_and_test` (RecBole's
``fit`` then the test evaluation, timed into a :class:`~recbole_reveal.infra.cost.CostMeter`) and
:func:`close_run_logs` (RecBole's log handlers of the run)."""

import logging
import os
from logging import getLogger
from typing import Any, NamedTuple

from recbole_reveal.adaptation import compat

compat.apply()

from recbole.data import data_preparation  # noqa: E402
from recbole.utils import init_logger, init_seed  # noqa: E402

from recbole_reveal import config_report  # noqa: E402
from recbole_reveal.infra.errors import ConfigError, RevealUserError  # noqa: E402
from recbole_reveal.utils import create_dataset, get_model, get_trainer  # noqa: E402


def prepare_run(config):
    """Data loaders, model and trainer of the built ``config`` (:func:`recbole_reveal.config.build_config`,
    once per run), seeded exactly as a run builds them; returns
    ``(config, (train_data, valid_data, test_data), model, trainer)``. RecBole's logger is set up for
    the run: call :func:`close_run_logs` when the run ends (it is closed here when building fails)."""
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    try:
        plain_console_unless_tty()
        logger = getLogger()
        for level, line in config_report.report(config):
            getattr(logger, level)(line)
        logger.info(config)

        data = create_dataset(config)
        logger.info(data)
        check_topk(config, data)
        loaders = data_preparation(config, data)

        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model_obj = build_model(config, loaders[0]._dataset)
        logger.info(model_obj)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_obj)
        trainer.saved_model_file = unique_checkpoint_file(trainer.saved_model_file)
    except BaseException:
        close_run_logs()        # a later run in this process must not log into this run's file
        raise
    return config, loaders, model_obj, trainer


def build_model(config, dataset):
    """The model of ``config`` on ``dataset``, on its device. A model that fails while building after
    reading config keys that are not set (RecBole gives ``None`` for them: ``nn.Dropout(None)`` fails
    far from the cause) is a :class:`ConfigError` naming the first such key and where to set it."""
    model_class = get_model(config["model"])
    with config.missing_key_reads() as missing:
        try:
            model_obj = model_class(config, dataset)
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            if not missing or isinstance(e, RevealUserError):
                raise
            raise ConfigError(
                f"{model_class.__name__} reads the config key '{missing[0]}', which is not set"
                + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else "")
                + f": set it in {_model_yaml_hint(model_class)} or pass --{missing[0]}=VALUE (building the "
                f"model failed with {type(e).__name__}: {e})") from e
    return model_obj.to(config["device"])


def _model_yaml_hint(model_class):
    """Where a model's keys belong: your own model's ``<Class>.yaml`` (saying when it was not found), else
    the plugin's model YAML or a config file."""
    own = config_report.own_model_yamls(model_class)
    found = [path for _, path, ok in own if ok]
    if found:
        return found[0]
    if own:
        return f"{own[0][1]} (not found: it is read when it lies beside the model's file)"
    return f"properties/model/{model_class.__name__}.yaml or a --config_files YAML"


def plain_console_unless_tty():
    """RecBole colours its console log (colorlog, and ``set_color`` inside messages) whether or not the
    console is a terminal: without a TTY (a redirected log, a pipe), or with ``NO_COLOR`` set, the
    console handler writes plain text, as the log file does."""
    import colorlog
    from recbole.utils.logger import RemoveColorFilter

    for handler in logging.getLogger().handlers:
        # RecBole's console handler only (colorlog): never another library's handler on the root logger
        if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler) or \
                not isinstance(handler.formatter, colorlog.ColoredFormatter):
            continue
        stream = getattr(handler, "stream", None)
        if os.environ.get("NO_COLOR") or not (stream is not None and hasattr(stream, "isatty") and stream.isatty()):
            handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M"))
            handler.addFilter(RemoveColorFilter())
            handler.recbole_run_console = True      # close_run_logs removes it with RecBole's


def check_topk(config, data):
    """RecBole's full ranking fails deep inside torch.topk when a cut-off exceeds the item count."""
    n_items = data.item_num - 1          # id 0 is padding
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if max(topk) > n_items:
        raise ConfigError(f"topk {topk}: dataset '{config['dataset']}' has only {n_items} items, so no "
                          f"cut-off can exceed {n_items} (e.g. --topk=\"[5,{min(10, n_items)}]\" with a "
                          "matching valid_metric)")


def unique_checkpoint_file(path):
    """RecBole names a checkpoint ``<model>-<local time to the second>.pth``: two runs of one model that
    start in the same second in one ``checkpoint_dir`` (seeds run in parallel) would write and then
    evaluate each other's file. A random suffix (``os.urandom``: the seeded generators stay untouched)
    makes the name unique."""
    root, ext = os.path.splitext(path)
    return f"{root}-{os.urandom(3).hex()}{ext}"


class FitResult(NamedTuple):
    best_valid_score: Any
    best_valid_result: Any
    test_result: Any


def fit_and_test(trainer, loaders, meter, saved=True, show_progress=False):
    """Train with RecBole's ``fit`` (early stopping on the validation users), then evaluate on the
    test users (with ``saved``, the best checkpoint is read back first). The meter gets the stages
    ``fit`` (the training run: Table 7's training time w/o FVE) with ``train`` / ``valid`` (its epochs'
    parts) and ``test_inference``."""
    train_data, valid_data, test_data = loaders
    with meter.stage("fit"), meter.timing(trainer, "_train_epoch", "train"), \
            meter.timing(trainer, "_valid_epoch", "valid"):
        best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved,
                                                          show_progress=show_progress)
    with meter.stage("test_inference"):     # includes reading the best checkpoint back
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=show_progress)
    return FitResult(best_valid_score, best_valid_result, test_result)


def close_run_logs():
    """Remove the handlers RecBole's ``init_logger`` installed: it only configures a root logger that
    has none, so without this a second run in the same process would log to the first run's file."""
    import colorlog

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) or isinstance(
            handler.formatter, colorlog.ColoredFormatter
        ) or getattr(handler, "recbole_run_console", False):
            handler.close()
            root.removeHandler(handler)
