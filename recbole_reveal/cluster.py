"""Sweeps on a Ray cluster (docs/distributed.md): ``run_hyper.py --tool Ray`` (RecBole's Ray Tune path)
and ``run_experiments.py ... --ray ADDRESS|auto`` (one Ray task per run).

Both write exactly what the local paths write: every trial or run is
:func:`recbole_reveal.experiments.runs.execute` on the same run-record store, so the same record file
appears under the same name, a run whose record exists is loaded instead of trained (a killed or
repeated sweep resumes), and ``run_experiments.py plot`` / the tables read Ray's results like local ones.
Paths are made absolute before they travel: Ray workers may run elsewhere. On a cluster of several
machines the store and the data must be on a filesystem every machine sees (the driver also writes
each record it receives, so the records always end up on the driver's machine).

Ray 2.6.3 (RecBole's dependency) imports numpy 1 names in Ray Tune's workers: :func:`connect` starts or
joins Ray with a worker setup hook that restores them (:func:`worker_runtime_env`).
"""

import ast
import math
import os

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.infra.files import atomic_open


def worker_runtime_env():
    """The runtime environment Ray workers need for recbole-reveal: numpy 1 aliases restored before
    Ray Tune is imported there. Pass it to ``ray.init(runtime_env=...)`` if you start Ray yourself."""
    return {"worker_process_setup_hook": _prepare_worker}


def _prepare_worker():
    from recbole_reveal.adaptation.compat import restore_numpy_aliases

    restore_numpy_aliases()


def connect(address=None, num_cpus=None):
    """Join the Ray cluster at ``address`` (``auto``: the one ``ray start`` runs on this machine;
    ``host:port`` or ``ray://host:port``), or start a local one (``None``); a Ray already started in
    this process is used as it is."""
    import ray

    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address or None, num_cpus=None if address else num_cpus, include_dashboard=False,
                 runtime_env=worker_runtime_env(), log_to_driver=True)
    except ConnectionError as e:
        raise ConfigError(f"no Ray cluster at --ray={address} ({e}); start one with `ray start --head` "
                          "(then --ray=auto on that machine) or give its address") from None
    return ray


def _check_workers_import_tune(ray):
    """Ray Tune's workers import ``np.bool8``: fail with the fix, not with an actor error per trial."""
    @ray.remote(num_cpus=0)
    def has_aliases():
        import numpy as np

        return hasattr(np, "bool8")

    if not ray.get(has_aliases.remote()):
        raise ConfigError("Ray was started without recbole-reveal's worker setup, so Ray Tune's workers cannot "
                          "import on numpy 2: start it with ray.init(..., runtime_env="
                          "recbole_reveal.cluster.worker_runtime_env()), or let run_hyper.py start or join it "
                          "(--ray_address)")


def _absolute(paths):
    return [os.path.abspath(p) for p in paths or ()]


# -- run_experiments.py --ray -------------------------------------------------------------------------
def _execute_task(model, overrides, seed, dataset, store_root, config_files):
    from recbole_reveal.experiments.runs import ResultStore, RunSpec, execute

    record, _ = execute(RunSpec(model, overrides), seed, dataset, ResultStore(store_root), config_files)
    return record


def execute_on_ray(todo, dataset, store, config_files=(), address=None, cpus=1, gpus=0, log=print):
    """Run each pending ``(spec, seed)`` of ``todo`` as a Ray task (``cpus`` / ``gpus`` each); save each
    record as it arrives and print the local path's progress lines. When every task has ended, the
    first failure is raised (the records of the others are saved)."""
    from recbole_reveal.experiments.runs import ResultStore

    ray = connect(address)
    store = ResultStore(os.path.abspath(store.root))
    remote = ray.remote(_execute_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    files = _absolute(config_files)
    pending = {}
    for n, (spec, seed) in enumerate(todo, 1):
        log(f"[{n}/{len(todo)}] {spec.label}, seed {seed} -> Ray task", flush=True)
        pending[remote.remote(spec.model, spec.overrides, seed, dataset, store.root, files)] = (n, spec, seed)
    failures, records = [], []
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        n, spec, seed = pending.pop(ref)
        try:
            record = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            failures.append(e.cause if isinstance(getattr(e, "cause", None), BaseException) else e)
            log(f"[{n}/{len(todo)}] failed: {spec.label}, seed {seed}: {failures[-1]}", flush=True)
            continue
        store.save(record)
        records.append(record)
        r20 = record["test_result"].get("recall@20")
        log(f"[{n}/{len(todo)}] done in {record['seconds']:.0f} s"
            + ("" if r20 is None else f", test recall@20 {r20:.4f}") + f" -> {store.path(spec, seed)}", flush=True)
    if failures:
        raise failures[0]
    return records


# -- run_hyper.py --tool Ray ----------------------------------------------------------------------------
def _literal(name, text, path):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"{path}: the values of '{name}' ({text}) are not a Python literal") from None


