"""
HM4SR
################################################

Reference:
    Shengzhe Zhang et al. "Hierarchical Time-Aware Mixture of Experts for Multi-Modal Sequential
    Recommendation" (HM4SR) in WWW 2025.

Reference code:
    https://github.com/SStarCCat/HM4SR (RecBole 1.2.0)

Differences from the reference code (docs/models/hm4sr.md): the temporal experts are registered
parameters and train (the reference kept them in a Python list, so they stay at their random
initialisation; ``temporal_experts_trainable: False`` restores that); nothing is pinned to ``cuda``;
the contrastive losses leave same-target rows out of the denominator (the reference sets their logits
to 0, so each still adds exp(0) = 1; ``same_target_negatives: zero_logit`` restores it); timestamps
come from RecBole's ``<TIME_FIELD>_list`` and the category multi-hot from the dataset's category field
instead of side files; the placeholder positions are drawn from torch's seeded generator; the category
loss is the per-item BCE the paper describes (the reference indexes its flattened ``[B*L, C]`` score
matrix with the history's ``(row, position)`` pairs, reading element ``[b, l]``, and fails on a history
longer than the number of categories; ``category_loss_indexing: reference`` restores it).
``reference_mode: True`` sets the three switches to the reference behaviour.
"""

from logging import getLogger

import torch
from recbole.model.layers import TransformerEncoder
from recbole.utils import FeatureType, InputType
from torch import nn

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.model.hm4sr_layers import (
    CATEGORY_LOSS_INDEXING,
    SAME_TARGET_NEGATIVES,
    AlignMoE,
    TemporalMoE,
    in_batch_info_nce,
    n_interval_buckets,
)
from recbole_reveal.model.reference_mode import reference_switch


