"""The FVE loop's per-cycle table, built from the run records only (a finished run reproduces it without
running anything)."""

KINDS = ("encode", "train", "feedback", "critic")


def cycle_table(run, n_cycles):
    """One row per cycle that has finished encoding: prompt changes, encoding and cache counts, the
    selection, the critic's counts and acceptance rate, the best validation and the test results, and
    the seconds of each stage."""
    rows = []
    for x in range(n_cycles):
        names = {k: f"cycle_{x}/{k}" for k in KINDS}
        enc = run.record(names["encode"])
        if enc is None:
            break
        train = run.record(names["train"], {})
        fb = run.record(names["feedback"], {})
        crit = run.record(names["critic"], {})
        rows.append({
            "cycle": x, "prompts_changed": enc["prompts_changed"], "items_reencoded": enc["items_reencoded"],
            "cache_hits": enc["cache_hits"], "missing_images": enc["missing_images"],
            "selected": fb.get("selected"), "critic": crit.get("counts"), "acceptance": crit.get("acceptance"),
            "valid": train.get("valid", {}), "test": train.get("test", {}),
            "seconds": {k: run.record(n, {}).get("seconds") for k, n in names.items()},
        })
    return rows


def format_table(rows, valid_metric):
    """The per-cycle table as text."""
    head = (f"{'cycle':>5} {'prompts changed':>15} {'re-encoded':>10} {'cache hits':>10} {'accepted':>12} "
            f"{'valid ' + valid_metric:>16} {'test ' + valid_metric:>16}  seconds (encode/train/feedback/critic)")
    lines, key = [head], valid_metric.lower()

    def metric(v):
        return "-" if v is None else f"{v:.4f}"

    for r in rows:
        s = r["seconds"]
        sec = "/".join("-" if s.get(k) is None else f"{s[k]:.1f}" for k in KINDS)
        lines.append(f"{r['cycle']:>5} {r['prompts_changed']:>15} {r['items_reencoded']:>10} {r['cache_hits']:>10} "
                     f"{_acceptance(r):>12} {metric(r['valid'].get(key)):>16} {metric(r['test'].get(key)):>16}  {sec}")
    return "\n".join(lines)


def _acceptance(row):
    """``accepted/answered (share)`` of a cycle's critic, ``-`` without one."""
    share = row.get("acceptance")
    if not share:
        return "-"
    rate = "-" if share["rate"] is None else f"{100 * share['rate']:.0f}%"
    return f"{share['accepted']}/{share['answered']} ({rate})"
