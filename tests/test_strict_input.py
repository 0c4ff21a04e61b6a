"""Bad input as a new user types it: each is one ``error:`` line (exit code 2) naming the key, file or
line, before anything is loaded or trained; nothing is accepted and silently ignored."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import write_tiny_dataset
from recbole_reveal import build_config
from recbole_reveal.config_keys.declared import declared_keys, keys_read_by, plugin_yaml_files
from recbole_reveal.config_keys.schema import RANGES
from recbole_reveal.data.feature_store import feature_paths, load_item_features, save_item_features
from recbole_reveal.infra.errors import ConfigError, FeatureFileError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import run_recbole_reveal as script  # noqa: E402
import run_hyper  # noqa: E402

SMALL = ["--epochs=1", "--hidden_size=16", "--inner_size=32", "--n_heads=2", "--MAX_ITEM_LIST_LENGTH=10",
         "--train_batch_size=64", "--show_progress=False"]


def run_main(capsys, *args, data_path, model="M3SRec_REVEAL", tmp_path=None):
    extra = [f"--checkpoint_dir={tmp_path / 'saved'}"] if tmp_path is not None else []
    given = {a.split("=")[0] for a in args}
    small = [a for a in SMALL if a.split("=")[0] not in given]
    code = script.main([f"--model={model}", "--dataset=tiny", f"--data_path={data_path}", *small, *extra, *args])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    return code, errors


def assert_one_error(code, errors, *names):
    assert code == 2, errors
    assert len(errors) == 1, errors
    for name in names:
        assert name in errors[0], (name, errors[0])


@pytest.mark.parametrize("args, names", [
    (["--avl_alpah=0.1"], ["--avl_alpah=0.1", "unknown config key 'avl_alpah'", "avl_alpha"]),
    (["--fve_cycels=2"], ["'fve_cycels'", "fve_cycles"]),
    (["--avl=maybe"], ["--avl=maybe", "true or false"]),
    (["--avl=2"], ["--avl=2", "true or false"]),
    (["--avl_alpha=abc"], ["--avl_alpha=abc", "avl_alpha must be a number"]),
    (["--avl_alpha=nan"], ["avl_alpha must be a number"]),
    (["--avl_alpha=.nan"], ["avl_alpha must be a finite number"]),
    (["--avl_alpha=-0.5"], ["--avl_alpha=-0.5", "avl_alpha must be >= 0"]),
    (["--avl_sample_fraction=0.25"], ["--avl_sample_fraction=0.25", "'avl_sample_fraction' was removed",
                                       "avl_probe_every"]),
    (["--avl_probe_every=0"], ["avl_probe_every must be >= 1"]),
    (["--avl_stacked_probes=sometimes"], ["avl_stacked_probes must be auto, true or false"]),
    (["--avl_mode=fast"], ["avl_mode must be one of grad, lr"]),
    (["--avl_probe_mode=noisy"], ["avl_probe_mode"]),
    (["--avl_clamp=[2,3]"], ["avl_clamp must be auto, ~ or [low, high]"]),
    (["--zeroed_modalities=[audio]"], ["zeroed_modalities"]),
    (["--epochs=0"], ["epochs must be >= 1"]),
    (["--learning_rate=0"], ["learning_rate must be > 0"]),
    (["--hidden_dropout_prob=1.5"], ["hidden_dropout_prob must be < 1"]),
    (["--hidden_size=30", "--n_heads=4"], ["hidden_size (30) must be a multiple of n_heads (4)"]),
    (["--fve_batch_size=0"], ["fve_batch_size must be >= 1"]),
    (["--fve_warm_start=perhaps"], ["fve_warm_start"]),
    (["--metrics=[Foo]"], ["no metric named 'Foo'"]),
])
def test_bad_command_line_values_are_one_error_line(capsys, tiny_root, args, names):
    code, errors = run_main(capsys, *args, data_path=tiny_root)
    assert_one_error(code, errors, *names)


def test_the_real_script_refuses_a_misspelt_key_in_one_line(tiny_root):
    out = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_reveal.py"), "--model=M3SRec_REVEAL",
                          "--dataset=tiny", f"--data_path={tiny_root}", "--avl_alpah=0.1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "avl_alpah" in errors[0] and "avl_alpha" in errors[0]


@pytest.mark.parametrize("word, value", [(w, True) for w in ("true", "True", "YES", "on", "On", "1")]
                         + [(w, False) for w in ("false", "FALSE", "no", "No", "off", "OFF", "0")])
def test_booleans_accept_the_usual_words_and_become_bools(tiny_root, word, value):
    base = {"data_path": tiny_root}
    assert build_config("M3SRec_REVEAL", "tiny", config_dict=base, cmd_args=[f"--avl={word}"])["avl"] is value
    assert build_config("M3SRec_REVEAL", "tiny", config_dict=dict(base, avl=word))["avl"] is value


def test_avl_off_really_turns_avl_off(tiny_config):
    from recbole_reveal.training import close_run_logs, prepare_run

    _, _, _, trainer = prepare_run(build_config("M3SRec_REVEAL", "tiny", config_dict=dict(tiny_config, avl="off")))
    close_run_logs()
    assert trainer.avl_enabled is False


def test_config_file_errors_name_the_file_and_line(capsys, tiny_root, tmp_path):
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("epochs: 1\nlearning_rate: [0.1\n")
    code, errors = run_main(capsys, f"--config_files={syntax}", data_path=tiny_root)
    assert_one_error(code, errors, f"{syntax}:3", "YAML syntax error", "line 2")
    typo = tmp_path / "typo.yaml"
    typo.write_text("epochs: 1\n\navl_alpah: 0.2\n")
    code, errors = run_main(capsys, f"--config_files={typo}", data_path=tiny_root)
    assert_one_error(code, errors, f"{typo}:3", "avl_alpah", "avl_alpha")
    bad = tmp_path / "bad.yaml"
    bad.write_text("avl: maybe\n")
    code, errors = run_main(capsys, f"--config_files={bad}", data_path=tiny_root)
    assert_one_error(code, errors, f"{bad}:1", "avl must be true or false")


def test_python_api_and_params_files_are_checked_like_the_command_line(tiny_root, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"config_dict\['avl_alpah'\].*did you mean avl_alpha"):
        build_config("M3SRec_REVEAL", "tiny", config_dict={"data_path": tiny_root, "avl_alpah": 0.1})
    typo = tmp_path / "typo.hyper"
    typo.write_text("avl_alpha choice [0.1,0.2]\nfve_cycels choice [1,2]\n")
    negative = tmp_path / "negative.hyper"
    negative.write_text("avl_alpha choice [0.1,-1.0]\n")
    for params, names in ((typo, [f"{typo}:2", "fve_cycels", "fve_cycles"]),
                          (negative, [f"{negative}:1", "avl_alpha must be >= 0; got -1.0"])):
        code = run_hyper.main(["--model=M3SRec_REVEAL", "--dataset=tiny", f"--params_file={params}",
                               f"--data_path={tiny_root}", f"--output_file={tmp_path / 'h.result'}"])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert_one_error(code, errors, *names)
    assert not os.path.exists(tmp_path / "h.result.trials")          # no trial ran


def test_a_key_only_other_models_read_is_logged_not_fatal(tiny_root, caplog):
    config = build_config("SASRec", "tiny", config_dict={"data_path": tiny_root, "avl_alpha": 0.3,
                                                         "n_shared_experts": 3})
    assert config["avl_alpha"] == 0.3
    notes = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert any("'avl_alpha' is not read by SASRec" in n and "REVEAL" in n for n in notes)
    assert any("'n_shared_experts' is not read by SASRec" in n and "M3SRec" in n for n in notes)


OWN_MODEL = '''
from recbole.utils import InputType
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
import torch


class KeyedModel(MultimodalSequentialRecommender):
    input_type = InputType.POINTWISE
    vision_modules = ("proj",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.scale = config["read_in_code_key"]
        self.proj = torch.nn.Linear(1, 1)
'''


def test_your_own_keys_are_known_from_your_yaml_your_code_or_extra_config_keys(tiny_root, tmp_path):
    (tmp_path / "keyed.py").write_text(OWN_MODEL)
    model = f"{tmp_path / 'keyed.py'}:KeyedModel"
    base = {"data_path": tiny_root}
    # read by the model's own code: known
    assert build_config(model, "tiny", config_dict=dict(base, read_in_code_key=2))["read_in_code_key"] == 2
    with pytest.raises(ConfigError, match="my_yaml_key"):
        build_config(model, "tiny", config_dict=dict(base, my_yaml_key=1))
    # declared in <Class>.yaml beside the file, with its type
    (tmp_path / "KeyedModel.yaml").write_text("my_yaml_key: 1    # (int) A key of mine.\n")
    assert build_config(model, "tiny", cmd_args=["--my_yaml_key=3"], config_dict=base)["my_yaml_key"] == 3
    with pytest.raises(ConfigError, match="my_yaml_key must be an integer"):
        build_config(model, "tiny", cmd_args=["--my_yaml_key=x"], config_dict=base)
    # listed in extra_config_keys (any config source)
    config = build_config("M3SRec", "tiny", config_dict=dict(base, extra_config_keys=["run_note"]),
                          cmd_args=["--run_note=baseline"])
    assert config["run_note"] == "baseline"


# ---- data files ------------------------------------------------------------------------------------

@pytest.fixture
def tiny_copy(tiny_root, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(tiny_root, folder)
    return folder


def test_non_numeric_timestamp_names_file_and_line(capsys, tiny_copy):
    inter = tiny_copy / "tiny" / "tiny.inter"
    lines = inter.read_text().splitlines()
    lines[57] = lines[57].rsplit("\t", 1)[0] + "\tabc"
    inter.write_text("\n".join(lines) + "\n")
    code, errors = run_main(capsys, data_path=tiny_copy, model="SASRec")
    assert_one_error(code, errors, f"{inter}:58", "timestamp:float", "'abc'")


@pytest.mark.parametrize("content, names", [("", [":1", "the file is empty"]),
                                            ("user_id:token\titem_id:token\ttimestamp:float\n",
                                             ["no interactions after the header"]),
                                            ("user_id\titem_id\n", [":1", "header field 1 is 'user_id'"])])
def test_empty_or_header_only_inter_is_one_error(capsys, tiny_copy, content, names):
    inter = tiny_copy / "tiny" / "tiny.inter"
    inter.write_text(content)
    code, errors = run_main(capsys, data_path=tiny_copy)
    assert_one_error(code, errors, str(inter), *names)


def test_json_that_disagrees_with_the_matrix_is_an_error(capsys, tiny_copy):
    features = str(tiny_copy / "tiny" / "features")
    tokens, matrix = load_item_features(features, "text_minilm")
    save_item_features(features, "text_minilm", tokens, matrix[:, :10], {"encoder": "minilm"})
    _, _, json_path = feature_paths(features, "text_minilm")
    meta = json.load(open(json_path))
    meta.update(dim=384)
    meta.pop("matrix_sha256")
    json.dump(meta, open(json_path, "w"))
    code, errors = run_main(capsys, data_path=tiny_copy)
    assert_one_error(code, errors, json_path, "dim = 384", "has 10")


def test_reordered_items_file_is_caught_where_the_extractor_wrote_checksums(tiny_copy):
    features = str(tiny_copy / "tiny" / "features")
    tokens, matrix = load_item_features(features, "vision_efficientnet_lite0")
    save_item_features(features, "vision_efficientnet_lite0", tokens, matrix, {"encoder": "test"})
    load_item_features(features, "vision_efficientnet_lite0")       # as written: fine
    _, items, _ = feature_paths(features, "vision_efficientnet_lite0")
    with open(items, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(items, "w", encoding="utf-8") as f:
        f.write("\n".join(reversed(lines)) + "\n")
    with pytest.raises(FeatureFileError, match="reordered or replaced"):
        load_item_features(features, "vision_efficientnet_lite0")


def test_missing_items_are_listed_as_plain_tokens(capsys, tmp_path):
    write_tiny_dataset(str(tmp_path), name="tiny")
    features = str(tmp_path / "tiny" / "features")
    tokens, matrix = load_item_features(features, "text_minilm")
    keep = [i for i, t in enumerate(tokens) if t not in ("i3", "i7")]
    save_item_features(features, "text_minilm", [tokens[i] for i in keep], matrix[keep])
    code, errors = run_main(capsys, data_path=tmp_path)
    assert_one_error(code, errors, "2 of the dataset's", "i3", "i7")
    assert "np.str_" not in errors[0]


# ---- the tables stay true ----------------------------------------------------------------------------

def test_every_plugin_key_declares_its_type():
    untyped = [f"{os.path.basename(p)}: {k}" for p in plugin_yaml_files() for k, d in declared_keys(p).items()
               if not d.types]
    assert not untyped


def test_every_ranged_key_exists_and_every_key_the_plugin_reads_is_declared():
    from recbole_reveal.config_keys.declared import recbole_general_keys

    declared = set().union(*(declared_keys(p) for p in plugin_yaml_files())) | recbole_general_keys()
    assert not sorted(set(RANGES) - declared - {"embedding_size", "mask_ratio", "ft_ratio", "dropout_prob"})
    package = os.path.join(REPO, "recbole_reveal")
    # these read a VLM folder's config.json (also called config), not a run's config
    vlm_config_readers = {os.path.join(package, "fve", *name.split("/")) for name in (
        "vlm/folder.py", "vlm/load.py", "vlm/families.py", "critic/generation/transformers_backend.py",
        "critic/generation/endpoint.py")}
    read = set()
    for folder, _, files in os.walk(package):
        read |= set().union(*(keys_read_by(os.path.join(folder, f)) for f in files
                              if f.endswith(".py") and os.path.join(folder, f) not in vlm_config_readers))
    assert not sorted(read - declared)


def test_declared_defaults_pass_their_own_checks(tiny_root):
    for model in ("M3SRec_REVEAL", "MISSRec_REVEAL", "HM4SR_REVEAL", "STOSA", "VBPR", "SASRec", "LightGCN",
                  "BERT4Rec"):
        build_config(model, "tiny", config_dict={"data_path": tiny_root})
    assert np.isfinite(build_config("M3SRec_REVEAL", "tiny", config_dict={"data_path": tiny_root})["avl_alpha"])


# ---- checkpoints ---------------------------------------------------------------------------------------

class _OpensAFile:
    """What a hostile checkpoint can hold: unpickling it calls ``open(path, "w")``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_checkpoints_load_with_weights_only_and_code_in_one_is_refused(tiny_config, tmp_path):
    import torch

    from recbole_reveal.adaptation import compat
    from recbole_reveal.infra.errors import CheckpointError
    from recbole_reveal.training import close_run_logs, prepare_run

    compat.apply()
    import recbole.trainer.trainer as recbole_trainer

    # a real checkpoint of the plugin (RecBole's Config, enums, the model class, AVL's state) loads safely
    config, loaders, _, trainer = prepare_run(build_config("M3SRec_REVEAL", "tiny", config_dict=dict(tiny_config, epochs=1)))
    trainer.fit(loaders[0], loaders[1], saved=True, show_progress=False)
    close_run_logs()
    checkpoint = recbole_trainer.torch.load(trainer.saved_model_file, map_location="cpu")
    assert checkpoint["config"]["model"] == "M3SRec_REVEAL" and "plugin_trainer_state" in checkpoint
    trainer.resume_checkpoint(trainer.saved_model_file)

    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.pth"
    torch.save({"config": _OpensAFile(str(marker)), "state_dict": {}}, str(hostile))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        recbole_trainer.torch.load(str(hostile), map_location="cpu")       # RecBole's trainer's load
    with pytest.raises(CheckpointError):
        trainer.resume_checkpoint(str(hostile))
    assert not marker.exists()
