"""
MMGRU4Rec (an example of your own backbone, outside the plugin)
################################################

A GRU4Rec-style multimodal sequential recommender, written to show the REVEAL backbone contract on a
model that lives in your own file (docs/design.md, "The backbone contract"):

    python run_recbole_reveal.py --model=examples/custom_backbone/mmgru4rec.py:MMGRU4Rec_REVEAL \
        --dataset=synthetic-demo

``MMGRU4Rec.yaml`` beside this file holds its settings (read like the plugin's own model YAMLs);
``MMGRU4Rec_REVEAL`` gets ``properties/model/REVEAL.yaml`` on top, through the REVEAL mix-in.

Reference:
    Balazs Hidasi et al. "Session-based Recommendations with Recurrent Neural Networks" in ICLR 2016
    (the GRU encoder); the item representation adds projected text and image features to the ID
    embedding, as the multimodal backbones of the REVEAL paper do.
"""

import torch
from recbole.utils import InputType
from torch import nn

from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.model.reveal import REVEAL


class MMGRU4Rec(MultimodalSequentialRecommender):
    r"""An item is ``id embedding + W_t text + W_v image``; a GRU reads the history of such items and
    its last state scores every item by a dot product. Cross-entropy over all items.

    REVEAL contract: each projected modality passes through :meth:`mask_modality`, and the vision
    parameters are the image projection (``vision_modules``). The frozen feature tables are rebuilt
    from each FVE cycle's features (``vision_feature_tables``). History positions read their
    interaction's visual features through :meth:`history_vision_features` (FVE's interaction scope).
    """

    input_type = InputType.POINTWISE
    vision_modules = ("vision_projection",)
    vision_feature_tables = ("vision_table",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.dropout_prob = config["dropout_prob"]

        # define layers and loss
        text = self.item_feature_table(dataset, "text")
        vision = self.item_feature_table(dataset, "vision")
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.text_projection = nn.Linear(text.shape[1], self.hidden_size)
        self.vision_projection = nn.Linear(vision.shape[1], self.hidden_size)
        self.dropout = nn.Dropout(self.dropout_prob)
        self.gru = nn.GRU(self.hidden_size, self.hidden_size, batch_first=True)
        self.loss_fct = nn.CrossEntropyLoss()

        # parameters initialization
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        # copies: the dataset's matrices stay untouched
        self.text_table = nn.Embedding.from_pretrained(text.clone(), freeze=True, padding_idx=0)
        self.vision_table = nn.Embedding.from_pretrained(vision.clone(), freeze=True, padding_idx=0)

    def item_representation(self, items, interaction_seq=None):
        """``[..., hidden]`` representations of the item ids ``items``, modalities masked as asked;
        ``interaction_seq``: the interactions of history positions ``items``, or None."""
        text = self.mask_modality("text", self.text_projection(self.text_table(items)))
        vision = self.history_vision_features(items, interaction_seq, self.vision_table(items))
        vision = self.mask_modality("vision", self.vision_projection(vision))
        return self.item_embedding(items) + text + vision

    def all_item_representations(self):
        return self.item_representation(torch.arange(self.n_items, device=self.item_embedding.weight.device))

    def forward(self, item_seq, item_seq_len, interaction_seq=None):
        inputs = self.dropout(self.item_representation(item_seq, interaction_seq))
        output, _ = self.gru(inputs)
        return self.gather_indexes(output, item_seq_len - 1)

    def calculate_loss(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                  self.interaction_seq(interaction))
        logits = seq_output @ self.all_item_representations().t()
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                  self.interaction_seq(interaction))
        items = self.item_representation(interaction[self.ITEM_ID])
        return (seq_output * items).sum(dim=-1)

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                  self.interaction_seq(interaction))
        return seq_output @ self.all_item_representations().t()


class MMGRU4Rec_REVEAL(REVEAL, MMGRU4Rec):
    r"""MMGRU4Rec trained with REVEAL (AVL on ``vision_modules``; FVE with ``--vlm_path``)."""
