"""Controlled modality imbalance: does any balancing rule (``avl_rule``) help, where, and at what cost?

    python benchmarks/imbalance_sweep.py --quick            # < 15 min on 2 CPU cores
    python benchmarks/imbalance_sweep.py                    # the full sweep (docs/avl-evidence.md)
    python benchmarks/imbalance_sweep.py --jobs 16 --device cuda   # cells in parallel processes
    python benchmarks/imbalance_sweep.py --quick --model HM4SR_REVEAL --rules ckd   # another backbone, one rule

For each knob setting of the synthetic generator (``vision_share``: the share of the users' taste only
the images carry; ``text_noise``: how often the text names a wrong brand) it generates the data, extracts
MiniLM text and EfficientNet-Lite0 image features (the offline encoders), then trains the backbone
(``--model``, default ``M3SRec_REVEAL``, with ``avl: False``: the same model and initialisation as the plain
backbone) and the backbone with every rule (``--rules``) at its source's α, over several seeds. Per cell it prints R@20 / NDCG@20 mean ± std,
the paired t-test against the backbone (same seeds), the vision-only metric (R@20 with text zeroed at
test time), the range of the coefficients over the run, and the training-epoch time relative to the
backbone. ``--alpha_setting`` adds a strength sweep of every rule on one setting.

Every run is saved as JSON under ``<out>/runs/`` (a re-run skips finished runs); the tables go to
``<out>/imbalance.md`` and the plots to ``<out>/imbalance.png`` and ``<out>/alpha.png``.
"""

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> (vision_share, text_noise)
SETTINGS = {
    "text-led": (0.3, 0.0),
    "demo": (None, 0.0),               # the demo's taste: 81 % of the preference weight image-only
    "vision-led": (0.95, 0.5),
}
# rule -> its source's strength: REVEAL's default (paper best 0.05-0.1), M3SRec/main.py's, AGM's, OGM-GE's,
# and 1 for ckd (Zhang et al.'s weights as they are)
RULE_ALPHA = {"paper": 0.1, "reference": 1.0, "agm": 1.0, "ogm_ge": 0.1, "ckd": 1.0}
# the strength sweep (besides RULE_ALPHA): the full grid, and the quick run's one stronger point per rule
ALPHAS = {"paper": [0.05, 0.5, 2.0], "reference": [0.1, 3.0], "agm": [0.1, 3.0], "ogm_ge": [0.5, 1.0],
          "ckd": [0.5, 2.0]}
QUICK_ALPHAS = {"paper": [2.0], "reference": [3.0], "agm": [3.0], "ogm_ge": [1.0], "ckd": [2.0]}
SIZES = {"quick": dict(users=200, items=120, epochs=3, seeds=[1, 2, 3], alphas=QUICK_ALPHAS),
         "full": dict(users=300, items=150, epochs=6, seeds=[1, 2, 3], alphas=ALPHAS)}
MODELS = ("M3SRec_REVEAL", "HM4SR_REVEAL", "MISSRec_REVEAL")
TRAIN = {"hidden_size": 32, "inner_size": 64, "n_heads": 2, "train_batch_size": 128, "eval_batch_size": 512,
         "MAX_ITEM_LIST_LENGTH": 20, "topk": [20], "metrics": ["Recall", "NDCG"], "valid_metric": "NDCG@20",
         "stopping_step": 100, "learning_rate": 0.002, "eval_zeroed_modalities": ["text"], "show_progress": False,
         "state": "warning"}


def prepare_data(job):
    """Generate one setting's dataset and its two feature sets (skipped when present)."""
    root, name, vision_share, text_noise, users, items = job
    import torch

    torch.set_num_threads(1)
    from recbole_reveal.data.synthetic import generate_dataset
    from recbole_reveal.features.extract import extract

    folder = os.path.join(root, name)
    if not os.path.isfile(os.path.join(folder, "features", "vision_efficientnet_lite0.npy")):
        generate_dataset(root, name, n_users=users, n_items=items, seed=2026, image_size=96,
                         vision_share=vision_share, text_noise=text_noise)
        extract(name, root, "text", "minilm", dataset_yaml="cpu")
        extract(name, root, "vision", "efficientnet-lite0")
    return folder


