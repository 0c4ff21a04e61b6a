"""
M3SRec
################################################

Reference:
    Shuqing Bian et al. "Multi-modal Mixture of Experts Representation Learning for Sequential
    Recommendation" (M3SRec) in CIKM 2023, as re-implemented by the REVEAL authors (Li et al., "Teach
    Multimodal Recommendation Model to See via Personalized Visual Extraction and Adaptive Learning",
    arXiv 2606.09082) on top of Ziwei Fan et al. "Sequential Recommendation via Stochastic
    Self-Attention" (STOSA) in WWW 2022.

Reference code:
    https://github.com/YutongLi2024/REVEAL (M3SRec/M3SRec.py, trainers.py), https://github.com/zfan20/STOSA

The default is the reference model with its bugs fixed; ``reference_mode: True`` computes what the
reference code computes (docs/models/m3srec.md, docs/differences.md).
"""

import torch
from recbole.utils import InputType
from torch import nn

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.model.gaussian_recommender import GaussianSequentialRecommender
from recbole_reveal.model.m3srec_layers import MLPExperts, MultimodalMoEFusion, ReferenceStreamAttention
from recbole_reveal.model.reference_mode import reference_switch
from recbole_reveal.model.wasserstein_layers import elu_plus_one

CANDIDATE_EMBEDDINGS = ("id", "fused")
FUSION_MIXES = ("per_item", "reference")


