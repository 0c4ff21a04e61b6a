"""RecBole dataset hook that attaches per-item text and visual feature matrices."""

import os

import torch
from recbole.data.dataset import SequentialDataset

from recbole_reveal.errors import ConfigError
from recbole_reveal.data.feature_store import align_to_item_ids, feature_paths, load_item_features


class MultimodalSequentialDataset(SequentialDataset):
    """A :class:`SequentialDataset` plus ``item_features = {"text": T, "vision": V}``.

    ``T`` and ``V`` are float32 tensors of shape ``[n_items, dim]`` indexed by RecBole's internal item
    id (row 0 = padding, all zeros). They are read from the feature directory
    (``feature_dir``, default ``<data_path>/<dataset>/features``) using the feature-set names in the
    config keys ``text_feature`` and ``vision_feature`` (e.g. ``vision_efficientnet_lite0``, or
    ``fve/cycle_2`` for an FVE cycle's visual features), with optional dimension checks
    ``text_feature_dim`` / ``vision_feature_dim``. See ``recbole_reveal.data.feature_store`` for the
    file format and the checks.
    """

    modality_keys = {"text": "text_feature", "vision": "vision_feature"}

    def __init__(self, config):
        super().__init__(config)
        self.item_features = self.load_item_features()

    @property
    def feature_dir(self):
        return self.config["feature_dir"] or os.path.join(self.dataset_path, "features")

    def feature_file(self, modality):
        """Path of the ``.npy`` file the config selects for ``modality``."""
        return feature_paths(self.feature_dir, self._feature_name(modality))[0]

    def _feature_name(self, modality):
        key = self.modality_keys[modality]
        name = self.config[key]
        if not name:
            raise ConfigError(f"config key '{key}' is not set: name the {modality} feature set to load")
        return name

    def load_item_features(self):
        id2token = self.field2id_token[self.iid_field]
        features = {}
        for modality, key in self.modality_keys.items():
            name = self._feature_name(modality)
            tokens, matrix = load_item_features(
                self.feature_dir, name, expected_dim=self.config[f"{key}_dim"]
            )
            aligned = align_to_item_ids(tokens, matrix, id2token, source=self.feature_file(modality))
            features[modality] = torch.from_numpy(aligned)
            self.logger.info(
                f"{modality} features: {self.feature_file(modality)} "
                f"({matrix.shape[0]} rows, dim {matrix.shape[1]}, {len(id2token) - 1} dataset items)"
            )
        return features
