"""RecBole's ``HyperTuning`` over plugin models (``run_hyper.py``).

RecBole's ``HyperTuning.trial`` calls ``objective(params, fixed_config_file_list)`` and reads
``model``, ``best_valid_score`` and ``valid_score_bigger`` from the answer. :func:`make_objective`
builds that objective for a fixed model and dataset: each trial is an experiment run
(:func:`recbole_reveal.experiments.runs.execute`), saved as a run record under ``results_dir`` as it
finishes (``plot`` reads them; a re-run of the search loads finished trials instead of training).
"""

import ast
import math
import os

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.experiments.runs import ResultStore, RunSpec, execute

# RecBole's params-file types; "choice" values are Python literals (RecBole eval()s them)
PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")


def read_params_file(path, lines=None):
    """``{name: (type, value text)}`` of a RecBole params file, checked line by line; ``lines`` (a dict),
    when given, gets ``{name: line number}``."""
    if not os.path.isfile(path):
        raise ConfigError(f"params file not found: {path}")
    params = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(" ")
            if len(parts) < 3 or parts[1] not in PARAM_TYPES:
                raise ConfigError(f"{path}:{n}: expected 'name {'|'.join(PARAM_TYPES)} values' "
                                  f"(RecBole's params-file format), got {text!r}")
            params[parts[0]] = (parts[1], "".join(parts[2:]))
            if lines is not None:
                lines[parts[0]] = n
    if not params:
        raise ConfigError(f"{path} defines no parameter")
    return params


def param_values(path, line, kind, text):
    """The values a params-file line can give a trial, for checking before any trial runs: every
    ``choice``, the bounds of the ``uniform`` / ``quniform`` ranges (``loguniform``: ``exp`` of them, as
    hyperopt draws ``exp(uniform(low, high))``)."""
    where = f"{path}:{line}"
    try:
        if kind == "choice":
            values = ast.literal_eval(text)
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError("choice takes a non-empty list, e.g. [0.01,0.1]")
            return list(values)
        bounds = [float(v) for v in text.split(",")]
        if len(bounds) != (3 if kind == "quniform" else 2) or not bounds[0] <= bounds[1]:
            raise ValueError(f"{kind} takes low,high{',q' if kind == 'quniform' else ''} with low <= high")
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"{where}: cannot read {kind} values {text!r}: {e}") from e
    if kind == "loguniform":
        return [math.exp(b) for b in bounds]
    if kind == "quniform":
        low, high, q = bounds
        return [round(low / q) * q, round(high / q) * q]
    return bounds


def make_objective(model, dataset, results_dir, seed, fixed_overrides=None, log=print):
    """HyperTuning objective training ``model`` on ``dataset`` with ``seed`` and the trial's params
    over ``fixed_overrides`` (a trial's params take precedence: they are what is searched)."""
    store = ResultStore(results_dir)
    fixed = dict(fixed_overrides or {})

    def objective(config_dict=None, config_file_list=None, saved=True):
        params = dict(config_dict or {})
        trial_seed = params.pop("seed", seed)
        spec = RunSpec(model, dict(fixed, **params))
        record, ran = execute(spec, trial_seed, dataset, store, config_file_list or ())
        if not ran:
            log(f"trial {params}: loaded from {store.path(spec, trial_seed)}")
        bigger = record.get("valid_score_bigger")
        if bigger is None:
            raise ConfigError(f"{store.path(spec, trial_seed)} has no valid_score_bigger")
        return {
            "model": model,
            "best_valid_score": record["best_valid_score"],
            "valid_score_bigger": bigger,
            "best_valid_result": record["best_valid_result"],
            "test_result": record["test_result"],
            "record": store.path(spec, trial_seed),
        }

    return objective


def check_search(model, dataset, params_file, config_files=(), overrides=None):
    """``(searched params, seed, fixed overrides)`` of a search, checked before any trial runs."""
    from recbole_reveal.config import build_config

    overrides = dict(overrides or {})
    lines = {}
    searched = read_params_file(params_file, lines)
    clash = sorted(set(searched) & set(overrides))
    if clash:
        raise ConfigError(f"{clash} are searched by {params_file}; do not also set them on the command line")
    config = build_config(model, dataset, list(config_files), overrides)   # fails early on bad input
    # the searched keys and every value a trial can get, checked before the first trial
    config.check_values({k: param_values(params_file, lines[k], kind, text) for k, (kind, text) in searched.items()},
                        {k: f"{params_file}:{lines[k]}" for k in searched})
    if "fve_cycles" in searched and not config["vlm_path"]:
        raise ConfigError(f"{params_file} searches fve_cycles (X_max), which only the FVE loop reads: "
                          "pass --vlm_path=<local Qwen2.5-VL / Qwen3-VL folder>")
    seed = overrides.pop("seed", config["seed"])
    return searched, seed, overrides


def tune(model, dataset, params_file, results_dir, config_files=(), overrides=None, algo="exhaustive",
         max_evals=100, early_stop=None, hyper_seed=2020, output_file=None, log=print):
    """Run RecBole's ``HyperTuning`` (hyperopt) and return it (``best_params``, ``params2result``).

    ``hyper_seed`` seeds hyperopt's sampler (``bayes`` / ``random``; also the order of ``exhaustive``).
    ``early_stop``: trials without progress before stopping; None = never for ``exhaustive`` (every grid
    point runs), RecBole's 10 otherwise.
    """
    from recbole.trainer import HyperTuning

    _, seed, overrides = check_search(model, dataset, params_file, config_files, overrides)
    objective = make_objective(model, dataset, results_dir, seed, overrides, log)
    # hyperopt draws from its own generator, seeded from this variable when fmin gets no rstate
    previous = os.environ.get("HYPEROPT_FMIN_SEED")
    os.environ["HYPEROPT_FMIN_SEED"] = str(hyper_seed)
    try:
        if early_stop is None:
            early_stop = 10 ** 9 if algo == "exhaustive" else 10
        hp = HyperTuning(objective, params_file=params_file, fixed_config_file_list=list(config_files) or None,
                         algo=algo, max_evals=max_evals, early_stop=early_stop)
        hp.run()
    finally:
        if previous is None:
            os.environ.pop("HYPEROPT_FMIN_SEED", None)
        else:
            os.environ["HYPEROPT_FMIN_SEED"] = previous
    if output_file:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        hp.export_result(output_file=output_file)
    return hp
