"""The paper's experiments as lists of table rows (§2 / Fig. 1d-e, Tables 2-4).

A :class:`Row` names the run behind it (a :class:`~recbole_reveal.experiments.runs.RunSpec`), which of
the run's results it shows (``view``: the test result, or the test result with a modality zeroed at
inference), and optionally the row it is compared with (relative improvement, paired t-test).
"""

from dataclasses import dataclass
from typing import Optional

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.experiments.runs import RunSpec, model_display_name
from recbole_reveal.data.availability import POPULARITY_BUCKETS
from recbole_reveal.infra.locations import reveal_only_keys

REVEAL_SUFFIX = "_REVEAL"
FVE_NEEDS_VLM = "w/ FVE needs --vlm_path (a local Qwen2.5-VL / Qwen3-VL folder)"


@dataclass
class Row:
    label: str
    spec: RunSpec
    view: Optional[str] = None          # None: test_result; "text"/"vision": that modality zeroed at inference
    reference: Optional[str] = None     # label of the row this one is compared with
    section: Optional[str] = None       # heading printed above the row's block
    skipped: Optional[str] = None       # why the row cannot run (e.g. FVE without a VLM)
    cell: Optional[tuple] = None        # the missing protocol: (setting, modality, scope, subset, rate)


def backbone_of(model):
    """``X`` for ``X_REVEAL``, else the name itself."""
    return model[: -len(REVEAL_SUFFIX)] if model.endswith(REVEAL_SUFFIX) else model


def check_models(models):
    """Resolve every name now, so a typo fails before hours of runs."""
    from recbole_reveal import get_model

    for model in models:
        get_model(model)


def _reserved(overrides, keys, command):
    clash = sorted(set(overrides) & set(keys))
    if clash:
        raise ConfigError(f"'{command}' sets {clash} itself for each of its rows; remove them from --set")


def _fve(spec, vlm_path):
    """The spec with FVE on, or (spec, reason) when no VLM is given."""
    if not vlm_path:
        return spec.with_overrides(fve=True), FVE_NEEDS_VLM
    return spec.with_overrides(fve=True, vlm_path=vlm_path), None


def seeds_rows(models, overrides=None, grid=None, eval_zeroed=(), vlm_path=None, by_popularity=False):
    """Table 2: one row per model (x each value of ``grid``: {key: [values]}); each ``X_REVEAL`` row is
    compared with the ``X`` row of the same grid point, when ``X`` is in ``models``. With
    ``eval_zeroed``, each model that has modalities also gets a row per modality zeroed at inference.
    ``vlm_path`` goes to the ``*_REVEAL`` models only (their FVE loop); the others never see it. With
    ``by_popularity``, each model also gets a row per popularity bucket of the test targets (the number
    of training interactions: 0, 1-4, 5-9, >= 10), compared like the model's own row."""
    overrides = dict(overrides or {})
    eval_zeroed = list(eval_zeroed or [])
    if eval_zeroed:
        _reserved(overrides, ("eval_zeroed_modalities",), "seeds --eval_zeroed")
    if by_popularity:
        _reserved(overrides, ("eval_by_popularity",), "seeds --by_popularity")
    points = [{}]
    for key, values in (grid or {}).items():
        points = [dict(p, **{key: v}) for p in points for v in values]
    reveal_only = reveal_only_keys()
    rows, labels_made = [], set()
    for point in points:
        for model in models:
            is_reveal = model.endswith(REVEAL_SUFFIX)
            # a model without REVEAL ignores REVEAL's keys: one row for the whole sweep, the
            # reference of every grid point, instead of identical re-runs
            own = point if is_reveal else {k: v for k, v in point.items() if k not in reveal_only}
            label = _grid_label(model, own)
            if label in labels_made:
                continue
            labels_made.add(label)
            base = backbone_of(model)
            reference = None
            if model != base and base in models:
                reference = _grid_label(base, {k: v for k, v in point.items() if k not in reveal_only})
            zeroed = eval_zeroed if eval_zeroed and _has_modalities(model) else []
            extra = {"eval_zeroed_modalities": zeroed} if zeroed else {}
            if by_popularity:
                extra["eval_by_popularity"] = True
            if vlm_path and model != base:
                extra["vlm_path"] = vlm_path
            spec = RunSpec(model, dict(overrides, **own, **extra))
            rows.append(Row(label, spec, reference=reference))
            for modality in zeroed:
                rows.append(Row(f"{label}, {modality} zeroed at inference", spec, view=modality))
            for bucket, _, _ in (POPULARITY_BUCKETS if by_popularity else ()):
                rows.append(Row(_bucket_label(label, bucket), spec, view=f"popularity/{bucket}",
                                reference=reference and _bucket_label(reference, bucket)))
    return rows


def _bucket_label(label, bucket):
    return f"{label}, targets with {bucket} training interactions"


