"""
MISSRec
################################################

Reference:
    Jinpeng Wang et al. "MISSRec: Pre-training and Transferring Multi-modal Interest-aware Sequence
    Representation for Recommendation" in ACM MM 2023.

Reference code:
    https://github.com/gimpong/MM23-MISSRec (RecBole 1.0.1)

This is the reference's fine-tuning stage trained from scratch with item IDs ("transductive"
fine-tuning without a pre-trained checkpoint), the setting of the REVEAL paper's table; pre-training
and transfer are not implemented. Differences from the reference code (see docs/models/missrec.md):
a seeded full-batch torch k-means instead of torchpq's mini-batch k-means (CPU and GPU); the interest
regulariser sums the interest memory over the valid interest tokens (the reference weights every slot,
padding included, by the batch-dependent fraction of valid slots; ``interest_penalty_pooling:
reference`` / ``reference_mode: True`` restores it); sequences of interest tokens are de-duplicated
without re-packing (the encoder is order-free).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.model.kmeans import kmeans, nearest_centroid
from recbole_reveal.model.reference_mode import reference_switch

PENALTY_POOLINGS = ("sum", "mean", "reference")
MODALITY_INDEX = {"text": 0, "vision": 1}      # modality_embeddings returns (text, vision)


class MISSRec(MultimodalSequentialRecommender):
    r"""MISSRec reads a history twice: as a set of *interest tokens* and as a sequence of items.

    Interest tokens are k-means clusters of the projected text and image features of all items
    (rebuilt before every training epoch). An interest encoder (Transformer encoder) reads the
    distinct interests of a history's items; an interest-aware decoder (Transformer decoder) reads
    the history's items (text + image adaptor outputs + position + ID embedding) and attends to the
    encoded interests. Its output at the last position, L2-normalised, is the sequence vector.

    An item's score mixes cosine logits with its text, image and ID embeddings: the text and image
    logits are weighted per (sequence, item) by ``softmax(logits * fusion_factor)``, then combined with
    the ID logit as ``(id + 2 * multimodal) / 3``, and divided by ``temperature``.

    Loss: cross-entropy over all items, plus ``gamma`` times the squared norm of the pooled interest
    memory (the reference's "interest orthogonal regularization", which spreads the interests apart),
    summed over the batch and divided by ``hidden_size``.
    """

    input_type = InputType.POINTWISE
    vision_modules = ("vision_table", "vision_adaptor")
    vision_feature_tables = ("vision_table",)
    text_modules = ("text_table", "text_adaptor")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.temperature = config["temperature"]
        self.gamma = config["gamma"]
        self.use_item_id = config["use_item_id"]
        self.interest_kmeans_iters = config["interest_kmeans_iters"]
        self.cluster_seed = config["seed"]
        self.interest_penalty_pooling = reference_switch(
            config, "interest_penalty_pooling", "sum", "reference", PENALTY_POOLINGS
        )
        self._check_config(config)

        text = self.item_feature_table(dataset, "text")
        vision = self.item_feature_table(dataset, "vision")
        h = self.hidden_size
        # every item contributes one text and one image token to the clustering
        self.n_interests = max(math.ceil(2 * (self.n_items - 1) * config["interest_ratio"]), 1)

        # define layers
        self.item_embedding = nn.Embedding(self.n_items, h, padding_idx=0) if self.use_item_id else None
        self.position_embedding = nn.Embedding(self.max_seq_length, h)
        self.interest_encoder = nn.TransformerEncoder(
            self._layer(nn.TransformerEncoderLayer), self.n_layers // 2,
            norm=nn.LayerNorm(h, eps=self.layer_norm_eps), enable_nested_tensor=False,
        )
        self.item_decoder = nn.TransformerDecoder(
            self._layer(nn.TransformerDecoderLayer), self.n_layers // 2,
            norm=nn.LayerNorm(h, eps=self.layer_norm_eps),
        )
        self.LayerNorm = nn.LayerNorm(h, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.loss_fct = nn.CrossEntropyLoss()

        # parameters initialization
        self.apply(self._init_weights)
        # copies: fine-tuned tables must not write into the dataset's feature matrices (the reference
        # keeps them frozen)
        frozen = not config["train_feature_tables"]
        self.text_table = nn.Embedding.from_pretrained(text.clone(), freeze=frozen, padding_idx=0)
        self.vision_table = nn.Embedding.from_pretrained(vision.clone(), freeze=frozen, padding_idx=0)
        # The reference creates the adaptors and the fusion factor after its apply(_init_weights),
        # so they keep PyTorch's default initialisation; so do they here.
        self.text_adaptor = nn.Linear(text.shape[1], h)
        self.vision_adaptor = nn.Linear(vision.shape[1], h)
        self.fusion_factor = nn.Parameter(torch.zeros(()))

        # interest state, rebuilt by on_epoch_start; buffers, so the best checkpoint restores it
        self.register_buffer("interest_embeddings", torch.zeros(self.n_interests + 1, h))
        self.register_buffer("text_interest_ids", torch.zeros(self.n_items, dtype=torch.long))
        self.register_buffer("vision_interest_ids", torch.zeros(self.n_items, dtype=torch.long))
        self.discover_interests(epoch_idx=0)  # evaluation before any training epoch needs them

    def _check_config(self, config):
        if (config["train_neg_sample_args"] or {}).get("distribution", "none") != "none":
            raise ConfigError(
                "MISSRec trains with cross-entropy over all items: set train_neg_sample_args: ~ "
                f"(got {config['train_neg_sample_args']})"
            )
        if self.n_layers < 2 or self.n_layers % 2:
            raise ConfigError(
                f"config key 'n_layers' must be an even number >= 2 (half interest-encoder, half "
                f"decoder layers), got {self.n_layers}"
            )
        if self.hidden_size % self.n_heads:
            raise ConfigError(
                f"config key 'hidden_size' ({self.hidden_size}) must be a multiple of 'n_heads' ({self.n_heads})"
            )
        if self.hidden_act not in ("gelu", "relu"):
            raise ConfigError(f"config key 'hidden_act' must be 'gelu' or 'relu', got {self.hidden_act!r}")
        if not 0 < config["interest_ratio"] <= 1:
            raise ConfigError(
                f"config key 'interest_ratio' must be in (0, 1] (interests per clustered feature), "
                f"got {config['interest_ratio']}"
            )
        if not (isinstance(self.interest_kmeans_iters, int) and self.interest_kmeans_iters >= 1):
            raise ConfigError(
                f"config key 'interest_kmeans_iters' must be an integer >= 1, got {self.interest_kmeans_iters!r}"
            )
        if not self.temperature > 0:
            raise ConfigError(f"config key 'temperature' must be > 0, got {self.temperature}")

    def _layer(self, layer_class):
        # torch's Transformer layers have one dropout for attention and outputs, as the reference's nn.Transformer
        return layer_class(
            d_model=self.hidden_size, nhead=self.n_heads, dim_feedforward=self.inner_size,
            dropout=self.hidden_dropout_prob, activation=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps, batch_first=True, norm_first=False,
        )

    def _init_weights(self, module):
        """Initialize the weights"""
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    # -- interests ----------------------------------------------------------------------------
    def on_epoch_start(self, epoch_idx):
        """Called by the trainer before each training epoch: re-cluster with the current adaptors."""
        self.discover_interests(epoch_idx)

    @torch.no_grad()
    def discover_interests(self, epoch_idx):
        """k-means over the projected text and image features of all items (one token each, padding
        excluded); the centroids become the interest embeddings, and each item gets the interest of its
        text token and of its image token. Seeded by (``seed``, epoch): reproducible, fresh each epoch."""
        text, vision = self.modality_embeddings()
        n_real = self.n_items - 1
        seed = int(np.random.SeedSequence([self.cluster_seed, epoch_idx]).generate_state(1)[0])
        centroids, assignment = kmeans(
            torch.cat([text[1:], vision[1:]]), self.n_interests, self.interest_kmeans_iters, seed=seed
        )
        self.interest_embeddings[1:] = centroids
        self.text_interest_ids[1:] = assignment[:n_real] + 1  # interest 0 = padding
        self.vision_interest_ids[1:] = assignment[n_real:] + 1

    def _interest_ids(self, modality, item_seq):
        """The interest of each history item's ``modality`` token. An item whose modality is masked at test
        time (the robustness protocol) gets the interest nearest its replacement row, as
        :meth:`discover_interests` assigns every token, not the one its real features gave it."""
        ids = getattr(self, f"{modality}_interest_ids")
        masked = self.test_masked(modality, "history")
        if masked is None:
            return ids[item_seq]
        with self.reading_history():
            rows = self.modality_embeddings()[MODALITY_INDEX[modality]]
        masked = masked.to(ids.device)
        ids = ids.clone()
        ids[masked] = nearest_centroid(rows[masked], self.interest_embeddings[1:], rows=4096) + 1
        return ids[item_seq]

    def interest_tokens(self, item_seq):
        """The distinct interests of each history's items: ids ``[B, T]`` (0 = padding) and embeddings."""
        # mask_modality turns a zeroed modality's interest ids into zeros, the padding interest
        ids = torch.cat([
            self.mask_modality("text", self._interest_ids("text", item_seq)),
            self.mask_modality("vision", self._interest_ids("vision", item_seq)),
        ], dim=1)
        has_padding = (ids == 0).any(1)
        ids, _ = ids.sort(dim=1)
        duplicate = torch.zeros_like(ids, dtype=torch.bool)
        duplicate[:, 1:] = ids[:, 1:] == ids[:, :-1]
        ids = ids.masked_fill(duplicate, 0)
        # valid ids first, then cut the all-padding tail (the encoder does not depend on token order)
        ids, _ = ids.sort(dim=1, descending=True)
        n_slots = (ids > 0).sum(1)
        if self.interest_penalty_pooling == "reference":
            # the reference's width: its per-history unique() keeps one 0 when a history has padding
            n_slots = n_slots + has_padding.long()
        width = max(int(n_slots.max()), 1)
        ids = ids[:, :width]
        return ids, self.interest_embeddings[ids]

    # -- items ----------------------------------------------------------------------------------
    def modality_embeddings(self, items=None, interaction_seq=None):
        """Adaptor outputs ``(text, vision)`` of ``items`` (all items when ``None``), after masking;
        ``interaction_seq``: the interactions of history positions ``items`` (their interaction-level
        visual features, FVE's interaction scope)."""
        text = self.text_table.weight if items is None else self.text_table(items)
        vision = self.vision_table.weight if items is None else self.vision_table(items)
        if interaction_seq is not None:
            vision = self.history_vision_features(items, interaction_seq, vision)
        text = self.mask_modality("text", self.text_adaptor(text))
        vision = self.mask_modality("vision", self.vision_adaptor(vision))
        return text, vision

    def forward(self, item_seq, item_seq_len, item_modalities=None, interaction_seq=None):
        """Sequence vector (L2-normalised) and the interest regulariser for a batch of histories.

        ``item_modalities``: the ``(text, vision)`` embeddings of all items when the caller has them;
        ``interaction_seq``: the histories' interaction ids (interaction-level visual features).
        """
        if item_modalities is None or interaction_seq is not None or self.history_rows_differ():
            with self.reading_history():
                text, vision = self.modality_embeddings(item_seq, interaction_seq)
        else:
            text, vision = (table[item_seq] for table in item_modalities)

        interest_ids, interests = self.interest_tokens(item_seq)
        interest_padding = interest_ids == 0
        # a history with every modality zeroed has no interest: let it attend the zero padding token
        interest_padding[:, 0] &= ~interest_padding.all(1)
        memory = self.interest_encoder(interests, src_key_padding_mask=interest_padding)

        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        items = text + vision + self.position_embedding(positions)
        if self.use_item_id:
            items = items + self.item_embedding(item_seq)
        items = self.dropout(self.LayerNorm(items))
        output = self.item_decoder(
            items, memory, tgt_key_padding_mask=item_seq == 0, memory_key_padding_mask=interest_padding
        )
        seq_output = F.normalize(self.gather_indexes(output, item_seq_len - 1), dim=1)
        return seq_output, self.interest_penalty(memory, interest_ids, interest_padding)

    def interest_penalty(self, memory, interest_ids, interest_padding):
        """``sum_batch ||pooled memory||^2 / h``, the memory ``[B, T, h]`` pooled per history by
        ``interest_penalty_pooling``: ``sum`` over its interests; ``mean`` over them (about n_interests^2
        times smaller); ``reference``: every slot, padding slots included, weighted by the fraction of
        valid slots in the batch-wide width T, as the reference code does (about ``sum`` when padding
        slots' outputs resemble the valid ones')."""
        if self.interest_penalty_pooling == "reference":
            share = (interest_ids > 0).to(memory.dtype).mean(1, keepdim=True)
            pooled = memory.sum(1) * share
        else:
            # "mean" keeps the zero token a fully zeroed history attends to; "sum" has nothing to add then
            valid = (~interest_padding if self.interest_penalty_pooling == "mean" else interest_ids > 0)
            valid = valid.unsqueeze(-1).to(memory.dtype)
            pooled = (memory * valid).sum(1)
            if self.interest_penalty_pooling == "mean":
                pooled = pooled / valid.sum(1)
        return (pooled * pooled).sum() / pooled.size(1)

    def fused_logits(self, text_logits, vision_logits, id_logits):
        """Dynamic fusion: text/image logits weighted by softmax(logits * fusion_factor), then mixed
        with the ID logits as (id + 2 * multimodal) / 3; divided by the temperature."""
        modal = torch.stack([text_logits, vision_logits], dim=-1)
        logits = (modal * torch.softmax(modal * self.fusion_factor, dim=-1)).sum(-1)
        if id_logits is not None:
            logits = (id_logits + 2 * logits) / 3
        return logits / self.temperature

    def _all_item_logits(self, seq_output, item_modalities):
        text, vision = item_modalities
        id_logits = None
        if self.use_item_id:
            id_logits = seq_output @ F.normalize(self.item_embedding.weight, dim=1).T
        return self.fused_logits(
            seq_output @ F.normalize(text, dim=1).T, seq_output @ F.normalize(vision, dim=1).T, id_logits
        )

    def calculate_loss(self, interaction):
        item_modalities = self.modality_embeddings()
        seq_output, penalty = self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], item_modalities,
            self.interaction_seq(interaction),
        )
        logits = self._all_item_logits(seq_output, item_modalities)
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID]) + self.gamma * penalty

    def predict(self, interaction):
        seq_output, _ = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                     interaction_seq=self.interaction_seq(interaction))
        items = interaction[self.ITEM_ID]
        text, vision = self.modality_embeddings(items)

        def cosine(embeddings):
            return (seq_output * F.normalize(embeddings, dim=1)).sum(1)

        id_logits = cosine(self.item_embedding(items)) if self.use_item_id else None
        return self.fused_logits(cosine(text), cosine(vision), id_logits)

    def full_sort_predict(self, interaction):
        item_modalities = self.modality_embeddings()
        seq_output, _ = self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], item_modalities,
            self.interaction_seq(interaction),
        )
        return self._all_item_logits(seq_output, item_modalities)
