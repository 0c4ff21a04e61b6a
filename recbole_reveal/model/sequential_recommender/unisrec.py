"""
UniSRec
################################################

Reference:
    Yupeng Hou et al. "Towards Universal Sequence Representation Learning for Recommender Systems" in
    KDD 2022.

Reference code:
    https://github.com/RUCAIBox/UniSRec (unisrec.py, data/transform.py, finetune.py; built on RecBole's SASRec)

Item texts (the configured ``text_feature`` set, frozen) pass through a mixture of parametric-whitening
experts (the MoE adaptor); a SASRec Transformer encodes the adapted history. ``train_stage`` picks the
setting: ``transductive_ft`` (text + item ID, the reference default), ``inductive_ft`` (text only), or
``pretrain`` (the sequence-item and sequence-sequence contrastive losses, on one dataset or on several
merged by ``python -m recbole_reveal.commands.merge_datasets``). A fine-tuning run starts from a pre-trained model
with ``pretrained_file`` (its Transformer and position embeddings frozen, as the reference's
``fix_enc``) or from scratch. Differences from the reference code: docs/models/baselines.md, UniSRec.
"""

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.utils import InputType
from torch import nn

from recbole_reveal.adaptation import compat
from recbole_reveal.infra.errors import ConfigError
from recbole_reveal.model.abstract_recommender import MultimodalSequentialRecommender
from recbole_reveal.model.reference_mode import reference_switch
from recbole_reveal.model.unisrec_layers import MoEAdaptor

TRAIN_STAGES = ("transductive_ft", "inductive_ft", "pretrain")
DUPLICATE_TARGETS = ("exclude", "reference")


