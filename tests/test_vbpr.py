"""VBPR and the general multimodal dataset: feature alignment, the visual term, learning, seeding."""

import os

import numpy as np
import pytest
import torch
from recbole.data.dataset import SequentialDataset

from recbole_reveal import build_config, create_dataset, run_recbole_reveal
from recbole_reveal.data.dataset import MultimodalDataset
from recbole_reveal.data.feature_store import save_item_features
from recbole_reveal.infra.errors import ConfigError
from helpers import TINY_ITEMS, assert_full_sort_matches_predict, build_pipeline, first_batch, write_tiny_dataset


def _chain_position_features(n_items):
    """Features that place each item on the chain the tiny users walk (i -> i+3): Fourier codes of the
    chain position 27 * i mod 40 (27 = 3^-1 mod 40), so neighbours on the chain look alike."""
    position = (27 * np.arange(n_items)) % n_items
    angles = 2 * np.pi * np.outer(position, [1, 2]) / n_items
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def vbpr_root(tmp_path_factory):
    """The tiny dataset plus two more visual sets, all written in a shuffled row order: ``chain``
    (informative) and ``zero``."""
    root = str(tmp_path_factory.mktemp("vbpr_atomic"))
    folder, tokens, _, vision = write_tiny_dataset(root)
    order = np.random.default_rng(1).permutation(len(tokens))
    shuffled = [tokens[i] for i in order]
    features = os.path.join(folder, "features")
    save_item_features(features, "chain", shuffled, _chain_position_features(len(tokens))[order])
    save_item_features(features, "zero", shuffled, np.zeros_like(vision))
    return root, tokens, vision


@pytest.fixture
def vbpr_config(tiny_config, vbpr_root):
    return dict(tiny_config, data_path=vbpr_root[0], learning_rate=0.01, embedding_size=16, visual_embedding_size=16)


def test_general_dataset_aligns_feature_rows_to_internal_ids(vbpr_config, vbpr_root):
    _, tokens, vision = vbpr_root
    data = create_dataset(build_config("VBPR", "tiny", config_dict=vbpr_config))
    assert isinstance(data, MultimodalDataset) and not isinstance(data, SequentialDataset)
    assert set(data.item_features) == {"vision"}, "VBPR.yaml loads the visual set only"
    table = data.item_features["vision"].numpy()
    id2token = data.field2id_token["item_id"]
    assert not table[0].any(), "row 0 is padding"
    for internal_id in range(1, len(id2token)):
        np.testing.assert_array_equal(table[internal_id], vision[tokens.index(id2token[internal_id])])


def test_model_reads_the_configured_visual_set(vbpr_config):
    _, (train_data, _, _), model, _ = build_pipeline("VBPR", dict(vbpr_config, vision_feature="chain"))
    expected = _chain_position_features(TINY_ITEMS)
    id2token = train_data._dataset.field2id_token["item_id"]
    for internal_id in range(1, len(id2token)):
        row = int(id2token[internal_id][1:])
        np.testing.assert_array_equal(model.item_raw_features[internal_id].numpy(), expected[row])


def test_unknown_feature_modality_is_a_clear_error(vbpr_config):
    with pytest.raises(ConfigError, match="feature_modalities"):
        build_pipeline("VBPR", dict(vbpr_config, feature_modalities=["audio"]))


def _scores(config):
    """A fresh model's scores for the first 5 users of the first training batch."""
    _, (train_data, _, _), model, _ = build_pipeline("VBPR", config)
    model.eval()
    batch = first_batch(train_data)[torch.arange(5)]
    with torch.no_grad():
        return model, batch, model.full_sort_predict(batch).view(5, -1)


def test_full_sort_predict_equals_predict_for_every_item(vbpr_config):
    model, batch, full = _scores(vbpr_config)
    with torch.no_grad():
        # non-zero biases and visual bias, so that every term of the score is compared
        model.item_bias.weight.normal_()
        model.visual_bias.weight.normal_()
    assert_full_sort_matches_predict(model, batch, tol=1e-5)


def test_scores_depend_on_the_feature_file(vbpr_config):
    model, _, default = _scores(vbpr_config)
    other_model, _, zero = _scores(dict(vbpr_config, vision_feature="zero"))
    # same seed and shapes: the parameters are identical, so only the features differ
    for (name, p), (_, q) in zip(model.named_parameters(), other_model.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)
    assert (default - zero).abs().max() > 1e-3


def test_zero_features_reduce_it_to_mf_plus_item_bias(vbpr_config):
    model, batch, scores = _scores(dict(vbpr_config, vision_feature="zero"))
    with torch.no_grad():
        model.item_bias.weight.normal_()
        scores = model.full_sort_predict(batch).view(5, -1)
        user = batch[model.USER_ID]
        mf = model.user_embedding(user) @ model.item_embedding.weight.T + model.item_bias.weight.T
    torch.testing.assert_close(scores, mf)


def test_informative_visual_features_make_vbpr_learn_far_better(vbpr_config):
    config = dict(vbpr_config, epochs=20)
    chain = run_recbole_reveal("VBPR", "tiny", config_dict=dict(config, vision_feature="chain"))["test_result"]
    zero = run_recbole_reveal("VBPR", "tiny", config_dict=dict(config, vision_feature="zero"))["test_result"]
    random_recall_at_10 = 10 / (TINY_ITEMS - 1)
    assert chain["recall@10"] > 2 * random_recall_at_10
    assert zero["recall@10"] > 1.5 * random_recall_at_10, "without features it is still a BPR-MF"
    assert chain["ndcg@10"] > zero["ndcg@10"] + 0.03


def test_same_config_gives_the_same_numbers(vbpr_config):
    config = dict(vbpr_config, epochs=2)
    first = run_recbole_reveal("VBPR", "tiny", config_dict=config)
    second = run_recbole_reveal("VBPR", "tiny", config_dict=config)
    assert dict(first["test_result"]) == dict(second["test_result"])
    assert first["best_valid_score"] == second["best_valid_score"]


def test_general_models_get_the_leave_one_out_split(vbpr_config):
    """overall.yaml's LS/TO protocol on a general dataset: each user's last interaction is the test
    item, the one before it the validation item, everything earlier is training."""
    _, loaders, _, _ = build_pipeline("VBPR", vbpr_config)
    splits = [loader._dataset.inter_feat for loader in loaders]
    n_users = len(set(splits[0]["user_id"].tolist()))
    for part in splits[1:]:
        assert len(part) == n_users and len(set(part["user_id"].tolist())) == n_users
    last_train = {}
    for user, stamp in zip(splits[0]["user_id"].tolist(), splits[0]["timestamp"].tolist()):
        last_train[user] = max(stamp, last_train.get(user, stamp))
    valid_time = dict(zip(splits[1]["user_id"].tolist(), splits[1]["timestamp"].tolist()))
    test_time = dict(zip(splits[2]["user_id"].tolist(), splits[2]["timestamp"].tolist()))
    assert all(last_train[u] < valid_time[u] < test_time[u] for u in last_train)
