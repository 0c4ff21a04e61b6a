"""Sweeps on Ray: ``run_hyper.py --tool Ray`` and ``run_experiments.py ... --ray`` on a real local Ray
instance started here give the records the local path gives, and resume from them."""

import json
import math
import os

import pytest

import run_hyper
from recbole_reveal.cluster import worker_runtime_env
from recbole_reveal.commands.run_experiments import main as cli_main

FAST = {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_heads": 2, "train_batch_size": 64,
        "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 10, "stopping_step": 100}
# what differs between two executions of one run: its duration, its cost report, where it wrote checkpoints
VOLATILE = ("seconds", "cost", "cost_file")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=worker_runtime_env())
    yield ray
    ray.shutdown()


@pytest.fixture
def fast(tiny_root):
    return dict(FAST, data_path=tiny_root)


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for key in sorted(obj):
            yield from _leaves(obj[key], path + (key,))
    elif isinstance(obj, list):
        for k, value in enumerate(obj):
            yield from _leaves(value, path + (k,))
    else:
        yield path, obj


class _Close:
    """AVL's per-epoch diagnostics (raw losses, coefficients, gradient ratios): a Ray task runs torch on its one
    CPU's thread, the local run on two, so they differ in the last float digits; every entry must be there, and
    each number equal to 1e-5 (the metrics beside them are RecBole's rounded ones and compared exactly)."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        mine, theirs = list(_leaves(self.value)), list(_leaves(other.value))
        return [p for p, _ in mine] == [p for p, _ in theirs] and all(
            (math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9) or a != a and b != b)
            if isinstance(a, float) and isinstance(b, float) else a == b
            for (_, a), (_, b) in zip(mine, theirs))

    def __repr__(self):
        return f"_Close({self.value!r})"


def _records(folder):
    """``{file name: record without its volatile parts}`` of a run-record folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            record = json.load(f)
        for key in VOLATILE:
            record.pop(key)
        record["config"].pop("checkpoint_dir")
        record["avl_epochs"] = _Close(record.get("avl_epochs"))
        out[name] = record
    return out


def test_run_hyper_tool_ray_gives_the_local_records_and_resumes(local_ray, fast, tmp_path, capsys):
    params = tmp_path / "alpha.hyper"
    params.write_text("avl_alpha choice [0.05,1.0]\n")
    fixed = [f"--{k}={v}" for k, v in fast.items()]
    outputs = {}
    for tool in ("Hyperopt", "Ray"):
        argv = ["--model=M3SRec_REVEAL", "--dataset=tiny", f"--params_file={params}", "--algo=exhaustive",
                f"--output_file={tmp_path / tool / 'hyper.result'}", f"--results_dir={tmp_path / tool / 'trials'}",
                f"--tool={tool}", *fixed]
        assert run_hyper.main(argv) == 0
        outputs[tool] = [line for line in capsys.readouterr().out.splitlines()
                         if line.startswith(("best params", "best valid", "test result"))]
    local, ray_runs = (_records(tmp_path / tool / "trials" / "runs") for tool in ("Hyperopt", "Ray"))
    assert len(local) == 2 and local == ray_runs
    assert outputs["Ray"] == outputs["Hyperopt"] and len(outputs["Ray"]) == 3
    assert (tmp_path / "Ray" / "hyper.result").read_text() == (tmp_path / "Hyperopt" / "hyper.result").read_text()

    # a second Ray sweep loads every trial from its record instead of training it
    runs = tmp_path / "Ray" / "trials" / "runs"
    mtimes = {name: os.path.getmtime(runs / name) for name in os.listdir(runs)}
    assert run_hyper.main(argv) == 0           # argv: the Ray sweep's
    assert {name: os.path.getmtime(runs / name) for name in os.listdir(runs)} == mtimes
    assert [line for line in capsys.readouterr().out.splitlines()
            if line.startswith(("best params", "best valid", "test result"))] == outputs["Ray"]


def test_run_experiments_ray_gives_the_local_records(local_ray, fast, tmp_path, capsys):
    sets = [f"{k}={v}" for k, v in fast.items()]
    for where in ("local", "ray"):
        argv = ["seeds", "--dataset", "tiny", "--models", "M3SRec_REVEAL", "--seeds", "2020", "2021",
                "--out", str(tmp_path / where), "--set", *sets] + (["--ray", "auto"] if where == "ray" else [])
        assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("-> Ray task") == 2
    local, ray_runs = (_records(tmp_path / where / "tiny" / "seeds" / "runs") for where in ("local", "ray"))
    assert len(local) == 2 and local == ray_runs
    tables = [(tmp_path / where / "tiny" / "seeds" / "table.md").read_text() for where in ("local", "ray")]
    assert tables[0] == tables[1]
    # resumption: nothing pending, nothing dispatched
    assert cli_main(argv) == 0
    again = capsys.readouterr().out
    assert "2 already saved" in again and "Ray task" not in again