class UniSRec(MultimodalSequentialRecommender, SASRec):
    r"""UniSRec learns sequence representations from item texts.

    An item is ``MoE(t_i)``, its frozen text embedding through the MoE adaptor (plus its ID embedding
    in the transductive setting); histories are encoded by SASRec's Transformer with position
    embeddings. Sequence and item vectors are L2-normalised; logits are their cosines divided by
    ``temperature``.

    Fine-tuning: cross-entropy over all items. Pre-training: ``L_SI + lambda * L_SS`` with in-batch
    negatives — ``L_SI`` contrasts a sequence with the next items of the batch, ``L_SS`` with the
    batch's augmented sequences (item drop, or word drop when ``text_feature_aug`` names a second text
    feature set); batch rows with the same next item are no negatives of each other.
    """

    input_type = InputType.POINTWISE
    vision_modules = ()

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.train_stage = config["train_stage"]
        if self.train_stage not in TRAIN_STAGES:
            raise ConfigError(f"config key 'train_stage' must be one of {list(TRAIN_STAGES)}, got {self.train_stage!r}")
        if self.loss_type != "CE" or (config["train_neg_sample_args"] or {}).get("distribution", "none") != "none":
            raise ConfigError("UniSRec trains with cross-entropy over all items: set loss_type: CE and "
                              "train_neg_sample_args: ~")
        self.temperature = config["temperature"]
        self.lam = config["lambda"]
        self.item_drop_ratio = config["item_drop_ratio"]
        self.item_drop_coefficient = config["item_drop_coefficient"]
        self.duplicate_targets = reference_switch(config, "duplicate_targets", "exclude", "reference",
                                                  DUPLICATE_TARGETS)

        # define layers: SASRec's encoder, position embeddings, LayerNorm and dropout are inherited
        if self.train_stage != "transductive_ft":
            self.item_embedding = None
        text = self.item_feature_table(dataset, "text")
        self.plm_embedding = nn.Embedding.from_pretrained(text.clone(), freeze=True, padding_idx=0)
        self.plm_embedding_aug = None
        if self.train_stage == "pretrain" and config["text_feature_aug"]:
            aug = dataset.load_feature_set(config["text_feature_aug"], text.shape[1], label="word-drop text features")
            self.plm_embedding_aug = nn.Embedding.from_pretrained(aug, freeze=True, padding_idx=0)
        elif self.train_stage == "pretrain":
            self.logger.info("UniSRec pre-training without text_feature_aug: every batch is augmented by item drop")
        # created after SASRec's initialisation, as in the reference: the adaptor keeps its own
        self.moe_adaptor = MoEAdaptor(config["n_exps"], text.shape[1], self.hidden_size,
                                      config["adaptor_dropout_prob"])
        if config["pretrained_file"]:
            self.load_pretrained(config["pretrained_file"], config["fix_encoder"])

    def load_pretrained(self, path, fix_encoder):
        """Parameters of a pre-trained UniSRec (a RecBole checkpoint or a state dict): the adaptor, the
        Transformer, position embeddings and LayerNorm; not the dataset's own item tables."""
        checkpoint = compat.load_checkpoint(path, map_location="cpu")
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        own = self.state_dict()
        transferred = {k: v for k, v in (state or {}).items()
                       if k in own and not k.startswith(("plm_embedding", "item_embedding")) and v.shape == own[k].shape}
        if not all(k in transferred for k in own if k.startswith("moe_adaptor.")):
            raise ConfigError(f"config key 'pretrained_file': {path} holds no UniSRec adaptor of this size "
                              f"(moe_adaptor.* with text dim {self.plm_embedding.embedding_dim}, hidden_size "
                              f"{self.hidden_size}); pre-train with train_stage: pretrain and the same sizes")
        self.load_state_dict(transferred, strict=False)
        self.logger.info(f"UniSRec: {len(transferred)} tensors loaded from {path}")
        if fix_encoder:
            for param in (*self.position_embedding.parameters(), *self.trm_encoder.parameters()):
                param.requires_grad_(False)

    # -- representations ----------------------------------------------------------------------
    def adapted(self, plm_vectors):
        """MoE-adapted text vectors (the text modality after its projection)."""
        return self.mask_modality("text", self.moe_adaptor(plm_vectors))

    def forward(self, item_seq, item_seq_len, item_emb):
        """Sequence vector (not normalised) of histories whose adapted item vectors are ``item_emb``."""
        positions = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        input_emb = item_emb + self.position_embedding(positions).unsqueeze(0)
        if self.item_embedding is not None:
            input_emb = input_emb + self.item_embedding(item_seq)
        input_emb = self.dropout(self.LayerNorm(input_emb))
        output = self.trm_encoder(input_emb, self.get_attention_mask(item_seq), output_all_encoded_layers=True)[-1]
        return self.gather_indexes(output, item_seq_len - 1)

    def sequence_vector(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        seq_output = self.forward(item_seq, interaction[self.ITEM_SEQ_LEN], self.adapted(self.plm_embedding(item_seq)))
        return F.normalize(seq_output, dim=-1)

    def item_vectors(self):
        """Normalised vectors of all items: adapted text (+ ID embedding in the transductive setting)."""
        items = self.adapted(self.plm_embedding.weight)
        if self.item_embedding is not None:
            items = items + self.item_embedding.weight
        return F.normalize(items, dim=-1)

    # -- pre-training -----------------------------------------------------------------------------
    def in_batch_contrast(self, anchors, positives, same_target):
        """Mean InfoNCE of ``anchors[b]`` against ``positives`` (row ``b`` positive, the others negative;
        ``same_target`` marks pairs that are no negatives: left out, or, with ``duplicate_targets:
        reference``, given logit 0, i.e. a 1 added to the denominator, as the reference code does)."""
        logits = anchors @ positives.T / self.temperature
        fill = 0.0 if self.duplicate_targets == "reference" else float("-inf")
        logits = logits.masked_fill(same_target, fill)
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))

    def augment(self, item_seq, item_seq_len):
        """The reference's augmentation: with probability ``item_drop_coefficient`` drop each item with
        probability ``item_drop_ratio`` (the first kept); otherwise (word drop) replace each item's text
        vector, with that probability, by its ``text_feature_aug`` vector. Without that feature set every
        batch takes item drop. Returns the augmented ``(item_seq, item_seq_len, adapted item vectors)``."""
        keep = torch.bernoulli(torch.full_like(item_seq, 1 - self.item_drop_ratio, dtype=torch.float)).bool()
        if self.plm_embedding_aug is None or torch.rand(()) < self.item_drop_coefficient:
            aug_seq, aug_len = item_drop(item_seq, item_seq_len, keep)
            return aug_seq, aug_len, self.adapted(self.plm_embedding(aug_seq))
        vectors = torch.where(keep.unsqueeze(-1), self.plm_embedding(item_seq), self.plm_embedding_aug(item_seq))
        return item_seq, item_seq_len, self.adapted(vectors)

    def pretrain_loss(self, interaction, augmented=None):
        """``L_SI + lambda * L_SS`` (paper eqs. 7-9). ``augmented``: the batch's augmentation, drawn by
        :meth:`augment` when None."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        seq_output = self.sequence_vector(interaction)
        target = interaction[self.POS_ITEM_ID]
        same_target = (target.unsqueeze(1) == target.unsqueeze(0)).fill_diagonal_(False)
        next_items = F.normalize(self.adapted(self.plm_embedding(target)), dim=-1)
        loss_seq_item = self.in_batch_contrast(seq_output, next_items, same_target)
        aug_seq, aug_len, aug_emb = augmented or self.augment(item_seq, item_seq_len)
        seq_output_aug = F.normalize(self.forward(aug_seq, aug_len, aug_emb), dim=-1)
        loss_seq_seq = self.in_batch_contrast(seq_output, seq_output_aug, same_target)
        return loss_seq_item + self.lam * loss_seq_seq

    # -- RecBole interface ------------------------------------------------------------------------
    def calculate_loss(self, interaction):
        if self.train_stage == "pretrain":
            return self.pretrain_loss(interaction)
        seq_output = self.sequence_vector(interaction)
        logits = seq_output @ self.item_vectors().T / self.temperature
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        items = interaction[self.ITEM_ID]
        item_emb = self.adapted(self.plm_embedding(items))
        if self.item_embedding is not None:
            item_emb = item_emb + self.item_embedding(items)
        return (self.sequence_vector(interaction) * F.normalize(item_emb, dim=-1)).sum(-1) / self.temperature

    def full_sort_predict(self, interaction):
        return self.sequence_vector(interaction) @ self.item_vectors().T / self.temperature


def item_drop(item_seq, item_seq_len, keep):
    """Histories with the items where ``keep`` is False removed (left-packed; the first item always
    kept), and their new lengths: the reference's item-drop augmentation for a given draw ``keep``."""
    keep = keep | (item_seq == 0)
    keep[:, 0] = True
    new_index = torch.cumsum(keep, dim=1) - 1
    dropped = torch.zeros_like(item_seq).scatter(1, new_index.masked_fill(~keep, item_seq.size(1) - 1),
                                                 item_seq * keep)
    lengths = new_index.gather(1, (item_seq_len - 1).unsqueeze(1)).squeeze(1) + 1
    return dropped, lengths
