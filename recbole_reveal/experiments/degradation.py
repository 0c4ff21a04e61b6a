"""The robustness protocol's tables: a metric against the fraction r of items missing a modality at test
time, one line per setting (model [missing_modality handling]), one block per modality and scope, from the
summary of :func:`recbole_reveal.experiments.protocols.missing_rows` (mean ± std over seeds)."""

import csv
import io

from recbole_reveal.experiments.tables import METRICS

SUBSETS = {"all": "all test users", "one_modality": "test users whose target has one modality observed"}


def degradation_cells(summary, rows):
    """{(modality, scope, subset): {setting: {rate: summary entry}}} from the rows that have a ``cell``."""
    by_label = {e["label"]: e for e in summary}
    out = {}
    for row in rows:
        if row.cell is None:
            continue
        setting, modality, scope, subset, rate = row.cell
        out.setdefault((modality, scope, subset), {}).setdefault(setting, {})[rate] = by_label[row.label]
    return out


def _rates(cells):
    return sorted({r for settings in cells.values() for rates in settings.values() for r in rates})


def render_degradation(summary, rows, title, metrics=(("recall@20", "R@20"), ("ndcg@20", "N@20"))):
    """Markdown: per metric, per (modality, scope, subset) block, a line per setting and a column per r."""
    cells = degradation_cells(summary, rows)
    rates = _rates(cells)
    lines = [f"**{title}**", ""]
    for metric, name in metrics:
        lines += [f"**{name} vs r** (fraction of items whose modality is missing at test time)", "",
                  "| Setting | " + " | ".join(f"r = {r:g}" for r in rates) + " |",
                  "|---|" + "---:|" * len(rates)]
        for (modality, scope, subset), settings in cells.items():
            lines.append(f"| **{modality} missing, in {scope}; {SUBSETS[subset]}** |" + " |" * len(rates))
            for setting, by_rate in settings.items():
                values = []
                for r in rates:
                    e = by_rate.get(r)
                    if e is None or metric not in e["mean"]:
                        values.append("—")
                        continue
                    p = e["p"].get(metric)
                    values.append(f"{e['mean'][metric]:.4f} ± {e['std'][metric]:.4f}"
                                  + (f" (p={p:.2g})" if p is not None and p == p else ""))
                lines.append(f"| {setting} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


def render_degradation_csv(summary, rows, metrics=METRICS):
    """One line per (setting, modality, scope, subset, r): mean and std per metric, seeds."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["setting", "modality", "scope", "subset", "r", "seeds"]
                    + [f"{name} {part}" for _, name in metrics for part in ("mean", "std")])
    for (modality, scope, subset), settings in degradation_cells(summary, rows).items():
        for setting, by_rate in settings.items():
            for rate, e in sorted(by_rate.items()):
                writer.writerow([setting, modality, scope, subset, f"{rate:g}", len(e["seeds"])]
                                + [repr(e[part][m]) if m in e[part] else "" for m, _ in metrics
                                   for part in ("mean", "std")])
    return buf.getvalue()
