"""Tables from saved run records: mean ± std over seeds per row, and for a compared row the relative
improvement over its reference and the two-sided paired t-test (pairs = runs with the same seed).
Written as Markdown (the paper's layout: an ``Improve.`` line under each compared row) and CSV."""

import csv
import io
import math

from recbole_reveal.experiments.runs import RunSpec
from recbole_reveal.experiments.stats import mean_std, paired_ttest, relative_improvement

METRICS = (("recall@10", "R@10"), ("recall@20", "R@20"), ("ndcg@10", "N@10"), ("ndcg@20", "N@20"))
SPLITS = {"test": "test_result", "valid": "best_valid_result"}


def index_records(records):
    """{(run key, seed): record}."""
    return {(RunSpec(r["model"], r.get("overrides")).key, r["seed"]): r for r in records}


def row_values(row, index, seeds, split="test"):
    """{seed: {metric: value}} of ``row`` over ``seeds`` (seeds without a saved run, or without the
    row's masked result, are absent)."""
    out = {}
    for seed in seeds:
        record = index.get((row.spec.key, seed))
        if record is None:
            continue
        if row.view is None:
            result = record.get(SPLITS[split])
        elif split == "test":
            result = (record.get("masked_test_results") or {}).get(row.view)
        else:
            result = None       # modalities are zeroed only in the test evaluation
        if result:
            out[seed] = {k.lower(): float(v) for k, v in result.items() if isinstance(v, (int, float))}
    return out


def summarise(rows, records, seeds, split="test", metrics=METRICS):
    """One dict per row: label, section, skipped, seeds (those with a result), mean/std per metric, and
    for a compared row: reference, pairs, improve (fraction) and p per metric."""
    index = index_records(records)
    values = {row.label: row_values(row, index, seeds, split) for row in rows}
    out = []
    for row in rows:
        vals = values[row.label]
        entry = {"label": row.label, "section": row.section, "skipped": row.skipped, "seeds": sorted(vals),
                 "reference": row.reference, "mean": {}, "std": {}, "improve": {}, "p": {}, "pairs": 0}
        for metric, _ in metrics:
            series = [vals[s][metric] for s in sorted(vals) if metric in vals[s]]
            if series:
                entry["mean"][metric], entry["std"][metric] = mean_std(series)
        ref = values.get(row.reference) if row.reference else None
        if ref:
            common = sorted(set(vals) & set(ref))
            entry["pairs"] = len(common)
            for metric, _ in metrics:
                a = [ref[s][metric] for s in common if metric in ref[s] and metric in vals[s]]
                b = [vals[s][metric] for s in common if metric in ref[s] and metric in vals[s]]
                if a:
                    entry["improve"][metric] = relative_improvement(sum(b) / len(b), sum(a) / len(a))
                    entry["p"][metric] = paired_ttest(a, b)[1]
        out.append(entry)
    return out


def _fmt_p(p):
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _fmt_pct(x):
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.2f}%"


def render_markdown(summary, title=None, metrics=METRICS):
    """The table as Markdown: ``mean ± std`` cells, an ``Improve.`` line (``+x.xx% (p=...)``) under
    each compared row, a bold line per section, and the reason in place of numbers for a skipped row."""
    head = "| Setting | " + " | ".join(name for _, name in metrics) + " | seeds |"
    lines = ([f"**{title}**", ""] if title else []) + [head, "|---|" + "---:|" * len(metrics) + "---:|"]
    blank = " |" * (len(metrics) + 1)
    for e in summary:
        if e["section"]:
            lines.append(f"| **{e['section']}** |" + blank)
        if e["skipped"]:
            lines.append(f"| {e['label']} | skipped: {e['skipped']} |" + " |" * len(metrics))
            continue
        cells = [f"{e['mean'][m]:.4f} ± {e['std'][m]:.4f}" if m in e["mean"] else "—" for m, _ in metrics]
        lines.append(f"| {e['label']} | " + " | ".join(cells) + f" | {len(e['seeds'])} |")
        if e["reference"] and e["pairs"]:
            cells = [f"{_fmt_pct(e['improve'].get(m))} (p={_fmt_p(e['p'].get(m))})" for m, _ in metrics]
            lines.append(f"| Improve. vs {e['reference']} | " + " | ".join(cells) + f" | {e['pairs']} pairs |")
    return "\n".join(lines) + "\n"


def render_csv(summary, metrics=METRICS):
    """One line per row: mean, std, relative improvement (%) and p per metric."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["section", "setting", "skipped", "seeds", "reference", "pairs"]
    for _, name in metrics:
        header += [f"{name} mean", f"{name} std", f"{name} improve %", f"{name} p"]
    writer.writerow(header)
    section = ""
    for e in summary:
        section = e["section"] or section
        line = [section, e["label"], e["skipped"] or "", len(e["seeds"]), e["reference"] or "", e["pairs"]]
        for m, _ in metrics:
            imp = e["improve"].get(m)
            line += [_num(e["mean"].get(m)), _num(e["std"].get(m)),
                     "" if imp is None else _num(100 * imp), _num(e["p"].get(m))]
        writer.writerow(line)
    return buf.getvalue()


def render_runs_csv(rows, records, seeds, split="test", metrics=METRICS):
    """Every run's own numbers: one line per (row, seed)."""
    index = index_records(records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["setting", "model", "seed"] + [name for _, name in metrics])
    for row in rows:
        for seed, vals in sorted(row_values(row, index, seeds, split).items()):
            writer.writerow([row.label, row.spec.model, seed] + [_num(vals.get(m)) for m, _ in metrics])
    return buf.getvalue()


def _num(x):
    return "" if x is None else repr(float(x))
