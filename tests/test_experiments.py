"""The experiment commands (recbole_reveal.experiments, run_experiments.py, run_hyper.py): the paired
t-test, tables from result files, modality zeroing in real runs, resumption, HyperTuning, plots."""

import ast
import json
import os
import struct

import pytest
import scipy.stats
import torch

import run_experiments  # noqa: F401  (the entry script imports)
import run_hyper
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.experiments import protocols
from recbole_reveal.commands.run_experiments import main as cli_main
from recbole_reveal.experiments.hyper import tune
from recbole_reveal.experiments.plots import plot_modality, plot_sensitivity, sensitivity_series
from recbole_reveal.experiments.runs import SCHEMA, ResultStore, RunSpec, execute, load_records
from recbole_reveal.experiments.stats import paired_ttest
from recbole_reveal.experiments.tables import render_csv, render_markdown, summarise
from recbole_reveal.infra.locations import property_file
from recbole_reveal.config import build_config
from recbole_reveal.training import prepare_run

FAST = {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_heads": 2, "train_batch_size": 64,
        "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 10, "stopping_step": 100}


@pytest.fixture
def fast(tiny_root):
    return dict(FAST, data_path=tiny_root)


# ------------------------------------------------------------------ statistics
@pytest.mark.parametrize("a, b", [
    ([0.0237, 0.0241, 0.0235, 0.0240, 0.0238], [0.0251, 0.0249, 0.0255, 0.0250, 0.0253]),
    ([1.0, 2.0, 3.0], [1.5, 1.9, 3.8]),
    ([0.3, 0.2], [0.1, 0.25]),
])
def test_paired_ttest_matches_scipy(a, b):
    t, p = paired_ttest(a, b)
    ref = scipy.stats.ttest_rel(b, a)
    assert t == pytest.approx(ref.statistic, rel=1e-10)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)


def test_paired_ttest_degenerate_cases():
    assert paired_ttest([1.0, 2.0], [2.0, 3.0]) == (float("inf"), 0.0)     # constant gain
    t, p = paired_ttest([1.0, 2.0], [1.0, 2.0])
    assert t != t and p != p                                                 # NaN: no difference at all
    with pytest.raises(ValueError):
        paired_ttest([1.0], [1.0, 2.0])


# ------------------------------------------------------------------ tables from result files
def _fake_record(store, model, seed, metrics, overrides=None):
    record = {"schema": SCHEMA, "model": model, "dataset": "fake", "seed": seed, "overrides": overrides or {},
              "test_result": metrics, "best_valid_result": metrics, "masked_test_results": {}}
    return store.save(record)


def test_table_from_result_files(tmp_path):
    store = ResultStore(str(tmp_path / "fake" / "seeds"))
    base = {2020: 0.30, 2021: 0.32, 2022: 0.31}
    new = {2020: 0.33, 2021: 0.34, 2022: 0.335}
    for seed in base:
        _fake_record(store, "M3SRec", seed, {"recall@10": base[seed], "recall@20": 0.5, "ndcg@10": 0.1, "ndcg@20": 0.2})
        _fake_record(store, "M3SRec_REVEAL", seed,
                     {"recall@10": new[seed], "recall@20": 0.5, "ndcg@10": 0.1, "ndcg@20": 0.2})
    rows = protocols.seeds_rows(["M3SRec", "M3SRec_REVEAL"])
    summary = summarise(rows, load_records([store.root]), [2020, 2021, 2022])
    markdown = render_markdown(summary, "fake")
    p = scipy.stats.ttest_rel([new[s] for s in base], [base[s] for s in base]).pvalue
    gain = (sum(new.values()) - sum(base.values())) / sum(base.values())
    assert "| M3SRec | 0.3100 ± 0.0100 | 0.5000 ± 0.0000 | 0.1000 ± 0.0000 | 0.2000 ± 0.0000 | 3 |" in markdown
    assert "| M3SRec_REVEAL | 0.3350 ± 0.0050 |" in markdown
    assert f"| Improve. vs M3SRec | {100 * gain:+.2f}% (p={p:.3f}) | +0.00% (p=n/a) |" in markdown
    assert markdown.index("| M3SRec |") < markdown.index("| M3SRec_REVEAL |") < markdown.index("Improve.")
    csv_lines = render_csv(summary).splitlines()
    assert csv_lines[0].startswith("section,setting,skipped,seeds,reference,pairs,R@10 mean,R@10 std,")
    reveal = csv_lines[2].split(",")
    assert reveal[1] == "M3SRec_REVEAL" and reveal[4] == "M3SRec" and float(reveal[8]) == pytest.approx(100 * gain)
    assert float(reveal[9]) == pytest.approx(p)
    # a partial sweep: the table shows what is there (n = 2), the pairs are the common seeds
    os.remove(store.path(RunSpec("M3SRec_REVEAL"), 2022))
    partial = render_markdown(summarise(rows, load_records([store.root]), [2020, 2021, 2022]))
    assert "| 2 pairs |" in partial


