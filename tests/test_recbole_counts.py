"""RecBole's baselines see the training interactions as they are: Pop counts each one (RecBole 1.2.1
counts an item once per batch; fixed in compat), LightGCN's graph holds each distinct training pair."""

from collections import Counter

import numpy as np
import pytest
import torch

from helpers import build_pipeline

NEGATIVE = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}


def _train_items(train_data):
    dataset = train_data.dataset
    return dataset.inter_feat[dataset.iid_field].numpy(), dataset.inter_feat[dataset.uid_field].numpy()


@pytest.mark.parametrize("negatives", [None, NEGATIVE], ids=["no-negatives", "sampled-negatives"])
def test_pop_counts_every_training_interaction(tiny_config, negatives):
    config, (train_data, valid_data, _), model, trainer = build_pipeline(
        "Pop", dict(tiny_config, train_batch_size=512, train_neg_sample_args=negatives))
    items, _ = _train_items(train_data)
    counts = Counter(items.tolist())
    # the batches repeat items: counting once per batch would fall short
    assert max(counts.values()) > len(list(train_data))
    trainer.fit(train_data, valid_data, saved=False)
    expected = torch.zeros(model.n_items, dtype=torch.long)
    for item, n in counts.items():
        expected[item] = n
    assert torch.equal(model.item_cnt.squeeze(1), expected)
    assert int(model.item_cnt.sum()) == len(items)


def test_lightgcn_graph_holds_each_distinct_training_pair(tiny_config):
    _, (train_data, _, _), model, _ = build_pipeline("LightGCN", dict(tiny_config, train_neg_sample_args=NEGATIVE))
    items, users = _train_items(train_data)
    pairs = set(zip(users.tolist(), items.tolist()))
    adj = model.norm_adj_matrix.coalesce()
    assert adj.indices().shape[1] == 2 * len(pairs)
    degree = np.zeros(model.n_users + model.n_items)
    for u, i in pairs:
        degree[u] += 1
        degree[model.n_users + i] += 1
    row, col = adj.indices()
    expected = 1 / np.sqrt(degree[row.numpy()] * degree[col.numpy()])
    np.testing.assert_allclose(adj.values().numpy(), expected, rtol=1e-5)
