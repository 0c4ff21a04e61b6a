"""``python run_experiments.py <command> ...``: the paper's experiments, one command per kind of table
or figure (docs/experiments.md). ``python run_experiments.py <command> --help`` explains each option."""

import argparse
import os
import sys

from recbole_reveal.infra.arguments import config_value
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.infra.files import atomic_open

DEFAULT_OUT = "results"


def parse_sets(items):
    """``KEY=VALUE`` items -> {key: value} (``--set epochs=5 zeroed_modalities=[text]``; values read as on
    any command line, :func:`recbole_reveal.infra.arguments.config_value`)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE items, got {item!r}")
        out[key.lstrip("-")] = config_value(value)
    return out


def parse_grid(items):
    """``KEY=V1,V2,...`` items -> {key: [values]}."""
    out = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid expects KEY=V1,V2,... items, got {item!r}")
        out[key] = [config_value(v) for v in values.split(",")]
    return out


def resolve_seeds(args):
    if args.seeds:
        return list(args.seeds)
    if args.n_seeds < 1:
        raise ConfigError(f"--n_seeds must be >= 1, got {args.n_seeds}")
    return [args.first_seed + i for i in range(args.n_seeds)]


def _vlm_path(args, overrides, models):
    """--vlm_path, else ``vlm_path`` of the configuration the rows' first REVEAL model gets (config
    files, --set, property files); None when no model of the rows is a REVEAL model."""
    if args.vlm_path:
        return args.vlm_path
    from recbole_reveal.config import build_config, is_reveal_model
    from recbole_reveal.infra.errors import UnknownModelError
    from recbole_reveal.utils import get_model

    for model in models:
        try:
            reveal = is_reveal_model(get_model(model))
        except UnknownModelError:       # a row of a missing model is skipped (mark_missing_models)
            continue
        if reveal:
            return build_config(model, args.dataset, args.config_files, overrides)["vlm_path"]
    return None


def _common(parser, with_seeds=True):
    parser.add_argument("--dataset", required=True,
                        help="dataset folder name under data_path (e.g. synthetic-demo, Sports)")
    parser.add_argument("--data_path", help="folder holding <dataset>/ (default dataset_atomic/); the config key "
                        "data_path of every run")
    parser.add_argument("--nproc", type=int, help="processes each run trains on (RecBole's nproc: GPUs in gpu_id, "
                        "or CPU processes; FVE runs: each cycle's training); the same as --set nproc=N")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="results root; this command writes to <out>/<dataset>/<command>/ (default: results)")
    if with_seeds:
        parser.add_argument("--n_seeds", type=int, default=5, help="number of seeds (default 5, as the paper)")
        parser.add_argument("--first_seed", type=int, default=2020,
                            help="seeds are first_seed, first_seed+1, ... (default 2020)")
        parser.add_argument("--seeds", type=int, nargs="+", help="explicit seeds (replaces --n_seeds/--first_seed)")
    parser.add_argument("--config_files", nargs="+", default=[], help="YAML config files for every run")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, YAML values (e.g. epochs=5 'avl_alpha=0.05')")
    parser.add_argument("--vlm_path", help="local Qwen2.5-VL / Qwen3-VL folder; without it every 'w/ FVE' "
                        "row is skipped (printed as 'skipped: w/ FVE needs --vlm_path')")
    parser.add_argument("--split", choices=("test", "valid"), default="test",
                        help="which result the table shows (default test; the paper's tables are test)")
    parser.add_argument("--no_run", action="store_true",
                        help="run nothing: print the plan (done / pending runs) and the table of what is saved")
    parser.add_argument("--ray", metavar="ADDRESS", help="run each pending run as a Ray task: 'auto' (the cluster "
                        "`ray start` runs on this machine), host:port, or 'local' (start one here); records "
                        "are written as without it")
    parser.add_argument("--ray_cpus", type=float, default=1, help="with --ray: CPUs each run holds (default 1)")
    parser.add_argument("--ray_gpus", type=float, default=0, help="with --ray: GPUs each run holds (default 0)")


def build_parser():
    parser = argparse.ArgumentParser(prog="run_experiments.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("seeds", help="Table 2: models over seeds, mean ± std, REVEAL vs backbone with paired t-test",
                       description="Run each model over the seeds; table of R@10/R@20/N@10/N@20 mean ± std, and "
                       "for each X_REVEAL the relative improvement over X and the two-sided paired t-test "
                       "p-value (pairs = same seed).")
    p.add_argument("--models", nargs="+", required=True,
                   help="model names (plugin or RecBole, or your own <file.py>:<Class>), e.g. M3SRec M3SRec_REVEAL")
    p.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="also sweep these config values (one row per model and grid point), e.g. avl_alpha=0.05,0.1")
    p.add_argument("--eval_zeroed", nargs="+", default=[], choices=("text", "vision"),
                   help="also report each model (that has modalities) with these modalities zeroed at inference")
    p.add_argument("--by_popularity", action="store_true",
                   help="also report each model per bucket of its test targets' training interactions (0, 1-4, "
                   "5-9, >=10): where content features matter (cold items)")
    _common(p)

    p = sub.add_parser("missing", help="Robustness: metrics vs the fraction r of items missing a modality at test time",
                       description="Train each model under each missing_modality handling, then evaluate it with a "
                       "seeded fraction r of the items missing vision (and, separately, text) in the history, the "
                       "candidates or both (the same items for every model); table and plot of R@20 / NDCG@20 vs r, "
                       "and the test users whose target has only one modality observed. "
                       "docs/missing-modalities.md")
    p.add_argument("--models", nargs="+", required=True,
                   help="multimodal models, e.g. M3SRec M3SRec_REVEAL (each X_REVEAL is compared with X)")
    p.add_argument("--handlings", nargs="+", default=["zero", "learned", "mean"], choices=("zero", "learned", "mean"),
                   help="missing_modality values to train with (default: all three)")
    p.add_argument("--rates", nargs="+", type=float, default=[0, 0.25, 0.5, 0.75, 1],
                   help="fractions r of items masked (default 0 0.25 0.5 0.75 1)")
    p.add_argument("--scopes", nargs="+", default=["history", "candidates", "both"],
                   choices=("history", "candidates", "both"), help="where items are masked (default: all three)")
    p.add_argument("--modalities", nargs="+", default=["vision", "text"], choices=("vision", "text"),
                   help="masked modalities, one at a time (default vision text)")
    p.add_argument("--mask_seed", type=int, default=0, help="seed of the draw of masked items (default 0)")
    _common(p)

    p = sub.add_parser("modality", help="Fig. 1d-e + Table 4: modality ablation of a backbone and its V-only variants",
                       description="Full modality; text-only trained uni-modally (vision zeroed in training and "
                       "inference); text-only multimodal (vision zeroed at inference only); the same two for "
                       "vision-only; then Table 4's V-only setting (text zeroed in training and inference) for "
                       "the base model, + FVE, + AVL, + REVEAL. Also draws figure1.png.")
    p.add_argument("--backbone", required=True,
                   help="backbone name, e.g. M3SRec, or your own <file.py>:<Class> (X_REVEAL is the REVEAL model)")
    _common(p)

    p = sub.add_parser("variants", help="Table 3: base, w/ FVE, w/ AVL, w/ REVEAL of a backbone",
                       description="The backbone X, X_REVEAL with FVE only (avl=False), with AVL only "
                       "(fve=False), and with both; improvement and p-value against the base model.")
    p.add_argument("--backbone", required=True, help="backbone name, e.g. M3SRec, or your own <file.py>:<Class>")
    _common(p)

    p = sub.add_parser("plot", help="Figs. 4-5: a metric vs fve_cycles and vs avl_alpha from saved results",
                       description="Sensitivity plots from saved run records (of seeds/variants/modality/"
                       "run_hyper.py). AVL runs give points at their avl_alpha; FVE runs one point per cycle "
                       "(X_max = cycle + 1); runs with the switch off are the dashed baseline.")
    p.add_argument("--results", nargs="+", required=True,
                   help="run-record files or folders (searched recursively), e.g. results/Sports")
    p.add_argument("--param", choices=("avl_alpha", "fve_cycles", "both"), default="both")
    p.add_argument("--metric", default="recall@20", help="metric key (default recall@20)")
    p.add_argument("--split", choices=("test", "valid"), default="test")
    p.add_argument("--models", nargs="+", help="only runs of these models (your own: its spec or class name)")
    p.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                   help="only runs whose resolved config has these values, e.g. 'zeroed_modalities=[text]'")
    p.add_argument("--out", default=os.path.join(DEFAULT_OUT, "plots"), help="folder for the PNGs")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from recbole_reveal.commands.console import show_fve_progress
    from recbole_reveal.infra.errors import USER_ERRORS

    show_fve_progress()

    try:
        if args.command == "plot":
            return _plot(args)
        return _table_command(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _table_command(args):
    from recbole_reveal.experiments import protocols
    from recbole_reveal.experiments.runs import ResultStore, execute, model_display_name
    from recbole_reveal.experiments.tables import render_csv, render_markdown, render_runs_csv, summarise

    overrides = parse_sets(args.set)
    if args.data_path:
        if overrides.get("data_path", args.data_path) != args.data_path:
            raise ConfigError(f"--data_path {args.data_path} and --set data_path={overrides['data_path']} differ; "
                              "give one")
        overrides["data_path"] = args.data_path
    if args.nproc is not None:
        if overrides.get("nproc", args.nproc) != args.nproc:
            raise ConfigError(f"--nproc {args.nproc} and --set nproc={overrides['nproc']} differ; give one")
        overrides["nproc"] = args.nproc
    seeds = resolve_seeds(args)
    if args.command in ("seeds", "missing"):
        protocols.check_models(args.models)
        models = args.models
    else:
        protocols.check_models([protocols.backbone_of(args.backbone)])
        models = [protocols.backbone_of(args.backbone) + protocols.REVEAL_SUFFIX]
    vlm_path = _vlm_path(args, overrides, models)
    overrides.pop("vlm_path", None)         # given to the rows that run FVE, not to every run
    backbone = model_display_name(protocols.backbone_of(getattr(args, "backbone", None) or ""))
    if args.command == "seeds":
        rows = protocols.seeds_rows(args.models, overrides, parse_grid(args.grid), args.eval_zeroed, vlm_path,
                                    args.by_popularity)
        title = f"{args.dataset}: models over seeds (Table 2)"
    elif args.command == "missing":
        bad = [r for r in args.rates if not 0 <= r <= 1]
        if bad:
            raise ConfigError(f"--rates must be fractions in [0, 1], got {bad}")
        if vlm_path:
            raise ConfigError("'missing' runs the single pass (static features): drop --vlm_path")
        if args.split != "test":
            raise ConfigError("'missing' masks items in the test evaluation only: use --split test")
        rows = protocols.missing_rows(args.models, args.handlings, args.rates, args.scopes, args.modalities,
                                      args.mask_seed, overrides)
        title = f"{args.dataset}: robustness to missing modalities"
    elif args.command == "variants":
        rows = protocols.variants_rows(args.backbone, overrides, vlm_path)
        title = f"{args.dataset}: REVEAL variants of {backbone} (Table 3)"
    else:
        rows = protocols.modality_rows(args.backbone, overrides, vlm_path)
        title = f"{args.dataset}: modality ablation of {backbone} (Fig. 1d-e, Table 4)"
    rows = protocols.mark_missing_models(rows)
    title += f", {args.split} metrics, mean ± std over seeds {seeds}"
    out_dir = os.path.join(args.out, args.dataset, args.command)
    store = ResultStore(out_dir)
    specs = protocols.runnable_specs(rows)
    todo = [(spec, seed) for seed in seeds for spec in specs if store.load(spec, seed, args.dataset) is None]
    for row in rows:
        if row.skipped:
            print(f"skipped: {row.label}: {row.skipped}")
    print(f"{len(specs) * len(seeds)} runs ({len(specs)} settings x {len(seeds)} seeds), "
          f"{len(specs) * len(seeds) - len(todo)} already saved in {store.runs_dir}")
    if args.no_run:
        for spec, seed in todo:
            print(f"  pending: {spec.label}, seed {seed}")
    elif args.ray and todo:
        from recbole_reveal.cluster import execute_on_ray

        execute_on_ray(todo, args.dataset, store, args.config_files, address=None if args.ray == "local" else args.ray,
                       cpus=args.ray_cpus, gpus=args.ray_gpus)
    else:
        for n, (spec, seed) in enumerate(todo, 1):
            print(f"[{n}/{len(todo)}] {spec.label}, seed {seed}", flush=True)
            record, _ = execute(spec, seed, args.dataset, store, args.config_files)
            r20 = record["test_result"].get("recall@20")
            print(f"[{n}/{len(todo)}] done in {record['seconds']:.0f} s"
                  + ("" if r20 is None else f", test recall@20 {r20:.4f}") + f" -> {store.path(spec, seed)}", flush=True)

    records = store.records()
    summary = summarise(rows, records, seeds, args.split)
    markdown = render_markdown(summary, title)
    _write(os.path.join(out_dir, "table.md"), markdown)
    _write(os.path.join(out_dir, "table.csv"), render_csv(summary))
    _write(os.path.join(out_dir, "runs.csv"), render_runs_csv(rows, records, seeds, args.split))
    if args.command != "missing":       # its table lists every cell: degradation.md is the readable view
        print("\n" + markdown)
    print(f"written: {out_dir}/table.md, table.csv, runs.csv")
    if args.command == "missing":
        _write_degradation(rows, summary, title, out_dir)
    figure_rows = summary[:5]       # Fig. 1d-e: the five input configurations, not Table 4's block
    if args.command == "modality" and any(e["mean"] for e in figure_rows):
        from recbole_reveal.experiments.plots import plot_modality

        path = plot_modality(figure_rows, os.path.join(out_dir, "figure1.png"),
                             title=f"{args.dataset}, {backbone}: {len(seeds)} seeds")
        print(f"written: {path}")
    return 0


def _write_degradation(rows, summary, title, out_dir):
    """degradation.md / .csv / .png: the metric vs r view of the ``missing`` rows."""
    from recbole_reveal.experiments.degradation import degradation_cells, render_degradation, render_degradation_csv
    from recbole_reveal.experiments.plots import plot_degradation

    markdown = render_degradation(summary, rows, title)
    _write(os.path.join(out_dir, "degradation.md"), markdown)
    _write(os.path.join(out_dir, "degradation.csv"), render_degradation_csv(summary, rows))
    print("\n" + markdown)
    cells = degradation_cells(summary, rows)
    if any(e["mean"] for settings in cells.values() for by_rate in settings.values() for e in by_rate.values()):
        print(f"written: {plot_degradation(cells, os.path.join(out_dir, 'degradation.png'), title=title)}")
    print(f"written: {out_dir}/degradation.md, degradation.csv")


def _plot(args):
    from recbole_reveal.experiments.plots import plot_sensitivity
    from recbole_reveal.experiments.runs import distinct_runs, load_records, model_display_name

    records = load_records(args.results)
    if args.models:
        # your own model matches by its "<file.py>:<Class>" spec or by its class name
        records = [r for r in records if {r["model"], model_display_name(r["model"])} & set(args.models)]
    for key, value in parse_sets(args.where).items():
        records = [r for r in records if (r.get("config") or {}).get(key) == value]
    if not records:
        raise ConfigError(f"no run records in {args.results} match the filters")
    records, dropped = distinct_runs(records)
    if dropped:
        print(f"{dropped} record(s) repeat a run already read (same dataset, model, seed and config): counted once")
    params = ("fve_cycles", "avl_alpha") if args.param == "both" else (args.param,)
    made = 0
    for param in params:
        try:
            path = plot_sensitivity(records, param, os.path.join(args.out, f"sensitivity_{param}.png"),
                                    metric=args.metric, split=args.split)
        except ConfigError as e:
            if args.param != "both":
                raise
            print(f"no {param} plot: {e}")
            continue
        made += 1
        print(f"written: {path}")
    if not made:
        raise ConfigError("no plot could be drawn from these records")
    return 0


def _write(path, text):
    with atomic_open(path, "w") as f:     # a table is never half-written (another run may read it)
        f.write(text)
