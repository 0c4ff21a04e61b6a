"""Parity of UniSRec with the authors' code (RUCAIBox/UniSRec ``unisrec.py``, ``data/transform.py``).

``official_*`` restate the reference's computation from its equations on our model's parameters:
the parametric-whitening experts ``(x - b) W``, the noisy softmax gate, the SASRec encoder over
adapted text (+ ID) and positions (RecBole's own ``TransformerEncoder``, the module the reference
inherits), the fine-tuning cross-entropy over cosine logits / temperature, and the pre-training
losses ``L_SI + lambda * L_SS`` with the reference's treatment of in-batch rows sharing a next item.
float64, random weights, dropout 0; the gate noise comes from the same seeded draws on both sides.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import build_pipeline, first_batch
from recbole_reveal.model.sequential_recommender.unisrec import item_drop


def build(config_dict, **overrides):
    settings = dict(config_dict, hidden_dropout_prob=0.0, attn_dropout_prob=0.0, adaptor_dropout_prob=0.0,
                    n_exps=3, **overrides)
    config, (train_data, _, _), model, _ = build_pipeline("UniSRec", settings)
    model.double().train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return config, model, first_batch(train_data)


def official_moe(model, x):
    """MoEAdaptorLayer.forward: gates first (noise while training), then the experts."""
    moe = model.moe_adaptor
    logits = x @ moe.w_gate
    if model.training:
        logits = logits + torch.randn_like(logits) * (F.softplus(x @ moe.w_noise) + 1e-2)
    gates = F.softmax(logits, dim=-1)
    experts = torch.stack([(x - e.bias) @ e.lin.weight.T for e in moe.experts], dim=-2)
    return (gates.unsqueeze(-1) * experts).sum(-2)


def official_forward(model, item_seq, item_emb, item_seq_len, transductive):
    positions = model.position_embedding.weight[torch.arange(item_seq.size(1))]
    input_emb = item_emb + positions
    if transductive:
        input_emb = input_emb + model.item_embedding.weight[item_seq]
    input_emb = F.layer_norm(input_emb, input_emb.shape[-1:], model.LayerNorm.weight, model.LayerNorm.bias,
                             model.LayerNorm.eps)
    output = model.trm_encoder(input_emb, model.get_attention_mask(item_seq), output_all_encoded_layers=True)[-1]
    return output[torch.arange(len(item_seq)), item_seq_len - 1]


def official_finetune(model, config, batch, transductive):
    """(calculate_loss, full_sort_predict) of the reference for the fine-tuning stages."""
    plm = model.plm_embedding.weight
    item_seq, item_seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    seq_output = official_forward(model, item_seq, official_moe(model, plm[item_seq]), item_seq_len, transductive)
    items = official_moe(model, plm)
    if transductive:
        items = items + model.item_embedding.weight
    scores = F.normalize(seq_output, dim=1) @ F.normalize(items, dim=1).T
    return F.cross_entropy(scores / config["temperature"], batch[model.POS_ITEM_ID]), scores


def official_contrast(anchors, positives, same_pos_id, temperature):
    pos = torch.exp((anchors * positives).sum(1) / temperature)
    neg = anchors @ positives.T / temperature
    neg = torch.where(same_pos_id, torch.zeros((), dtype=neg.dtype), neg)
    return -torch.log(pos / torch.exp(neg).sum(1)).mean()


def official_pretrain(model, config, batch, aug_seq, aug_len):
    plm = model.plm_embedding.weight
    item_seq, item_seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    seq_output = F.normalize(official_forward(model, item_seq, official_moe(model, plm[item_seq]), item_seq_len,
                                              False), dim=1)
    pos_id = batch[model.POS_ITEM_ID]
    same_pos_id = torch.logical_xor(pos_id.unsqueeze(1) == pos_id.unsqueeze(0), torch.eye(len(pos_id), dtype=torch.bool))
    pos_items = F.normalize(official_moe(model, plm[pos_id]), dim=1)
    loss_si = official_contrast(seq_output, pos_items, same_pos_id, config["temperature"])
    aug_output = F.normalize(official_forward(model, aug_seq, official_moe(model, plm[aug_seq]), aug_len, False), dim=1)
    loss_ss = official_contrast(seq_output, aug_output, same_pos_id, config["temperature"])
    return loss_si + config["lambda"] * loss_ss


@pytest.mark.parametrize("stage", ["transductive_ft", "inductive_ft"])
def test_finetuning_computes_the_reference_unisrec(tiny_config, stage):
    config, model, batch = build(tiny_config, train_stage=stage)
    torch.manual_seed(5)
    with torch.no_grad():
        loss = model.calculate_loss(batch)
    torch.manual_seed(5)
    expected_loss, _ = official_finetune(model, config, batch, stage == "transductive_ft")
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        _, expected_scores = official_finetune(model, config, batch, stage == "transductive_ft")
    # the reference ranks by the cosines; ours are the same cosines over the temperature
    torch.testing.assert_close(scores * config["temperature"], expected_scores, rtol=1e-6, atol=1e-6)
    assert (model.item_embedding is None) == (stage == "inductive_ft")


def test_pretraining_in_reference_mode_computes_the_reference_losses(tiny_config):
    config, model, batch = build(tiny_config, train_stage="pretrain", reference_mode=True)
    model.eval()    # no gate noise: the three adaptor calls need no shared draws
    target = batch[model.POS_ITEM_ID]
    assert (target.unsqueeze(0) == target.unsqueeze(1)).sum() > len(target), "the batch must repeat next items"
    keep = torch.bernoulli(torch.full(batch[model.ITEM_SEQ].shape, 0.7, dtype=torch.double),
                           generator=torch.Generator().manual_seed(1)).bool()
    aug_seq, aug_len = item_drop(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], keep)
    with torch.no_grad():
        augmented = (aug_seq, aug_len, model.adapted(model.plm_embedding(aug_seq)))
        loss = model.pretrain_loss(batch, augmented)
        expected = official_pretrain(model, config, batch, aug_seq, aug_len)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    # the default leaves rows sharing a next item out of each other's negatives: another loss
    model.duplicate_targets = "exclude"
    with torch.no_grad():
        assert abs(model.pretrain_loss(batch, augmented).item() - expected.item()) > 1e-4


def test_item_drop_keeps_the_kept_items_in_order():
    item_seq = torch.tensor([[5, 6, 7, 8, 0, 0], [1, 2, 3, 4, 5, 6], [9, 0, 0, 0, 0, 0]])
    keep = torch.tensor([[False, True, False, True, True, True], [True, False, False, True, True, False],
                         [False, True, True, True, True, True]])
    dropped, lengths = item_drop(item_seq, torch.tensor([4, 6, 1]), keep)
    # the first item is always kept (the reference's mask[:, 0] = True)
    assert dropped.tolist() == [[5, 6, 8, 0, 0, 0], [1, 4, 5, 0, 0, 0], [9, 0, 0, 0, 0, 0]]
    assert lengths.tolist() == [3, 3, 1]
