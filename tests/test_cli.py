"""Entry script and configuration: precedence, argument forms, errors a user sees."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from recbole_reveal import build_config, run_recbole_reveal
from recbole_reveal.infra import locations
from recbole_reveal.infra.errors import ConfigError, DatasetNotFoundError, UnknownModelError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import run_recbole_reveal as script  # noqa: E402


@pytest.fixture
def properties_with_dataset_yaml(tmp_path, monkeypatch):
    """The real properties/ folder plus a dataset YAML for the tiny dataset."""
    props = tmp_path / "properties"
    shutil.copytree(locations.properties_dir(), props)
    (props / "dataset").mkdir(exist_ok=True)
    (props / "dataset" / "tiny.yaml").write_text("hidden_size: 64\nlearning_rate: 0.005\n")
    monkeypatch.setattr(locations, "properties_dir", lambda: str(props))
    return props


def test_precedence_from_defaults_to_command_line(tiny_root, tmp_path, properties_with_dataset_yaml, monkeypatch):
    base = {"data_path": tiny_root}
    # RecBole default < overall.yaml
    assert build_config("M3SRec", "tiny", config_dict=base)["valid_metric"] == "NDCG@20"
    # overall.yaml (50) < model yaml (100)
    assert build_config("M3SRec", "tiny", config_dict=base)["MAX_ITEM_LIST_LENGTH"] == 100
    assert build_config("SASRec", "tiny", config_dict=base)["MAX_ITEM_LIST_LENGTH"] == 50
    # backbone yaml < REVEAL.yaml in the class hierarchy
    assert build_config("M3SRec_REVEAL", "tiny", config_dict=base)["avl"] is True
    assert build_config("M3SRec", "tiny", config_dict=base)["avl"] is None
    # model yaml (256) < dataset yaml (64)
    assert build_config("M3SRec", "tiny", config_dict=base)["hidden_size"] == 64
    # dataset yaml < config files, in order
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("hidden_size: 48\nn_heads: 1\n")
    b.write_text("hidden_size: 40\n")
    config = build_config("M3SRec", "tiny", config_file_list=[str(a), str(b)], config_dict=base)
    assert (config["hidden_size"], config["n_heads"], config["learning_rate"]) == (40, 1, 0.005)
    # config files < config_dict < command line
    files = [str(a), str(b)]
    assert build_config("M3SRec", "tiny", files, dict(base, hidden_size=36))["hidden_size"] == 36
    config = build_config("M3SRec", "tiny", files, dict(base, hidden_size=36), cmd_args=["--hidden_size=32"])
    assert config["hidden_size"] == 32
    # the Python API never reads the real sys.argv
    monkeypatch.setattr(sys, "argv", ["pytest", "--hidden_size=999"])
    assert build_config("M3SRec", "tiny", config_dict=base)["hidden_size"] == 64


def test_parse_args_accepts_recbole_forms():
    assert script.parse_args(["--model=M3SRec", "--dataset=d", "--config_files=a.yaml b.yaml", "--epochs=3"]) == (
        "M3SRec", "d", ["a.yaml", "b.yaml"], ["--epochs=3"])
    assert script.parse_args(["--config_files=a.yaml", "b.yaml", "--model=X", "--dataset=d"]) == (
        "X", "d", ["a.yaml", "b.yaml"], [])
    with pytest.raises(SystemExit, match="--key=value"):
        script.parse_args(["--model=X", "--dataset=d", "--epochs"])
    with pytest.raises(SystemExit, match="required"):
        script.parse_args(["--model=X"])


def test_a_malformed_command_line_exits_2_with_one_error_line(capsys):
    """As argparse does (and as every other user error here): status 2, the message on stderr."""
    from recbole_reveal.commands import run_hyper

    for main, argv, message in ((script.main, ["--dataset=d"], "error: --model is required"),
                                (script.main, ["--model=X", "--dataset=d", "--epochs"], "--key=value"),
                                (run_hyper.main, ["--model=M3SRec"], "error: --dataset and --params_file are required")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_unknown_model_lists_what_exists(tiny_root):
    with pytest.raises(UnknownModelError, match=r"M3SRec_REVEAL.*SASRec"):
        build_config("NoSuchModel", "tiny", config_dict={"data_path": tiny_root})


def test_unknown_dataset_lists_what_exists(tiny_root):
    with pytest.raises(DatasetNotFoundError, match=r"no_such_set.*tiny.*recbole_reveal\.commands\.synthetic_data"):
        build_config("M3SRec", "no_such_set", config_dict={"data_path": tiny_root})


def test_topk_beyond_the_item_count_is_a_clear_error(tiny_config):
    from helpers import TINY_ITEMS

    with pytest.raises(ConfigError, match=rf"topk \[10, 50\]: dataset 'tiny' has only {TINY_ITEMS} items"):
        run_recbole_reveal("M3SRec", "tiny", config_dict=dict(tiny_config, topk=[10, 50]))
    # at the limit it runs
    result = run_recbole_reveal("M3SRec", "tiny", config_dict=dict(tiny_config, epochs=1, topk=[10, TINY_ITEMS],
                                                                    valid_metric=f"NDCG@{TINY_ITEMS}"))
    assert result["test_result"][f"recall@{TINY_ITEMS}"] == 1.0


def test_script_reports_user_errors_without_traceback(tiny_root):
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_recbole_reveal.py"), "--model=M3SRec",
         "--dataset=tiny", f"--data_path={tiny_root}", "--text_feature=absent"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "absent.npy" in out.stderr and "recbole_reveal.commands.extract_features" in out.stderr


def test_recbole_builtin_models_run_through_the_same_entry_point(tiny_config):
    result = run_recbole_reveal("SASRec", "tiny", config_dict=dict(tiny_config, epochs=2, n_layers=1))
    assert set(result["test_result"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert result["config"]["model"] == "SASRec"


def test_config_file_loaded_from_the_command_line(tiny_config, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(dict(tiny_config, epochs=1)))
    code = script.main(["--model=M3SRec_REVEAL", "--dataset=tiny", f"--config_files={cfg}", "--avl_alpha=0.5"])
    assert code == 0


def test_fve_switch(tiny_root, tmp_path, capsys):
    from recbole_reveal.infra.errors import ConfigError
    from recbole_reveal.config import fve_requested

    base = {"data_path": tiny_root}
    assert fve_requested(build_config("M3SRec_REVEAL", "tiny", config_dict=base)) is False
    assert fve_requested(build_config("M3SRec_REVEAL", "tiny", config_dict=dict(base, vlm_path=str(tmp_path)))) is True
    off = build_config("M3SRec_REVEAL", "tiny", config_dict=dict(base, vlm_path=str(tmp_path), fve=False))
    assert fve_requested(off) is False
    with pytest.raises(ConfigError, match="hf download"):
        fve_requested(build_config("M3SRec_REVEAL", "tiny", config_dict=dict(base, fve=True)))
    code = script.main(["--model=M3SRec_REVEAL", "--dataset=tiny", f"--data_path={tiny_root}", "--fve=True"])
    assert code == 2 and "vlm_path" in capsys.readouterr().err


def test_only_reveal_models_run_the_fve_loop(tiny_root, tmp_path, caplog):
    """The one decision (config.fve_requested, used by the entry script and the experiment runs): a
    model without REVEAL never runs the loop; FVE's keys are defaults of REVEAL models only."""
    from recbole_reveal.config import fve_requested

    base = {"data_path": tiny_root}
    plain = build_config("M3SRec", "tiny", config_dict=dict(base, vlm_path=str(tmp_path)))
    with caplog.at_level("INFO"):
        assert fve_requested(plain) is False
    assert "M3SRec is not a REVEAL model: vlm_path is not used" in caplog.text
    with pytest.raises(ConfigError, match="not a REVEAL model"):
        fve_requested(build_config("M3SRec", "tiny", config_dict=dict(base, fve=True)))
    assert build_config("M3SRec", "tiny", config_dict=base)["fve_cycles"] is None
    assert build_config("M3SRec_REVEAL", "tiny", config_dict=base)["fve_cycles"] == 3
    assert build_config("M3SRec_REVEAL", "tiny", config_dict=base, cmd_args=["--fve_cycles=5"])["fve_cycles"] == 5


