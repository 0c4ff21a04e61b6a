"""
M3SRec
################################################

Reference:
    Shuqing Bian et al. "Multi-modal Mixture of Experts Representation Learning for Sequential
    Recommendation" (M3SRec) in CIKM 2023, as re-implemented
    by the REVEAL authors (Li et al., "Teach Multimodal Recommendation Model to See via Personalized
    Visual Extraction and Adaptive Learning", arXiv 2606.09082) on top of
    Ziwei Fan et al. "Sequential Recommendation via Stochastic Self-Attention" (STOSA) in WWW 2022.

Reference code:
    https://github.com/YutongLi2024/REVEAL (M3SRec copy), https://github.com/zfan20/STOSA

Differences from the reference code (see docs/differences.md): the mixture-of-experts gates are
computed per position instead of at position 0 and broadcast; the mean stream passes through every
encoder layer (STOSA's layer loop drops it); training uses the last position of RecBole's augmented
prefixes, as every RecBole sequential model does.
"""

import torch
from recbole.utils import InputType
from torch import nn

from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.model.layers import (
    Experts,
    MultimodalMoEFusion,
    WassersteinTransformerEncoder,
    elu_plus_one,
    wasserstein_distance,
    wasserstein_distance_matmul,
)


class M3SRec(MultimodalSequentialRecommender):
    r"""M3SRec represents every item as a Gaussian (mean and diagonal covariance embedding).

    ID, text and image embeddings are fused per item by a mixture-of-experts network, separately for
    the mean and the covariance; a Wasserstein self-attention encoder reads the fused sequence, and
    items are ranked by the negative Wasserstein distance between the sequence Gaussian and theirs.
    Text and image features initialise trainable feature tables (one for the mean, one for the
    covariance) and enter through their own linear projections to ``hidden_size``.

    The loss is STOSA's: BPR on Wasserstein distances to one sampled negative, plus
    ``pvn_weight`` times a hinge that keeps the positive closer to the sequence than to the negative.
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

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.pvn_weight = config["pvn_weight"]
        self.train_feature_tables = config["train_feature_tables"]
        if config["train_neg_sample_args"] is None or config["train_neg_sample_args"].get("sample_num", 0) != 1:
            raise ValueError(
                "M3SRec trains with one sampled negative per positive: set "
                "train_neg_sample_args: {distribution: uniform, sample_num: 1}"
            )

        text = self.item_feature_table(dataset, "text")
        vision = self.item_feature_table(dataset, "vision")
        h = self.hidden_size

        # define layers
        self.item_mean_embedding = nn.Embedding(self.n_items, h, padding_idx=0)
        self.item_cov_embedding = nn.Embedding(self.n_items, h, padding_idx=0)
        self.position_mean_embedding = nn.Embedding(self.max_seq_length, h)
        self.position_cov_embedding = nn.Embedding(self.max_seq_length, h)
        self.text_mean_table = nn.Embedding(self.n_items, text.shape[1], padding_idx=0)
        self.text_cov_table = nn.Embedding(self.n_items, text.shape[1], padding_idx=0)
        self.vision_mean_table = nn.Embedding(self.n_items, vision.shape[1], padding_idx=0)
        self.vision_cov_table = nn.Embedding(self.n_items, vision.shape[1], padding_idx=0)
        self.text_mean_proj = nn.Linear(text.shape[1], h)
        self.text_cov_proj = nn.Linear(text.shape[1], h)
        self.vision_mean_proj = nn.Linear(vision.shape[1], h)
        self.vision_cov_proj = nn.Linear(vision.shape[1], h)
        fusion_args = (h, config["n_shared_experts"], config["n_specific_experts"], config["gate_low_rank"])
        self.mean_fusion = MultimodalMoEFusion(*fusion_args)
        self.cov_fusion = MultimodalMoEFusion(*fusion_args)
        self.mean_norm = nn.LayerNorm(h, eps=self.layer_norm_eps)
        self.cov_norm = nn.LayerNorm(h, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.encoder = WassersteinTransformerEncoder(
            self.n_layers, h, self.n_heads, self.inner_size,
            self.attn_dropout_prob, self.hidden_dropout_prob, self.layer_norm_eps,
        )

        # parameters initialization
        self.apply(self._init_weights)
        for table, features in (
            (self.text_mean_table, text), (self.text_cov_table, text),
            (self.vision_mean_table, vision), (self.vision_cov_table, vision),
        ):
            table.weight.data.copy_(features)
            table.weight.requires_grad_(self.train_feature_tables)

    def _init_weights(self, module):
        """STOSA's initialisation: N(0.01, initializer_range) weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.01, std=self.initializer_range)
        elif isinstance(module, Experts):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def item_gaussians(self, items):
        """Fused (mean, pre-activation covariance) embeddings of ``items`` (any shape of ids)."""
        text_mean = self.mask_modality("text", self.text_mean_proj(self.text_mean_table(items)))
        text_cov = self.mask_modality("text", self.text_cov_proj(self.text_cov_table(items)))
        vision_mean = self.mask_modality("vision", self.vision_mean_proj(self.vision_mean_table(items)))
        vision_cov = self.mask_modality("vision", self.vision_cov_proj(self.vision_cov_table(items)))
        mean = self.mean_fusion(self.item_mean_embedding(items), vision_mean, text_mean)
        cov = self.cov_fusion(self.item_cov_embedding(items), vision_cov, text_cov)
        return mean, cov

    def gaussians_of(self, *item_ids):
        """Fused (mean, pre-activation covariance) for each id tensor, computed once per distinct item:
        the fusion does not depend on the position, and a batch repeats items far more often than it
        holds distinct ones."""
        flat = torch.cat([ids.reshape(-1) for ids in item_ids])
        unique, inverse = torch.unique(flat, return_inverse=True)
        mean, cov = self.item_gaussians(unique)
        outputs, start = [], 0
        for ids in item_ids:
            index = inverse[start:start + ids.numel()].view(ids.shape)
            outputs.append((mean[index], cov[index]))
            start += ids.numel()
        return outputs

    def forward(self, item_seq, item_seq_len, fused=None):
        mean, cov = fused if fused is not None else self.gaussians_of(item_seq)[0]
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        mean = nn.functional.elu(self.dropout(self.mean_norm(mean + self.position_mean_embedding(positions))))
        cov = elu_plus_one(self.dropout(self.cov_norm(cov + self.position_cov_embedding(positions))))
        attention_mask = self.get_attention_mask(item_seq)
        mean, cov = self.encoder(mean, cov, attention_mask)
        return self.gather_indexes(mean, item_seq_len - 1), self.gather_indexes(cov, item_seq_len - 1)

    def get_attention_mask(self, item_seq, bidirectional=False):
        # Wasserstein scores are unbounded negative distances, so masked keys need a far larger
        # penalty than RecBole's -10000 (STOSA uses -2**32 + 1).
        mask = super().get_attention_mask(item_seq, bidirectional)
        return torch.where(mask < 0, torch.tensor(-(2.0**32) + 1, device=mask.device), mask)

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        seq_fused, (pos_mean, pos_cov), (neg_mean, neg_cov) = self.gaussians_of(
            item_seq, interaction[self.POS_ITEM_ID], interaction[self.NEG_ITEM_ID]
        )
        seq_mean, seq_cov = self.forward(item_seq, interaction[self.ITEM_SEQ_LEN], fused=seq_fused)
        pos_cov, neg_cov = elu_plus_one(pos_cov), elu_plus_one(neg_cov)
        pos_dist = wasserstein_distance(seq_mean, seq_cov, pos_mean, pos_cov)
        neg_dist = wasserstein_distance(seq_mean, seq_cov, neg_mean, neg_cov)
        pos_neg_dist = wasserstein_distance(pos_mean, pos_cov, neg_mean, neg_cov)
        bpr = -torch.log(torch.sigmoid(neg_dist - pos_dist) + 1e-24).mean()
        pvn = torch.clamp(pos_dist - pos_neg_dist, min=0).mean()
        return bpr + self.pvn_weight * pvn

    def _candidate_gaussians(self, items):
        mean, cov = self.item_gaussians(items)
        return mean, elu_plus_one(cov)

    def predict(self, interaction):
        seq_mean, seq_cov = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        item_mean, item_cov = self._candidate_gaussians(interaction[self.ITEM_ID])
        return -wasserstein_distance(seq_mean, seq_cov, item_mean, item_cov)

    def full_sort_predict(self, interaction):
        seq_mean, seq_cov = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        all_items = torch.arange(self.n_items, device=seq_mean.device)
        item_mean, item_cov = self._candidate_gaussians(all_items)
        return -wasserstein_distance_matmul(seq_mean, seq_cov, item_mean, item_cov)
