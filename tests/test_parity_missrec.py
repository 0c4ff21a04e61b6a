"""Parity of MISSRec in reference mode with the authors' code (gimpong/MM23-MISSRec ``missrec.py`` +
``model_utils.py``, the same files the REVEAL repository ships), fine-tuning with IDs, and that the
penalty switch matters.

``official_missrec`` restates ``_compute_seq_embeddings`` / ``forward`` / ``calculate_loss`` /
``full_sort_predict`` from their equations on our model's parameters and interest state (the k-means
result is state, not computed here): per-history ``unique()`` of the text and image interests,
``nn.Transformer``'s encoder over them, the interest regulariser as the reference pools it, the
decoder over text + image + position + ID, and the dynamic modality fusion of the logits. The
Transformer is torch's ``nn.Transformer``, as the reference builds it, holding our weights. float64,
tiny random weights, train mode with dropout 0 (the mode the reference computes its loss in).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import build_pipeline, first_batch


def linear(x, p, name):
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def transformer_like_reference(model, config):
    trm = nn.Transformer(
        d_model=config["hidden_size"], nhead=config["n_heads"], num_encoder_layers=config["n_layers"] // 2,
        num_decoder_layers=config["n_layers"] // 2, dim_feedforward=config["inner_size"],
        dropout=config["hidden_dropout_prob"], activation=config["hidden_act"],
        layer_norm_eps=config["layer_norm_eps"], batch_first=True, norm_first=False,
    ).double().train()
    trm.encoder.load_state_dict(model.interest_encoder.state_dict())
    trm.decoder.load_state_dict(model.item_decoder.state_dict())
    return trm


def official_missrec(model, config, p, item_seq, item_seq_len):
    """(normalised sequence output, interest_orthogonal_regularization, logits / temperature)."""
    text_emb = linear(p["text_table.weight"][item_seq], p, "text_adaptor")
    img_emb = linear(p["vision_table.weight"][item_seq], p, "vision_adaptor")
    all_interest_seq = torch.cat([model.text_interest_ids[item_seq], model.vision_interest_ids[item_seq]], dim=-1)
    unique_interest_seq = nn.utils.rnn.pad_sequence(
        [sample.unique() for sample in all_interest_seq], batch_first=True, padding_value=0
    )
    interest_emb = p["interest_embeddings"][unique_interest_seq]
    trm = transformer_like_reference(model, config)
    src_key_padding_mask = unique_interest_seq == 0
    positions = p["position_embedding.weight"][torch.arange(item_seq.size(1))]
    dec_input = text_emb + img_emb + positions + p["item_embedding.weight"][item_seq]
    dec_input = F.layer_norm(dec_input, dec_input.shape[-1:], p["LayerNorm.weight"], p["LayerNorm.bias"],
                             config["layer_norm_eps"])
    memory = trm.encoder(src=interest_emb, mask=None, src_key_padding_mask=src_key_padding_mask)
    weight = (~src_key_padding_mask).unsqueeze(-1).double().mean(1, keepdim=True)
    pooled = (memory * weight).sum(1)
    regularization = (pooled * pooled).sum() / pooled.shape[1]
    output = trm.decoder(dec_input, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=item_seq == 0,
                         memory_key_padding_mask=src_key_padding_mask)
    seq_output = F.normalize(output[torch.arange(len(item_seq)), item_seq_len - 1], dim=1)
    # _compute_dynamic_fused_logits, dynamic_shared, with IDs (transductive_ft)
    text_all = F.normalize(linear(p["text_table.weight"], p, "text_adaptor"), dim=1)
    img_all = F.normalize(linear(p["vision_table.weight"], p, "vision_adaptor"), dim=1)
    modality_logits = torch.stack([seq_output @ text_all.T, seq_output @ img_all.T], dim=-1)
    agg = (modality_logits * F.softmax(modality_logits * p["fusion_factor"].unsqueeze(-1), dim=-1)).sum(dim=-1)
    id_logits = seq_output @ F.normalize(p["item_embedding.weight"], dim=1).T
    logits = (id_logits + agg * 2) / 3 / config["temperature"]
    return seq_output, regularization, logits


def build(config_dict, max_length=6, **overrides):
    settings = dict(config_dict, hidden_dropout_prob=0.0, gamma=1.0, MAX_ITEM_LIST_LENGTH=max_length, **overrides)
    config, (train_data, _, _), model, _ = build_pipeline("MISSRec", settings)
    model.double().train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
        model.interest_embeddings[1:] += torch.randn(model.interest_embeddings[1:].shape, generator=generator,
                                                     dtype=torch.float64)
    return config, model, first_batch(train_data)


def official_loss_and_scores(config, model, batch):
    p = dict(model.state_dict())
    for name, param in model.named_parameters():
        p.setdefault(name, param)
    p = {name: t.detach() for name, t in p.items()}
    _, regularization, logits = official_missrec(model, config, p, batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    return F.cross_entropy(logits, batch[model.POS_ITEM_ID]) + config["gamma"] * regularization, logits


@pytest.mark.parametrize("max_length", [6, 12])
def test_reference_mode_computes_the_reference_missrec(tiny_config, max_length):
    """Length 6: some histories fill it (no padding interest); 12: every history has padding, so the
    reference's width counts one padding slot more than the most distinct interests."""
    config, model, batch = build(tiny_config, max_length, reference_mode=True)
    full = batch[model.ITEM_SEQ_LEN] == max_length
    assert full.any() == (max_length == 6) and not full.all()
    expected_loss, expected_scores = official_loss_and_scores(config, model, batch)
    with torch.no_grad():
        loss, scores = model.calculate_loss(batch), model.full_sort_predict(batch)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)


def test_penalty_pooling_switch_is_needed_for_parity(tiny_config):
    config, model, batch = build(tiny_config, reference_mode=True, interest_penalty_pooling="sum")
    expected_loss, _ = official_loss_and_scores(config, model, batch)
    with torch.no_grad():
        loss = model.calculate_loss(batch)
    assert abs(loss.item() - expected_loss.item()) > 1e-3
