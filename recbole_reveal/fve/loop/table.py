"""The FVE loop's per-cycle table, built from the run records only (a finished run reproduces it without
running anything)."""

KINDS = ("encode", "train", "feedback", "critic")
# The GPU-time estimate: the encoder's TFLOP (2 x parameters x tokens / patches) on the paper's hardware,
# 8 x RTX 4090 (165 dense bf16 TFLOP/s each with fp32 accumulation) at an assumed 35 % utilisation.
REFERENCE_GPUS, REFERENCE_TFLOPS, REFERENCE_UTILISATION = 8, 165.0, 0.35
INTERACTION_KEYS = ("interactions", "interaction_prompts_changed", "interactions_reencoded", "interaction_cache_hits")


def gpu_seconds(tflop):
    """Seconds of ``tflop`` on the reference hardware (REFERENCE_* above); None when unknown."""
    if tflop is None:
        return None
    return tflop / (REFERENCE_GPUS * REFERENCE_TFLOPS * REFERENCE_UTILISATION)


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
        work = enc.get("work") or {}
        rows.append({
            "cycle": x, "prompts_changed": enc["prompts_changed"], "items_reencoded": enc["items_reencoded"],
            "cache_hits": enc["cache_hits"], "missing_images": enc["missing_images"],
            **{k: enc[k] for k in INTERACTION_KEYS if k in enc},
            "lm_passes": work.get("lm_passes"), "vision_passes": work.get("vision_passes"),
            "tflop": work.get("tflop"), "est_gpu_s": gpu_seconds(work.get("tflop")),
            "selected": fb.get("selected"), "critic": crit.get("counts"), "acceptance": crit.get("acceptance"),
            "valid": train.get("valid", {}), "test": train.get("test", {}),
            "seconds": {k: run.record(n, {}).get("seconds") for k, n in names.items()},
        })
    return rows


def format_table(rows, valid_metric):
    """The per-cycle table as text (interaction scope: the interactions' prompt changes, re-encodes and
    cache hits too); then the encoder's work: language-model and vision-tower passes, TFLOP and the
    GPU-time estimate on 8 x RTX 4090 (35 % utilisation)."""
    scope = any("interactions" in r for r in rows)
    inter = (f" {'inter. changed':>14} {'inter. re-enc.':>14} {'inter. hits':>11}" if scope else "")
    head = (f"{'cycle':>5} {'prompts changed':>15} {'re-encoded':>10} {'cache hits':>10}{inter} {'accepted':>12} "
            f"{'valid ' + valid_metric:>16} {'test ' + valid_metric:>16}  seconds (encode/train/feedback/critic)")
    lines, key = [head], valid_metric.lower()

    def metric(v):
        return "-" if v is None else f"{v:.4f}"

    def num(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)

    for r in rows:
        s = r["seconds"]
        sec = "/".join("-" if s.get(k) is None else f"{s[k]:.1f}" for k in KINDS)
        inter = (f" {num(r.get('interaction_prompts_changed')):>14} {num(r.get('interactions_reencoded')):>14} "
                 f"{num(r.get('interaction_cache_hits')):>11}" if scope else "")
        lines.append(f"{r['cycle']:>5} {r['prompts_changed']:>15} {r['items_reencoded']:>10} {r['cache_hits']:>10}"
                     f"{inter} {_acceptance(r):>12} {metric(r['valid'].get(key)):>16} {metric(r['test'].get(key)):>16}"
                     f"  {sec}")
    lines.append(f"{'cycle':>5} {'LM passes':>10} {'vision passes':>13} {'TFLOP':>10} {'est. s on 8x4090':>17}")
    for r in rows:
        lines.append(f"{r['cycle']:>5} {num(r.get('lm_passes')):>10} {num(r.get('vision_passes')):>13} "
                     f"{num(r.get('tflop'), '{:.4g}'):>10} {num(r.get('est_gpu_s'), '{:.3g}'):>17}")
    return "\n".join(lines)


def _acceptance(row):
    """``accepted/answered (share)`` of a cycle's critic, ``-`` without one."""
    share = row.get("acceptance")
    if not share:
        return "-"
    rate = "-" if share["rate"] is None else f"{100 * share['rate']:.0f}%"
    return f"{share['accepted']}/{share['answered']} ({rate})"
