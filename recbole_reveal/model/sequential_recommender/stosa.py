"""
STOSA
################################################

Reference:
    Ziwei Fan et al. "Sequential Recommendation via Stochastic Self-Attention" in WWW 2022.

Reference code:
    https://github.com/zfan20/STOSA

Differences from the reference code (see docs/models/baselines.md): the mean stream passes through
every encoder layer (the reference layer loop assigns the new mean to a misspelt variable, so the mean
skips every layer); the mean and covariance streams have their own LayerNorms (the reference shares
one); the log in the BPR term takes ``sigmoid(.) + 1e-24`` (the reference adds 1e-24 inside the
sigmoid, which leaves log(0) possible); training uses the last position of RecBole's augmented
prefixes, as every RecBole sequential model does.
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_reveal.model.layers import (
    WassersteinTransformerEncoder,
    elu_plus_one,
    wasserstein_distance,
    wasserstein_distance_matmul,
)


class STOSA(SequentialRecommender):
    r"""STOSA represents every item as a Gaussian: a mean and a diagonal covariance embedding.

    Item and position embeddings of each stream are summed, normalised and passed through a
    Wasserstein self-attention encoder; the user's next-item Gaussian is read at the last position, and
    items are ranked by the negative squared 2-Wasserstein distance to it. The loss is BPR on those
    distances to one sampled negative, plus ``pvn_weight`` times a hinge that keeps the positive item
    closer to the sequence than to the negative item.

    This is M3SRec's sequence backbone (:mod:`recbole_reveal.model.layers`) without modalities.
    """

    input_type = InputType.PAIRWISE

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
        negatives = config["train_neg_sample_args"]
        if negatives is None or negatives.get("sample_num", 0) != 1:
            raise ValueError(
                "STOSA trains with one sampled negative per positive: set "
                "train_neg_sample_args: {distribution: uniform, sample_num: 1}"
            )

        # define layers
        h = self.hidden_size
        self.item_mean_embedding = nn.Embedding(self.n_items, h, padding_idx=0)
        self.item_cov_embedding = nn.Embedding(self.n_items, h, padding_idx=0)
        self.position_mean_embedding = nn.Embedding(self.max_seq_length, h)
        self.position_cov_embedding = nn.Embedding(self.max_seq_length, h)
        self.mean_norm = nn.LayerNorm(h, eps=self.layer_norm_eps)
        self.cov_norm = nn.LayerNorm(h, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.encoder = WassersteinTransformerEncoder(
            self.n_layers, h, self.n_heads, self.inner_size,
            self.attn_dropout_prob, self.hidden_dropout_prob, self.layer_norm_eps,
        )

        # parameters initialization
        self.apply(self._init_weights)

    def _init_weights(self, module):
        """STOSA's initialisation: N(0.01, initializer_range) weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.01, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, item_seq, item_seq_len):
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        mean = self.item_mean_embedding(item_seq) + self.position_mean_embedding(positions)
        cov = self.item_cov_embedding(item_seq) + self.position_cov_embedding(positions)
        mean = nn.functional.elu(self.dropout(self.mean_norm(mean)))
        cov = elu_plus_one(self.dropout(self.cov_norm(cov)))
        mean, cov = self.encoder(mean, cov, self.get_attention_mask(item_seq))
        return self.gather_indexes(mean, item_seq_len - 1), self.gather_indexes(cov, item_seq_len - 1)

    def get_attention_mask(self, item_seq, bidirectional=False):
        # Wasserstein scores are unbounded negative distances, so masked keys need a far larger
        # penalty than RecBole's -10000 (STOSA uses -2**32 + 1).
        mask = super().get_attention_mask(item_seq, bidirectional)
        return torch.where(mask < 0, torch.tensor(-(2.0**32) + 1, device=mask.device), mask)

    def item_gaussians(self, items):
        """(mean, covariance) of ``items`` (any shape of ids)."""
        return self.item_mean_embedding(items), elu_plus_one(self.item_cov_embedding(items))

    def calculate_loss(self, interaction):
        seq_mean, seq_cov = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        pos_mean, pos_cov = self.item_gaussians(interaction[self.POS_ITEM_ID])
        neg_mean, neg_cov = self.item_gaussians(interaction[self.NEG_ITEM_ID])
        pos_dist = wasserstein_distance(seq_mean, seq_cov, pos_mean, pos_cov)
        neg_dist = wasserstein_distance(seq_mean, seq_cov, neg_mean, neg_cov)
        pos_neg_dist = wasserstein_distance(pos_mean, pos_cov, neg_mean, neg_cov)
        bpr = -torch.log(torch.sigmoid(neg_dist - pos_dist) + 1e-24).mean()
        pvn = torch.clamp(pos_dist - pos_neg_dist, min=0).mean()
        return bpr + self.pvn_weight * pvn

    def predict(self, interaction):
        seq_mean, seq_cov = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        item_mean, item_cov = self.item_gaussians(interaction[self.ITEM_ID])
        return -wasserstein_distance(seq_mean, seq_cov, item_mean, item_cov)

    def full_sort_predict(self, interaction):
        seq_mean, seq_cov = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        item_mean, item_cov = self.item_gaussians(torch.arange(self.n_items, device=seq_mean.device))
        return -wasserstein_distance_matmul(seq_mean, seq_cov, item_mean, item_cov)
