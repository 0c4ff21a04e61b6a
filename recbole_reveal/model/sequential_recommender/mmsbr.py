"""
MMSBR
################################################

Reference:
    Xiaokun Zhang et al. "Beyond Co-occurrence: Multi-modal Session-based Recommendation" in TKDE 2024
    (36(4): 1450-1462).

Reference code:
    https://github.com/Zhang-xiaokun/MMSBR (MMSBR/model.py, main.py, preprocess/)

Two branches score every item. The *interest* branch fuses each item's image and text features with
a hierarchical pivot transformer and reads a session by soft attention; the *price* branch models a
session's price sensitivity as a Gaussian from a Wasserstein self-attention over the price levels (and
categories) of its items, read from the ``.item`` file. A pseudo-modality contrastive loss aligns each
item's real image/text features with the features of its generated counterpart (an image generated
from its text, a text generated from its image) when those feature sets are given. The default is the
paper's model; ``reference_mode: True`` computes what the reference code computes (docs/differences.md).
"""

import math

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.model.mmsbr_layers import (
    FeatureTokenizer, PivotTransformerLayer, PriceAttention, masked_session_mean, pseudo_modality_contrast,
    soft_attention_readout,
)
from recbole_reveal.model.mmsbr_price import item_price_table
from recbole_reveal.model.reference_mode import reference_switch
from recbole_reveal.model.wasserstein_layers import elu_plus_one, wasserstein_distance_matmul

FEATURE_INITS = ("features", "uniform")


