"""A dataset's own property file, ``<data_path>/<NAME>/<NAME>.yaml`` beside its atomic files, and the
starter one the feature extractor writes (docs/own-data.md). Light: no torch, no RecBole.

The file is read for every run on the dataset at the dataset's place in RecBole's precedence: above
each model's YAML, below ``--config_files``, ``config_dict`` and the command line
(:mod:`recbole_reveal.config`). The starter holds sizes that fit the machine:

- ``cpu``: the demo's sizes (``hidden_size`` 64, ``inner_size`` 128, at most 40 epochs with patience 5),
  a few seconds per epoch for a dataset of about a thousand items on two cores, where the models' own
  (the paper's) sizes take minutes;
- ``gpu``: no model sizes, so each model trains at its own (the paper's);

and for both, ``MAX_ITEM_LIST_LENGTH`` set to the longest history in ``<NAME>.inter`` when that is
shorter than every backbone's own maximum (50): a longer maximum only adds padding, so the runs see
the same histories, faster.
"""

import os

from recbole_reveal.infra import locations
from recbole_reveal.data.atomic import iter_atomic

STARTER_MARK = "# Starter dataset YAML written by"
SIZES = ("cpu", "gpu")
CPU_SIZES = (
    ("hidden_size", 64, "CPU size; the models' own (the paper's): M3SRec 256, MISSRec 300, HM4SR 64."),
    ("inner_size", 128, "Feed-forward size for the CPU (M3SRec's own: 1024)."),
    ("epochs", 40, "Upper bound; early stopping ends most runs sooner."),
    ("stopping_step", 5, "Patience, in evaluations."),
)
SHORTEST_MODEL_MAXIMUM = 50     # the smallest MAX_ITEM_LIST_LENGTH of the backbones' YAMLs (HM4SR, SASRec)


def own_yaml_path(data_path, dataset):
    """Where the dataset's own YAML goes: ``<data_path>/<dataset>/<dataset>.yaml``."""
    return os.path.join(data_path, dataset, f"{dataset}.yaml")


def existing_dataset_yaml(data_path, dataset):
    """The dataset's property file that runs read (beside the data, else ``properties/dataset/``), or None."""
    project = locations.property_file("dataset", f"{dataset}.yaml")
    return locations.dataset_yaml(data_path, dataset) or (project if os.path.isfile(project) else None)


def longest_history(inter_path):
    """The longest history a sequential model sees: a user's interactions less the predicted one."""
    columns, _, rows = iter_atomic(inter_path)
    if "user_id" not in columns:
        return None
    u = columns.index("user_id")
    counts = {}
    for row in rows:
        counts[row[u]] = counts.get(row[u], 0) + 1
    return max(counts.values()) - 1 if counts else None


def machine_sizes():
    """``gpu`` when torch sees a CUDA device, else ``cpu``."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def starter_text(dataset, sizes, longest=None, text_feature=None, vision_feature=None):
    """The starter YAML's text (one ``# (type) meaning`` comment per key, as the plugin's own files)."""
    if sizes not in SIZES:
        raise ValueError(f"sizes must be one of {SIZES}, got {sizes!r}")
    lines = [f"{STARTER_MARK} `python -m recbole_reveal.commands.extract_features` ({sizes.upper()} sizes).",
             f"# Read for every run on {dataset}: above each model's YAML, below --config_files and the command",
             "# line (docs/own-data.md). Edit it freely: the extractor never overwrites it. Its keys apply to every",
             "# model on this dataset, your own models and the baselines too (the run log names each model-YAML",
             "# value a key here replaces)."]
    if sizes == "cpu":
        lines.append("# On a GPU, delete the size lines below to train each model at its own (the paper's) sizes.")
    else:
        lines.append("# GPU: each model keeps its own (the paper's) sizes. On a CPU add hidden_size: 64, inner_size: 128.")
    if text_feature:
        lines.append(_key("text_feature", text_feature, f"Text feature set (features/{text_feature}.npy)."))
    if vision_feature:
        lines.append(_key("vision_feature", vision_feature, f"Visual feature set (features/{vision_feature}.npy)."))
    if longest and longest < SHORTEST_MODEL_MAXIMUM:
        lines.append(_key("MAX_ITEM_LIST_LENGTH", longest,
                          f"The longest history in {dataset}.inter; a longer maximum only adds padding."))
    if sizes == "cpu":
        lines += [_key(key, value, meaning) for key, value, meaning in CPU_SIZES]
    return "\n".join(lines) + "\n"


def _key(key, value, meaning):
    return f"{f'{key}: {value}':<32}# ({type(value).__name__}) {meaning}"


def write_starter(data_path, dataset, sizes="auto", text_feature=None, vision_feature=None):
    """Write the starter ``<data_path>/<dataset>/<dataset>.yaml`` unless the dataset has a property file
    already; returns ``(path, written)``: the file runs read (None when there is none) and whether it was
    written now."""
    existing = existing_dataset_yaml(data_path, dataset)
    if existing:
        return existing, False
    sizes = machine_sizes() if sizes == "auto" else sizes
    inter = os.path.join(data_path, dataset, f"{dataset}.inter")
    longest = longest_history(inter) if os.path.isfile(inter) else None
    path = own_yaml_path(data_path, dataset)
    text = starter_text(dataset, sizes, longest, text_feature, vision_feature)
    with open(path, "x", encoding="utf-8") as f:     # never replaces a file written meanwhile
        f.write(text)
    return path, True