def test_grid_over_reveal_keys_runs_the_backbone_once_per_other_point():
    rows = protocols.seeds_rows(["M3SRec", "M3SRec_REVEAL"],
                                grid={"avl_alpha": [0.05, 0.5], "learning_rate": [0.001, 0.01]})
    base = [r for r in rows if r.spec.model == "M3SRec"]
    reveal = [r for r in rows if r.spec.model == "M3SRec_REVEAL"]
    assert sorted(r.spec.overrides["learning_rate"] for r in base) == [0.001, 0.01]
    assert all("avl_alpha" not in r.spec.overrides for r in base)
    assert len(reveal) == 4
    labels = {r.label: r for r in base}
    for row in reveal:   # compared with the backbone at the same learning rate
        assert labels[row.reference].spec.overrides["learning_rate"] == row.spec.overrides["learning_rate"]


def test_skipped_fve_rows_are_named_without_a_vlm():
    rows = protocols.variants_rows("M3SRec_REVEAL")
    assert [r.label for r in rows] == ["Base model", "w/ FVE", "w/ AVL", "w/ REVEAL"]
    assert rows[0].spec.model == "M3SRec" and rows[2].spec.overrides == {"avl": True, "fve": False}
    assert rows[1].skipped == rows[3].skipped == protocols.FVE_NEEDS_VLM
    assert protocols.runnable_specs(rows) == [rows[0].spec, rows[2].spec]
    with_vlm = protocols.variants_rows("M3SRec", vlm_path="/models/vlm")
    assert with_vlm[3].skipped is None and with_vlm[3].spec.overrides["vlm_path"] == "/models/vlm"
    with pytest.raises(ConfigError, match="zeroed_modalities"):
        protocols.modality_rows("M3SRec", {"zeroed_modalities": ["text"]})
    with pytest.raises(ConfigError, match="SASRec has no modality masking"):
        protocols.modality_rows("SASRec")
    rows = protocols.seeds_rows(["SASRec", "M3SRec", "M3SRec_REVEAL"], {"epochs": 1}, eval_zeroed=["text"],
                                vlm_path="/models/vlm")
    assert [(r.label, r.view, r.reference) for r in rows] == [
        ("SASRec", None, None), ("M3SRec", None, None), ("M3SRec, text zeroed at inference", "text", None),
        ("M3SRec_REVEAL", None, "M3SRec"), ("M3SRec_REVEAL, text zeroed at inference", "text", None)]
    assert rows[0].spec.overrides == {"epochs": 1}          # no modality keys, no VLM for a plain model
    assert rows[1].spec.overrides == {"epochs": 1, "eval_zeroed_modalities": ["text"]}
    assert rows[3].spec.overrides["vlm_path"] == "/models/vlm"


