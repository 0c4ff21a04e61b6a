"""RecBole dataset hooks that attach per-item text and visual feature matrices.

:class:`MultimodalSequentialDataset` serves the sequential multimodal models (M3SRec, ...);
:class:`MultimodalDataset` serves general (non-sequential) ones such as VBPR. Both read the features
through :class:`ItemFeaturesMixin`, so they select, check and align feature sets the same way.

The sequential hook also reads an *interaction-level* visual feature set when ``vision_interaction_feature``
names one (FVE's interaction scope): one row per interaction token of the field ``fve_interaction_field``,
which it derives from each ``.inter`` row when the file has no such column, so that RecBole carries it
through its sequence augmentation as ``<field>_list`` beside ``item_id_list``.
"""

import os

import numpy as np

from recbole_reveal.adaptation import compat

compat.apply()

import torch  # noqa: E402
from recbole.data.dataset import Dataset, SequentialDataset  # noqa: E402
from recbole.data.interaction import Interaction  # noqa: E402
from recbole.utils import FeatureSource, FeatureType  # noqa: E402

from recbole_reveal.data.atomic import iter_atomic  # noqa: E402
from recbole_reveal.data.feature_store import (  # noqa: E402
    align_to_item_ids, feature_paths, format_tokens, load_item_features, load_missing_items,
)
from recbole_reveal.data.interaction_tokens import derive_tokens  # noqa: E402
from recbole_reveal.infra.errors import ConfigError, FeatureFileError  # noqa: E402


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
        self.item_availability = {}
        self.item_features = self.load_item_features()

    def feature_modalities(self):
        """The modalities this dataset loads: those in the config key ``feature_modalities`` (a model's
        YAML: VBPR reads only vision, UniSRec only text), every one in ``modality_keys`` when unset."""
        wanted = self.config["feature_modalities"]
        if wanted is None:
            return tuple(self.modality_keys)
        if isinstance(wanted, str):
            wanted = [wanted]
        unknown = [m for m in wanted if m not in self.modality_keys]
        if unknown or not wanted:
            raise ConfigError(
                f"config key 'feature_modalities' is {wanted}; expected a non-empty list drawn from "
                f"{list(self.modality_keys)}"
            )
        return tuple(wanted)

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
        features = {}
        for modality in self.feature_modalities():
            key = self.modality_keys[modality]
            features[modality] = self.load_feature_set(self._feature_name(modality), self.config[f"{key}_dim"],
                                                       label=f"{modality} features", modality=modality)
        return features

    def load_feature_set(self, name, expected_dim=None, label="features", modality=None):
        """Feature set ``name`` of the feature directory as a ``[n_items, dim]`` float32 tensor in
        RecBole's item ids (row 0 = padding); also for a model's extra sets (UniSRec's word-drop text,
        MMSBR's pseudo-modalities). The rows of the set's missing items (``NAME.missing``) are zeros; with
        ``modality``, which items have it is recorded in ``item_availability[modality]``."""
        id2token = self.field2id_token[self.iid_field]
        tokens, matrix = load_item_features(self.feature_dir, name, expected_dim=expected_dim)
        source = feature_paths(self.feature_dir, name)[0]
        aligned = align_to_item_ids(tokens, matrix, id2token, source=source)
        missing = set(load_missing_items(self.feature_dir, name, tokens))
        available = np.fromiter((t not in missing for t in id2token), dtype=bool, count=len(id2token))
        available[0] = False
        aligned[~available] = 0.0       # a missing item's row is a placeholder, never a feature
        if modality is not None:
            self.item_availability[modality] = torch.from_numpy(available)
        n_missing = len(id2token) - 1 - int(available.sum())
        self.logger.info(f"{label}: {source} ({matrix.shape[0]} rows, dim {matrix.shape[1]}, "
                         f"{len(id2token) - 1} dataset items" + (f", {n_missing} of them missing" if n_missing else "")
                         + ")")
        return torch.from_numpy(aligned)


