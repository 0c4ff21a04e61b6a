"""STOSA: a plain RecBole sequential model (no feature files), ranking consistency, learning, seeding."""

import os
import shutil

import pytest
import torch
from recbole.data.dataset import SequentialDataset

from recbole_reveal import run_recbole_reveal
from recbole_reveal.data.dataset import MultimodalSequentialDataset
from helpers import TINY_ITEMS, assert_full_sort_matches_predict, build_pipeline, first_batch, write_tiny_dataset


@pytest.fixture(scope="module")
def no_feature_root(tmp_path_factory):
    """The tiny dataset without its features/ folder: STOSA must not need one."""
    root = str(tmp_path_factory.mktemp("stosa_atomic"))
    folder = write_tiny_dataset(root)[0]
    shutil.rmtree(os.path.join(folder, "features"))
    return root


@pytest.fixture
def stosa_config(tiny_config, no_feature_root):
    return dict(tiny_config, data_path=no_feature_root)


def test_runs_on_recboles_own_sequential_dataset(stosa_config):
    config, (train_data, _, _), model, _ = build_pipeline("STOSA", stosa_config)
    dataset = train_data._dataset
    assert isinstance(dataset, SequentialDataset)
    assert not isinstance(dataset, MultimodalSequentialDataset)
    # its own YAML is applied (one sampled negative; the reference pvn weight)
    assert config["train_neg_sample_args"]["sample_num"] == 1
    assert config["pvn_weight"] == 0.005
    assert model.n_items == TINY_ITEMS + 1


def test_full_sort_predict_equals_predict_for_every_item(stosa_config):
    _, (train_data, _, _), model, _ = build_pipeline("STOSA", stosa_config)
    model.eval()
    batch = first_batch(train_data)[torch.arange(5)]
    full = assert_full_sort_matches_predict(model, batch)
    assert full[:, 1:].std() > 0, "scores must differ between items for the comparison to mean anything"


def test_loss_needs_one_sampled_negative(stosa_config):
    with pytest.raises(ValueError, match="one sampled negative"):
        build_pipeline("STOSA", dict(stosa_config, train_neg_sample_args=None))


def test_stosa_learns_far_better_than_random(stosa_config):
    result = run_recbole_reveal("STOSA", "tiny", config_dict=dict(stosa_config, epochs=15))
    random_recall_at_10 = 10 / (TINY_ITEMS - 1)
    assert result["test_result"]["recall@10"] > 2 * random_recall_at_10
    assert result["test_result"]["ndcg@10"] > 0.25


def test_same_config_gives_the_same_numbers(stosa_config):
    config = dict(stosa_config, epochs=2)
    first = run_recbole_reveal("STOSA", "tiny", config_dict=config)
    second = run_recbole_reveal("STOSA", "tiny", config_dict=config)
    assert dict(first["test_result"]) == dict(second["test_result"])
    assert first["best_valid_score"] == second["best_valid_score"]
