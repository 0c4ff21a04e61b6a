r"""Train and evaluate a recbole-reveal (or RecBole) model.

    python run_recbole_reveal.py --model=M3SRec_REVEAL --dataset=synthetic-demo \
        [--data_path=dataset_atomic] [--config_files="a.yaml b.yaml"] [--key=value ...]

(installed as a package: ``run_recbole_reveal --model=... --dataset=...``, from any directory).

``--data_path`` is the folder holding ``<dataset>/`` (default ``dataset_atomic/``); a dataset's own
``<data_path>/<dataset>/<dataset>.yaml`` is read for every run on it (docs/own-data.md).
Any other ``--key=value`` is a RecBole config key and has the highest precedence
(see recbole_reveal/config.py and docs/usage.md). For a ``*_REVEAL`` model with
``--vlm_path=<local Qwen-VL folder>`` (in any config source) the run is the FVE refinement loop over
``fve_cycles`` cycles (docs/fve.md); ``--fve=False`` keeps the static visual features, ``--fve=True``
insists on a VLM.
"""

import sys

from recbole_reveal.infra.arguments import Option, UsageError, parse_command_line

OPTIONS = (
    Option("model", required=True),
    Option("dataset", required=True),
    Option("config_files", many=True),
    Option("data_path"),        # a config key like any other; declared so that `--data_path PATH` also works
)


def parse_args(argv):
    """Split ``argv`` into (model, dataset, config files, remaining ``--key=value`` items).

    ``--config_files`` takes one or more paths, separated by spaces inside one argument
    (``--config_files="a.yaml b.yaml"``, RecBole's form) or as following arguments.
    """
    values, rest = parse_command_line(argv, OPTIONS, usage=__doc__)
    if values["data_path"] is not None:
        rest = rest + [f"--data_path={values['data_path']}"]
    return values["model"], values["dataset"], values["config_files"], rest


def format_result(result):
    return "  ".join(f"{k}: {float(v):.4f}" for k, v in result.items())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        model, dataset, config_files, rest = parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2

    from recbole_reveal import build_config
    from recbole_reveal.commands.console import show_fve_progress
    from recbole_reveal.config import fve_requested
    from recbole_reveal.quick_start import run_with_config
    from recbole_reveal.adaptation.launch import DistributedRunError
    from recbole_reveal.infra.errors import USER_ERRORS

    try:
        config = build_config(model, dataset, config_files, cmd_args=rest)
        if fve_requested(config):
            from recbole_reveal.fve.loop.run import run_fve_with_config

            show_fve_progress()
            print(run_fve_with_config(config)["table_text"])
            return 0
        result = run_with_config(config)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DistributedRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result is None:          # a process or machine of a distributed run other than rank 0's
        return 0
    print(f"best valid: {format_result(result['best_valid_result'])}")
    print(f"test:       {format_result(result['test_result'])}")
    for modality, masked in result["masked_test_results"].items():
        print(f"test ({modality} zeroed at inference): {format_result(masked)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