class MultimodalSequentialDataset(ItemFeaturesMixin, SequentialDataset):
    """A :class:`SequentialDataset` plus ``item_features = {"text": T, "vision": V}`` (both unless
    ``feature_modalities`` names fewer; see :class:`ItemFeaturesMixin`) and, when ``vision_interaction_feature`` names a feature set,
    ``interaction_features = {"vision": I}``: ``[n_interactions + 1, dim]`` indexed by RecBole's internal
    id of the interaction field ``interaction_field`` (row 0 = padding), read at history positions by
    backbones through ``MultimodalSequentialRecommender.history_vision_features``. Its sequence augmentation
    is vectorised."""

    # rows gathered at a time: bounds the temporary [rows, MAX_ITEM_LIST_LENGTH] index matrix
    AUGMENT_CHUNK = 1 << 16

    def __init__(self, config):
        super().__init__(config)
        self.interaction_features = self.load_interaction_features()

    def _interaction_feature_name(self):
        return self.config["vision_interaction_feature"]

    def _load_inter_feat(self, token, dataset_path):
        super()._load_inter_feat(token, dataset_path)
        if self._interaction_feature_name():
            self._add_interaction_field(os.path.join(dataset_path, f"{token}.inter"))

    def _add_interaction_field(self, inter_path):
        """Make sure ``inter_feat`` has the interaction token field: the file's column, or tokens derived
        from each row exactly as FVE derives them (``recbole_reveal.data.interaction_tokens``)."""
        field = self.config["fve_interaction_field"] or "interaction_id"
        self.interaction_field = field
        if field in self.inter_feat.columns:
            return
        columns, _, _ = iter_atomic(inter_path)
        if field in columns:
            raise ConfigError(f"{inter_path} has the interaction field {field!r} but load_col does not load it: "
                              f"add it to load_col (inter: [..., {field}])")
        feat = self.inter_feat
        times = feat[self.time_field] if self.time_field in feat.columns else [None] * len(feat)
        feat[field] = derive_tokens(feat[self.uid_field].tolist(), feat[self.iid_field].tolist(), list(times))
        self.set_field_property(field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)

    def load_interaction_features(self):
        name = self._interaction_feature_name()
        if not name:
            return {}
        field = self.interaction_field
        tokens, matrix = load_item_features(self.feature_dir, name, expected_dim=self.config["vision_feature_dim"])
        source = feature_paths(self.feature_dir, name)[0]
        item_dim = self.item_features["vision"].shape[1]
        if matrix.shape[1] != item_dim:
            raise FeatureFileError(f"{source}: interaction features have dimension {matrix.shape[1]}, the item-level "
                                   f"visual features ({self.feature_file('vision')}) {item_dim}; both must come from "
                                   "the same VLM")
        id2token = self.field2id_token[field]
        row_of = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in id2token[1:] if t not in row_of]
        if missing:
            raise FeatureFileError(f"{source}: {len(missing)} of the dataset's {len(id2token) - 1} interactions "
                                   f"({field}) have no row (e.g. {missing[:5]}); rerun the FVE encode stage for "
                                   "this dataset")
        aligned = np.zeros((len(id2token), matrix.shape[1]), dtype=np.float32)
        aligned[1:] = matrix[np.fromiter((row_of[t] for t in id2token[1:]), dtype=np.int64, count=len(id2token) - 1)]
        self.logger.info(f"interaction-level vision features: {source} ({matrix.shape[0]} rows, dim "
                         f"{matrix.shape[1]}, {len(id2token) - 1} dataset interactions, field {field})")
        return {"vision": torch.from_numpy(aligned)}

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


def dataset_item_tokens(config):
    """The item tokens of the dataset RecBole builds from ``config`` (after its filtering), without
    reading any feature set: which items a feature set must cover."""
    from recbole.data.utils import create_dataset

    from recbole_reveal.data.atomic import load_errors_explained

    with load_errors_explained(config):
        data = create_dataset(config)
    return [str(t) for t in data.field2id_token[data.iid_field][1:]]


def check_items_covered(config, tokens, source):
    """Raise :class:`FeatureFileError` when an item of ``config``'s dataset is not among ``tokens`` (the
    rows a feature set will have, e.g. FVE's prompts), before any of them is computed."""
    have = set(map(str, tokens))
    missing = [t for t in dataset_item_tokens(config) if t not in have]
    if missing:
        raise FeatureFileError(
            f"{source}: {len(missing)} of the dataset's items have no row (e.g. {format_tokens(missing)}); "
            "every item of the .inter file needs one (its line in the .item file)")
