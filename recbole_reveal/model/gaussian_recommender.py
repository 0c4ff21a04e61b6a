"""The STOSA family: sequences of Gaussian item embeddings, ranked by 2-Wasserstein distance.

STOSA (Fan et al., WWW 2022) and M3SRec (as the REVEAL authors built it on STOSA) share everything
but the item embeddings of the sequence (and, optionally, of the candidates): this base class holds
the shared part, and a subclass overrides :meth:`sequence_gaussians` / :meth:`candidate_gaussians`.
"""

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.model.reference_mode import reference_switch
from recbole_reveal.model.wasserstein_layers import (
    WassersteinTransformerEncoder,
    elu_plus_one,
    wasserstein_distance,
    wasserstein_distance_matmul,
)


class GaussianSequentialRecommender(SequentialRecommender):
    r"""Item and position embeddings of a mean and a covariance stream are summed, normalised by one
    shared LayerNorm and passed through a Wasserstein self-attention encoder; the next-item Gaussian is
    read at the last position, and items are ranked by the negative squared 2-Wasserstein distance.
    Loss: BPR on those distances to one sampled negative, plus ``pvn_weight`` times the hinge
    ``max(0, d(seq, pos) - d(pos, neg))``.

    Histories are left-aligned inside the model, as the reference code pads them: the last item is
    always at the last position, whose position embedding therefore means "most recent". (RecBole
    right-pads; the data loader is unchanged.)
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
        self.mean_skips_layers = reference_switch(config, "mean_skips_layers", False, True, (True, False))
        # M3SRec's reference code applies the embedding dropout twice to the covariance stream
        self.covariance_dropout_twice = False
        negatives = config["train_neg_sample_args"]
        if negatives is None or negatives.get("sample_num", 0) != 1:
            raise ConfigError(
                f"{type(self).__name__} trains with one sampled negative per positive: set "
                "train_neg_sample_args: {distribution: uniform, sample_num: 1}"
            )

        # define layers
        h = self.hidden_size
        self.item_mean_embedding = nn.Embedding(self.n_items, h, padding_idx=0)
        self.item_cov_embedding = nn.Embedding(self.n_items, h, padding_idx=0)
        self.position_mean_embedding = nn.Embedding(self.max_seq_length, h)
        self.position_cov_embedding = nn.Embedding(self.max_seq_length, h)
        self.embedding_norm = nn.LayerNorm(h, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.encoder = WassersteinTransformerEncoder(
            self.n_layers, h, self.n_heads, self.inner_size, self.attn_dropout_prob,
            self.hidden_dropout_prob, self.layer_norm_eps, mean_skips_layers=self.mean_skips_layers,
        )
        # parameters initialization: each subclass applies _init_weights once its layers exist

    def _init_weights(self, module):
        """STOSA's initialisation: N(0.01, initializer_range) weights (padding rows included), zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.01, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    @staticmethod
    def left_align(item_seq, item_seq_len):
        """RecBole's right-padded histories ``[B, L]`` moved right so that each ends at position L - 1."""
        length = item_seq.size(1)
        shift = (length - item_seq_len).unsqueeze(1)
        index = (torch.arange(length, device=item_seq.device).unsqueeze(0) - shift) % length
        return item_seq.gather(1, index)  # positions before the history read right-padding zeros

    def get_attention_mask(self, item_seq, bidirectional=False):
        # Wasserstein scores are unbounded negative distances, so masked keys need a far larger
        # penalty than RecBole's -10000 (STOSA uses -2**32 + 1).
        mask = super().get_attention_mask(item_seq, bidirectional)
        return torch.where(mask < 0, torch.tensor(-(2.0**32) + 1, device=mask.device), mask)

    # -- item embeddings (what STOSA and M3SRec differ in) ----------------------------------------
    def sequence_gaussians(self, item_seq, interaction_seq=None):
        """(mean, pre-activation covariance) item embeddings of a left-aligned history ``[B, L]``
        (``interaction_seq``: its interaction ids, aligned the same way, or None)."""
        return self.item_mean_embedding(item_seq), self.item_cov_embedding(item_seq)

    def interaction_seq(self, interaction):
        """The history's interaction ids, for models with interaction-level features (none here)."""
        return None

    def candidate_gaussians(self, items):
        """(mean, covariance) of candidate ``items`` (any shape of ids)."""
        return self.item_mean_embedding(items), elu_plus_one(self.item_cov_embedding(items))

    def negative_items(self, interaction):
        """The BPR negatives of a training batch: the sampler's (one uniform item other than the target)."""
        return interaction[self.NEG_ITEM_ID]

    # -- the shared model --------------------------------------------------------------------------
    def forward(self, item_seq, item_seq_len, interaction_seq=None):
        if interaction_seq is not None:
            interaction_seq = self.left_align(interaction_seq, item_seq_len)
        item_seq = self.left_align(item_seq, item_seq_len)
        mean, cov = self.sequence_gaussians(item_seq, interaction_seq)
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        mean = F.elu(self.dropout(self.embedding_norm(mean + self.position_mean_embedding(positions))))
        cov = self.dropout(self.embedding_norm(cov + self.position_cov_embedding(positions)))
        if self.covariance_dropout_twice:
            cov = self.dropout(cov)
        mean, cov = self.encoder(mean, elu_plus_one(cov), self.get_attention_mask(item_seq))
        return mean[:, -1], cov[:, -1]

    def calculate_loss(self, interaction):
        seq_mean, seq_cov = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self.interaction_seq(interaction))
        pos_mean, pos_cov = self.candidate_gaussians(interaction[self.POS_ITEM_ID])
        neg_mean, neg_cov = self.candidate_gaussians(self.negative_items(interaction))
        pos_dist = wasserstein_distance(seq_mean, seq_cov, pos_mean, pos_cov)
        neg_dist = wasserstein_distance(seq_mean, seq_cov, neg_mean, neg_cov)
        pos_neg_dist = wasserstein_distance(pos_mean, pos_cov, neg_mean, neg_cov)
        # -log sigmoid, computed stably: equal to the reference's -log(sigmoid(.)) wherever that is finite
        bpr = -F.logsigmoid(neg_dist - pos_dist).mean()
        pvn = torch.clamp(pos_dist - pos_neg_dist, min=0).mean()
        return bpr + self.pvn_weight * pvn

    def predict(self, interaction):
        seq_mean, seq_cov = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self.interaction_seq(interaction))
        item_mean, item_cov = self.candidate_gaussians(interaction[self.ITEM_ID])
        return -wasserstein_distance(seq_mean, seq_cov, item_mean, item_cov)

    def full_sort_predict(self, interaction):
        seq_mean, seq_cov = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self.interaction_seq(interaction))
        all_items = torch.arange(self.n_items, device=seq_mean.device)
        item_mean, item_cov = self.candidate_gaussians(all_items)
        return -wasserstein_distance_matmul(seq_mean, seq_cov, item_mean, item_cov)