def ray_search_space(searched, algo, path):
    """RecBole's params-file space (``{name: (type, text)}``) as Ray Tune's: ``choice`` a grid for the
    exhaustive search, else sampled like hyperopt samples it (``loguniform low,high`` is
    ``exp(uniform(low, high))`` in RecBole's files)."""
    from ray import tune

    space = {}
    for name, (kind, text) in searched.items():
        if kind == "choice":
            values = _literal(name, text, path)
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{path}: 'choice' of '{name}' needs a non-empty list, got {text}")
            space[name] = tune.grid_search(list(values)) if algo == "exhaustive" else tune.choice(list(values))
            continue
        if algo == "exhaustive":
            raise ConfigError(f"{path}: the exhaustive search needs 'choice' parameters; '{name}' is {kind} "
                              "(use --algo=random or bayes)")
        numbers = [float(v) for v in text.split(",")]
        if kind == "uniform":
            space[name] = tune.uniform(*numbers[:2])
        elif kind == "quniform":
            space[name] = tune.quniform(*numbers[:3])
        else:
            space[name] = tune.loguniform(math.exp(numbers[0]), math.exp(numbers[1]))
    return space


def _tune_trial(params, model, dataset, results_dir, seed, fixed, config_files):
    from ray.air import session

    from recbole_reveal.experiments.hyper import make_objective

    result = make_objective(model, dataset, results_dir, seed, fixed)(dict(params), config_files)
    session.report({"best_valid_score": float(result["best_valid_score"]), "record": result["record"]})


class SweepResult:
    """What RecBole's ``HyperTuning`` offers after a search: ``best_params``, ``params2result`` (RecBole's
    trial dicts by parameter string), ``params2str`` and ``export_result`` (RecBole's file format)."""

    def __init__(self, trials):
        from recbole.trainer import HyperTuning

        self.params2str = HyperTuning.params2str
        self.params2result, self.best_params, best = {}, None, None
        for params, result in trials:
            self.params2result[self.params2str(params)] = result
            score, bigger = result["best_valid_score"], result["valid_score_bigger"]
            if best is None or (score > best if bigger else score < best):
                best, self.best_params = score, params

    def export_result(self, output_file):
        from recbole.utils import dict2str

        with atomic_open(output_file, "w") as fp:
            for params, result in self.params2result.items():
                fp.write(params + "\n")
                fp.write("Valid result:\n" + dict2str(result["best_valid_result"]) + "\n")
                fp.write("Test result:\n" + dict2str(result["test_result"]) + "\n\n")


def tune_on_ray(model, dataset, params_file, results_dir, config_files=(), overrides=None, algo="exhaustive",
                max_evals=100, hyper_seed=2020, output_file=None, address=None, cpus=1, gpus=0, log=print):
    """RecBole's Ray Tune path over plugin models: each trial is a run record under ``results_dir`` (as
    :func:`recbole_reveal.experiments.hyper.tune` writes it), ``cpus`` / ``gpus`` per trial; returns a
    :class:`SweepResult`."""
    from recbole_reveal.experiments.hyper import check_search
    from recbole_reveal.experiments.runs import read_record

    searched, seed, fixed = check_search(model, dataset, params_file, config_files, overrides)
    ray = connect(address)
    _check_workers_import_tune(ray)
    from ray import air, tune
    from ray.tune.search import BasicVariantGenerator

    results_dir = os.path.abspath(results_dir)
    if algo == "bayes":
        from ray.tune.search.hyperopt import HyperOptSearch

        search = HyperOptSearch(metric="best_valid_score", mode=_mode(model, dataset, config_files, fixed),
                                random_state_seed=hyper_seed)
    else:
        search = BasicVariantGenerator(random_state=hyper_seed)
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trial, model=model, dataset=dataset, results_dir=results_dir, seed=seed,
                             fixed=fixed, config_files=_absolute(config_files)),
        {"cpu": cpus, "gpu": gpus})
    tuner = tune.Tuner(
        trainable, param_space=ray_search_space(searched, algo, params_file),
        tune_config=tune.TuneConfig(num_samples=1 if algo == "exhaustive" else max_evals, search_alg=search,
                                    chdir_to_trial_dir=False),
        run_config=air.RunConfig(storage_path=os.path.join(results_dir, "ray_tune"), name="search", verbose=1))
    grid = tuner.fit()
    trials, errors = [], []
    for result in grid:
        if result.error is not None:
            errors.append(result.error)
            continue
        record = read_record(result.metrics["record"])
        params = {name: result.config[name] for name in searched}
        trials.append((params, {"model": model, "best_valid_score": record["best_valid_score"],
                                "valid_score_bigger": record["valid_score_bigger"],
                                "best_valid_result": record["best_valid_result"],
                                "test_result": record["test_result"], "record": result.metrics["record"]}))
        log(f"trial {params}: {result.metrics['record']}")
    if errors:
        error = errors[0]
        raise getattr(error, "cause", None) or error
    sweep = SweepResult(sorted(trials, key=lambda t: [str(t[0][k]) for k in searched]))
    if output_file:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        sweep.export_result(output_file)
    return sweep


def _mode(model, dataset, config_files, fixed):
    from recbole_reveal.config import build_config

    return "max" if build_config(model, dataset, list(config_files), fixed)["valid_metric_bigger"] else "min"