class M3SRec(MultimodalSequentialRecommender, GaussianSequentialRecommender):
    r"""M3SRec is STOSA whose history items are fused with their text and image features.

    Every item is a Gaussian (mean and diagonal covariance embedding). For each history item, its ID
    embedding and its projected text and image features are fused by a mixture-of-experts network,
    separately for the mean and the covariance; a Wasserstein self-attention encoder reads the fused
    history, and items are ranked by the negative Wasserstein distance between the history's Gaussian
    and theirs. Text and image features initialise trainable feature tables (one for the mean, one for
    the covariance) and enter through their own linear projections to ``hidden_size``.

    Candidates (positives, negatives, the full ranking) are the ID-only Gaussians, as in the reference
    code (``candidate_embedding: id``); ``fused`` sends them through the same fusion as the history.
    The loss is STOSA's: BPR on Wasserstein distances to one sampled negative, plus ``pvn_weight``
    times a hinge that keeps the positive closer to the sequence than to the negative.
    """

    input_type = InputType.PAIRWISE
    vision_modules = (
        "vision_mean_table",
        "vision_cov_table",
        "vision_mean_proj",
        "vision_cov_proj",
        "mean_fusion.vision_experts",
        "cov_fusion.vision_experts",
    )
    vision_feature_tables = ("vision_mean_table", "vision_cov_table")
    text_modules = (
        "text_mean_table",
        "text_cov_table",
        "text_mean_proj",
        "text_cov_proj",
        "mean_fusion.text_experts",
        "cov_fusion.text_experts",
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.train_feature_tables = config["train_feature_tables"]
        self.candidate_embedding = config["candidate_embedding"]
        if self.candidate_embedding not in CANDIDATE_EMBEDDINGS:
            raise ConfigError(
                f"config key 'candidate_embedding' must be one of {list(CANDIDATE_EMBEDDINGS)}, "
                f"got {self.candidate_embedding!r}"
            )
        self.fusion_mix = reference_switch(config, "fusion_mix", "per_item", "reference", FUSION_MIXES)
        self.covariance_dropout_twice = reference_switch(
            config, "covariance_dropout_twice", False, True, (True, False)
        )
        self.mask_id_negatives = reference_switch(config, "mask_id_negatives", False, True, (True, False))
        h = self.hidden_size
        if self.mask_id_negatives:
            if self.candidate_embedding == "fused":
                raise ConfigError(
                    "mask_id_negatives: the mask id has no features to fuse: use it with candidate_embedding: id "
                    "(the reference code's candidates)"
                )
            # the reference's ID tables have max_item + 2 rows: padding, the items, and the mask id
            # (max_item + 1), which is never a target nor in a history but can be drawn as a negative
            self.item_mean_embedding = nn.Embedding(self.n_items + 1, h, padding_idx=0)
            self.item_cov_embedding = nn.Embedding(self.n_items + 1, h, padding_idx=0)
        gate_low_rank = config["gate_low_rank"]
        if not (isinstance(gate_low_rank, int) and 1 <= gate_low_rank <= h):
            raise ConfigError(
                f"config key 'gate_low_rank' divides hidden_size ({h}) into the gate width; expected an "
                f"integer in [1, {h}], got {gate_low_rank!r}"
            )
        if self.fusion_mix == "reference":
            if self.candidate_embedding == "fused":
                raise ConfigError(
                    "fusion_mix: reference reads sequence positions, which candidates do not have: use it "
                    "with candidate_embedding: id (the reference code's candidates)"
                )
            if self.max_seq_length < 4:
                raise ConfigError(
                    f"fusion_mix: reference reads sequence positions 0-3: MAX_ITEM_LIST_LENGTH must be at "
                    f"least 4, got {self.max_seq_length}"
                )

        text = self.item_feature_table(dataset, "text")
        vision = self.item_feature_table(dataset, "vision")

        # define layers
        self.text_mean_table = nn.Embedding(self.n_items, text.shape[1], padding_idx=0)
        self.text_cov_table = nn.Embedding(self.n_items, text.shape[1], padding_idx=0)
        self.vision_mean_table = nn.Embedding(self.n_items, vision.shape[1], padding_idx=0)
        self.vision_cov_table = nn.Embedding(self.n_items, vision.shape[1], padding_idx=0)
        self.text_mean_proj = nn.Linear(text.shape[1], h)
        self.text_cov_proj = nn.Linear(text.shape[1], h)
        self.vision_mean_proj = nn.Linear(vision.shape[1], h)
        self.vision_cov_proj = nn.Linear(vision.shape[1], h)
        per_item = self.fusion_mix == "per_item"
        fusion_args = (h, config["n_shared_experts"], config["n_specific_experts"], gate_low_rank, per_item)
        self.mean_fusion = MultimodalMoEFusion(*fusion_args)
        self.cov_fusion = MultimodalMoEFusion(*fusion_args)
        # one layer for both streams, as the reference's attention_layer
        self.stream_attention = None if per_item else ReferenceStreamAttention(h)

        # parameters initialization
        self.apply(self._init_weights)
        for table, features in (
            (self.text_mean_table, text), (self.text_cov_table, text),
            (self.vision_mean_table, vision), (self.vision_cov_table, vision),
        ):
            table.weight.data.copy_(features)
            table.weight.requires_grad_(self.train_feature_tables)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MLPExperts):
            module.reset_parameters(mean=0.01, std=self.initializer_range)

    def fusion_parts(self, items, interaction_seq=None):
        """Per item: ``((id + vision + text, streams) for the mean, the same for the covariance)``, the
        streams ``[..., 4, h]`` being the fusion's gated expert outputs (see MultimodalMoEFusion).
        ``interaction_seq``: the interactions of history positions ``items`` (their interaction-level
        visual features, FVE's interaction scope), or None for item-level features."""
        text_mean = self.mask_modality("text", self.text_mean_proj(self.text_mean_table(items)))
        text_cov = self.mask_modality("text", self.text_cov_proj(self.text_cov_table(items)))
        vision_mean, vision_cov = self.vision_mean_table(items), self.vision_cov_table(items)
        if interaction_seq is not None:
            vision_mean = self.history_vision_features(items, interaction_seq, vision_mean)
            vision_cov = self.history_vision_features(items, interaction_seq, vision_cov)
        vision_mean = self.mask_modality("vision", self.vision_mean_proj(vision_mean))
        vision_cov = self.mask_modality("vision", self.vision_cov_proj(vision_cov))
        mean = self.mean_fusion(self.item_mean_embedding(items), vision_mean, text_mean)
        cov = self.cov_fusion(self.item_cov_embedding(items), vision_cov, text_cov)
        return mean, cov

    def sequence_gaussians(self, item_seq, interaction_seq=None):
        with self.reading_history():
            if interaction_seq is not None:
                # interaction-level visual features: every position is its own interaction
                return self._fused_sequence(*self.fusion_parts(item_seq, interaction_seq))
            # the fusion of an item does not depend on its position: compute it once per distinct item
            # (a batch repeats items far more often than it holds distinct ones) and gather
            unique, inverse = torch.unique(item_seq, return_inverse=True)
            return self._fused_sequence(*self.fusion_parts(unique), inverse)

    def _fused_sequence(self, mean_parts, cov_parts, inverse=None):
        """The fused (mean, covariance) of a history from its fusion parts: per position, or per
        distinct item gathered by ``inverse``."""
        (mean_sum, mean_streams), (cov_sum, cov_streams) = mean_parts, cov_parts
        if inverse is None:
            inverse = torch.arange(mean_sum.shape[0] * mean_sum.shape[1], device=mean_sum.device).view(
                mean_sum.shape[:2])
            mean_sum, cov_sum = mean_sum.flatten(0, 1), cov_sum.flatten(0, 1)
            mean_streams, cov_streams = mean_streams.flatten(0, 1), cov_streams.flatten(0, 1)
        if self.stream_attention is None:
            mean = mean_sum + self.mean_fusion.mix(mean_streams)
            cov = cov_sum + self.cov_fusion.mix(cov_streams)
            return mean[inverse], cov[inverse]
        first_four = inverse[:, :4]
        mean = mean_sum[inverse] + self.stream_attention(mean_streams[first_four])
        cov = cov_sum[inverse] + self.stream_attention(cov_streams[first_four])
        return mean, cov

    def negative_items(self, interaction):
        """``mask_id_negatives``: the reference draws negatives with ``randint(1, item_size - 1)``,
        ``item_size = max_item + 2``, so the mask id (row ``n_items`` here) is one more candidate. RecBole's
        sampler draws uniformly from the ``n_items - 2`` items other than the target; replacing its draw
        by the mask id with probability ``1 / (n_items - 1)`` makes the draw uniform over both."""
        negatives = super().negative_items(interaction)
        if not self.mask_id_negatives:
            return negatives
        mask = torch.rand(negatives.shape, device=negatives.device) < 1.0 / (self.n_items - 1)
        return torch.where(mask, torch.full_like(negatives, self.n_items), negatives)

    def candidate_gaussians(self, items):
        if self.candidate_embedding == "id":
            return super().candidate_gaussians(items)
        (mean_sum, mean_streams), (cov_sum, cov_streams) = self.fusion_parts(items)
        mean = mean_sum + self.mean_fusion.mix(mean_streams)
        cov = cov_sum + self.cov_fusion.mix(cov_streams)
        return mean, elu_plus_one(cov)