def run_cell(job):
    """One training run (a worker process): its JSON record, or the saved one."""
    path, model, dataset, data_root, overrides, seed, device = job
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    import torch

    torch.set_num_threads(1)
    from recbole_reveal.quick_start import run_recbole_reveal

    config = dict(TRAIN, **overrides, seed=seed, data_path=data_root, use_gpu=device == "cuda",
                  checkpoint_dir=os.path.join(os.path.dirname(path), "checkpoints"))
    start = time.perf_counter()
    result = run_recbole_reveal(model, dataset, config_dict=config, saved=False)
    cost = result["cost"]
    record = {
        "dataset": dataset, "seed": seed, "overrides": overrides, "seconds": time.perf_counter() - start,
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "vision_only": {k: float(v) for k, v in result["masked_test_results"]["text"].items()},
        "epoch_s": cost["train_s"] / max(1, cost["calls"]["train"]),
        "avl_epochs": result["avl_epochs"],
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, default=float)
    os.replace(path + ".tmp", path)
    return record


def variants(alphas=None, lr=True, rules=tuple(RULE_ALPHA)):
    """(label, overrides): the backbone, then every rule at its source's α (or at each α of ``alphas``,
    the strongest also with ``avl_mode: lr``, which Adam does not normalise away; not for OGM-GE)."""
    out = [("backbone", {"avl": False})]
    for rule in rules:
        alpha = RULE_ALPHA[rule]
        for a in (alphas[rule] if alphas else [alpha]):
            out.append((f"{rule} α={a:g}", {"avl": True, "avl_rule": rule, "avl_alpha": a}))
        if alphas and lr and rule != "ogm_ge":
            a = max(alphas[rule])
            out.append((f"{rule} α={a:g} lr", {"avl": True, "avl_rule": rule, "avl_alpha": a, "avl_mode": "lr"}))
    return out


def coefficient_range(records):
    """Smallest and largest coefficient (vision and, for two-modality rules, text) over every run."""
    ranges = {}
    for modality in ("vision", "text"):
        key = f"coefficient_{modality}"
        lows = [e[key]["min"] for r in records for e in r["avl_epochs"] if key in e]
        highs = [e[key]["max"] for r in records for e in r["avl_epochs"] if key in e]
        if lows:
            ranges[modality] = (min(lows), max(highs))
    return ranges


def summarise(label, records, base):
    from recbole_reveal.experiments.stats import mean_std, paired_ttest

    row = {"variant": label}
    for metric in ("recall@20", "ndcg@20"):
        values = [r["test"][metric] for r in records]
        row[metric] = mean_std(values)
        row[f"p_{metric}"] = paired_ttest([b["test"][metric] for b in base], values)[1] if label != "backbone" \
            else math.nan
    vision_only = [r["vision_only"]["recall@20"] for r in records]
    row["vision_only"] = mean_std(vision_only)
    # does the rule make the vision branch better on its own (what the rules aim at), whatever R@20 does?
    row["p_vision_only"] = paired_ttest([b["vision_only"]["recall@20"] for b in base], vision_only)[1] \
        if label != "backbone" else math.nan
    # the diagnostics' last validation: both modalities, text zeroed (vision only), vision zeroed (text only)
    row["valid"] = [sum(r["avl_epochs"][-1][k] for r in records) / len(records)
                    for k in ("valid", "valid_text_zeroed", "valid_vision_zeroed")]
    row["coefficients"] = coefficient_range(records)
    ratios = [e["grad_norm_ratio_vision_text"]["mean"] for r in records for e in r["avl_epochs"]
              if "grad_norm_ratio_vision_text" in e]
    row["grad_ratio"] = sum(ratios) / len(ratios) if ratios else math.nan
    row["time_ratio"] = (sum(r["epoch_s"] for r in records) / sum(b["epoch_s"] for b in base))
    return row


def _p(p, digits=3, backbone=False):
    # a NaN p of a rule: every seed's metric equals the backbone's (no difference to test)
    return ("—" if backbone else "identical") if math.isnan(p) else f"{p:.{digits}f}"


