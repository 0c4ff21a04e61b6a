"""Training in 2 processes (gloo on CPU) through RecBole's distributed path: replicas stay identical,
AVL applies one K on every rank, metrics are the ranks' agreed ones, errors end the run cleanly."""

import os
import socket
import sys

import numpy as np
import pytest
import torch

from recbole_reveal.adaptation.launch import Plan
from helpers import build_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
TESTS = os.path.dirname(os.path.abspath(__file__))
HM4SR = {"category_weight": 0, "time_unit": 1}
RUNS = {
    "m3srec_reveal": ("M3SRec_REVEAL", {"avl_alpha": 1.0, "avl_clamp": None}),
    "hm4sr_reveal": ("HM4SR_REVEAL", dict(HM4SR, avl_alpha=1.0, avl_clamp=None)),
    "m3srec": ("M3SRec", {}),
    "m3srec_reveal_avl_off": ("M3SRec_REVEAL", {"avl": False}),
    "missrec_reveal": ("MISSRec_REVEAL", {"avl_alpha": 1.0, "avl_clamp": None}),
}
# the other balancing rules (avl_rule) on every REVEAL backbone
RULE_SETTINGS = {"reference": {"avl_alpha": 1.0}, "agm": {"avl_alpha": 0.5}, "ogm_ge": {"avl_alpha": 0.5},
                 "ckd": {"avl_alpha": 1.0}}
BACKBONE_SETTINGS = {"M3SRec_REVEAL": {}, "HM4SR_REVEAL": HM4SR, "MISSRec_REVEAL": {"hidden_dropout_prob": 0.1}}
RULE_RUNS = [f"{model.lower()}_{rule}" for model in BACKBONE_SETTINGS for rule in RULE_SETTINGS]
RUNS.update({f"{model.lower()}_{rule}": (model, dict(BACKBONE_SETTINGS[model], avl_rule=rule, **settings))
             for model in BACKBONE_SETTINGS for rule, settings in RULE_SETTINGS.items()})
TIMEOUT = 600          # seconds; a hang fails the test instead of the CI job


def _two_cores():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores < 2:
        pytest.skip("a 2-process run needs 2 CPU cores")


@pytest.fixture(scope="module")
def ddp_runs(tiny_root, tmp_path_factory):
    """Every run of RUNS trained once by the same 2 gloo processes; ``(records[label][rank], reported,
    config)``."""
    _two_cores()
    from ddp_targets import train_record_and_uneven_step

    out = tmp_path_factory.mktemp("ddp")
    config = {"data_path": tiny_root, "checkpoint_dir": str(out / "saved"), "epochs": 2, "hidden_size": 16,
              "inner_size": 32, "n_heads": 2, "train_batch_size": 64, "eval_batch_size": 256,
              "MAX_ITEM_LIST_LENGTH": 10, "stopping_step": 100, "show_progress": False}
    plan = Plan(nproc=2, world_size=2, offset=0, ip="localhost", port=_free_port(), cuda=False, timeout=TIMEOUT)
    reported = plan.run(train_record_and_uneven_step, RUNS, str(out), config_dict=config)
    records = {label: [torch.load(out / f"{label}-rank{r}.pt", weights_only=False) for r in (0, 1)]
               for label in list(RUNS) + ["uneven"]}
    return records, reported, config


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("label", ["m3srec_reveal", "hm4sr_reveal"])
def test_avl_applies_the_same_k_on_both_ranks_at_every_step(ddp_runs, label):
    records, _, _ = ddp_runs
    rank0, rank1 = records[label]
    assert rank0["world_size"] == 2 and rank0["rows_per_step"] == 32       # 64 rows a step over 2 ranks
    assert len(rank0["k"]) == len(rank1["k"]) > 4
    assert rank0["k"] == rank1["k"]                      # bit for bit
    assert len(set(rank0["k"])) > 2 and rank0["k"] != [1.0] * len(rank0["k"])
    assert rank0["stacked"] is True


