r"""Hyper-parameter search with RecBole's ``HyperTuning`` (hyperopt) over plugin and RecBole models,
in the shape of RecBole's ``run_hyper.py``:

    python run_hyper.py --model=M3SRec_REVEAL --dataset=synthetic-demo \
        --params_file=properties/hyper/avl_alpha.hyper [--config_files="a.yaml b.yaml"] \
        [--algo=exhaustive|random|bayes] [--max_evals=N] [--output_file=hyper.result] [--key=value ...]

``--params_file`` is RecBole's format, one parameter a line: ``name choice [v1,v2]``,
``name uniform low,high``, ``name quniform low,high,q``, ``name loguniform low,high``
(``properties/hyper/``: the paper's alpha grid, X_max as ``fve_cycles``, which needs ``--vlm_path``).
Any other ``--key=value`` is a fixed config key for every trial (e.g. ``--epochs=20``,
``--zeroed_modalities="[text]"`` for the paper's V-only sensitivity runs).

Each trial is saved as a run record in ``--results_dir`` (default ``<output_file>.trials/``) when it
finishes; a re-run of the search loads finished trials instead of training them, and
``python run_experiments.py plot --results <results_dir>`` draws Figs. 4-5 from them. The best trial is
the one with the best validation ``valid_metric``; ``--output_file`` gets RecBole's result export.
"""

import argparse
import os
import sys


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)      # --key=value items pass through untouched
    parser.add_argument("--model", required=True, help="plugin or RecBole model name")
    parser.add_argument("--dataset", required=True, help="dataset folder name under data_path")
    parser.add_argument("--config_files", type=str, default=None, help="fixed config files, space separated")
    parser.add_argument("--params_file", type=str, required=True, help="RecBole params file (search space)")
    parser.add_argument("--output_file", type=str, default="hyper.result", help="RecBole's result export")
    parser.add_argument("--results_dir", type=str, default=None,
                        help="run records of the trials (default <output_file>.trials)")
    parser.add_argument("--display_file", type=str, default=None, help="(RecBole's plotly display; unused)")
    parser.add_argument("--tool", type=str, default="Hyperopt", help="Hyperopt (RecBole's Ray path is not supported)")
    parser.add_argument("--algo", choices=("exhaustive", "random", "bayes"), default="exhaustive",
                        help="exhaustive: every grid point; random / bayes (TPE): --max_evals trials")
    parser.add_argument("--max_evals", type=int, default=100, help="trials for random / bayes")
    parser.add_argument("--early_stop", type=int, default=None,
                        help="stop after this many trials without progress (default: never for exhaustive, "
                        "10 otherwise, RecBole's default)")
    parser.add_argument("--hyper_seed", type=int, default=2020, help="seed of hyperopt's sampler")
    return parser


def split_args(argv):
    """(known arguments, fixed config overrides from the other ``--key=value`` items)."""
    import yaml

    args, rest = build_parser().parse_known_args(argv)
    overrides = {}
    for item in rest:
        key, sep, value = item[2:].partition("=") if item.startswith("--") else ("", "", "")
        if not sep or not key:
            raise SystemExit(f"error: '{item}' is not of the form --key=value")
        overrides[key] = yaml.safe_load(value)
    return args, overrides


def main(argv=None):
    args, overrides = split_args(sys.argv[1:] if argv is None else argv)
    if args.tool.lower() != "hyperopt":
        print(f"error: --tool={args.tool}: only Hyperopt (RecBole's HyperTuning) is supported", file=sys.stderr)
        return 2
    from recbole_reveal.errors import USER_ERRORS
    from recbole_reveal.experiments.hyper import tune

    config_files = args.config_files.split() if args.config_files else []
    results_dir = args.results_dir or f"{args.output_file}.trials"
    try:
        hp = tune(args.model, args.dataset, args.params_file, results_dir, config_files, overrides,
                  algo=args.algo, max_evals=args.max_evals, early_stop=args.early_stop,
                  hyper_seed=args.hyper_seed, output_file=args.output_file)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = hp.params2result[hp.params2str(hp.best_params)]
    print("best params: ", hp.best_params)
    print("best valid result:", dict(best["best_valid_result"]))
    print("test result of the best params:", dict(best["test_result"]))
    print(f"written: {os.path.abspath(args.output_file)}; trial records in {os.path.abspath(results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