def render(title, rows):
    lines = [f"### {title}", "",
             "| variant | R@20 | NDCG@20 | p (R@20) | p (N@20) | vision-only R@20 | p (vision-only) | "
             "coefficient range | ‖g_v‖/‖g_t‖ | valid N@20 both / vision only / text only | epoch time ×backbone |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rng = "; ".join(f"{m} [{lo:.3f}, {hi:.3f}]" for m, (lo, hi) in r["coefficients"].items()) or "—"
        p = [_p(r[k], backbone=r["variant"] == "backbone") for k in ("p_recall@20", "p_ndcg@20", "p_vision_only")]
        lines.append(f"| {r['variant']} | {r['recall@20'][0]:.4f} ± {r['recall@20'][1]:.4f} | "
                     f"{r['ndcg@20'][0]:.4f} ± {r['ndcg@20'][1]:.4f} | {p[0]} | {p[1]} | "
                     f"{r['vision_only'][0]:.4f} ± {r['vision_only'][1]:.4f} | {p[2]} | {rng} | {r['grad_ratio']:.3f} | "
                     f"{' / '.join(f'{v:.4f}' for v in r['valid'])} | {r['time_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def render_pooled(settings, cells, records, labels):
    """Each rule against the backbone over every (setting, seed) pair: with three seeds a cell's test
    sees only large effects; pooled over the settings, a consistent small one shows."""
    from recbole_reveal.experiments.stats import paired_ttest

    def pairs(label, key):
        base, rule = [], []
        for setting in settings:
            base += [records[i][key]["recall@20"] for i in cells[(setting, "backbone")]]
            rule += [records[i][key]["recall@20"] for i in cells[(setting, label)]]
        return base, rule

    lines = [f"### Pooled over the settings ({len(settings)} settings × seeds, paired)", "",
             "| variant | Δ R@20 | p | runs above the backbone | Δ vision-only R@20 | p | runs above the backbone |",
             "|---|---|---|---|---|---|---|"]
    for label in labels:
        if label == "backbone":
            continue
        cols = []
        for key in ("test", "vision_only"):
            base, rule = pairs(label, key)
            cols += [f"{(sum(rule) - sum(base)) / len(base):+.4f}", _p(paired_ttest(base, rule)[1], digits=4),
                     f"{sum(r > b for b, r in zip(base, rule))} of {len(base)}"]
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def plot(tables, alpha_rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.6), squeeze=False)
    for ax, (setting, rows) in zip(axes[0], tables.items()):
        labels = [r["variant"].replace(" ", "\n") for r in rows]
        ax.bar(range(len(rows)), [r["recall@20"][0] for r in rows], yerr=[r["recall@20"][1] for r in rows],
               color=["grey"] + ["tab:blue"] * (len(rows) - 1), capsize=3, label="both modalities")
        ax.plot(range(len(rows)), [r["vision_only"][0] for r in rows], "o", color="tab:orange",
                label="text zeroed (vision only)")
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(setting, fontsize=9)
        ax.set_ylabel("test R@20")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "imbalance.png"), dpi=110)
    plt.close(fig)
    if alpha_rows:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        base = next(r for r in alpha_rows if r["variant"] == "backbone")["recall@20"][0]
        ax.axhline(base, color="grey", ls="--", label="backbone")
        for rule in RULE_ALPHA:
            if not any(r["variant"].startswith(rule + " ") for r in alpha_rows):
                continue
            pts = sorted((float(r["variant"].split("α=")[1]), r["recall@20"]) for r in alpha_rows
                         if r["variant"].startswith(rule + " ") and not r["variant"].endswith(" lr"))
            ax.errorbar([a for a, _ in pts], [m for _, (m, _) in pts], yerr=[s for _, (_, s) in pts],
                        marker="o", capsize=3, label=rule)
        lr = [(float(r["variant"].split("α=")[1].split()[0]), r["recall@20"][0]) for r in alpha_rows
              if r["variant"].endswith(" lr")]
        if lr:
            ax.plot(*zip(*lr), "kx", label="avl_mode: lr")
        ax.set_xscale("log")
        ax.set_xlabel("α (avl_alpha)")
        ax.set_ylabel("test R@20")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "alpha.png"), dpi=110)
        plt.close(fig)