# ------------------------------------------------------------------ real runs: zeroing, resumption
def test_modality_runs_zero_inputs_and_resume(fast, tmp_path, capsys):
    rows = protocols.modality_rows("M3SRec", fast)
    full, vision_only = rows[0].spec, rows[3].spec       # eval-time zeroing; text zeroed in training too
    assert vision_only.overrides["zeroed_modalities"] == ["text"] and rows[5].spec == vision_only
    store = ResultStore(str(tmp_path / "tiny" / "modality"))
    full_record, ran = execute(full, 2020, "tiny", store)
    assert ran and set(full_record["masked_test_results"]) == {"text", "vision"}
    uni_record, _ = execute(vision_only, 2020, "tiny", store)
    test = full_record["test_result"]
    for result in (full_record["masked_test_results"]["text"], full_record["masked_test_results"]["vision"],
                   uni_record["test_result"]):
        assert result != test
    assert full_record["cost"]["fit_s"] > 0 and full_record["config"]["seed"] == 2020

    # the zeroed modality is zero where the projections meet the fusion, the other one is not
    _, loaders, model, _ = prepare_run(build_config("M3SRec", "tiny", config_dict=dict(vision_only.overrides)))
    seen = []
    model.mean_fusion.register_forward_pre_hook(lambda m, args: seen.append([a.detach() for a in args]))
    raw = []
    model.text_mean_proj.register_forward_hook(lambda m, args, out: raw.append(out.detach()))
    batch = next(iter(loaders[0]))
    model.calculate_loss(batch)
    _, vision, text = seen[-1]
    assert torch.count_nonzero(text) == 0 and torch.count_nonzero(vision) > 0
    assert torch.count_nonzero(raw[-1]) > 0          # the projection itself ran on real features
    with model.zeroed_modalities("vision"):          # inference-time zeroing of the full model
        model.calculate_loss(batch)
    _, vision, text = seen[-1]
    assert torch.count_nonzero(vision) == 0 and torch.count_nonzero(text) == 0

    # resumption: a saved run is loaded, not trained (its file is the record); a foreign file is refused
    mtime = os.path.getmtime(store.path(full, 2020))
    again, ran = execute(full, 2020, "tiny", store)
    assert not ran and again == json.load(open(store.path(full, 2020))) and os.path.getmtime(store.path(full, 2020)) == mtime
    with open(store.path(vision_only, 2020), encoding="utf-8") as f:
        record = json.load(f)
    record["seed"] = 7
    with open(store.path(vision_only, 2020), "w", encoding="utf-8") as f:
        json.dump(record, f)
    with pytest.raises(ConfigError, match="holds another run"):
        execute(vision_only, 2020, "tiny", store)


def test_seeds_command_resumes_and_writes_tables(fast, tmp_path, capsys):
    sets = [f"{k}={v}" for k, v in fast.items()]
    argv = ["seeds", "--dataset", "tiny", "--models", "M3SRec", "--seeds", "2020", "2021",
            "--out", str(tmp_path), "--set"] + sets
    assert cli_main(argv) == 0
    runs = tmp_path / "tiny" / "seeds" / "runs"
    files = sorted(os.listdir(runs))
    assert len(files) == 2
    first = capsys.readouterr().out
    assert "[2/2]" in first and "| M3SRec |" in first
    # a killed sweep: one run lost; the re-run trains only that one and renders the same table
    os.remove(runs / files[1])
    mtime = os.path.getmtime(runs / files[0])
    assert cli_main(argv) == 0
    second = capsys.readouterr().out
    assert "1 already saved" in second and "[1/1]" in second and "[2/2]" not in second
    assert os.path.getmtime(runs / files[0]) == mtime
    table = (tmp_path / "tiny" / "seeds" / "table.md").read_text()
    assert table.split("| M3SRec |")[1] == first.split("| M3SRec |")[1].split("\n\nwritten")[0] + "\n"
    assert (tmp_path / "tiny" / "seeds" / "table.csv").is_file()
    assert cli_main(argv[:-len(sets) - 1] + ["--no_run", "--models", "Nope"]) == 2
    assert "Nope" in capsys.readouterr().err


def test_seeds_command_trains_each_run_on_nproc_processes(fast, tmp_path, capsys):
    """``--nproc 2``: each run trains on 2 processes (its record says so and its numbers are those of a
    2-process run, which differ from one process's); ``--nproc`` and ``--set nproc`` must agree."""
    import json

    from recbole_reveal import run_recbole_reveal

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores < 2:
        pytest.skip("a 2-process run needs 2 CPU cores")
    sets = [f"{k}={v}" for k, v in fast.items()]
    argv = ["seeds", "--dataset", "tiny", "--models", "M3SRec", "--seeds", "2020", "--out", str(tmp_path)]
    assert cli_main(argv + ["--nproc", "2", "--set"] + sets) == 0
    (record_file,) = (tmp_path / "tiny" / "seeds" / "runs").iterdir()
    record = json.loads(record_file.read_text())
    assert record["overrides"]["nproc"] == 2 and record["config"]["nproc"] == 2
    config = dict(fast, seed=2020, checkpoint_dir=str(tmp_path / "direct"))
    two = run_recbole_reveal("M3SRec", "tiny", config_dict=dict(config, nproc=2))["test_result"]
    assert record["test_result"] == pytest.approx(dict(two), abs=1e-4)
    capsys.readouterr()
    assert cli_main(argv + ["--nproc", "2", "--no_run", "--set", "nproc=1"]) == 2
    assert "--nproc 2 and --set nproc=1 differ" in capsys.readouterr().err


