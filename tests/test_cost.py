"""The run-cost meter (paper Table 7): stage timers on an injected clock, the peak-RSS window on
real allocations, and a real tiny run that reports its cost and writes it beside its checkpoint."""

import json
import os
import sys

import numpy as np
import pytest
import torch

from recbole_reveal.infra.cost import CostMeter, cost_path, format_cost, peak_rss_mb, table7, write_cost

from helpers import TINY_USERS


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def tick(self, seconds):
        self.now += seconds


def test_stages_accumulate_seconds_and_calls():
    clock = Clock()
    meter = CostMeter(clock=clock)
    for seconds in (2.0, 3.5):
        with meter.stage("train"):
            clock.tick(seconds)
    clock.tick(10.0)                                   # outside any stage: not counted
    meter.add("fve_encode", 4.25)
    meter.add("fve_encode", 0.75, calls=3)
    assert meter.seconds("train") == 5.5 and meter.calls("train") == 2
    assert meter.seconds("fve_encode") == 5.0 and meter.calls("fve_encode") == 4
    report = meter.report(model="M")
    assert report["train_s"] == 5.5 and report["fve_encode_s"] == 5.0
    assert report["calls"] == {"train": 2, "fve_encode": 4}
    assert report["model"] == "M"


def test_nested_stages_and_reentry_under_the_same_name():
    clock = Clock()
    meter = CostMeter(clock=clock)
    with meter.stage("fit"):
        clock.tick(1.0)
        with meter.stage("train"):
            clock.tick(2.0)
            with meter.stage("train"):                 # e.g. a subclass calling super(): counted once
                clock.tick(4.0)
        with meter.stage("valid"):
            clock.tick(0.5)
    assert meter.seconds("fit") == 7.5
    assert meter.seconds("train") == 6.0 and meter.calls("train") == 1
    assert meter.seconds("valid") == 0.5
    assert [k for k in meter.report() if k.endswith("_s")] == ["fit_s", "train_s", "valid_s"]  # order of start


def test_a_stage_that_raises_still_counts():
    clock = Clock()
    meter = CostMeter(clock=clock)
    with pytest.raises(RuntimeError):
        with meter.stage("test_inference"):
            clock.tick(1.5)
            raise RuntimeError("boom")
    with meter.stage("test_inference"):                # the open-count was restored
        clock.tick(1.0)
    assert meter.seconds("test_inference") == 2.5 and meter.calls("test_inference") == 2


@pytest.mark.parametrize("name", ["", "train_s", "1st", "fve encode", None])
def test_bad_stage_names_are_errors(name):
    with pytest.raises(ValueError, match="stage name"):
        CostMeter().add(name, 1.0)


def test_negative_or_nan_seconds_are_errors():
    meter = CostMeter()
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="fve_critic"):
            meter.add("fve_critic", bad)


def test_timing_times_a_method_only_inside_the_block_and_restores_it():
    clock = Clock()

    class Base:
        def step(self, n):
            clock.tick(n)
            return n * 10

    class Child(Base):
        def step(self, n):                             # calls through super(): one timed call
            clock.tick(1.0)
            return super().step(n)

    meter = CostMeter(clock=clock)
    obj = Child()
    with meter.timing(obj, "step", "train"):
        assert obj.step(2.0) == 20.0
        assert obj.step(3.0) == 30.0
    assert "step" not in vars(obj)                     # the wrapper is gone
    obj.step(100.0)                                    # not timed
    assert meter.seconds("train") == 7.0 and meter.calls("train") == 2

    obj.step = lambda n: clock.tick(n)                 # a pre-existing instance attribute is restored
    own = obj.step
    with meter.timing(obj, "step", "valid"):
        obj.step(0.25)
    assert obj.step is own and meter.seconds("valid") == 0.25

    with meter.timing(obj, "no_such_method", "other"):  # absent: nothing wrapped, no stage
        pass
    assert "other_s" not in meter.report()


