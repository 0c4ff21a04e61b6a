"""RecBole dataset hooks that attach per-item text and visual feature matrices.

:class:`MultimodalSequentialDataset` serves the sequential multimodal models (M3SRec, ...);
:class:`MultimodalDataset` serves general (non-sequential) ones such as VBPR. Both read the features
through :class:`ItemFeaturesMixin`, so they select, check and align feature sets the same way.
"""

import os

import numpy as np

from recbole_reveal import compat

compat.apply()

import torch  # noqa: E402
from recbole.data.dataset import Dataset, SequentialDataset  # noqa: E402
from recbole.data.interaction import Interaction  # noqa: E402
from recbole.utils import FeatureType  # noqa: E402

from recbole_reveal.data.feature_store import align_to_item_ids, feature_paths, load_item_features  # noqa: E402
from recbole_reveal.errors import ConfigError  # noqa: E402


class ItemFeaturesMixin:
    """Adds ``item_features = {modality: T}`` to a RecBole dataset, built once after RecBole's own loading.

    ``T`` is a float32 tensor of shape ``[n_items, dim]`` indexed by RecBole's internal item id (row 0 =
    padding, all zeros). It is read from the feature directory (``feature_dir``, default
    ``<data_path>/<dataset>/features``) using the feature-set names in the config keys ``text_feature``
    and ``vision_feature`` (e.g. ``vision_efficientnet_lite0``, or ``fve/cycle_2`` for an FVE cycle's
    visual features), with optional dimension checks ``text_feature_dim`` / ``vision_feature_dim``. See
    ``recbole_reveal.data.feature_store`` for the file format and the checks.
    """

    modality_keys = {"text": "text_feature", "vision": "vision_feature"}

    def __init__(self, config):
        super().__init__(config)
        self.item_features = self.load_item_features()

    def feature_modalities(self):
        """The modalities this dataset loads (every one in ``modality_keys`` unless overridden)."""
        return tuple(self.modality_keys)

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
        for modality in self.feature_modalities():
            key = self.modality_keys[modality]
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


class MultimodalSequentialDataset(ItemFeaturesMixin, SequentialDataset):
    """A :class:`SequentialDataset` plus ``item_features = {"text": T, "vision": V}`` (both always
    loaded; see :class:`ItemFeaturesMixin`), whose sequence augmentation is vectorised."""

    # rows gathered at a time: bounds the temporary [rows, MAX_ITEM_LIST_LENGTH] index matrix
    AUGMENT_CHUNK = 1 << 16

    def data_augmentation(self):
        """RecBole's ``SequentialDataset.data_augmentation`` -- every interaction after a user's first
        becomes a target with the up to ``MAX_ITEM_LIST_LENGTH`` interactions before it as lists --
        computed with array operations: the same rows, lists and dtypes (tested), without RecBole's
        Python loop over every interaction and field and its per-row slice objects (at Yelp's 4.4 M
        interactions: minutes and about a GB of Python objects)."""
        self.logger.debug("data_augmentation (vectorised)")
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        uid = self.inter_feat[self.uid_field].numpy()
        n = len(uid)
        first = np.ones(n, dtype=bool)
        first[1:] = uid[1:] != uid[:-1]
        user_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        target = np.nonzero(~first)[0]
        # RecBole's window: it starts at the user's first row and moves on one row a step once it is full
        seq_start = np.maximum(user_start[target], target - max_len)
        length = target - seq_start

        new_data = self.inter_feat[target]
        new_dict = {self.item_list_length_field: torch.tensor(length, dtype=torch.int64)}
        for field in self.inter_feat:
            if field == self.uid_field:
                continue
            list_field = getattr(self, f"{field}_list_field")
            list_len = self.field2seqlen[list_field]
            shape = (len(target), list_len) if isinstance(list_len, int) else (len(target),) + tuple(list_len)
            if (self.field2type[field] in (FeatureType.FLOAT, FeatureType.FLOAT_SEQ)
                    and field in self.config["numerical_features"]):
                shape += (2,)
            value = self.inter_feat[field]
            lists = torch.zeros(shape, dtype=value.dtype)
            positions = np.arange(shape[1])
            for lo in range(0, len(target), self.AUGMENT_CHUNK):
                hi = min(lo + self.AUGMENT_CHUNK, len(target))
                inside = positions[None, :] < length[lo:hi, None]
                index = np.where(inside, seq_start[lo:hi, None] + positions[None, :], 0)
                rows = value[torch.from_numpy(index)]
                rows[torch.from_numpy(~inside)] = 0
                lists[lo:hi] = rows.reshape(lists[lo:hi].shape)
            new_dict[list_field] = lists
        new_data.update(Interaction(new_dict))
        self.inter_feat = new_data


class MultimodalDataset(ItemFeaturesMixin, Dataset):
    """A general RecBole :class:`Dataset` (user-item pairs, for non-sequential models such as VBPR) plus
    ``item_features`` for the modalities in the config key ``feature_modalities`` (default: all), so a
    vision-only model needs no text feature file."""

    def feature_modalities(self):
        wanted = self.config["feature_modalities"]
        if wanted is None:
            return super().feature_modalities()
        if isinstance(wanted, str):
            wanted = [wanted]
        unknown = [m for m in wanted if m not in self.modality_keys]
        if unknown or not wanted:
            raise ConfigError(
                f"config key 'feature_modalities' is {wanted}; expected a non-empty list drawn from "
                f"{list(self.modality_keys)}"
            )
        return tuple(wanted)
