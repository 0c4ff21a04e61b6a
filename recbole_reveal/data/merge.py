"""Merge several atomic datasets into one for UniSRec's multi-domain pre-training (its authors pre-train
on five Amazon categories at once): users and items of dataset ``k`` become ``<k>-<token>``, as in the
reference's pre-training data, and every named feature set is merged the same way.

    python -m recbole_reveal.commands.merge_datasets --data_path dataset_atomic --datasets Beauty Sports --name pretrain_BS
    python run_recbole_reveal.py --model=UniSRec --dataset=pretrain_BS --train_stage=pretrain
    python run_recbole_reveal.py --model=UniSRec --dataset=Home --pretrained_file=saved/UniSRec-....pth

Light: no torch, no RecBole (numpy for the feature sets)."""

import os

import numpy as np

from recbole_reveal.data.atomic import read_atomic, write_atomic
from recbole_reveal.data.feature_store import load_item_features, save_item_features
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.infra.files import write_json_atomic

MERGED_FIELDS = ("user_id", "item_id")


def merge_datasets(data_path, datasets, name, feature_sets=("text_minilm",)):
    """Write ``<data_path>/<name>/<name>.inter`` and ``features/<set>`` for each of ``feature_sets`` from
    ``datasets`` (folders under ``data_path``); returns a summary. Only user, item and timestamp columns
    are kept; every dataset must have each feature set, with one dimension."""
    if len(datasets) < 2:
        raise ConfigError(f"--datasets: name at least two datasets to merge, got {list(datasets)}")
    if name in datasets:
        raise ConfigError(f"--name {name!r} is one of the merged datasets: choose a new name")
    merged = {"user_id:token": [], "item_id:token": [], "timestamp:float": []}
    features = {s: ([], []) for s in feature_sets}
    for k, dataset in enumerate(datasets):
        inter = os.path.join(data_path, dataset, f"{dataset}.inter")
        if not os.path.isfile(inter):
            raise ConfigError(f"--datasets: {inter} does not exist (expected <data_path>/<dataset>/<dataset>.inter)")
        columns, _, rows = read_atomic(inter)
        missing = [f for f in MERGED_FIELDS if f not in columns]
        if missing:
            raise ConfigError(f"{inter}: no {', '.join(missing)} column (columns: {columns})")
        u, i = columns.index("user_id"), columns.index("item_id")
        t = columns.index("timestamp") if "timestamp" in columns else None
        merged["user_id:token"] += [f"{k}-{row[u]}" for row in rows]
        merged["item_id:token"] += [f"{k}-{row[i]}" for row in rows]
        merged["timestamp:float"] += [row[t] if t is not None else n for n, row in enumerate(rows)]
        for feature_set in feature_sets:
            tokens, matrix = load_item_features(os.path.join(data_path, dataset, "features"), feature_set)
            features[feature_set][0].extend(f"{k}-{token}" for token in tokens)
            features[feature_set][1].append(matrix)
    folder = os.path.join(data_path, name)
    os.makedirs(folder, exist_ok=True)
    write_atomic(os.path.join(folder, f"{name}.inter"), merged)
    for feature_set, (tokens, matrices) in features.items():
        dims = {m.shape[1] for m in matrices}
        if len(dims) > 1:
            raise ConfigError(f"feature set {feature_set!r} has dimensions {sorted(dims)} in {list(datasets)}: "
                              "merged datasets need one text encoder")
        save_item_features(os.path.join(folder, "features"), feature_set, tokens, np.concatenate(matrices),
                           metadata={"merged_from": list(datasets)})
    summary = {"name": name, "datasets": list(datasets), "interactions": len(merged["user_id:token"]),
               "items": len(set(merged["item_id:token"])), "feature_sets": list(feature_sets)}
    write_json_atomic(os.path.join(folder, "merge.json"), summary)
    return summary