# ------------------------------------------------------------------ HyperTuning
def test_hyper_exhaustive_picks_best_valid_and_bayes_finishes(fast, tmp_path, capsys):
    params = tmp_path / "grid.hyper"
    params.write_text("avl_alpha choice [0.05,1.0]\nlearning_rate choice [0.001,0.02]\n")
    trials = tmp_path / "trials"
    argv = ["--model=M3SRec_REVEAL", "--dataset=tiny", f"--params_file={params}", "--algo=exhaustive",
            f"--output_file={tmp_path / 'hyper.result'}", f"--results_dir={trials}"]
    assert run_hyper.main(argv + [f"--{k}={v}" for k, v in fast.items()]) == 0
    best_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("best params:")]
    records = load_records([str(trials)])
    assert len(records) == 4
    grid = {(r["overrides"]["avl_alpha"], r["overrides"]["learning_rate"]) for r in records}
    assert grid == {(a, lr) for a in (0.05, 1.0) for lr in (0.001, 0.02)}
    scores = {(r["overrides"]["avl_alpha"], r["overrides"]["learning_rate"]): r["best_valid_score"] for r in records}
    assert len(set(scores.values())) > 1
    assert len(best_line) == 1
    chosen = ast.literal_eval(best_line[0].split(":", 1)[1].strip())
    assert scores[(chosen["avl_alpha"], chosen["learning_rate"])] == max(scores.values())
    assert "Valid result" in (tmp_path / "hyper.result").read_text()

    bayes = tmp_path / "bayes.hyper"
    bayes.write_text("learning_rate uniform 0.001,0.01\n")
    hp = tune("M3SRec_REVEAL", "tiny", str(bayes), str(tmp_path / "bayes"), overrides=fast, algo="bayes",
              max_evals=2, log=lambda *a: None)
    assert len(hp.params2result) == 2 and len(load_records([str(tmp_path / "bayes")])) == 2

    with pytest.raises(ConfigError, match="vlm_path"):
        tune("M3SRec_REVEAL", "tiny", property_file("hyper", "fve_cycles.hyper"),
             str(tmp_path / "x"), overrides=fast)


def test_quick_start_objective_function_drives_recbole_hypertuning(fast, tmp_path):
    """The plain RecBole route: HyperTuning(objective_function, fixed_config_file_list=[yaml])."""
    import yaml
    from recbole.trainer import HyperTuning

    from recbole_reveal.quick_start import objective_function

    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(dict(fast, model="M3SRec_REVEAL", dataset="tiny",
                                         checkpoint_dir=str(tmp_path / "saved"))))
    params = tmp_path / "alpha.hyper"
    params.write_text("avl_alpha choice [0.05,0.5]\n")
    hp = HyperTuning(objective_function, params_file=str(params), fixed_config_file_list=[str(fixed)],
                     algo="exhaustive", max_evals=10, early_stop=10)
    hp.run()
    assert len(hp.params2result) == 2
    assert {r["model"] for r in hp.params2result.values()} == {"M3SRec_REVEAL"}
    best = max(hp.params2result.values(), key=lambda r: r["best_valid_score"])
    assert hp.best_score == best["best_valid_score"]


# ------------------------------------------------------------------ plots
def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_a_run_saved_in_two_folders_counts_once(tmp_path, capsys):
    """The default-alpha REVEAL run of a seeds table and the alpha=0.1 point of a sweep are one run."""
    from recbole_reveal.experiments.runs import distinct_runs

    paths = []
    for folder, overrides, checkpoints in (("seeds", {}, "a"), ("sweep", {"avl_alpha": 0.1}, "b")):
        path = _fake_record(ResultStore(str(tmp_path / folder)), "M3SRec_REVEAL", 1, {"recall@20": 0.3}, overrides)
        record = json.load(open(path))
        record["config"] = {"avl": True, "avl_alpha": 0.1, "checkpoint_dir": checkpoints}
        json.dump(record, open(path, "w"))
        paths.append(path)
    other = _fake_record(ResultStore(str(tmp_path / "sweep")), "M3SRec_REVEAL", 2, {"recall@20": 0.4}, {"avl_alpha": 0.1})
    record = json.load(open(other))
    record["config"] = {"avl": True, "avl_alpha": 0.1, "checkpoint_dir": "b"}
    json.dump(record, open(other, "w"))
    records = load_records([str(tmp_path / "seeds"), str(tmp_path / "sweep")])
    kept, dropped = distinct_runs(records)
    assert (len(kept), dropped) == (2, 1)
    assert sorted(r["seed"] for r in kept) == [1, 2]
    assert cli_main(["plot", "--results", str(tmp_path / "seeds"), str(tmp_path / "sweep"), "--param", "avl_alpha",
                     "--out", str(tmp_path / "plots")]) == 0
    assert "1 record(s) repeat a run already read" in capsys.readouterr().out