class HM4SR(MultimodalSequentialRecommender):
    r"""HM4SR encodes three parallel streams of a history: item IDs, text and image features.

    Per position, the three embeddings (+ a shared position embedding) pass an alignment MoE that
    lets every stream read all three, then a temporal MoE whose gate sees the time since the previous
    interaction and the absolute time; each stream then has its own Transformer encoder. An item's
    score is the sum of the three streams' dot products with its ID embedding and its projected
    text and image features.

    Loss: cross-entropy over all items, plus ``id_cl_weight`` x an in-batch contrastive loss between
    the ID sequence vector and the target's ID embedding, ``category_weight`` x multi-label category
    prediction (BCE) from the history's items, and ``placeholder_weight`` x a contrastive loss between
    the text/image sequence vectors and those of the same history with some positions replaced by a
    time-derived placeholder.
    """

    input_type = InputType.POINTWISE
    vision_modules = (
        "vision_table",
        "vision_proj",
        "align_moe.vision_experts",
        "temporal_moe.vision_experts",
        "vision_norm",
        "vision_encoder",
        "vision_placeholder",
    )
    vision_feature_tables = ("vision_table",)
    text_modules = (
        "text_table",
        "text_proj",
        "align_moe.text_experts",
        "temporal_moe.text_experts",
        "text_norm",
        "text_encoder",
        "text_placeholder",
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.temperature = config["temperature"]
        self.id_cl_weight = config["id_cl_weight"]
        self.category_weight = config["category_weight"]
        self.placeholder_weight = config["placeholder_weight"]
        self.placeholder_temperature = config["placeholder_temperature"]
        self.placeholder_ratio = config["placeholder_ratio"]
        self.time_unit = float(config["time_unit"])
        self.same_target_negatives = reference_switch(
            config, "same_target_negatives", "drop", "zero_logit", SAME_TARGET_NEGATIVES
        )
        temporal_experts_trainable = reference_switch(
            config, "temporal_experts_trainable", True, False, (True, False)
        )
        self.category_loss_indexing = reference_switch(
            config, "category_loss_indexing", "per_item", "reference", CATEGORY_LOSS_INDEXING
        )
        if (config["train_neg_sample_args"] or {}).get("distribution", "none") != "none":
            raise ConfigError(
                "HM4SR trains with cross-entropy over all items: set train_neg_sample_args: ~ "
                f"(got {config['train_neg_sample_args']})"
            )
        if not self.time_unit > 0:
            raise ConfigError(f"config key 'time_unit' must be a positive number of seconds, got {self.time_unit}")
        self.TIME_SEQ = self._time_list_field(config, dataset)
        longest_gap = self._longest_gap(dataset)

        text = self.item_feature_table(dataset, "text")
        vision = self.item_feature_table(dataset, "vision")
        categories = self._category_multi_hot(config, dataset)
        h = self.hidden_size

        # define layers
        self.item_embedding = nn.Embedding(self.n_items, h, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, h)
        # copies: fine-tuned tables must not write into the dataset's feature matrices
        frozen = not config["train_feature_tables"]
        self.text_table = nn.Embedding.from_pretrained(text.clone(), freeze=frozen, padding_idx=0)
        self.vision_table = nn.Embedding.from_pretrained(vision.clone(), freeze=frozen, padding_idx=0)
        self.text_proj = nn.Linear(text.shape[1], h)
        self.vision_proj = nn.Linear(vision.shape[1], h)
        self.temporal_moe = TemporalMoE(
            h, config["temporal_experts"], n_interval_buckets(longest_gap, config["interval_scale"]),
            config["interval_scale"],
        )
        self.id_norm, self.text_norm, self.vision_norm = (
            nn.LayerNorm(h, eps=self.layer_norm_eps) for _ in range(3)
        )
        self.id_encoder, self.text_encoder, self.vision_encoder = (self._encoder() for _ in range(3))
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.loss_fct = nn.CrossEntropyLoss()
        # The reference creates the following layers after its apply(_init_weights), so they keep
        # PyTorch's default initialisation; so do they here.
        self.align_moe = AlignMoE(h, config["align_experts"], config["align_stream_weights"])
        self.text_placeholder = nn.Linear(2 * h, h)
        self.vision_placeholder = nn.Linear(2 * h, h)
        self.temporal_moe.requires_grad_experts(temporal_experts_trainable)
        self.register_buffer("item_categories", categories, persistent=False)
        self.category_head = nn.Linear(3 * h, categories.shape[1]) if categories.shape[1] else None
        if self.category_head is not None and self.category_loss_indexing == "reference":
            self._check_reference_category_loss(dataset, categories.shape[1])

        # parameters initialization
        for module in (
            self.item_embedding, self.position_embedding, self.text_proj, self.vision_proj,
            self.temporal_moe.interval_embedding, self.temporal_moe.absolute_proj, self.temporal_moe.gate,
            self.id_norm, self.text_norm, self.vision_norm,
            self.id_encoder, self.text_encoder, self.vision_encoder,
        ):
            module.apply(self._init_weights)

    def _encoder(self):
        return TransformerEncoder(
            n_layers=self.n_layers, n_heads=self.n_heads, hidden_size=self.hidden_size,
            inner_size=self.inner_size, hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob, hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )

    def _init_weights(self, module):
        """Initialize the weights"""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    # -- dataset-derived inputs ----------------------------------------------------------------
    @staticmethod
    def _time_list_field(config, dataset):
        time_field = config["TIME_FIELD"]
        list_field = f"{time_field}{config['LIST_SUFFIX']}"
        if not time_field or list_field not in dataset.field2type:
            raise ConfigError(
                f"HM4SR needs interaction timestamps: config key 'TIME_FIELD' (now {time_field!r}) must name "
                f"a float column of the .inter file that 'load_col' loads, so that RecBole builds '{list_field}'"
            )
        return list_field

    def _longest_gap(self, dataset):
        """The longest possible gap between two training interactions, in ``time_unit``."""
        histories = dataset.inter_feat[self.TIME_SEQ].double()
        observed = histories[dataset.inter_feat[self.ITEM_SEQ] > 0]
        targets = dataset.inter_feat[dataset.time_field].double()
        all_times = torch.cat([observed, targets])
        return (all_times.max().item() - all_times.min().item()) / self.time_unit

    def _category_multi_hot(self, config, dataset):
        """``[n_items, n_categories]`` 0/1 matrix from the item field ``category_field`` (a token_seq or
        token column of the .item file). Zero columns (category loss off) when ``category_weight`` is
        0, or, with a warning, when the dataset has no such field."""
        field = config["category_field"]
        if not self.category_weight:
            return torch.zeros(self.n_items, 0)
        item_feat = dataset.item_feat
        if not field or item_feat is None or field not in item_feat.columns:
            getLogger().warning(
                f"HM4SR: the category loss is OFF: config key 'category_field' is {field!r}, and the dataset "
                f"has no such item field. Load it with load_col: {{inter: [...], item: [{dataset.iid_field}, "
                f"categories]}} (a 'categories:token_seq' column of {config['dataset']}.item), or set "
                "category_weight: 0 to silence this warning"
            )
            return torch.zeros(self.n_items, 0)
        if dataset.field2type[field] not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
            raise ConfigError(
                f"config key 'category_field' names '{field}', a {dataset.field2type[field].value} field; "
                "expected a token_seq (or token) column of the .item file"
            )
        tokens = item_feat[field]
        if tokens.dim() == 1:  # token field: one category per item
            tokens = tokens.unsqueeze(1)
        n_categories = len(dataset.field2id_token[field]) - 1  # token id 0 is padding
        multi_hot = torch.zeros(self.n_items, n_categories + 1)
        multi_hot.scatter_(1, tokens.long(), 1.0)
        return multi_hot[:, 1:]

    def _times(self, time_seq, item_seq):
        """History timestamps in ``time_unit`` (the raw timestamps at ``time_unit: 1``, as the reference
        reads them), 0 at padding; and the mask of real positions."""
        valid = item_seq > 0
        times = time_seq.to(self.position_embedding.weight.dtype) / self.time_unit
        return torch.where(valid, times, torch.zeros_like(times)), valid

    # -- representations --------------------------------------------------------------------------
    def item_tables(self):
        """ID embeddings and projected (maskable) text and image features of every item, ``[n_items, h]``
        each. Cross-entropy scores every item anyway, so every lookup gathers from these tables: the
        feature projections run once per step over the items, not once per history position."""
        text = self.mask_modality("text", self.text_proj(self.text_table.weight))
        vision = self.mask_modality("vision", self.vision_proj(self.vision_table.weight))
        return self.item_embedding.weight, text, vision

    @staticmethod
    def lookup(tables, items):
        """Rows of ``tables`` (from :meth:`item_tables`) for ``items``; padding gives the ID table no gradient."""
        id_table, text, vision = tables
        return nn.functional.embedding(items, id_table, padding_idx=0), text[items], vision[items]

    def _encode_stream(self, stream, norm, encoder, attention_mask, item_seq_len):
        hidden = encoder(self.dropout(norm(stream)), attention_mask, output_all_encoded_layers=True)[-1]
        return self.gather_indexes(hidden, item_seq_len - 1)

    def encode(self, tables, item_seq, item_seq_len, time_seq, interaction_seq=None):
        """Returns (the three streams after both MoEs, their sequence vectors, the time embedding);
        ``interaction_seq``: the histories' interaction ids (interaction-level visual features)."""
        times, valid = self._times(time_seq, item_seq)
        positions = self.position_embedding(torch.arange(item_seq.size(1), device=item_seq.device))
        with self.reading_history():
            if self.history_rows_differ():      # test-time masking of one side only: the history's own rows
                tables = self.item_tables()
            id_emb, text_emb, vision_emb = self.lookup(tables, item_seq)
            if interaction_seq is not None:
                vision = self.history_vision_features(item_seq, interaction_seq, self.vision_table(item_seq))
                vision_emb = self.mask_modality("vision", self.vision_proj(vision))
        id_emb, text_emb, vision_emb = (e + positions for e in (id_emb, text_emb, vision_emb))
        id_emb, text_emb, vision_emb = self.align_moe(id_emb, text_emb, vision_emb)
        time_embedding = self.temporal_moe.time_embedding(times, valid)
        streams = self.temporal_moe(id_emb, text_emb, vision_emb, time_embedding)
        attention_mask = self.get_attention_mask(item_seq)
        vectors = tuple(
            self._encode_stream(stream, norm, encoder, attention_mask, item_seq_len)
            for stream, norm, encoder in zip(
                streams, (self.id_norm, self.text_norm, self.vision_norm),
                (self.id_encoder, self.text_encoder, self.vision_encoder),
            )
        )
        return streams, vectors, time_embedding

    def forward(self, item_seq, item_seq_len, time_seq, tables=None, interaction_seq=None):
        """The ID, text and image sequence vectors ``[B, h]`` of the histories; ``time_seq`` holds their
        timestamps (``interaction[<TIME_FIELD>_list]``), ``tables`` the :meth:`item_tables` when the
        caller has them, ``interaction_seq`` the histories' interaction ids."""
        tables = self.item_tables() if tables is None else tables
        return self.encode(tables, item_seq, item_seq_len, time_seq, interaction_seq)[1]

    @staticmethod
    def score_all(vectors, tables):
        """``[B, n_items]``: the sum over the three streams of sequence vector . item representation."""
        return sum(torch.matmul(v, t.transpose(0, 1)) for v, t in zip(vectors, tables))

    # -- losses -------------------------------------------------------------------------------
    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        tables = self.item_tables()
        streams, vectors, time_embedding = self.encode(tables, item_seq, item_seq_len, interaction[self.TIME_SEQ],
                                                       self.interaction_seq(interaction))
        loss = self.loss_fct(self.score_all(vectors, tables), pos_items)
        if self.id_cl_weight:
            loss = loss + self.id_cl_weight * in_batch_info_nce(
                vectors[0], self.item_embedding(pos_items), pos_items, self.temperature,
                self.same_target_negatives,
            )
        if self.category_head is not None:
            loss = loss + self.category_weight * self.category_loss(tables, item_seq)
        if self.placeholder_weight:
            loss = loss + self.placeholder_weight * self.placeholder_loss(
                item_seq, item_seq_len, pos_items, streams, vectors, time_embedding
            )
        return loss

    def category_loss(self, tables, item_seq):
        """BCE of the categories predicted from each history item's ID, text and image embeddings.

        ``category_loss_indexing: reference``: what the reference computes. It scores every position of
        the flattened history (``[B*L, C]``) and indexes that matrix with the ``(row b, position l)``
        pairs of the 2-D history's real items, so it reads one number per real item: flat row ``b``
        (the item at flat position b, i.e. ``item_seq[b // L, b % L]``, padding included), category
        column ``l``. Only those rows are scored here."""
        if self.category_loss_indexing == "reference":
            rows, positions = torch.nonzero(item_seq, as_tuple=True)
            items = item_seq.flatten()[rows]
            logits = self.category_head(torch.cat(self.lookup(tables, items), dim=-1))
            return nn.functional.binary_cross_entropy_with_logits(
                logits.gather(1, positions.unsqueeze(1)).squeeze(1), self.item_categories[items, positions]
            )
        items = item_seq[item_seq > 0]
        logits = self.category_head(torch.cat(self.lookup(tables, items), dim=-1))
        return nn.functional.binary_cross_entropy_with_logits(logits, self.item_categories[items])

    def _check_reference_category_loss(self, dataset, n_categories):
        """The reference's category loss reads category column ``l`` for history position ``l``: it raises
        an IndexError on the first batch with a history longer than the number of categories. Said here,
        before training, instead."""
        lengths = dataset.inter_feat[self.ITEM_SEQ_LEN] if self.ITEM_SEQ_LEN in dataset.inter_feat.columns else None
        longest = int(lengths.max()) if lengths is not None and len(lengths) else self.max_seq_length
        if longest > n_categories:
            raise ConfigError(
                f"category_loss_indexing: reference cannot run: the reference category loss indexes category "
                f"column l with history position l and fails (IndexError) on a history longer than the "
                f"{n_categories} categories of the item field, and this training data has histories of "
                f"{longest} items. Set MAX_ITEM_LIST_LENGTH to at most {n_categories}, or "
                "category_loss_indexing: per_item (the per-item loss)"
            )

    def placeholder_positions(self, item_seq_len, max_len):
        """``[B, L]`` bool: ``floor(placeholder_ratio * len)`` distinct random positions of each history."""
        n_chosen = torch.floor(item_seq_len.double() * self.placeholder_ratio).long()
        positions = torch.arange(max_len, device=item_seq_len.device)
        noise = torch.rand(len(item_seq_len), max_len, device=item_seq_len.device)
        noise = noise.masked_fill(positions >= item_seq_len.unsqueeze(1), float("inf"))
        rank = noise.argsort(dim=1).argsort(dim=1)
        return rank < n_chosen.unsqueeze(1)

    def placeholder_loss(self, item_seq, item_seq_len, pos_items, streams, vectors, time_embedding):
        """Text and image streams with some positions replaced by a placeholder computed from the
        time embedding, re-encoded, contrasted with the unchanged sequence vectors (mean of both)."""
        chosen = self.placeholder_positions(item_seq_len, item_seq.size(1)).unsqueeze(-1)
        attention_mask = self.get_attention_mask(item_seq)
        losses = []
        for stream, vector, placeholder, norm, encoder in (
            (streams[1], vectors[1], self.text_placeholder, self.text_norm, self.text_encoder),
            (streams[2], vectors[2], self.vision_placeholder, self.vision_norm, self.vision_encoder),
        ):
            augmented = torch.where(chosen, placeholder(time_embedding), stream)
            augmented_vector = self._encode_stream(augmented, norm, encoder, attention_mask, item_seq_len)
            losses.append(in_batch_info_nce(
                vector, augmented_vector, pos_items, self.placeholder_temperature, self.same_target_negatives
            ))
        return sum(losses) / len(losses)

    # -- inference ------------------------------------------------------------------------------
    def _sequence_vectors(self, interaction, tables):
        return self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.TIME_SEQ], tables,
            self.interaction_seq(interaction),
        )

    def predict(self, interaction):
        tables = self.item_tables()
        vectors = self._sequence_vectors(interaction, tables)
        candidates = self.lookup(tables, interaction[self.ITEM_ID])
        return sum((v * c).sum(dim=-1) for v, c in zip(vectors, candidates))

    def full_sort_predict(self, interaction):
        tables = self.item_tables()
        return self.score_all(self._sequence_vectors(interaction, tables), tables)
