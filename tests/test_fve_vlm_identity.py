"""The FVE run folder knows the VLM by its files, not its path: a mistyped ``vlm_path`` is refused before
any stage is recorded (and fixing it is accepted), a moved model folder resumes a finished run, another
model does not; the dataset's items are checked against the prompts before anything is encoded."""

import os
import shutil

import numpy as np
import pytest

from recbole_reveal.data.feature_store import save_item_features
from recbole_reveal.data.synthetic import generate_dataset
from recbole_reveal.fve.loop.run import run_fve
from recbole_reveal.infra.errors import ConfigError, FeatureFileError
from recbole_reveal.testing.vlms import build_tiny_qwen2_5_vl

NAME = "fveid"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fve_id_data"))
    generate_dataset(root, NAME, n_users=40, n_items=24, seed=5, image_size=32)
    return root


def features(data_root, folder):
    with open(os.path.join(data_root, NAME, f"{NAME}.item"), encoding="utf-8") as f:
        tokens = [line.split("\t")[0] for line in f.read().splitlines()[1:] if line]
    save_item_features(str(folder), "text_minilm", tokens,
                       np.random.default_rng(0).normal(size=(len(tokens), 8)).astype(np.float32))
    return str(folder)


def config(data_root, feature_dir, vlm, **extra):
    return dict({"data_path": data_root, "feature_dir": feature_dir, "vlm_path": vlm, "fve_device": "cpu",
                 "fve_cycles": 1, "fve_preprocess_workers": 0, "epochs": 1, "hidden_size": 16, "inner_size": 32,
                 "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 10, "show_progress": False}, **extra)


def test_mistyped_vlm_path_is_refused_before_any_stage_and_fixing_it_is_accepted(data_root, tmp_path):
    fdir = features(data_root, tmp_path / "features")
    vlm = build_tiny_qwen2_5_vl(str(tmp_path / "vlm"))
    for wrong, says in ((str(tmp_path / "vlmm"), "no such folder"), (str(tmp_path), "the folder has no config.json")):
        with pytest.raises(ConfigError, match=f"vlm_path={wrong}: {says}"):
            run_fve("M3SRec_REVEAL", NAME, config_dict=config(data_root, fdir, wrong))
    incomplete = shutil.copytree(vlm, str(tmp_path / "no_tokenizer"))
    os.remove(os.path.join(incomplete, "tokenizer.json"))
    with pytest.raises(ConfigError, match=f"vlm_path {incomplete} is incomplete: missing tokenizer.json"):
        run_fve("M3SRec_REVEAL", NAME, config_dict=config(data_root, fdir, incomplete))     # the one folder check
    assert not os.path.exists(os.path.join(fdir, "fve", "run", "stages.json"))
    out = run_fve("M3SRec_REVEAL", NAME, config_dict=config(data_root, fdir, vlm, fve_stop_after="init"))
    assert out["executed"] == ["init"]

    # a moved model folder: the finished stages are the same model's, the run resumes
    moved = str(tmp_path / "models" / "moved")
    shutil.move(vlm, moved)
    out = run_fve("M3SRec_REVEAL", NAME, config_dict=config(data_root, fdir, moved))
    assert out["executed"] == ["cycle_0/encode", "cycle_0/train", "cycle_0/feedback"]
    again = run_fve("M3SRec_REVEAL", NAME, config_dict=config(data_root, fdir, str(tmp_path / "models" / "moved")))
    assert again["executed"] == []

    # another model (other weights) at the old path is another run
    other = build_tiny_qwen2_5_vl(vlm, seed=1)
    with pytest.raises(ConfigError, match="vlm_model_id"):
        run_fve("M3SRec_REVEAL", NAME, config_dict=config(data_root, fdir, other))


def test_items_without_a_prompt_are_refused_before_encoding(data_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(data_root, NAME), data / NAME)
    item_file = data / NAME / f"{NAME}.item"
    lines = item_file.read_text(encoding="utf-8").splitlines()
    dropped = [line.split("\t")[0] for line in lines[1:3]]
    item_file.write_text("\n".join([lines[0]] + lines[3:]) + "\n", encoding="utf-8")
    fdir = features(str(data), tmp_path / "features")
    vlm = build_tiny_qwen2_5_vl(str(tmp_path / "vlm"))
    with pytest.raises(FeatureFileError, match="2 of the dataset's items have no row") as err:
        run_fve("M3SRec_REVEAL", NAME, config_dict=config(str(data), fdir, vlm))
    assert all(token in str(err.value) for token in dropped) and "np.str_" not in str(err.value)
    assert not os.path.exists(os.path.join(fdir, "fve", "cycle_0.npy"))      # nothing was encoded