@pytest.mark.parametrize("label", RULE_RUNS)
def test_every_rule_applies_the_same_coefficients_on_both_ranks(ddp_runs, label):
    records, _, _ = ddp_runs
    rank0, rank1 = records[label]
    assert rank0["coefficients"] == rank1["coefficients"]           # vision and text, bit for bit
    assert {"vision", "text"} <= set(rank0["coefficients"][0])
    assert len({c["text"] for c in rank0["coefficients"]} | {c["vision"] for c in rank0["coefficients"]}) > 2
    # the diagnostics (unimodal validation, gradient-norm ratio) agree too
    assert rank0["avl_epochs"] == rank1["avl_epochs"] and rank0["avl_epochs"][-1]["valid_text_zeroed"] >= 0


def test_k_comes_from_the_ranks_losses_weighted_by_their_rows(ddp_runs):
    """Ranks with 5 and 27 rows in a step: K is the paper's K of the global batch, whose unimodal losses
    are the ranks' losses weighted by their rows (an unweighted mean gives another K)."""
    from recbole_reveal.trainer.avl_rules import PaperRule

    records, _, _ = ddp_runs
    r0, r1 = records["uneven"]
    assert (r0["rows"], r1["rows"]) == (5, 27) and r0["local"] != r1["local"]

    def k_of(loss_v, loss_t):
        balance = PaperRule(alpha=1.0, clamp=None)          # the trainer's run has avl_clamp: ~
        balance.load_state_dict(r0["state"])
        return balance.update(loss_v, loss_t)

    n = r0["rows"] + r1["rows"]
    weighted = k_of(*[(r0["local"][m] * r0["rows"] + r1["local"][m] * r1["rows"]) / n for m in (0, 1)])
    unweighted = k_of(*[(r0["local"][m] + r1["local"][m]) / 2 for m in (0, 1)])
    assert abs(weighted - unweighted) > 1e-3 * weighted             # the two means are told apart
    assert r0["k"] == r1["k"] == pytest.approx(weighted, rel=1e-9)


@pytest.mark.parametrize("label", list(RUNS))
def test_every_parameter_is_identical_across_ranks_after_training(ddp_runs, label):
    records, _, _ = ddp_runs
    rank0, rank1 = records[label]
    assert rank0["state"].keys() == rank1["state"].keys()
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    changed = [n for n, v in rank0["state"].items() if not torch.equal(v, rank0["initial"][n])]
    assert changed, "training changed nothing"
    assert rank0["checkpoint"] == rank1["checkpoint"]      # one checkpoint name, rank 0's


@pytest.mark.parametrize("label", list(RUNS))
def test_each_rank_computes_the_metrics_rank_0_reports(ddp_runs, label):
    records, reported, _ = ddp_runs
    rank0, rank1 = records[label]
    assert rank0["valid"] == rank1["valid"] == reported[label]["valid"]
    assert rank0["test"] == rank1["test"] == reported[label]["test"]


def test_gathered_metrics_equal_one_process_evaluating_the_same_model(ddp_runs):
    """No user counted twice (DistributedSampler pads), no per-rank averaging of rounded metrics."""
    records, _, config = ddp_runs
    _, (_, _, test_data), model, trainer = build_pipeline("M3SRec_REVEAL", dict(config, **RUNS["m3srec_reveal"][1]))
    model.load_state_dict(records["m3srec_reveal"][0]["best_state"])
    single = trainer.evaluate(test_data, load_best_model=False)
    assert dict(single) == records["m3srec_reveal"][0]["test"]


def test_plain_backbone_trains_and_avl_off_equals_it_under_ddp(ddp_runs):
    records, _, _ = ddp_runs
    plain, off = records["m3srec"][0], records["m3srec_reveal_avl_off"][0]
    losses = [plain["train_loss"][e] for e in sorted(plain["train_loss"])]
    assert losses[-1] < losses[0]
    for name, value in plain["state"].items():
        assert torch.equal(value, off["state"][name]), name
    assert plain["test"] == off["test"] and plain["k"] == [None] * len(plain["k"])


