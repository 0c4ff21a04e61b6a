"""Parity of MMSBR with the authors' code (Zhang-xiaokun/MMSBR ``MMSBR/model.py``: ``Beyond``,
``perform``, ``train_test``), and its inputs from the ``.item`` file.

``official_mmsbr`` restates the reference's ``forward`` / ``perform`` from its equations on our model's
parameters: feature tokens (two tanh layers), the hierarchical pivot transformer (text layer, then
image layer per level; pivots averaged with their update, tokens residual; one LayerNorm per layer
used after both residual sums), the item MLP, the soft-attention interest readout, the price branch
(LayerNorm'd price + category embeddings, one Wasserstein self-attention, the session Gaussian at the
last position), ``scores = y_int + y_int * W2``, cross-entropy over the real items, and the
pseudo-modality contrastive loss with ``exp`` / ``topk`` / ``log10``. float64, random weights,
dropout 0, train mode.
"""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import build_pipeline, first_batch, write_tiny_dataset
from recbole_reveal.data.feature_store import save_item_features


@pytest.fixture(scope="module")
def priced_root(tmp_path_factory):
    """The tiny dataset with an .item file (prices in two categories, one item unpriced) and pseudo-modality
    feature sets."""
    root = str(tmp_path_factory.mktemp("priced"))
    folder, tokens, text, vision = write_tiny_dataset(root, name="priced")
    rng = np.random.default_rng(3)
    with open(os.path.join(folder, "priced.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tprice:float\tcategories:token_seq\n")
        for k, token in enumerate(tokens):
            price = "" if k == 7 else f"{rng.uniform(1, 50):.2f}"
            f.write(f"{token}\t{price}\tShop {'Bags' if k % 2 else 'Shoes'}\n")
    features = os.path.join(folder, "features")
    save_item_features(features, "pseudo_text", tokens, (text + rng.normal(size=text.shape)).astype(np.float32))
    save_item_features(features, "pseudo_vision", tokens, (vision + rng.normal(size=vision.shape)).astype(np.float32))
    return root


def build(root, tmp_path, **overrides):
    settings = dict(data_path=root, checkpoint_dir=str(tmp_path / "saved"), hidden_size=16, n_heads=2, n_layers=4,
                    MAX_ITEM_LIST_LENGTH=8, train_batch_size=32, token_dropout_prob=0.0, hidden_dropout_prob=0.0,
                    pseudo_text_feature="pseudo_text", pseudo_vision_feature="pseudo_vision", num_negatives=10,
                    contrastive_weight=0.5, price_levels=5, **overrides)
    config, (train_data, _, _), model, _ = build_pipeline("MMSBR", settings, dataset="priced")
    model.double().train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "table" not in name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    model.features = train_data.dataset.item_features     # the loaded feature sets, for the checks below
    return config, model, first_batch(train_data)


def linear(x, layer):
    return F.linear(x, layer.weight, layer.bias)


def official_transformer_layer(layer, x, n_heads):
    norm = lambda t: F.layer_norm(t, t.shape[-1:], layer.layer_norm.weight, layer.layer_norm.bias, 1e-5)  # noqa: E731
    query, key, value = linear(x, layer.query), linear(x, layer.key), linear(x, layer.value)
    queries, keys, values = (torch.stack(t.chunk(n_heads, -1), 0) for t in (query, key, value))
    dots = queries @ keys.permute(0, 1, 3, 2) / math.sqrt(x.shape[-1] // n_heads)
    outputs = F.softmax(dots, dim=2) @ values
    outputs = torch.cat([outputs[i] for i in range(n_heads)], dim=-1) @ layer.output.weight.T
    x = norm(x + outputs)
    return norm(x + layer.ffn[2](F.relu(layer.ffn[0](x))))


def official_items(model, n_heads):
    image, text = model.vision_table.weight[1:], model.text_table.weight[1:]
    tokens = lambda tok, x: torch.tanh(linear(torch.tanh(linear(x, tok.layers[0])), tok.layers[1]))  # noqa: E731
    img_seq = torch.stack([tokens(t, image) for t in model.vision_tokenizers], 1)
    text_seq = torch.stack([tokens(t, text) for t in model.text_tokenizers], 1)
    stars = [model.pivots[k, 1:] for k in range(4)]
    for text_layer, image_layer in zip(model.text_layers, model.vision_layers):
        out = official_transformer_layer(text_layer, torch.cat([s.unsqueeze(1) for s in stars] + [text_seq], 1), n_heads)
        stars = [(out[:, k] + stars[k]) / 2 for k in range(4)]
        text_seq = out[:, 4:] + text_seq
        out = official_transformer_layer(image_layer, torch.cat([s.unsqueeze(1) for s in stars] + [img_seq], 1), n_heads)
        stars = [(out[:, k] + stars[k]) / 2 for k in range(4)]
        img_seq = out[:, 4:] + img_seq
    items = F.relu(linear(torch.cat(stars, 1), model.item_mlp[0]))
    return F.relu(linear(items, model.item_mlp[1]))


def wasserstein(mean1, cov1, mean2, cov2):
    ret = -2 * mean1 @ mean2.transpose(-1, -2) + (mean1 ** 2).sum(-1, keepdim=True) \
        + (mean2 ** 2).sum(-1, keepdim=True).transpose(-1, -2)
    return ret - 2 * cov1.clamp(min=1e-24).sqrt() @ cov2.clamp(min=1e-24).sqrt().transpose(-1, -2) \
        + cov1.sum(-1, keepdim=True) + cov2.sum(-1, keepdim=True).transpose(-1, -2)


def official_price(model, item_seq, n_heads):
    ln = lambda t: F.layer_norm(t, t.shape[-1:], model.norm.weight, model.norm.bias, 1e-12)  # noqa: E731
    att = model.price_attention
    levels, cates = model.item_price_level, model.item_category
    seq_pri_mean, seq_pri_cov = model.price_mean.weight[levels[item_seq]], model.price_cov.weight[levels[item_seq]]
    seq_cate = model.category_embedding.weight[cates[item_seq]]
    mean_emb = ln(seq_pri_mean) + ln(seq_cate)
    cov_emb = F.elu(ln(seq_pri_cov) + ln(seq_cate)) + 1
    mask = (item_seq > 0).double()
    heads = lambda t: t.view(*t.shape[:2], n_heads, -1).permute(0, 2, 1, 3)  # noqa: E731
    mq, mk, mv = (heads(linear(mean_emb, f)) for f in att.mean_qkv)
    cq, ck, cv = (heads(F.elu(linear(cov_emb, f)) + 1) for f in att.cov_qkv)
    scores = -wasserstein(mq, cq, mk, ck) / math.sqrt(mq.shape[-1]) + (1.0 - mask[:, None, None, :]) * -10000.0
    probs = F.softmax(scores, dim=-1)
    mean_ctx = (probs @ mv).permute(0, 2, 1, 3).reshape(mean_emb.shape)
    cov_ctx = ((probs ** 2) @ cv).permute(0, 2, 1, 3).reshape(cov_emb.shape)
    mean_hidden = ln(linear(mean_ctx, att.mean_dense) + seq_pri_mean)
    cov_hidden = ln(linear(cov_ctx, att.cov_dense) + seq_pri_cov)
    last = (item_seq > 0).sum(1) - 1
    rows = torch.arange(len(item_seq))
    item_mean = model.price_mean.weight[levels[1:]] + model.category_embedding.weight[cates[1:]]
    item_cov = model.price_cov.weight[levels[1:]] + model.category_embedding.weight[cates[1:]]
    return wasserstein(mean_hidden[rows, last], F.elu(cov_hidden[rows, last]) + 1, item_mean, F.elu(item_cov) + 1)


def official_contrastive(image, text, image_gen, text_gen, num_neg):
    loss = 0.0
    for real, gen in ((image, image_gen), (text, text_gen)):
        mat = torch.exp(real @ gen.T)
        loss = loss + torch.log10(torch.topk(mat, k=num_neg, dim=1).values.sum(1)).sum() - torch.log10(mat.diag()).sum()
    return loss


def official_mmsbr(model, config, batch):
    """(loss, scores over the real items) of the reference."""
    item_seq, n_heads = batch[model.ITEM_SEQ], config["n_heads"]
    items = official_items(model, n_heads)
    padded = torch.cat([torch.zeros_like(items[:1]), items])
    seq_h = padded[item_seq]
    mask = (item_seq > 0).double().unsqueeze(-1)
    hs = seq_h.sum(1) / batch[model.ITEM_SEQ_LEN].double().unsqueeze(1)
    nh = torch.sigmoid(linear(seq_h, model.glu1) + F.linear(hs, model.glu2.weight).unsqueeze(1))
    interest = (linear(nh, model.w_2) * mask * seq_h).sum(1)
    scores_interest = interest @ items.T
    scores = scores_interest + scores_interest * official_price(model, item_seq, n_heads)
    con = official_contrastive(model.vision_table.weight[1:], model.text_table.weight[1:],
                               model.pseudo_vision_table.weight[1:], model.pseudo_text_table.weight[1:],
                               config["num_negatives"])
    loss = F.cross_entropy(scores + 1e-8, batch[model.POS_ITEM_ID] - 1) + config["contrastive_weight"] * con
    return loss, scores


def test_mmsbr_computes_the_reference_model(priced_root, tmp_path):
    config, model, batch = build(priced_root, tmp_path, reference_mode=True, feature_init="features",
                                 dropout_first_epoch_only=False)
    expected_loss, expected_scores = official_mmsbr(model, config, batch)
    with torch.no_grad():
        loss, scores = model.calculate_loss(batch), model.full_sort_predict(batch)
    torch.testing.assert_close(scores[:, 1:], expected_scores, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    # the default normalises the pivot attention over the keys: other scores
    for layer in (*model.text_layers, *model.vision_layers):
        layer.softmax_dim = -1
    with torch.no_grad():
        assert (model.full_sort_predict(batch)[:, 1:] - expected_scores).abs().max() > 1e-3


def test_prices_are_levels_within_the_category(priced_root, tmp_path):
    _, model, _ = build(priced_root, tmp_path)
    assert model.has_prices
    levels, categories = model.item_price_level, model.item_category
    assert levels[0] == 0 and categories[0] == 0
    assert set(levels[1:].tolist()) <= set(range(0, 6)) and (levels[1:] == 0).sum() == 1   # i7 has no price
    # in each category the cheapest item is level 1 and the dearest level price_levels
    for c in (1, 2):
        in_c = (categories == c) & (levels > 0)
        assert levels[in_c].min() == 1 and levels[in_c].max() == 5


def test_reference_switches(priced_root, tmp_path):
    _, model, _ = build(priced_root, tmp_path, reference_mode=True)
    _, default, _ = build(priced_root, tmp_path)
    # the reference's init overwrites the loaded features; the default keeps them
    text = default.features["text"].double()
    torch.testing.assert_close(default.text_table.weight, text)
    assert model.text_table.weight[1:].abs().max() <= 1 / math.sqrt(16) + 1e-12 < text.abs().max()
    # dropout only in the first epoch (the reference never returns to train mode after its first test)
    model.on_epoch_start(0)
    assert model.train().training
    model.on_epoch_start(1)
    assert not model.train().training
    default.on_epoch_start(1)
    assert default.train().training