class MMSBR(MultimodalSequentialRecommender):
    r"""MMSBR: multi-modal session-based recommendation with descriptive and numerical information.

    Interest: ``n_tokens`` feature tokens per modality (tanh MLPs of the image / text vector) and
    ``n_pivots`` per-item pivot embeddings pass, alternately for text and image, through the layers of
    the hierarchical pivot transformer (pivots averaged with their update, tokens residual); the pivots
    end in two ReLU layers: the item vector ``v_i``. A session's interest ``s`` is a soft-attention
    readout of its items' vectors; ``y_int = s v_i``.

    Price: per item a Gaussian ``(mu_p + c, elu(sigma_p + c) + 1)`` from its price level ``p`` and
    category ``c``; a session's Gaussian is read at its last position after a Wasserstein self-attention
    over its items' price and category embeddings; ``y_price = W2(session, item)``. Scores
    ``y = y_int + y_int * y_price``; without prices, ``y = y_int``.

    Loss: cross-entropy over all items plus ``contrastive_weight`` times the pseudo-modality
    contrastive loss (over all items, ``num_negatives`` hardest pseudo vectors in the denominator).
    """

    input_type = InputType.POINTWISE
    vision_modules = ("vision_table", "vision_tokenizers", "vision_layers")
    vision_feature_tables = ("vision_table",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        h = self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.n_pivots = config["n_pivots"]
        self.contrastive_weight = config["contrastive_weight"]
        self.num_negatives = config["num_negatives"]
        if self.n_layers < 2 or self.n_layers % 2:
            raise ConfigError(f"config key 'n_layers' must be an even number >= 2 (a text and an image layer per "
                              f"level of the pivot transformer), got {self.n_layers}")
        if h % config["n_heads"]:
            raise ConfigError(f"config key 'hidden_size' ({h}) must be a multiple of 'n_heads' ({config['n_heads']})")
        if (config["train_neg_sample_args"] or {}).get("distribution", "none") != "none":
            raise ConfigError("MMSBR trains with cross-entropy over all items: set train_neg_sample_args: ~")
        feature_init = reference_switch(config, "feature_init", "features", "uniform", FEATURE_INITS)
        self.dropout_first_epoch_only = reference_switch(config, "dropout_first_epoch_only", False, True,
                                                         (True, False))
        softmax_over_queries = reference_switch(config, "pivot_softmax", "keys", "queries", ("keys", "queries")) == "queries"
        self._train_without_dropout = False

        text = self.item_feature_table(dataset, "text")
        vision = self.item_feature_table(dataset, "vision")
        pseudo = {m: dataset.load_feature_set(config[key], expected_dim=real.shape[1], label=f"pseudo-{m} features")
                  for m, key, real in (("text", "pseudo_text_feature", text), ("vision", "pseudo_vision_feature", vision))
                  if config[key]}
        if not pseudo:
            self.logger.info("MMSBR: no pseudo_text_feature / pseudo_vision_feature set: no contrastive loss")
        price = item_price_table(dataset, config["price_field"], config["category_field"], config["price_levels"])

        # define layers
        dropout, token_dropout = config["hidden_dropout_prob"], config["token_dropout_prob"]
        self.text_table = nn.Embedding(self.n_items, text.shape[1], padding_idx=0)
        self.vision_table = nn.Embedding(self.n_items, vision.shape[1], padding_idx=0)
        self.pseudo_text_table = nn.Embedding(self.n_items, text.shape[1]) if "text" in pseudo else None
        self.pseudo_vision_table = nn.Embedding(self.n_items, vision.shape[1]) if "vision" in pseudo else None
        if self.pseudo_vision_table is not None:
            self.vision_modules = (*type(self).vision_modules, "pseudo_vision_table")
        self.text_tokenizers = nn.ModuleList(FeatureTokenizer(text.shape[1], h, token_dropout)
                                             for _ in range(config["n_tokens"]))
        self.vision_tokenizers = nn.ModuleList(FeatureTokenizer(vision.shape[1], h, token_dropout)
                                               for _ in range(config["n_tokens"]))
        self.pivots = nn.Parameter(torch.empty(self.n_pivots, self.n_items, h))
        layer_args = (h, config["n_heads"], token_dropout, 0.0, softmax_over_queries)
        self.text_layers = nn.ModuleList(PivotTransformerLayer(*layer_args) for _ in range(self.n_layers // 2))
        self.vision_layers = nn.ModuleList(PivotTransformerLayer(*layer_args) for _ in range(self.n_layers // 2))
        self.item_mlp = nn.ModuleList([nn.Linear(self.n_pivots * h, h), nn.Linear(h, h)])
        self.glu1 = nn.Linear(h, h)
        self.glu2 = nn.Linear(h, h, bias=False)
        self.w_2 = nn.Linear(h, 1)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(h, eps=1e-12)
        self.has_prices = price is not None
        if price is not None:
            self.register_buffer("item_price_level", price.levels, persistent=False)
            self.register_buffer("item_category", price.categories, persistent=False)
            self.price_mean = nn.Embedding(price.n_levels + 1, h, padding_idx=0)
            self.price_cov = nn.Embedding(price.n_levels + 1, h, padding_idx=0)
            self.category_embedding = nn.Embedding(price.n_categories + 1, h, padding_idx=0)
            self.price_attention = PriceAttention(h, config["n_heads"], dropout, dropout)
        self.loss_fct = nn.CrossEntropyLoss()

        # parameters initialization: the reference's U(-1/sqrt(h), 1/sqrt(h)) for every parameter; its
        # init also overwrites the feature tables loaded just before (feature_init: uniform)
        bound = 1.0 / math.sqrt(h)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)
        with torch.no_grad():
            if feature_init == "features":
                for table, features in ((self.text_table, text), (self.vision_table, vision),
                                        (self.pseudo_text_table, pseudo.get("text")),
                                        (self.pseudo_vision_table, pseudo.get("vision"))):
                    if table is not None:
                        table.weight.copy_(features)
            for table in (self.text_table, self.vision_table, getattr(self, "price_mean", None),
                          getattr(self, "price_cov", None), getattr(self, "category_embedding", None)):
                if table is not None:
                    table.weight[0].zero_()     # padding: the reference prepends a zero row

    # -- the reference's training mode (switch dropout_first_epoch_only) --------------------------
    def on_epoch_start(self, epoch_idx):
        """The reference sets eval mode for its test after the first epoch and never back: from the
        second epoch on it trains without dropout. Reproduced under ``dropout_first_epoch_only``."""
        self._train_without_dropout = self.dropout_first_epoch_only and epoch_idx > 0

    def train(self, mode=True):
        return super().train(mode and not self._train_without_dropout)

    # -- interest branch ------------------------------------------------------------------------
    def item_vectors(self):
        """``[n_items, h]``: every item's fused vector (row 0, padding, is zero)."""
        text = torch.stack([tok(self.text_table.weight) for tok in self.text_tokenizers], dim=1)
        vision = torch.stack([tok(self.vision_table.weight) for tok in self.vision_tokenizers], dim=1)
        text, vision = self.mask_modality("text", text), self.mask_modality("vision", vision)
        pivots = self.pivots.transpose(0, 1)                    # [n_items, n_pivots, h]
        p = self.n_pivots
        for text_layer, vision_layer in zip(self.text_layers, self.vision_layers):
            out = text_layer(torch.cat([pivots, text], dim=1))
            pivots, text = (out[:, :p] + pivots) / 2, out[:, p:] + text
            out = vision_layer(torch.cat([pivots, vision], dim=1))
            pivots, vision = (out[:, :p] + pivots) / 2, out[:, p:] + vision
        items = self.dropout(pivots.flatten(1))
        for layer in self.item_mlp:
            items = self.dropout(F.relu(layer(items)))
        return torch.cat([torch.zeros_like(items[:1]), items[1:]])

    def interest(self, item_seq, item_seq_len, items):
        seq = items[item_seq]
        mask = (item_seq > 0).to(seq.dtype)
        return soft_attention_readout(seq, mask, masked_session_mean(seq, item_seq_len), self.glu1, self.glu2, self.w_2)

    # -- price branch ---------------------------------------------------------------------------
    def session_price(self, item_seq, item_seq_len):
        """The session's price Gaussian (mean, covariance after elu + 1)."""
        levels, categories = self.item_price_level[item_seq], self.category_embedding(self.item_category[item_seq])
        mean_raw, cov_raw = self.price_mean(levels), self.price_cov(levels)
        mean_in = self.dropout(self.norm(mean_raw) + self.norm(categories))
        cov_in = elu_plus_one(self.dropout(self.norm(cov_raw) + self.norm(categories)))
        mean, cov = self.price_attention(mean_in, cov_in, mean_raw, cov_raw, item_seq == 0, self.norm)
        return self.gather_indexes(mean, item_seq_len - 1), elu_plus_one(self.gather_indexes(cov, item_seq_len - 1))

    def item_price(self, items=None):
        levels = self.item_price_level if items is None else self.item_price_level[items]
        categories = self.category_embedding(self.item_category if items is None else self.item_category[items])
        return self.price_mean(levels) + categories, elu_plus_one(self.price_cov(levels) + categories)

    # -- scores and loss --------------------------------------------------------------------------
    def forward(self, item_seq, item_seq_len):
        """Scores of all items ``[B, n_items]``."""
        items = self.item_vectors()
        scores = self.interest(item_seq, item_seq_len, items) @ items.T
        if not self.has_prices:
            return scores
        price = wasserstein_distance_matmul(*self.session_price(item_seq, item_seq_len), *self.item_price())
        return scores + scores * price

    def contrastive_loss(self):
        loss = 0.0
        for real, pseudo in ((self.text_table, self.pseudo_text_table), (self.vision_table, self.pseudo_vision_table)):
            if pseudo is not None:
                loss = loss + pseudo_modality_contrast(real.weight[1:], pseudo.weight[1:], self.num_negatives)
        return loss

    def calculate_loss(self, interaction):
        scores = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        scores = scores.index_fill(1, scores.new_zeros(1, dtype=torch.long), float("-inf"))  # no padding item
        return self.loss_fct(scores, interaction[self.POS_ITEM_ID]) + self.contrastive_weight * self.contrastive_loss()

    def predict(self, interaction):
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
