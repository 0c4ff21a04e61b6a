"""The vectorised sequence augmentation of the dataset hook builds exactly RecBole's rows and lists."""

import os
import shutil

import pytest
import torch
from recbole.data.dataset import SequentialDataset

from recbole_reveal.data.dataset import MultimodalSequentialDataset
from recbole_reveal.config import build_config


class RecBoleAugmented(MultimodalSequentialDataset):
    """The same dataset with RecBole's own (Python-loop) augmentation."""

    data_augmentation = SequentialDataset.data_augmentation


@pytest.fixture(scope="module")
def richer_root(tiny_root, tmp_path_factory):
    """The tiny dataset with two more interaction columns: a float and a token sequence."""
    root = str(tmp_path_factory.mktemp("atomic_aug"))
    shutil.copytree(os.path.join(tiny_root, "tiny"), os.path.join(root, "tinyx"), symlinks=True)
    src = os.path.join(root, "tinyx", "tiny.inter")
    with open(src, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(os.path.join(root, "tinyx", "tinyx.inter"), "w", encoding="utf-8") as f:
        f.write(lines[0] + "\trating:float\ttags:token_seq\n")
        for n, line in enumerate(lines[1:]):
            f.write(f"{line}\t{n % 5 + 0.5}\t{' '.join(f't{k}' for k in range(n % 3 + 1))}\n")
    os.remove(src)
    return root


@pytest.mark.parametrize("max_len", [3, 50])
@pytest.mark.parametrize("dataset", ["tiny", "tinyx"])
def test_vectorised_augmentation_equals_recbole(tiny_root, richer_root, dataset, max_len, monkeypatch):
    root = tiny_root if dataset == "tiny" else richer_root
    cols = ["user_id", "item_id", "timestamp"] + (["rating", "tags"] if dataset == "tinyx" else [])
    config = build_config("M3SRec", dataset, config_dict={"data_path": root, "MAX_ITEM_LIST_LENGTH": max_len,
                                                           "load_col": {"inter": cols}})
    monkeypatch.setattr(MultimodalSequentialDataset, "AUGMENT_CHUNK", 7)     # several chunks
    ours, recbole = MultimodalSequentialDataset(config).build(), RecBoleAugmented(config).build()
    for split_ours, split_recbole in zip(ours, recbole):         # train, valid, test
        mine, theirs = split_ours.inter_feat.interaction, split_recbole.inter_feat.interaction
        assert mine.keys() == theirs.keys() and len(split_ours.inter_feat) == len(split_recbole.inter_feat) > 0
        for key in theirs:
            assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key
    mine = ours[0].inter_feat.interaction
    assert (mine["item_length"] == max_len).any() == (max_len == 3)      # the window really moved
    if dataset == "tinyx":
        assert mine["tags_list"].dim() == 3 and mine["rating_list"].shape[1] == max_len
