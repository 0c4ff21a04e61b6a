"""Figures from saved run records (headless matplotlib, Agg): the sensitivity plots of Figs. 4-5 (a
metric vs ``fve_cycles`` = X_max and vs ``avl_alpha``, one panel per dataset) and the modality bars of
Fig. 1d-e.

Points of a sensitivity plot: a run with AVL on gives the point ``avl_alpha``; an FVE run gives one
point per finished cycle (cycle x of its loop is the result of X_max = x + 1, the loop's last cycle
being the one trained on the final prompts). Runs with the swept switch alone and runs with both
switches on (full REVEAL) are separate lines; runs with neither are the baseline, drawn as a dashed
line; a run with only the other switch on is left out. Values are mean ± std over the records (error bars).
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recbole_reveal.infra.errors import ConfigError  # noqa: E402
from recbole_reveal.experiments.stats import mean_std  # noqa: E402
from recbole_reveal.infra.files import atomic_path  # noqa: E402

PANEL_IN = (4.0, 3.0)       # inches per panel
DPI = 100
PARAMS = {"avl_alpha": "α (avl_alpha)", "fve_cycles": "X_max (fve_cycles)"}


def _result(record, split):
    return record.get("test_result" if split == "test" else "best_valid_result") or {}


SERIES = {"avl_alpha": ("w/ AVL", "w/ REVEAL"), "fve_cycles": ("w/ FVE", "w/ REVEAL")}


def sensitivity_points(record, param, metric, split="test"):
    """``(series, x, value)`` points of one record for ``param``. ``series`` is ``w/ AVL`` / ``w/ FVE``
    (the swept switch alone) or ``w/ REVEAL`` (both switches on); None marks a baseline (neither on)."""
    if param not in PARAMS:
        raise ConfigError(f"plot: param must be one of {sorted(PARAMS)}, got {param!r}")
    config = record.get("config") or {}
    metric = metric.lower()
    avl_on = bool(config.get("avl"))
    table = record.get("fve_cycles_table")
    fve_on = bool(table)
    alone, both = SERIES[param]
    if not avl_on and not fve_on:
        value = _result(record, split).get(metric)
        return [] if value is None else [(None, None, float(value))]
    if param == "avl_alpha":
        if not avl_on or config.get("avl_alpha") is None:
            return []               # FVE without AVL: neither a point nor the baseline
        value = _result(record, split).get(metric)
        series = both if fve_on else alone
        return [] if value is None else [(series, float(config["avl_alpha"]), float(value))]
    if not fve_on:
        return []                   # AVL without FVE
    key = "test" if split == "test" else "valid"
    series = both if avl_on else alone
    return [(series, row["cycle"] + 1, float(row[key][metric])) for row in table if metric in row.get(key, {})]


def sensitivity_series(records, param, metric, split="test"):
    """{dataset: {"series": {name: {x: [values]}}, "baseline": [values]}}."""
    out = {}
    for record in records:
        panel = out.setdefault(record["dataset"], {"series": {}, "baseline": []})
        for series, x, value in sensitivity_points(record, param, metric, split):
            if series is None:
                panel["baseline"].append(value)
            else:
                panel["series"].setdefault(series, {}).setdefault(x, []).append(value)
    return {d: p for d, p in out.items() if p["series"]}


def plot_sensitivity(records, param, out_path, metric="recall@20", split="test", title=None):
    """One panel per dataset: ``metric`` (mean ± std over runs) at each value of ``param``, equally
    spaced as in the paper, one line for the swept switch alone and one for full REVEAL (when such
    runs exist), and the switches-off baseline as a dashed line. Returns the path."""
    series = sensitivity_series(records, param, metric, split)
    if not series:
        raise ConfigError(f"plot: no saved run has a value of {param} with {metric} "
                          f"({'AVL on' if param == 'avl_alpha' else 'an FVE loop'} is needed)")
    datasets = sorted(series)
    fig, axes = plt.subplots(1, len(datasets), figsize=(PANEL_IN[0] * len(datasets), PANEL_IN[1]),
                             dpi=DPI, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        panel = series[dataset]
        xs = sorted({x for points in panel["series"].values() for x in points})
        pos = {x: i for i, x in enumerate(xs)}
        for name in SERIES[param]:
            points = panel["series"].get(name)
            if not points:
                continue
            px = sorted(points)
            stats = [mean_std(points[x]) for x in px]
            ax.errorbar([pos[x] for x in px], [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o",
                        capsize=3, label=name)
        if panel["baseline"]:
            base, _ = mean_std(panel["baseline"])
            ax.axhline(base, linestyle="--", color="grey", label="base (AVL and FVE off)")
        ax.set_xticks(list(range(len(xs))))
        ax.set_xticklabels([_tick(x) for x in xs])
        ax.set_xlabel(PARAMS[param])
        ax.set_ylabel(f"{split} {metric}")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out_path, title)


def _tick(x):
    return str(int(x)) if float(x).is_integer() and x >= 1 else f"{x:g}"


def plot_modality(summary, out_path, metrics=(("recall@20", "R@20"), ("ndcg@20", "N@20")), title=None):
    """Fig. 1d-e: one bar per row of a ``modality`` table summary that has numbers, per metric panel,
    with std error bars."""
    rows = [e for e in summary if not e["skipped"] and e["mean"]]
    if not rows:
        raise ConfigError("plot: no modality results to draw")
    fig, axes = plt.subplots(1, len(metrics), figsize=(PANEL_IN[0] * 1.5 * len(metrics), PANEL_IN[1] * 1.4),
                             dpi=DPI, squeeze=False)
    for ax, (metric, name) in zip(axes[0], metrics):
        means = [e["mean"].get(metric, math.nan) for e in rows]
        stds = [e["std"].get(metric, 0.0) for e in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color=[_colour(e["label"]) for e in rows])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([e["label"] for e in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"test {name}")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_path, title)


def _colour(label):
    low = label.lower()
    if low.startswith("full"):
        return "tab:grey"
    if low.startswith("text"):
        return "tab:blue"
    return "tab:orange"


def _save(fig, path, title=None):
    """Title, layout, and an atomic write of ``fig`` to ``path``; returns ``path``."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def plot_degradation(cells, out_path, metrics=(("recall@20", "R@20"), ("ndcg@20", "N@20")), title=None):
    """The robustness protocol: a panel per (modality, scope) of all test users and per metric, a line
    per setting of the metric against r, with std error bars (``cells`` from
    :func:`recbole_reveal.experiments.degradation.degradation_cells`)."""
    panels = [(key, settings) for key, settings in cells.items() if key[2] == "all"]
    if not panels:
        raise ConfigError("plot: no robustness results to draw")
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(PANEL_IN[0] * len(panels), PANEL_IN[1] * len(metrics)),
                             dpi=DPI, squeeze=False)
    for column, ((modality, scope, _), settings) in enumerate(panels):
        for line, (metric, name) in enumerate(metrics):
            ax = axes[line][column]
            for setting, by_rate in settings.items():
                rates = [r for r in sorted(by_rate) if metric in by_rate[r]["mean"]]
                ax.errorbar(rates, [by_rate[r]["mean"][metric] for r in rates],
                            yerr=[by_rate[r]["std"][metric] for r in rates], marker="o", capsize=2, label=setting)
            ax.set_xlabel(f"r ({modality} missing, {scope})")
            ax.set_ylabel(f"test {name}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, out_path, title)