# -- the command line ----------------------------------------------------------------------------------
def _main(args, capsys):
    """``python run_recbole_reveal.py ARGS`` in this process (its workers are real processes):
    ``(rc, stdout, stderr)``."""
    import run_recbole_reveal as script

    rc = script.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _tiny_args(tiny_root, tmp_path):
    return [f"--data_path={tiny_root}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=1",
            "--hidden_size=16", "--inner_size=32", "--n_heads=2", "--MAX_ITEM_LIST_LENGTH=10"]


def _shape(stdout):
    """The printed result without its numbers."""
    return [line.split(":")[0] + ":" + ",".join(part.split(":")[0] for part in line.split("  ")[1:])
            for line in stdout.splitlines()]


def test_nproc_on_the_command_line_prints_the_single_process_form(tiny_root, tmp_path, capsys, monkeypatch):
    _two_cores()
    monkeypatch.chdir(tmp_path)
    args = ["--model=M3SRec_REVEAL", "--dataset=tiny", *_tiny_args(tiny_root, tmp_path)]
    rc, ddp, err = _main(args + ["--nproc=2"], capsys)
    assert rc == 0, err[-3000:]
    # only rank 0 logs and writes the cost report: one log file, one .cost.json
    assert len(os.listdir(tmp_path / "log" / "M3SRec_REVEAL")) == 1
    assert len([f for f in os.listdir(tmp_path / "saved") if f.endswith(".cost.json")]) == 1
    rc, single, _ = _main(args, capsys)
    assert rc == 0 and _shape(ddp) == _shape(single)
    assert ddp.startswith("best valid: recall@10: ") and "\ntest:       recall@10: " in ddp


def test_nproc_above_the_cores_is_a_one_line_error(tiny_root, tmp_path, capsys):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rc, _, err = _main(["--model=M3SRec_REVEAL", "--dataset=tiny", *_tiny_args(tiny_root, tmp_path),
                        f"--nproc={cores + 1}"], capsys)
    assert rc == 2
    assert err.strip().splitlines()[-1] == (
        f"error: nproc={cores + 1} CPU processes, but this process may use {cores} CPU core(s): lower nproc to "
        f"at most {cores} (on CPUs each process needs a core of its own; for GPUs set gpu_id and install a "
        "CUDA build of torch)")


