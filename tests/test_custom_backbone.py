"""Your own backbone from your own file (examples/custom_backbone/mmgru4rec.py), by path or class,
through the entry point, AVL, the experiment commands and checkpoints; bad specs are clear errors."""

import os
import subprocess
import sys

import pytest
import torch

from recbole_reveal import build_config, get_model, run_recbole_reveal
from recbole_reveal.infra.errors import UnknownModelError
from recbole_reveal.commands.run_experiments import main as cli_main
from recbole_reveal.adaptation.trainer import PluginTrainer
from recbole_reveal.trainer import AVLTrainer
from helpers import TINY_ITEMS, assert_full_sort_matches_predict, build_pipeline, first_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "custom_backbone", "mmgru4rec.py")
BACKBONE = f"{EXAMPLE}:MMGRU4Rec"
REVEAL = f"{EXAMPLE}:MMGRU4Rec_REVEAL"


@pytest.fixture
def small(tiny_config):
    return dict(tiny_config, epochs=3, MAX_ITEM_LIST_LENGTH=10)


def _metrics(result):
    return {k: round(float(v), 6) for k, v in result.items()}


def test_yaml_beside_the_model_file_and_reveal_yaml_are_read(small):
    config = build_config(REVEAL, "tiny", config_dict=small)
    assert config["model"] == "MMGRU4Rec_REVEAL"
    assert config["dropout_prob"] == 0.2                 # examples/custom_backbone/MMGRU4Rec.yaml
    assert config["avl_alpha"] == 0.1 and config["avl"]  # properties/model/REVEAL.yaml
    # once given by path, the class is known by its name (what configs and checkpoints record)
    assert get_model("MMGRU4Rec_REVEAL") is get_model(REVEAL)
    assert get_model(REVEAL) is get_model(os.path.relpath(EXAMPLE) + ":MMGRU4Rec_REVEAL")


def test_contract_masking_vision_parameters_and_ranking(small):
    _, (train_data, _, _), model, trainer = build_pipeline(REVEAL, small)
    assert isinstance(trainer, AVLTrainer)
    assert {n for n, _ in model.vision_parameters()} == {"vision_projection.weight", "vision_projection.bias"}
    model.eval()
    batch = first_batch(train_data)[torch.arange(5)]
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        with model.zeroed_modalities("vision"):
            no_vision = model.full_sort_predict(batch)
        with model.zeroed_modalities("text"):
            no_text = model.full_sort_predict(batch)
    assert not torch.allclose(full, no_vision) and not torch.allclose(full, no_text)
    assert_full_sort_matches_predict(model, batch)
    _, _, _, plain_trainer = build_pipeline(BACKBONE, small)
    assert type(plain_trainer) is PluginTrainer


def test_learns_and_reveal_with_avl_off_is_the_backbone(small):
    plain = run_recbole_reveal(BACKBONE, "tiny", config_dict=dict(small, epochs=8))
    assert plain["test_result"]["recall@10"] > 2 * 10 / (TINY_ITEMS - 1)
    off = run_recbole_reveal(REVEAL, "tiny", config_dict=dict(small, epochs=8, avl=False))
    assert _metrics(off["test_result"]) == _metrics(plain["test_result"])
    on = run_recbole_reveal(REVEAL, "tiny", config_dict=dict(small, epochs=8, avl_alpha=5.0))
    assert _metrics(on["best_valid_result"]) != _metrics(plain["best_valid_result"])


def test_experiment_commands_pair_the_reveal_variant_with_its_backbone(small, tmp_path, capsys):
    sets = [f"{k}={v}" for k, v in dict(small, epochs=1).items() if k != "checkpoint_dir"]
    argv = ["seeds", "--dataset", "tiny", "--models", BACKBONE, REVEAL, "--seeds", "2020", "2021",
            "--out", str(tmp_path), "--set"] + sets
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    runs = sorted(os.listdir(tmp_path / "tiny" / "seeds" / "runs"))
    assert len(runs) == 4 and all(r.startswith(("MMGRU4Rec-", "MMGRU4Rec_REVEAL-")) for r in runs)
    assert "| MMGRU4Rec_REVEAL |" in out and "| Improve. vs MMGRU4Rec |" in out
    # plots select the runs by class name too
    plots = tmp_path / "plots"
    assert cli_main(["plot", "--results", str(tmp_path), "--models", "MMGRU4Rec", "MMGRU4Rec_REVEAL",
                     "--param", "avl_alpha", "--out", str(plots)]) == 0
    assert (plots / "sensitivity_avl_alpha.png").stat().st_size > 0


def test_command_line_and_checkpoint_in_a_new_process(tiny_root, tmp_path):
    saved = tmp_path / "saved"
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_recbole_reveal.py"), f"--model={REVEAL}", "--dataset=tiny",
         f"--data_path={tiny_root}", "--epochs=1", "--hidden_size=16", f"--checkpoint_dir={saved}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test:" in out.stdout
    (checkpoint,) = [f for f in os.listdir(saved) if f.endswith(".pth")]
    # a later process that names the model the same way unpickles the checkpoint's config
    code = (f"import recbole_reveal, torch; recbole_reveal.get_model({REVEAL!r}); "
            f"c = torch.load({str(saved / checkpoint)!r}, weights_only=False); print(c['config']['model'])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().endswith("MMGRU4Rec_REVEAL")


def test_bad_model_specs_are_clear_errors(tmp_path):
    with pytest.raises(UnknownModelError, match="no file"):
        get_model(str(tmp_path / "absent.py") + ":X")
    with pytest.raises(UnknownModelError, match="defines no 'Nope'"):
        get_model(f"{EXAMPLE}:Nope")
    with pytest.raises(UnknownModelError, match="cannot import module 'no_such_module'"):
        get_model("no_such_module:X")
    clash = tmp_path / "clash.py"
    clash.write_text("from recbole.model.sequential_recommender.gru4rec import GRU4Rec\n"
                     "class SASRec(GRU4Rec):\n    pass\n")
    with pytest.raises(UnknownModelError, match="'SASRec' is already recbole.model"):
        get_model(f"{clash}:SASRec")
    not_a_model = tmp_path / "plain.py"
    not_a_model.write_text("class Thing:\n    pass\n")
    with pytest.raises(UnknownModelError, match="not a RecBole model class"):
        get_model(f"{not_a_model}:Thing")
    with pytest.raises(UnknownModelError, match="<file.py>:<Class>"):
        get_model("NoSuchModel")


def test_a_model_file_imports_the_modules_beside_it(tmp_path, small):
    folder = tmp_path / "my_model"
    folder.mkdir()
    (folder / "my_layers.py").write_text("HIDDEN = 12\n")
    (folder / "widegru.py").write_text(
        "from my_layers import HIDDEN\n"
        f"import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('mmgru_example', {EXAMPLE!r})\n"
        "example = importlib.util.module_from_spec(spec); spec.loader.exec_module(example)\n"
        "class WideGRU(example.MMGRU4Rec):\n"
        "    def __init__(self, config, dataset):\n"
        "        config['hidden_size'] = HIDDEN\n"
        "        super().__init__(config, dataset)\n")
    (folder / "WideGRU.yaml").write_text("dropout_prob: 0.3\n")
    _, _, model, _ = build_pipeline(f"{folder / 'widegru.py'}:WideGRU", small)
    assert model.hidden_size == 12 and model.dropout_prob == 0.3