def missing_rows(models, handlings, rates, scopes, modalities, mask_seed=0, overrides=None):
    """The robustness protocol: each model under each ``missing_modality`` handling, evaluated with a
    fraction r of the items missing a modality at test time (``eval_missing_*`` keys), per modality,
    scope and rate; ``.../one_modality`` rows: the test users whose target has one modality observed.
    Each ``X_REVEAL`` row is compared with the ``X`` row of the same handling and cell."""
    overrides = dict(overrides or {})
    _reserved(overrides, ("missing_modality", "eval_missing_rates", "eval_missing_scopes",
                          "eval_missing_modalities", "eval_missing_seed"), "missing")
    for model in models:
        if not _has_modalities(model):
            raise ConfigError(f"'missing' masks item features: {model} reads none (a multimodal backbone such as "
                              "M3SRec, MISSRec, HM4SR, or its _REVEAL variant, is needed)")
    rates = sorted(set(float(r) for r in rates))
    rows = []
    for handling in handlings:
        for model in models:
            base = backbone_of(model)
            setting = f"{model_display_name(model)} [{handling}]"
            reference = f"{model_display_name(base)} [{handling}]" if model != base and base in models else None
            spec = RunSpec(model, dict(overrides, missing_modality=handling, eval_missing_rates=rates,
                                       eval_missing_scopes=list(scopes), eval_missing_modalities=list(modalities),
                                       eval_missing_seed=mask_seed))
            rows.append(Row(setting, spec, reference=reference))
            for modality in modalities:
                for scope in scopes:
                    for subset in ("all", "one_modality"):
                        for rate in rates:
                            view = f"{modality}/{scope}/{rate:g}" + ("" if subset == "all" else "/one_modality")
                            rows.append(Row(f"{setting} {view}", spec, view=view,
                                            reference=reference and f"{reference} {view}",
                                            cell=(setting, modality, scope, subset, rate)))
    return rows


def _grid_label(model, point):
    tag = ", ".join(f"{k}={v}" for k, v in point.items())
    return f"{model_display_name(model)} ({tag})" if tag else model_display_name(model)


def _has_modalities(model):
    from recbole_reveal import get_model

    return hasattr(get_model(model), "zeroed_modalities")


def variants_rows(backbone, overrides=None, vlm_path=None):
    """Table 3: base model, w/ FVE, w/ AVL, w/ REVEAL (each switch alone, then both)."""
    overrides = dict(overrides or {})
    _reserved(overrides, ("avl", "fve", "vlm_path"), "variants")
    backbone = backbone_of(backbone)
    reveal = RunSpec(backbone + REVEAL_SUFFIX, overrides)
    fve_only, why = _fve(reveal.with_overrides(avl=False), vlm_path)
    both, _ = _fve(reveal.with_overrides(avl=True), vlm_path)
    base = "Base model"
    return [
        Row(base, RunSpec(backbone, overrides), section=model_display_name(backbone)),
        Row("w/ FVE", fve_only, reference=base, skipped=why),
        Row("w/ AVL", reveal.with_overrides(avl=True, fve=False), reference=base),
        Row("w/ REVEAL", both, reference=base, skipped=why),
    ]


def modality_rows(backbone, overrides=None, vlm_path=None):
    """§2 / Fig. 1d-e: the five input configurations, then Table 4's V-only block (text zeroed in
    training and inference) for base, + FVE, + AVL, + REVEAL."""
    overrides = dict(overrides or {})
    _reserved(overrides, ("avl", "fve", "vlm_path", "zeroed_modalities", "eval_zeroed_modalities"), "modality")
    backbone = backbone_of(backbone)
    if not _has_modalities(backbone):
        raise ConfigError(f"'modality' zeroes text / vision inputs: {backbone} has no modality masking "
                          "(a MultimodalSequentialRecommender backbone such as M3SRec, MISSRec, HM4SR is needed)")
    full = RunSpec(backbone, dict(overrides, eval_zeroed_modalities=["text", "vision"]))
    text_uni = RunSpec(backbone, dict(overrides, zeroed_modalities=["vision"]))
    vision_uni = RunSpec(backbone, dict(overrides, zeroed_modalities=["text"]))
    reveal_v = RunSpec(backbone + REVEAL_SUFFIX, dict(overrides, zeroed_modalities=["text"]))
    fve_only, why = _fve(reveal_v.with_overrides(avl=False), vlm_path)
    both, _ = _fve(reveal_v.with_overrides(avl=True), vlm_path)
    v_only = "V-Only"
    return [
        Row("Full modality", full, section=f"{model_display_name(backbone)}: modality ablation (Fig. 1d-e)"),
        Row("Text-only (unimodal)", text_uni),
        Row("Text-only (multimodal)", full, view="vision"),
        Row("Vision-only (unimodal)", vision_uni),
        Row("Vision-only (multimodal)", full, view="text"),
        Row(v_only, vision_uni, section=f"{model_display_name(backbone)}: Vision-Only setting (Table 4)"),
        Row("V-Only + FVE", fve_only, reference=v_only, skipped=why),
        Row("V-Only + AVL", reveal_v.with_overrides(avl=True, fve=False), reference=v_only),
        Row("V-Only + REVEAL", both, reference=v_only, skipped=why),
    ]


def runnable_specs(rows):
    """The distinct runs behind the rows that can run, in row order."""
    specs = []
    for row in rows:
        if row.skipped is None and row.spec not in specs:
            specs.append(row.spec)
    return specs


def mark_missing_models(rows):
    """Rows whose model does not exist are skipped with the reason; a missing model behind a row
    nothing is compared against (a base row) is an error."""
    from recbole_reveal import get_model
    from recbole_reveal.infra.errors import UnknownModelError

    known = {}
    for row in rows:
        name = row.spec.model
        if name not in known:
            try:
                get_model(name)
                known[name] = True
            except UnknownModelError as e:
                if row.reference is None:
                    raise
                known[name] = e
        if known[name] is not True and row.skipped is None:
            row.skipped = f"no model {name}"
    return rows
