"""The train-and-evaluate entry point ``run_recbole_reveal`` (``run_with_config`` for a config already
built) and RecBole's HyperTuning objective. The configuration is :mod:`recbole_reveal.config`, a run's
steps :mod:`recbole_reveal.training`."""

from logging import getLogger

from recbole.utils import set_color

from recbole_reveal.adaptation.launch import plan_from_config
from recbole_reveal.infra.collectives import is_main_process
from recbole_reveal.config import build_config
from recbole_reveal.infra.cost import CostMeter, cost_path, format_cost, write_cost
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.robustness import robustness_results
from recbole_reveal.training import close_run_logs, fit_and_test, prepare_run


def run_recbole_reveal(model, dataset, config_file_list=None, config_dict=None, saved=True, cmd_args=()):
    """Train ``model`` on ``dataset`` and evaluate it; returns a dict with ``best_valid_score``,
    ``valid_score_bigger``, ``best_valid_result``, ``test_result``, ``masked_test_results``
    (test results with each modality in ``eval_zeroed_modalities`` zeroed at inference),
    ``cost`` (seconds per stage and peak memory, see :mod:`recbole_reveal.infra.cost`), ``cost_file`` (that
    report as JSON beside the checkpoint), ``avl_epochs`` (AVL's per-epoch diagnostics of a ``*_REVEAL``
    model, :mod:`recbole_reveal.trainer.avl_diagnostics`; empty otherwise) and ``config``. This is also the objective RecBole's
    HyperTuning calls (see ``objective_function``).
    """
    return run_with_config(build_config(model, dataset, config_file_list, config_dict, cmd_args), saved=saved)


def run_with_config(config, saved=True):
    """:func:`run_recbole_reveal` of a config built once by the caller (``build_config``)."""
    launch = plan_from_config(config)
    if launch is not None:      # nproc / world_size / torchrun: each rank builds its config from the same inputs
        model, dataset, config_file_list, config_dict, cmd_args = config.inputs
        return launch.run(run_recbole_reveal, model, dataset, config_file_list, config_dict=config_dict,
                          saved=saved, cmd_args=cmd_args)
    meter = CostMeter()
    meter.start_memory()
    with meter.stage("setup"):
        config, (train_data, valid_data, test_data), model_obj, trainer = prepare_run(config)
    logger = getLogger()
    if getattr(model_obj, "reveal", False) and not config["fve"]:
        logger.info(
            set_color("REVEAL without FVE", "yellow") + f": {config['model']} trains on the static visual "
            f"features '{config['vision_feature']}' (AVL {'on' if config['avl'] else 'off'}); set vlm_path "
            "(run_recbole_reveal.py runs the FVE loop then) for feedback-guided visual extraction"
        )
    try:
        zeroed = config["eval_zeroed_modalities"] or []
        if zeroed and not hasattr(model_obj, "zeroed_modalities"):
            raise ConfigError(f"eval_zeroed_modalities={zeroed}: {config['model']} has no modalities to zero")
        best_valid_score, best_valid_result, test_result = fit_and_test(
            trainer, (train_data, valid_data, test_data), meter, saved=saved, show_progress=config["show_progress"])
        masked_test_results = {}
        for modality in zeroed:
            with model_obj.zeroed_modalities(modality), meter.stage(f"test_inference_{modality}_zeroed"):
                masked_test_results[modality] = trainer.evaluate(
                    test_data, load_best_model=False, show_progress=config["show_progress"]
                )
        if config["eval_missing_rates"] or config["eval_by_popularity"]:     # robustness.py
            with meter.stage("test_robustness"):
                masked_test_results.update(robustness_results(config, model_obj, trainer, train_data, test_data))
        cost = meter.report(device=config["device"], model=config["model"], dataset=config["dataset"],
                            seed=config["seed"], test_users=_n_users(test_data))
        cost_file = (write_cost(cost_path(trainer.saved_model_file), cost)
                     if is_main_process(config) else None)

        logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
        logger.info(set_color("test result", "yellow") + f": {test_result}")
        for modality, result in masked_test_results.items():
            logger.info(set_color(f"test result, {modality} zeroed", "yellow") + f": {result}")
        logger.info(format_cost(cost, title=set_color("run cost", "yellow") + f" (also in {cost_file})"))
    finally:
        close_run_logs()
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "masked_test_results": masked_test_results,
        "cost": cost,
        "cost_file": cost_file,
        "avl_epochs": list(getattr(trainer, "avl_history", [])),
        "config": config,
    }


def _n_users(eval_data):
    """Users an evaluation loader ranks: one row per user for sequential models, ``uid_list`` else."""
    uids = getattr(eval_data, "uid_list", None)
    return int(len(uids)) if uids is not None else int(len(eval_data._dataset))


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole HyperTuning objective: ``model`` and ``dataset`` come from the config dict or files."""
    config_dict = dict(config_dict or {})
    model, dataset = config_dict.pop("model", None), config_dict.pop("dataset", None)
    result = run_recbole_reveal(model, dataset, config_file_list, config_dict, saved=saved)
    config = result.pop("config")
    result["model"] = config["model"]   # HyperTuning.trial reads it to name the trial
    return result
