r"""Hyper-parameter search with RecBole's ``HyperTuning`` (hyperopt) over plugin and RecBole models,
in the shape of RecBole's ``run_hyper.py``:

    python run_hyper.py --model=M3SRec_REVEAL --dataset=synthetic-demo [--data_path=dataset_atomic] \
        --params_file=properties/hyper/avl_alpha.hyper [--config_files="a.yaml b.yaml"] \
        [--algo=exhaustive|random|bayes] [--max_evals=N] [--output_file=hyper.result] [--key=value ...]
        [--tool=Ray [--ray_address=auto|HOST:PORT] [--cpus_per_trial=1] [--gpus_per_trial=1]]

(installed as a package: ``run_hyper --model=...``; ``--params_file=properties/hyper/<file>`` then
finds the installed copy of the folder when the working directory has none).

``--params_file`` is RecBole's format, one parameter a line: ``name choice [v1,v2]``,
``name uniform low,high``, ``name quniform low,high,q``, ``name loguniform low,high``
(``properties/hyper/``: the paper's alpha grid, X_max as ``fve_cycles``, which needs ``--vlm_path``).
Any other ``--key=value`` is a fixed config key for every trial (e.g. ``--epochs=20``,
``--zeroed_modalities="[text]"`` for the paper's V-only sensitivity runs).

Each trial is saved as a run record in ``--results_dir`` (default ``<output_file>.trials/``) when it
finishes; a re-run of the search loads finished trials instead of training them, and
``python run_experiments.py plot --results <results_dir>`` draws Figs. 4-5 from them. The best trial is
the one with the best validation ``valid_metric``; ``--output_file`` gets RecBole's result export.
``--tool=Ray`` runs the trials as Ray Tune trials (in parallel, each holding ``--cpus_per_trial`` /
``--gpus_per_trial``; ``--ray_address=auto`` joins a running cluster) and writes the same trial records
and output (docs/distributed.md).
"""

import os
import sys

from recbole_reveal.infra.arguments import Option, UsageError, format_options, parse_command_line, parse_overrides
from recbole_reveal.infra.locations import property_path

OPTIONS = (
    Option("model", required=True, help="plugin or RecBole model name (or your own <file.py>:<Class>)"),
    Option("dataset", required=True, help="dataset folder name under data_path"),
    Option("data_path", help="folder holding <dataset>/ (default dataset_atomic/); a fixed config key of every trial"),
    Option("config_files", many=True, help="fixed config files, space separated"),
    Option("params_file", required=True, help="RecBole params file (the search space)"),
    Option("output_file", default="hyper.result", help="RecBole's result export"),
    Option("results_dir", help="run records of the trials (default <output_file>.trials)"),
    Option("display_file", help="(RecBole's plotly display; unused)"),
    Option("tool", default="Hyperopt", choices=("Hyperopt", "Ray"),
           help="Hyperopt: trials one after the other here; Ray: RecBole's Ray Tune path, trials in parallel on "
           "a local Ray instance or a cluster (--ray_address)"),
    Option("ray_address", help="with --tool=Ray: 'auto' (the cluster `ray start` runs here) or host:port; "
           "default: start a local Ray instance"),
    Option("cpus_per_trial", default=1.0, type=float, help="with --tool=Ray: CPUs each trial holds"),
    Option("gpus_per_trial", default=0.0, type=float, help="with --tool=Ray: GPUs each trial holds"),
    Option("algo", default="exhaustive", choices=("exhaustive", "random", "bayes"),
           help="exhaustive: every grid point; random / bayes (TPE): --max_evals trials"),
    Option("max_evals", default=100, type=int, help="trials for random / bayes"),
    Option("early_stop", type=int, help="stop after this many trials without progress (default: never for "
           "exhaustive, 10 otherwise, RecBole's default)"),
    Option("hyper_seed", default=2020, type=int, help="seed of hyperopt's sampler"),
)


def split_args(argv):
    """(the command's options, fixed config overrides from the other ``--key=value`` items)."""
    values, rest = parse_command_line(argv, OPTIONS, usage=__doc__)
    if values["data_path"] is not None:
        rest = rest + [f"--data_path={values['data_path']}"]
    return values, parse_overrides(rest)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\noptions:\n" + format_options(OPTIONS))
        return 0
    from recbole_reveal.infra.errors import USER_ERRORS

    try:
        args, overrides = split_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from recbole_reveal.commands.console import show_fve_progress
    from recbole_reveal.experiments.hyper import tune

    show_fve_progress()

    results_dir = args["results_dir"] or f"{args['output_file']}.trials"
    try:
        params_file = property_path(args["params_file"])
        if args["tool"] == "Ray":
            from recbole_reveal.cluster import tune_on_ray

            hp = tune_on_ray(args["model"], args["dataset"], params_file, results_dir, args["config_files"],
                             overrides, algo=args["algo"], max_evals=args["max_evals"],
                             hyper_seed=args["hyper_seed"], output_file=args["output_file"],
                             address=args["ray_address"], cpus=args["cpus_per_trial"], gpus=args["gpus_per_trial"])
        else:
            hp = tune(args["model"], args["dataset"], params_file, results_dir, args["config_files"], overrides,
                      algo=args["algo"], max_evals=args["max_evals"], early_stop=args["early_stop"],
                      hyper_seed=args["hyper_seed"], output_file=args["output_file"])
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = hp.params2result[hp.params2str(hp.best_params)]
    print("best params: ", hp.best_params)
    print("best valid result:", {k: float(v) for k, v in best["best_valid_result"].items()})
    print("test result of the best params:", {k: float(v) for k, v in best["test_result"].items()})
    print(f"written: {os.path.abspath(args['output_file'])}; trial records in {os.path.abspath(results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
