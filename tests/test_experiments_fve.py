"""``run_experiments.py variants`` with a VLM (the tiny random Qwen2.5-VL): the FVE rows run the FVE
loop, each in a folder of its own, and their records feed the X_max plot."""

import json
import os

import numpy as np
import pytest

from recbole_reveal.data.feature_store import save_item_features
from recbole_reveal.data.synthetic import generate_dataset
from recbole_reveal.commands.run_experiments import main as cli_main
from recbole_reveal.experiments.runs import load_records
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

NAME = "fvexp"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fve_exp_data"))
    generate_dataset(root, NAME, n_users=60, n_items=24, seed=7, image_size=64)
    with open(os.path.join(root, NAME, f"{NAME}.item"), encoding="utf-8") as f:
        tokens = [line.split("\t")[0] for line in f.read().splitlines()[1:] if line]
    rng = np.random.default_rng(0)
    features = os.path.join(root, NAME, "features")
    save_item_features(features, "text_minilm", tokens, rng.normal(size=(len(tokens), 8)).astype(np.float32))
    save_item_features(features, "vision_efficientnet_lite0", tokens,
                       rng.normal(size=(len(tokens), 12)).astype(np.float32))
    return root


def test_variants_with_a_vlm_run_the_fve_loop_per_run(data_root, tmp_path, capsys):
    vlm = build_tiny_qwen2_5_vl(str(tmp_path / "vlm"))
    sets = [f"data_path={data_root}", "fve_device=cpu", "fve_cycles=1", "fve_preprocess_workers=0",
            "fve_vision_cache_mb=64", "epochs=1", "hidden_size=16", "inner_size=32", "n_heads=2",
            "train_batch_size=128", "eval_batch_size=256", "MAX_ITEM_LIST_LENGTH=10"]
    argv = ["variants", "--dataset", NAME, "--backbone", "M3SRec", "--seeds", "2020", "--out", str(tmp_path / "res"),
            "--vlm_path", vlm, "--set"] + sets
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out and "4 runs" in out
    records = {(r["model"], r["overrides"].get("avl"), r["overrides"].get("fve")): r
               for r in load_records([str(tmp_path / "res")])}
    assert set(records) == {("M3SRec", None, None), ("M3SRec_REVEAL", False, True),
                            ("M3SRec_REVEAL", True, False), ("M3SRec_REVEAL", True, True)}
    fve_runs = [records[("M3SRec_REVEAL", False, True)], records[("M3SRec_REVEAL", True, True)]]
    for record in fve_runs:
        table = record["fve_cycles_table"]
        assert [row["cycle"] for row in table] == [0] and record["test_result"] == table[-1]["test"]
        assert record["cost"]["calls"]["fve_encode"] == 1
    assert records[("M3SRec", None, None)].get("fve_cycles_table") is None
    # each FVE run wrote its cycle features in its own folder, never in the dataset's
    fve_root = tmp_path / "res" / NAME / "variants" / "fve"
    runs = sorted(os.listdir(fve_root))
    assert len(runs) == 2
    for run in runs:
        assert (fve_root / run / "features" / "fve" / "cycle_0.npy").is_file()
    assert not os.path.exists(os.path.join(data_root, NAME, "features", "fve", "cycle_0.npy"))
    assert os.path.isdir(os.path.join(data_root, NAME, "features", "fve", "cache"))   # the shared cache
    table = (tmp_path / "res" / NAME / "variants" / "table.md").read_text()
    assert "| w/ FVE |" in table and "| w/ REVEAL |" in table
    # a second call loads everything (no training, no VLM)
    assert cli_main(argv) == 0
    assert "4 already saved" in capsys.readouterr().out
    assert cli_main(["plot", "--results", str(tmp_path / "res"), "--param", "fve_cycles",
                     "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "sensitivity_fve_cycles.png").stat().st_size > 0
    json.dumps(fve_runs)                                 # records are plain JSON