def _map(function, jobs, n):
    """``function`` over ``jobs``, in ``n`` spawned processes when n > 1 (results in order)."""
    if n <= 1:
        return [function(job) for job in jobs]
    import multiprocessing

    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(function, jobs))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, fewer epochs (< 15 min on 2 cores)")
    p.add_argument("--out", default=None, help="results folder (default results/imbalance[-quick])")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs in parallel processes, one thread each (default: 2 or the cores if fewer)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, help="default: 3 seeds")
    p.add_argument("--model", choices=MODELS, default=MODELS[0], help="the backbone (default M3SRec_REVEAL)")
    p.add_argument("--rules", nargs="+", choices=list(RULE_ALPHA), default=list(RULE_ALPHA),
                   help="the rules beside the backbone (default: all)")
    p.add_argument("--alpha_setting", choices=list(SETTINGS) + ["none"], default="vision-led",
                   help="the setting of the α sweep (none: no α sweep)")
    args = p.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    default_out = ("imbalance-quick" if args.quick else "imbalance") + \
        ("" if args.model == MODELS[0] else "-" + args.model.lower())
    out = os.path.abspath(args.out or os.path.join("results", default_out))
    seeds = args.seeds or size["seeds"]
    data_root = os.path.join(out, "data")
    os.makedirs(data_root, exist_ok=True)
    start = time.perf_counter()
    _map(prepare_data, [(data_root, s, *SETTINGS[s], size["users"], size["items"]) for s in args.settings], args.jobs)
    print(f"data and features ready ({time.perf_counter() - start:.0f} s)", flush=True)
    jobs, cells = [], {}
    for setting in args.settings:
        grid = variants(rules=args.rules) + ([v for v in variants(size["alphas"], lr=not args.quick, rules=args.rules)
                                              if v[0] != "backbone"]
                             if setting == args.alpha_setting else [])
        for label, overrides in grid:
            overrides = dict(overrides, epochs=size["epochs"])
            for seed in seeds:
                slug = label.replace(" ", "_").replace("α=", "a")
                path = os.path.join(out, "runs", setting, f"{slug}-seed{seed}.json")
                cells.setdefault((setting, label), []).append(len(jobs))
                jobs.append((path, args.model, setting, data_root, overrides, seed, args.device))
    print(f"{len(jobs)} runs ({len(args.settings)} settings, {len(seeds)} seeds), {args.jobs} at a time", flush=True)
    records = _map(run_cell, jobs, args.jobs)
    tables, alpha_rows, text = {}, [], []
    for setting in args.settings:
        vision_share, text_noise = SETTINGS[setting]
        base = [records[i] for i in cells[(setting, "backbone")]]
        main_labels = [label for label, _ in variants(rules=args.rules)]
        tables[setting] = [summarise(label, [records[i] for i in cells[(setting, label)]], base)
                           for label in main_labels]
        share = "0.81 (demo)" if vision_share is None else f"{vision_share:g}"
        text.append(render(f"{setting}: vision_share {share}, text_noise {text_noise:g}", tables[setting]))
        if setting == args.alpha_setting:
            alpha_rows = [summarise(label, [records[i] for i in idx], base)
                          for (s, label), idx in cells.items() if s == setting]
            text.append(render(f"α sweep on {setting}", alpha_rows))
    if len(args.settings) > 1:
        text.append(render_pooled(args.settings, cells, records, [label for label, _ in variants(rules=args.rules)]))
    header = (f"{args.model} ({size['users']} users, {size['items']} items, {size['epochs']} epochs, seeds {seeds}); "
              f"p: paired t-test against the backbone; wall time {time.perf_counter() - start:.0f} s\n\n")
    report = header + "\n".join(text)
    with open(os.path.join(out, "imbalance.md"), "w", encoding="utf-8") as f:
        f.write(report)
    plot(tables, alpha_rows, out)
    print(report)
    return report


if __name__ == "__main__":
    main()