def test_command_line_values_read_as_in_a_config_file(tiny_root):
    args = ["--zeroed_modalities=[text]", "--learning_rate=1e-3", "--fve=~", "--avl_clamp=None", "--epochs=7",
            "--eval_zeroed_modalities=['vision']", "--vlm_path=/models/x"]
    config = build_config("M3SRec_REVEAL", "tiny", config_dict={"data_path": tiny_root}, cmd_args=args)
    assert (config["zeroed_modalities"], config["learning_rate"], config["fve"], config["avl_clamp"]) == (
        ["text"], 0.001, None, None)
    assert (config["epochs"], config["eval_zeroed_modalities"], config["vlm_path"]) == (7, ["vision"], "/models/x")
    with pytest.raises(ConfigError, match="given twice"):
        build_config("M3SRec", "tiny", config_dict={"data_path": tiny_root}, cmd_args=["--epochs=1", "--epochs=2"])


def test_reveal_without_a_vlm_says_it_uses_static_visual_features(tiny_config, caplog):
    with caplog.at_level("INFO"):
        run_recbole_reveal("M3SRec_REVEAL", "tiny", config_dict=dict(tiny_config, epochs=1))
    notices = [r.getMessage() for r in caplog.records if "REVEAL without FVE" in r.getMessage()]
    assert len(notices) == 1 and "vision_efficientnet_lite0" in notices[0] and "AVL on" in notices[0]


def test_runs_started_in_the_same_second_get_their_own_checkpoint(tiny_config, monkeypatch):
    """RecBole names checkpoints by the second: parallel seeds would evaluate each other's model."""
    import recbole.trainer.trainer as recbole_trainer
    from helpers import build_pipeline

    monkeypatch.setattr(recbole_trainer, "get_local_time", lambda: "Nov-25-2026_07-00-01")
    names = {build_pipeline(model, tiny_config)[3].saved_model_file for model in ("M3SRec", "M3SRec", "SASRec")}
    assert len(names) == 3
    assert all(os.path.basename(n).split("-Nov-25-2026_07-00-01-")[0] in ("M3SRec", "SASRec") for n in names)