@pytest.mark.skipif(not os.path.isfile("/proc/self/clear_refs"), reason="the peak-RSS reset is Linux-only")
def test_the_memory_window_starts_at_start_memory():
    size = 300 * 2**20
    block = np.ones(size // 8)                         # touched: 300 MiB resident
    before = peak_rss_mb()
    del block
    meter = CostMeter()
    meter.start_memory()
    assert meter.rss_scope == "run"
    after_reset = meter.memory()["peak_rss_mb"]
    assert after_reset < before - 250                  # the old peak is forgotten
    block = np.ones(size // 2 // 8)                    # 150 MiB inside the window
    grown = meter.memory()["peak_rss_mb"]
    del block
    assert grown > after_reset + 140
    assert meter.memory()["peak_rss_mb"] == pytest.approx(grown, abs=5)   # a peak stays after the free


@pytest.mark.skipif(not os.path.isfile("/proc/self/clear_refs"), reason="the peak-RSS reset is Linux-only")
def test_each_stage_reports_its_own_peak_rss_and_the_run_peak_keeps_the_largest():
    meter = CostMeter()
    meter.start_memory()
    with meter.stage("fve_encode"):
        with meter.stage("fve_big"):
            block = np.ones(400 * 2**20 // 8)          # 400 MiB touched, then freed
            del block
        with meter.stage("fve_small"):
            block = np.ones(100 * 2**20 // 8)
            del block
    with meter.stage("fve_feedback"):
        pass
    report = meter.report()
    peaks = report["peak_rss_mb_by_stage"]
    assert set(peaks) == {"fve_encode", "fve_big", "fve_small", "fve_feedback"}
    assert peaks["fve_big"] > peaks["fve_small"] + 250 and peaks["fve_small"] > peaks["fve_feedback"] + 80
    assert peaks["fve_encode"] >= peaks["fve_big"]    # an outer stage includes its inner ones' peaks
    assert report["peak_rss_mb"] >= peaks["fve_big"]   # later resets did not lose the run's peak
    assert "peak RSS MiB" in format_cost(report)
    assert "peak_rss_mb_by_stage" not in CostMeter().report()   # no memory window: no stage peaks


def test_cost_path_and_format():
    assert cost_path("/x/saved/M3SRec-Nov-25.pth") == "/x/saved/M3SRec-Nov-25.cost.json"
    clock = Clock()
    meter = CostMeter(clock=clock)
    with meter.stage("fit"):
        clock.tick(12.3456)
    text = format_cost(meter.report(model="M3SRec", dataset="tiny"))
    assert "model=M3SRec, dataset=tiny" in text
    assert any(line.split()[:3] == ["fit", "12.346", "1"] for line in text.splitlines())
    assert "peak RSS" in text


def test_table7_columns_split_backbone_training_from_fve():
    clock = Clock()
    meter = CostMeter(clock=clock)
    with meter.stage("fit"):
        clock.tick(3600.0)
    meter.add("fve_encode", 1800.0)
    meter.add("fve_critic", 900.0)
    meter.add("fve_critic", 900.0)
    for _ in range(2):                                 # e.g. two FVE cycles: per pass
        with meter.stage("test_inference"):
            clock.tick(4.1)
    row = table7(meter.report())
    assert (row["train_wo_fve_h"], row["fve_h"], row["total_h"]) == (1.0, 1.0, 2.0)
    assert row["inference_s"] == 4.1 and row["memory_of"] in ("rss", "gpu") and row["memory_gb"] > 0
    assert "training w/o FVE 1.0000 h, FVE 1.0000 h, total 2.0000 h; inference 4.1 s" in format_cost(meter.report())


def _vm_rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_real_run_reports_its_cost_and_writes_it_beside_the_checkpoint(tiny_config):
    from recbole_reveal import run_recbole_reveal

    config = dict(tiny_config, epochs=2, eval_zeroed_modalities=["vision"], show_progress=False)
    result = run_recbole_reveal("M3SRec", "tiny", config_dict=config)
    cost = result["cost"]
    json.dumps(cost)                                   # JSON-serialisable as returned
    assert (cost["model"], cost["dataset"], cost["seed"], cost["device"]) == ("M3SRec", "tiny", 2020, "cpu")
    assert cost["test_users"] == TINY_USERS
    assert cost["calls"]["train"] == 2 and cost["calls"]["valid"] == 2     # one per epoch
    for key in ("setup_s", "train_s", "valid_s", "fit_s", "test_inference_s", "test_inference_vision_zeroed_s"):
        assert cost[key] > 0, key
    assert cost["fit_s"] >= cost["train_s"] + cost["valid_s"] - 0.002     # each rounded to ms
    assert cost["peak_rss_mb"] > 0
    if sys.platform.startswith("linux"):
        assert cost["peak_rss_mb"] >= _vm_rss_mb() - 32   # a peak (MiB, not KiB) is not below today's RSS
    if not torch.cuda.is_available():
        assert cost["peak_gpu_mb"] is None

    path = result["cost_file"]
    assert path.endswith(".cost.json") and os.path.isfile(path)
    assert os.path.dirname(path) == config["checkpoint_dir"]
    assert os.path.isfile(path[: -len(".cost.json")] + ".pth")              # beside its checkpoint
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == cost


def test_write_cost_is_atomic_json(tmp_path):
    path = write_cost(str(tmp_path / "sub" / "run.cost.json"), {"fit_s": 1.5, "calls": {"fit": 1}})
    assert os.listdir(tmp_path / "sub") == ["run.cost.json"]
    with open(path) as f:
        assert json.load(f) == {"fit_s": 1.5, "calls": {"fit": 1}}