def test_a_busy_port_is_a_one_line_error(tiny_root, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, err = _main(["--model=M3SRec_REVEAL", "--dataset=tiny", *_tiny_args(tiny_root, tmp_path),
                            "--nproc=2", f"--port={port}"], capsys)
    assert rc == 2
    assert err.strip().splitlines()[-1].startswith(f"error: port {port} on localhost is in use"), err


def test_a_rank_that_dies_ends_the_run_with_an_error_naming_it(tiny_root, tmp_path, capsys):
    _two_cores()
    model = os.path.join(TESTS, "ddp_dying_model.py") + ":DyingM3SRec"
    rc, _, err = _main([f"--model={model}", "--dataset=tiny", *_tiny_args(tiny_root, tmp_path), "--nproc=2",
                        f"--ddp_timeout={TIMEOUT}"], capsys)
    assert rc == 1
    assert "error: rank 1 of 2" in err and "exited with code 7" in err, err[-3000:]


def test_a_user_error_inside_the_workers_is_the_same_one_line_error(tiny_root, tmp_path, capsys):
    _two_cores()
    # the configuration is checked before the processes start; a missing feature set is found by each
    # worker when it loads the dataset
    rc, _, err = _main(["--model=M3SRec_REVEAL", "--dataset=tiny", *_tiny_args(tiny_root, tmp_path), "--nproc=2",
                        "--vision_feature=no_such_set"], capsys)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no_such_set" in last, err[-3000:]
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1


def test_the_fve_loop_trains_each_cycle_on_n_processes(tmp_path):
    """``--nproc=2`` in the FVE loop: the train stage runs RecBole's distributed path (2 gloo processes),
    rank 0 writes the cycle's weights, and the stage's metrics are exactly those of the same 2-process run
    made by ``run_recbole_reveal`` on the cycle's features."""
    _two_cores()
    import torch

    from recbole_reveal import run_recbole_reveal
    from recbole_reveal.data.feature_store import load_item_features, save_item_features
    from recbole_reveal.data.synthetic import generate_dataset
    from recbole_reveal.fve.loop.run import run_fve
    from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

    root, name = str(tmp_path / "data"), "fveddp"
    generate_dataset(root, name, n_users=60, n_items=24, seed=7, image_size=32)
    with open(os.path.join(root, name, f"{name}.item"), encoding="utf-8") as f:
        tokens = [line.split("\t")[0] for line in f.read().splitlines()[1:] if line]
    features = str(tmp_path / "features")
    save_item_features(features, "text_minilm", tokens,
                       np.random.default_rng(0).normal(size=(len(tokens), 8)).astype(np.float32))
    cfg = {"data_path": root, "feature_dir": features, "vlm_path": build_tiny_qwen2_5_vl(str(tmp_path / "vlm")),
           "fve_device": "cpu", "fve_cycles": 1, "fve_preprocess_workers": 0, "fve_prompt_scope": "item",
           "epochs": 2, "hidden_size": 16, "inner_size": 32, "n_heads": 2, "train_batch_size": 64,
           "MAX_ITEM_LIST_LENGTH": 10, "show_progress": False, "nproc": 2, "ddp_timeout": TIMEOUT}
    out = run_fve("M3SRec_REVEAL", name, config_dict=cfg)
    assert out["executed"] == ["init", "cycle_0/encode", "cycle_0/train", "cycle_0/feedback"]
    weights = torch.load(os.path.join(out["run_dir"], "cycle_0", "model.pth"), weights_only=True)
    assert "item_mean_embedding.weight" in weights                 # the bare model's state, no DDP prefix

    dim = load_item_features(features, "fve/cycle_0")[1].shape[1]
    direct = run_recbole_reveal("M3SRec_REVEAL", name, config_dict=dict(
        cfg, vision_feature="fve/cycle_0", vision_feature_dim=dim, checkpoint_dir=str(tmp_path / "direct")))
    assert dict(direct["test_result"]) == pytest.approx(out["table"][0]["test"], abs=1e-4)
    assert dict(direct["best_valid_result"]) == pytest.approx(out["table"][0]["valid"], abs=1e-4)


def test_the_fve_loop_refuses_torchrun_and_several_machines(tiny_root):
    from recbole_reveal.infra.errors import ConfigError
    from recbole_reveal.fve.loop.run import run_fve

    with pytest.raises(ConfigError, match="FVE loop trains each cycle's backbone on the processes of this machine"):
        run_fve("M3SRec_REVEAL", "tiny", config_dict={"data_path": tiny_root, "vlm_path": "/models/any",
                                                      "nproc": 1, "world_size": 2, "port": 29511})


def test_two_machines_by_world_size_and_offset(tiny_root, tmp_path):
    """RecBole's multi-machine keys, two 'machines' on this host: offset 0 reports, offset 1 exits 0
    silently, and only rank 0 writes a log file."""
    _two_cores()
    import subprocess

    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")]))
    common = [sys.executable, os.path.join(REPO, "run_recbole_reveal.py"), "--model=M3SRec", "--dataset=tiny",
              *_tiny_args(tiny_root, tmp_path), "--nproc=1", "--world_size=2", "--ip=127.0.0.1",
              f"--port={port}", f"--ddp_timeout={TIMEOUT}"]
    machines = [subprocess.Popen(common + [f"--offset={offset}"], cwd=tmp_path, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for offset in (0, 1)]
    outputs = [m.communicate(timeout=TIMEOUT) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert outputs[0][0].startswith("best valid: recall@10: ") and outputs[1][0] == ""
    assert len(os.listdir(tmp_path / "log" / "M3SRec")) == 1
