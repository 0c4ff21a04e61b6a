"""What the conversion leaves beside the atomic files: the feature sets (the extraction step, through
:func:`recbole_reveal.features.extract.extract`), ``prepare_report.json`` and the dataset's ``README.md``."""

import json
import logging
import os

from recbole_reveal.infra.files import atomic_open
from recbole_reveal.prepare.stats import format_table

logger = logging.getLogger(__name__)


def save_report(root, description, report, rows, out):
    """``prepare_report.json`` and ``README.md`` in ``root`` (each written atomically)."""
    with atomic_open(os.path.join(root, "prepare_report.json"), "w", newline="\n") as f:
        json.dump(report, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    out_label = os.path.basename(os.path.normpath(out)) or "."
    with atomic_open(os.path.join(root, "README.md"), "w", newline="\n") as f:
        f.write(_readme(description, report, format_table(rows, markdown=True), out_label))


def extract_features(name, out, opts):
    """Text and visual feature sets with ``recbole_reveal.features.extract`` (imported here: the converter
    stays light until it extracts)."""
    from recbole_reveal.features.extract import extract

    results = []
    for modality, encoder, default in (("text", opts.text_encoder, "text_minilm"),
                                       ("vision", opts.vision_encoder, "vision_efficientnet_lite0")):
        r = extract(name, data_path=out, modality=modality, encoder=encoder, batch_size=opts.batch_size,
                    device=opts.device, keep_missing=opts.missing_images == "keep")
        if r["name"] != default:
            key = "text_feature" if modality == "text" else "vision_feature"
            logger.warning("the %s feature set is named '%s'; train with --%s=%s (the default is %s)",
                           modality, r["name"], key, r["name"], default)
        if r["zero_rows"]:
            logger.warning("%d items got all-zero visual features (no image)", len(r["zero_rows"]))
        results.append({"name": r["name"], "modality": modality, "encoder": encoder, "rows": r["rows"],
                        "dim": r["dim"], "zero_rows": len(r["zero_rows"]), "missing": len(r["missing"])})
    return results


def _readme(description, report, table_md, out_label):
    name, s = report["dataset"], report["stats"]
    steps = "\n".join(f"| {x['step']} | {x['users']:,} | {x['items']:,} | {x['interactions']:,} |"
                      for x in report["steps"])
    counts = []
    for f in report["files"]:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in f["counts"].items()) or "none"
        counts.append(f"- `{f['file']}`: {f['lines']:,} lines, {f['kept']:,} records kept; {reasons}")
    img = report["images"]
    img_reasons = ", ".join(f"{k}: {v:,}" for k, v in img["failed_sources"].items()) or "none"
    features = "\n".join(f"- `features/{f['name']}.npy`: {f['rows']:,} x {f['dim']} ({f['encoder']})"
                         for f in report["features"]) or "- not extracted (`--skip-features`)"
    command = f"python -m recbole_reveal.commands.prepare_data {report['command_dataset']} --raw-dir RAW --out {out_label}"
    return f"""# {name}

{description}, converted by `recbole_reveal.prepare` (docs/datasets.md) with

```
{command}
```

{s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions (density
{100 * s['density']:.4f}%, average sequence length {s['avg_length']:.2f}).

{table_md}

Items kept without an image: {report.get("missing", {}).get("vision", 0):,}; without text:
{report.get("missing", {}).get("text", 0):,} (marked missing in the feature sets; the paper's protocol drops
them, `--keep_missing` keeps them: docs/missing-modalities.md).

## Files
| file | content |
|---|---|
| `{name}.inter` | `user_id:token item_id:token rating:float timestamp:float`; users in id order, each user's interactions by time (equal times: by item id) |
| `{name}.item` | `item_id:token title:token_seq categories:token_seq brand:token image:token`; `image` relative to this folder |
| `{name}.review` | one review per interaction, line *i* = line *i* of `{name}.inter`: `user_id:token item_id:token timestamp:float review:token` |
| `images/` | one image per item, bytes as fetched; `images/sources.tsv`: source and sha256 of each |
| `image_failures.tsv` | every image source that failed: item, source, reason, detail, and whether a later source of the item was used |
| `features/` | item feature sets (`recbole_reveal.features.extract`) |
| `prepare_report.json` | settings, input files, every counter, the steps below, statistics |

## Steps
| step | users | items | interactions |
|---|---|---|---|
{steps}

## Counters
{chr(10).join(counts)}
- images: {img['requested']:,} requested, {img['stored']:,} stored, {img['from_fallback_candidate']:,} from a later candidate, {img['failed_items']:,} items without a valid image; failed sources: {img_reasons}

## Features
{features}
"""
