r"""Train and evaluate a recbole-reveal (or RecBole) model.

    python run_recbole_reveal.py --model=M3SRec_REVEAL --dataset=synthetic-demo \
        [--config_files="a.yaml b.yaml"] [--key=value ...]

Any other ``--key=value`` is a RecBole config key and has the highest precedence
(see recbole_reveal/quick_start.py and docs/usage.md). With ``--vlm_path=<local Qwen-VL folder>``
(in any config source) the run is the FVE refinement loop over ``fve_cycles`` cycles (docs/fve.md);
``--fve=False`` keeps the static visual features, ``--fve=True`` insists on a VLM.
"""

import sys


def parse_args(argv):
    """Split ``argv`` into (model, dataset, config files, remaining ``--key=value`` items).

    ``--config_files`` takes one or more paths, separated by spaces inside one argument
    (``--config_files="a.yaml b.yaml"``, RecBole's form) or as following arguments.
    """
    model = dataset = None
    config_files, rest = [], []
    collecting_files = False
    for arg in argv:
        if not arg.startswith("--"):
            if collecting_files:
                config_files.append(arg)
                continue
            raise SystemExit(f"error: unexpected argument '{arg}'; options are written --key=value")
        collecting_files = False
        key, sep, value = arg[2:].partition("=")
        if key in ("model", "dataset", "config_files") and not sep:
            raise SystemExit(f"error: write --{key}=VALUE")
        if key == "model":
            model = value
        elif key == "dataset":
            dataset = value
        elif key == "config_files":
            config_files += value.split()
            collecting_files = True
        elif not sep:
            raise SystemExit(f"error: '{arg}' is not of the form --key=value")
        else:
            rest.append(arg)
    if not model or not dataset:
        raise SystemExit(__doc__.strip() + "\n\nerror: --model and --dataset are required")
    return model, dataset, config_files, rest


def format_result(result):
    return "  ".join(f"{k}: {float(v):.4f}" for k, v in result.items())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    model, dataset, config_files, rest = parse_args(argv)

    from recbole_reveal import build_config, run_recbole_reveal
    from recbole_reveal.errors import USER_ERRORS
    from recbole_reveal.quick_start import fve_requested

    try:
        if fve_requested(build_config(model, dataset, config_files, cmd_args=rest)):
            from recbole_reveal.fve.loop import run_fve

            print(run_fve(model, dataset, config_file_list=config_files, cmd_args=rest)["table_text"])
            return 0
        result = run_recbole_reveal(model, dataset, config_file_list=config_files, cmd_args=rest)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"best valid: {format_result(result['best_valid_result'])}")
    print(f"test:       {format_result(result['test_result'])}")
    for modality, masked in result["masked_test_results"].items():
        print(f"test ({modality} zeroed at inference): {format_result(masked)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
