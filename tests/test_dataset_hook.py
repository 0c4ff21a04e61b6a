"""The feature dataset hook: alignment to RecBole ids and every documented error case."""

import os

import numpy as np
import pytest

from recbole_reveal import build_config, create_dataset
from recbole_reveal.data.dataset import MultimodalSequentialDataset
from recbole_reveal.data.feature_store import feature_paths, save_item_features
from recbole_reveal.infra.errors import ConfigError, FeatureFileError
from helpers import write_tiny_dataset


@pytest.fixture
def own_dataset(tmp_path):
    """A private copy, so tests may break its files."""
    folder, tokens, text, vision = write_tiny_dataset(str(tmp_path), name="own")
    return str(tmp_path), folder, tokens, text, vision


def _dataset(root, **overrides):
    config = build_config("M3SRec", "own", config_dict=dict({"data_path": root}, **overrides))
    return create_dataset(config)


def test_rows_follow_recbole_internal_ids(own_dataset):
    root, _, tokens, text, vision = own_dataset
    data = _dataset(root)
    assert isinstance(data, MultimodalSequentialDataset)
    id2token = data.field2id_token["item_id"]
    for modality, matrix in (("text", text), ("vision", vision)):
        table = data.item_features[modality].numpy()
        assert table.shape == (len(id2token), matrix.shape[1])
        assert not table[0].any(), "row 0 is padding"
        for internal_id in range(1, len(id2token)):
            np.testing.assert_array_equal(table[internal_id], matrix[tokens.index(id2token[internal_id])])


def test_plain_recbole_models_get_recbole_datasets(own_dataset):
    root = own_dataset[0]
    config = build_config("SASRec", "own", config_dict={"data_path": root})
    assert not isinstance(create_dataset(config), MultimodalSequentialDataset)


def test_feature_version_is_selected_by_config(own_dataset):
    root, folder, tokens, _, _ = own_dataset
    cycle = np.full((len(tokens), 8), 0.5, dtype=np.float32)
    save_item_features(os.path.join(folder, "features"), "fve/cycle_1", tokens, cycle)
    data = _dataset(root, vision_feature="fve/cycle_1")
    assert data.item_features["vision"].shape[1] == 8
    assert float(data.item_features["vision"][1:].min()) == 0.5


def _rewrite(folder, name, matrix=None, tokens=None):
    npy, items, _ = feature_paths(os.path.join(folder, "features"), name)
    if matrix is not None:
        np.save(npy, matrix)
    if tokens is not None:
        with open(items, "w", encoding="utf-8") as f:
            f.write("\n".join(tokens) + "\n")
    return npy, items


def _vision(folder):
    return np.load(os.path.join(folder, "features", "vision_efficientnet_lite0.npy"))


def test_missing_feature_file_names_the_file_and_the_command(own_dataset):
    root, folder = own_dataset[:2]
    os.remove(os.path.join(folder, "features", "text_minilm.npy"))
    with pytest.raises(FeatureFileError, match=r"text_minilm\.npy.*recbole_reveal\.commands\.extract_features"):
        _dataset(root)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda m: m.astype(np.float64), "dtype is float64, expected float32"),
        (lambda m: np.where(np.arange(len(m))[:, None] == 3, np.nan, m).astype(np.float32), "NaN or inf"),
        (lambda m: m[:, :, None], "expected 2-D"),
        (lambda m: m[:-1], "item tokens but"),
    ],
)
def test_bad_matrices_are_rejected_naming_the_file(own_dataset, breakage, message):
    root, folder = own_dataset[:2]
    npy, _ = _rewrite(folder, "vision_efficientnet_lite0", matrix=breakage(_vision(folder)))
    with pytest.raises(FeatureFileError, match=message) as err:
        _dataset(root)
    assert "vision_efficientnet_lite0" in str(err.value)


def test_token_list_errors(own_dataset):
    root, folder, tokens = own_dataset[:3]
    _, items = feature_paths(os.path.join(folder, "features"), "vision_efficientnet_lite0")[:2]
    with open(items, encoding="utf-8") as f:
        order = f.read().splitlines()
    _rewrite(folder, "vision_efficientnet_lite0", tokens=[order[0]] + order[:-1])
    with pytest.raises(FeatureFileError, match="duplicate item tokens"):
        _dataset(root)
    _rewrite(folder, "vision_efficientnet_lite0", tokens=["zz" + t for t in order])
    with pytest.raises(FeatureFileError, match="items have no row"):
        _dataset(root)


def test_dimension_is_checked_against_the_config(own_dataset):
    root = own_dataset[0]
    with pytest.raises(FeatureFileError, match="dimension is 24, but the config expects 1280"):
        _dataset(root, vision_feature_dim=1280)
    assert _dataset(root, vision_feature_dim=24).item_features["vision"].shape[1] == 24


def test_unset_feature_key_is_a_config_error(own_dataset):
    with pytest.raises(ConfigError, match="text_feature"):
        _dataset(own_dataset[0], text_feature=None)


def test_the_embedded_demo_dataset_loads_with_its_features():
    config = build_config("M3SRec_REVEAL", "synthetic-demo")
    data = create_dataset(config)
    n = data.item_num
    assert data.item_features["text"].shape == (n, 384)
    assert data.item_features["vision"].shape == (n, 1280)
    norms = data.item_features["vision"][1:].norm(dim=1)
    assert np.allclose(norms.numpy(), 1.0, atol=1e-4), "visual features are L2-normalised"
