"""Each RecBole-on-today's-stack fix: the problem is real without it, and gone with it."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from recbole_reveal.adaptation import compat
from helpers import build_pipeline


def _python(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_numpy_aliases_are_what_recbole_config_needs(tiny_root, monkeypatch):
    from recbole.config import Config

    for alias in ("float_", "complex_", "unicode_", "bool8"):
        monkeypatch.delitem(np.__dict__, alias, raising=False)
    with pytest.raises(AttributeError, match="float_"):
        Config(model="SASRec", dataset="tiny", config_dict={"data_path": tiny_root, "train_neg_sample_args": None})
    assert set(compat.restore_numpy_aliases()) == {"float_", "complex_", "unicode_", "bool8"}
    assert np.float_ is np.float64 and np.bool8 is np.bool_
    Config(model="SASRec", dataset="tiny", config_dict={"data_path": tiny_root, "train_neg_sample_args": None})


def test_anomaly_detection_stays_off_after_recbole_models_are_imported():
    # the problem: RecBole's sequential package switches it on for the whole process
    assert _python("import recbole.model.sequential_recommender, torch; print(torch.is_anomaly_enabled())") == "True"
    code = (
        "import recbole_reveal, torch; from recbole_reveal import get_model; get_model('SASRec'); "
        "get_model('SINE'); print(torch.is_anomaly_enabled())"
    )
    assert _python(code) == "False"


def test_recbole_reloads_its_checkpoint_while_torch_default_stays_safe(tiny_config):
    _, (train_data, valid_data, test_data), _, trainer = build_pipeline(
        "M3SRec", dict(tiny_config, epochs=1)
    )
    trainer.fit(train_data, valid_data, saved=True)
    # torch's own default is untouched: a plain load of a RecBole checkpoint is still refused
    with pytest.raises(Exception, match="[Ww]eights only"):
        torch.load(trainer.saved_model_file)
    result = trainer.evaluate(test_data, load_best_model=True)
    assert set(result) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}


def test_dok_matrix_update_restored_for_recbole_graph_models():
    """RecBole's LightGCN/NGCF build their adjacency with ``dok_matrix._update`` (gone in new scipy)."""
    import numpy as np
    import scipy.sparse as sp

    m = sp.dok_matrix((3, 3), dtype=np.float32)
    m._update({(0, 1): 1.0, (2, 0): 2.0})
    assert m.toarray().tolist() == [[0, 1, 0], [0, 0, 0], [2, 0, 0]]


def test_recbole_creates_its_folders_without_a_check_then_create_race(tmp_path, monkeypatch):
    """Two ranks of a distributed run create ./log together: the other one made it between RecBole's
    exists() check and its makedirs(). Simulated by an exists() that always says no."""
    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils.logger

    compat.apply()
    folder = tmp_path / "log"
    folder.mkdir()
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    for module in (recbole.utils.logger, recbole.trainer.trainer, recbole.data.utils):
        module.ensure_dir(str(folder))          # RecBole's own: FileExistsError
    assert folder.is_dir()
