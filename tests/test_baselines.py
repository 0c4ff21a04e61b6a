"""RecBole's SASRec, BERT4Rec and LightGCN through the plugin's entry point, with the plugin's YAMLs."""

import math

import pytest

from recbole_reveal import run_recbole_reveal

# per model: keys of properties/model/<Model>.yaml whose values differ from RecBole's own defaults,
# so they can only come from the plugin's file
YAML_KEYS = {
    "SASRec": {"hidden_act": "relu", "layer_norm_eps": 1e-8, "train_batch_size": 128},
    "BERT4Rec": {"mask_ratio": 0.6, "hidden_dropout_prob": 0.1, "attn_dropout_prob": 0.1},
    "LightGCN": {
        "n_layers": 3, "reg_weight": 1e-4, "require_pow": True, "train_batch_size": 2048,
        # overall.yaml trains without negatives (CE models); BPR needs one per positive
        "train_neg_sample_args": {
            "distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0,
        },
    },
}


@pytest.mark.parametrize("model", sorted(YAML_KEYS))
def test_baseline_trains_with_its_documented_config(model, tiny_config):
    # tiny_config sets sizes for speed; the keys checked below are not among them
    config = {k: v for k, v in tiny_config.items() if k != "train_batch_size"}
    result = run_recbole_reveal(model, "tiny", config_dict=dict(config, epochs=2))
    applied = result["config"]
    for key, value in YAML_KEYS[model].items():
        assert applied[key] == value, f"{model}.yaml: {key}"
    assert applied["eval_args"]["split"] == {"LS": "valid_and_test"}, "overall.yaml's protocol"
    metrics = dict(result["test_result"])
    assert set(metrics) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in metrics.values())
    assert metrics["recall@20"] > 0

