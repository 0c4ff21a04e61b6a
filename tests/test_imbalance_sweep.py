"""The imbalance sweep's pooled table: each rule paired with the backbone seed by seed over the settings."""
import importlib.util
import os

import pytest
from scipy.stats import ttest_rel

SWEEP = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "imbalance_sweep.py")


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("imbalance_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(test, vision_only):
    return {"test": {"recall@20": test}, "vision_only": {"recall@20": vision_only}}


def test_pooled_table_pairs_each_rule_with_the_backbone_over_settings(sweep):
    settings = ["text-led", "vision-led"]
    backbone = {"text-led": [(0.60, 0.40), (0.62, 0.41), (0.58, 0.39)],
                "vision-led": [(0.50, 0.30), (0.55, 0.33), (0.52, 0.31)]}
    # the rule: R@20 lower on 4 of 6 runs, vision-only higher on every run by different amounts
    rule = {"text-led": [(0.59, 0.45), (0.63, 0.44), (0.57, 0.43)],
            "vision-led": [(0.49, 0.36), (0.56, 0.34), (0.50, 0.38)]}
    records, cells = [], {}
    for setting in settings:
        for label, runs in (("backbone", backbone), ("agm α=1", rule)):
            for test, vision in runs[setting]:
                cells.setdefault((setting, label), []).append(len(records))
                records.append(_record(test, vision))
    table = sweep.render_pooled(settings, cells, records, ["backbone", "agm α=1"])
    rows = [line for line in table.splitlines() if line.startswith("| agm")]
    assert len(rows) == 1 and not any(line.startswith("| backbone") for line in table.splitlines())
    cols = [c.strip() for c in rows[0].strip("|").split("|")]
    for offset, key in ((1, 0), (4, 1)):
        base = [run[key] for s in settings for run in backbone[s]]
        ours = [run[key] for s in settings for run in rule[s]]
        assert float(cols[offset]) == pytest.approx(sum(ours) / 6 - sum(base) / 6, abs=1e-4)
        assert float(cols[offset + 1]) == pytest.approx(ttest_rel(ours, base).pvalue, abs=1e-4)
        assert cols[offset + 2] == f"{sum(o > b for o, b in zip(ours, base))} of 6"
    assert cols[3] == "2 of 6" and cols[6] == "6 of 6"


def test_pooled_table_says_identical_when_every_run_equals_the_backbone(sweep):
    records = [_record(0.5, 0.3), _record(0.6, 0.4), _record(0.5, 0.3), _record(0.6, 0.4)]
    cells = {("demo", "backbone"): [0, 1], ("demo", "paper α=0.1"): [2, 3]}
    table = sweep.render_pooled(["demo"], cells, records, ["backbone", "paper α=0.1"])
    row = next(line for line in table.splitlines() if line.startswith("| paper"))
    assert [c.strip() for c in row.strip("|").split("|")] == \
        ["paper α=0.1", "+0.0000", "identical", "0 of 2", "+0.0000", "identical", "0 of 2"]