def test_sensitivity_and_modality_plots(tmp_path):
    store = ResultStore(str(tmp_path / "sweep"))
    for seed in (1, 2):
        for alpha, value in ((0.05, 0.30), (0.1, 0.34), (1.0, 0.28)):
            path = _fake_record(store, "M3SRec_REVEAL", seed, {"recall@20": value + seed / 100},
                                {"avl_alpha": alpha})
            record = json.load(open(path))
            record["config"] = {"avl": True, "avl_alpha": alpha}
            json.dump(record, open(path, "w"))
        path = _fake_record(store, "M3SRec", seed, {"recall@20": 0.27})
        record = json.load(open(path))
        record["config"] = {"avl": False, "avl_alpha": 0.1}
        record["fve_cycles_table"] = None
        json.dump(record, open(path, "w"))
    fve = _fake_record(store, "M3SRec_REVEAL", 3, {"recall@20": 0.33}, {"fve": True})
    record = json.load(open(fve))
    record["config"] = {"avl": False}
    record["fve_cycles_table"] = [{"cycle": x, "test": {"recall@20": v}, "valid": {}}
                                  for x, v in enumerate((0.29, 0.31, 0.33))]
    json.dump(record, open(fve, "w"))
    records = load_records([store.root])
    alpha = sensitivity_series(records, "avl_alpha", "recall@20")["fake"]
    assert list(alpha["series"]) == ["w/ AVL"]
    assert {x: [round(v, 6) for v in sorted(vs)] for x, vs in alpha["series"]["w/ AVL"].items()} == {
        0.05: [0.31, 0.32], 0.1: [0.35, 0.36], 1.0: [0.29, 0.30]}
    assert alpha["baseline"] == [0.27, 0.27]          # the FVE-only run is neither point nor baseline
    cycles = sensitivity_series(records, "fve_cycles", "recall@20")["fake"]
    assert cycles == {"series": {"w/ FVE": {1: [0.29], 2: [0.31], 3: [0.33]}}, "baseline": [0.27, 0.27]}
    # a full REVEAL run (both switches) is its own line in both plots, never mixed with the single switch
    both = _fake_record(store, "M3SRec_REVEAL", 4, {"recall@20": 0.4}, {"fve": True, "avl": True})
    record = json.load(open(both))
    record["config"] = {"avl": True, "avl_alpha": 0.1}
    record["fve_cycles_table"] = [{"cycle": x, "test": {"recall@20": v}, "valid": {}} for x, v in enumerate((0.38, 0.4))]
    json.dump(record, open(both, "w"))
    records = load_records([store.root])
    alpha = sensitivity_series(records, "avl_alpha", "recall@20")["fake"]
    assert alpha["series"]["w/ REVEAL"] == {0.1: [0.4]} and len(alpha["series"]["w/ AVL"][0.1]) == 2
    cycles = sensitivity_series(records, "fve_cycles", "recall@20")["fake"]
    assert cycles["series"]["w/ REVEAL"] == {1: [0.38], 2: [0.4]} and cycles["series"]["w/ FVE"][2] == [0.31]
    out = plot_sensitivity(records, "avl_alpha", str(tmp_path / "plots" / "alpha.png"))
    assert _png_size(out) == (400, 300)
    out = plot_sensitivity(records, "fve_cycles", str(tmp_path / "plots" / "cycles.png"))
    assert _png_size(out) == (400, 300)
    assert cli_main(["plot", "--results", store.root, "--out", str(tmp_path / "cli")]) == 0
    assert sorted(os.listdir(tmp_path / "cli")) == ["sensitivity_avl_alpha.png", "sensitivity_fve_cycles.png"]
    with pytest.raises(ConfigError, match="avl_alpha"):
        plot_sensitivity([r for r in records if r["model"] == "M3SRec"], "avl_alpha", str(tmp_path / "no.png"))

    summary = [{"label": "Full modality", "skipped": None, "mean": {"recall@20": 0.3, "ndcg@20": 0.1},
                "std": {"recall@20": 0.01, "ndcg@20": 0.0}},
               {"label": "Vision-only (unimodal)", "skipped": None, "mean": {"recall@20": 0.2, "ndcg@20": 0.05},
                "std": {"recall@20": 0.0, "ndcg@20": 0.0}}]
    out = plot_modality(summary, str(tmp_path / "fig1.png"))
    assert _png_size(out) == (1200, 420)
