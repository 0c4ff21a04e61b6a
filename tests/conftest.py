"""Shared fixtures: a tiny on-disk dataset with feature files, and small training configs."""

import os

import pytest

from helpers import write_tiny_dataset


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tests train tiny models: one thread is as fast on a quiet machine, and on a busy one two
    threads make tiny matrix products up to ~100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _run_in_tmp(tmp_path_factory):
    """RecBole writes ./log and ./log_tensorboard (relative paths its writer threads keep using):
    run the whole session in one scratch directory, out of the repository."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("atomic"))
    write_tiny_dataset(root)
    return root


@pytest.fixture
def tiny_config(tiny_root, tmp_path):
    """Small, fast M3SRec settings on the tiny dataset."""
    return {
        "data_path": tiny_root,
        "checkpoint_dir": str(tmp_path / "saved"),
        "epochs": 4,
        "hidden_size": 16,
        "inner_size": 32,
        "n_heads": 2,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "MAX_ITEM_LIST_LENGTH": 10,
        "stopping_step": 100,
    }

