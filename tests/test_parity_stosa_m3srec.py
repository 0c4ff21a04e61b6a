"""Parity of STOSA and M3SRec in reference mode with the authors' code, and that each switch matters.

The functions prefixed ``official_`` restate, from its equations, what the reference code computes:
zfan20/STOSA (``seqmodels.DistSAModel``, ``modules.DistSAEncoder``, ``trainers.bpr_optimization`` and
``dist_predict_full``) and the REVEAL authors' M3SRec (``M3SRec/M3SRec.py``'s
``add_position_{mean,cov}_embedding`` with its mixture of experts). They read our model's parameters
by name and import nothing from ``recbole_reveal.model``. Inputs are left-padded here, as the
reference's data loader pads them; bugs are restated as they are (the encoder's misspelt mean
variable, the fusion that reads sequence positions 0-3). Everything runs in float64 on tiny random
weights, so agreement to 1e-6 means the same function, not a lucky rounding.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import build_pipeline, first_batch

EPS = 1e-12  # the reference's LayerNorm epsilon (and our YAMLs')


# -- the reference code, restated ---------------------------------------------------------------------
def layer_norm(x, p, name):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return p[f"{name}.weight"] * (x - mean) / torch.sqrt(var + EPS) + p[f"{name}.bias"]


def linear(x, p, name, bias=True):
    out = x @ p[f"{name}.weight"].T
    return out + p[f"{name}.bias"] if bias else out


def elu_plus_one(x):
    return F.elu(x) + 1


def official_wasserstein(mean1, cov1, mean2, cov2):
    sqrt1, sqrt2 = torch.sqrt(torch.clamp(cov1, min=1e-24)), torch.sqrt(torch.clamp(cov2, min=1e-24))
    return ((mean1 - mean2) ** 2).sum(-1) + ((sqrt1 - sqrt2) ** 2).sum(-1)


def official_wasserstein_matmul(mean1, cov1, mean2, cov2):
    ret = -2 * mean1 @ mean2.transpose(-1, -2) + (mean1**2).sum(-1, keepdim=True) \
        + (mean2**2).sum(-1, keepdim=True).transpose(-1, -2)
    root1, root2 = torch.sqrt(torch.clamp(cov1, min=1e-24)), torch.sqrt(torch.clamp(cov2, min=1e-24))
    cov_ret = -2 * root1 @ root2.transpose(-1, -2) + cov1.sum(-1, keepdim=True) \
        + cov2.sum(-1, keepdim=True).transpose(-1, -2)
    return ret + cov_ret


def official_attention_mask(input_ids):
    keys = (input_ids > 0).long().unsqueeze(1).unsqueeze(2)
    length = input_ids.size(1)
    causal = (torch.triu(torch.ones(1, length, length), diagonal=1) == 0).unsqueeze(1).long()
    return (1.0 - (keys * causal).double()) * (-(2**32) + 1)


def official_dist_self_attention(p, name, mean, cov, mask, heads):
    """DistSelfAttention: separate query/key/value Linears per stream (ours are stacked in one qkv)."""
    def split(x):
        b, length, h = x.shape
        return x.view(b, length, heads, h // heads).permute(0, 2, 1, 3)

    wm, bm = p[f"{name}.mean_qkv.weight"].chunk(3, 0), p[f"{name}.mean_qkv.bias"].chunk(3, 0)
    wc, bc = p[f"{name}.cov_qkv.weight"].chunk(3, 0), p[f"{name}.cov_qkv.bias"].chunk(3, 0)
    mq, mk, mv = (split(mean @ w.T + b) for w, b in zip(wm, bm))
    cq, ck, cv = (split(F.elu(cov @ w.T + b) + 1) for w, b in zip(wc, bc))
    scores = -official_wasserstein_matmul(mq, cq, mk, ck) / (mean.size(-1) // heads) ** 0.5 + mask
    probs = torch.softmax(scores, dim=-1)
    mean_ctx = (probs @ mv).permute(0, 2, 1, 3).reshape(mean.shape)
    cov_ctx = ((probs**2) @ cv).permute(0, 2, 1, 3).reshape(cov.shape)
    # one LayerNorm for both streams
    mean_out = layer_norm(linear(mean_ctx, p, f"{name}.mean_dense") + mean, p, f"{name}.norm")
    cov_out = layer_norm(linear(cov_ctx, p, f"{name}.cov_dense") + cov, p, f"{name}.norm")
    return mean_out, cov_out


def official_intermediate(p, name, x):
    hidden = linear(F.elu(linear(x, p, f"{name}.net.0")), p, f"{name}.net.2")
    return layer_norm(hidden + x, p, f"{name}.norm")


def official_encoder(p, n_layers, mean, cov, mask, heads):
    """DistSAEncoder: ``maen_hidden_states, cov_hidden_states, _ = layer(mean_hidden_states, ...)``."""
    for i in range(n_layers):
        attended_mean, attended_cov = official_dist_self_attention(
            p, f"encoder.attention.{i}", mean, cov, mask, heads
        )
        maen = official_intermediate(p, f"encoder.mean_ffn.{i}", attended_mean)  # noqa: F841 (the misspelling)
        cov = elu_plus_one(official_intermediate(p, f"encoder.cov_ffn.{i}", attended_cov))
    return mean, cov


def official_experts(p, name, x, n_experts):
    """``nn.ModuleList([Expert(...)])`` stacked: Expert = fc1 -> GELU -> fc2 (ours hold them batched)."""
    outs = []
    for e in range(n_experts):
        fc1_w, fc1_b = p[f"{name}.experts.weight1"][e].T, p[f"{name}.experts.bias1"][e]
        fc2_w, fc2_b = p[f"{name}.experts.weight2"][e].T, p[f"{name}.experts.bias2"][e]
        outs.append(F.gelu(x @ fc1_w.T + fc1_b) @ fc2_w.T + fc2_b)
    return torch.stack(outs)  # [E, B, L, h]


def official_gate(p, name, x):
    """dnn*: Linear(no bias) -> GELU -> Linear(no bias) -> Softmax(dim=2)."""
    hidden = F.gelu(x @ p[f"{name}.gate.0.weight"].T)
    return torch.softmax(hidden @ p[f"{name}.gate.2.weight"].T, dim=2)


def official_fusion_term(p, stream, item, image, text, n_shared, n_specific):
    """The cross-modal term ``task_out`` of add_position_{mean,cov}_embedding, bug included."""
    f = f"{stream}_fusion"
    x = torch.cat([item, image, text], dim=-1)
    shared = torch.einsum("abcd,bca->bcd", official_experts(p, f"{f}.shared", x, n_shared),
                          official_gate(p, f"{f}.shared", x))
    gate_outs = []
    for group, own in (("id_experts", item), ("vision_experts", image), ("text_experts", text)):
        experts = official_experts(p, f"{f}.{group}", own + shared, n_specific)
        gate_outs.append(torch.einsum("abcd,bca->bcd", experts, official_gate(p, f"{f}.{group}", own)))
    g1, g2, g3 = gate_outs
    scores = torch.softmax(linear(torch.cat([g1, g2, g3, shared], dim=-1), p, "stream_attention.attention"), -1)
    task = g1[:, 0] * scores[:, 0] + g2[:, 0] * scores[:, 1] + g3[:, 0] * scores[:, 2] + shared[:, 0] * scores[:, 3]
    return task.unsqueeze(1).expand(-1, item.size(1), -1)


def official_sequence(p, config, input_ids, multimodal):
    """DistSAModel / M3SRec ``finetune`` in eval mode: the (mean, cov) at the last position."""
    positions = torch.arange(input_ids.size(1))
    streams = []
    for stream in ("mean", "cov"):
        item = p[f"item_{stream}_embedding.weight"][input_ids]
        if multimodal:
            image = linear(p[f"vision_{stream}_table.weight"][input_ids], p, f"vision_{stream}_proj")
            text = linear(p[f"text_{stream}_table.weight"][input_ids], p, f"text_{stream}_proj")
            task = official_fusion_term(p, stream, item, image, text,
                                        config["n_shared_experts"], config["n_specific_experts"])
            item = item + image + text + task
        streams.append(layer_norm(item + p[f"position_{stream}_embedding.weight"][positions], p, "embedding_norm"))
    mean, cov = F.elu(streams[0]), elu_plus_one(streams[1])
    mean, cov = official_encoder(p, config["n_layers"], mean, cov, official_attention_mask(input_ids), config["n_heads"])
    return mean[:, -1], cov[:, -1]


def official_item_gaussians(p, ids):
    """Candidates: the ID-only Gaussians (trainers.bpr_optimization, dist_predict_full)."""
    return p["item_mean_embedding.weight"][ids], elu_plus_one(p["item_cov_embedding.weight"][ids])


def official_bpr_loss(seq, pos, neg, pvn_weight):
    """bpr_optimization for one target per history (istarget = 1 at the last position only)."""
    pos_logits, neg_logits = official_wasserstein(*seq, *pos), official_wasserstein(*seq, *neg)
    pos_vs_neg = official_wasserstein(*pos, *neg)
    loss = (-torch.log(torch.sigmoid(neg_logits - pos_logits + 1e-24))).mean()
    return loss + pvn_weight * torch.clamp(pos_logits - pos_vs_neg, 0).mean()


def left_pad(item_seq, item_seq_len):
    """The reference data loader's layout: ``[0] * pad_len + items``."""
    rows = []
    for seq, n in zip(item_seq.tolist(), item_seq_len.tolist()):
        rows.append([0] * (len(seq) - n) + seq[:n])
    return torch.tensor(rows)


# -- fixtures --------------------------------------------------------------------------------------------
REFERENCE = {"reference_mode": True, "n_layers": 2}


def build(model_name, config_dict, **overrides):
    """A model in float64 with every parameter moved off its (structured) initialisation, and a batch
    whose histories have both lengths below 4 and the full length (positions 0-3 real items)."""
    # histories up to 6 items: the tiny data's training prefixes fill that length or stay below 4
    config_dict = dict(config_dict, MAX_ITEM_LIST_LENGTH=6, **overrides)
    config, (train_data, _, _), model, _ = build_pipeline(model_name, config_dict)
    model.double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    batch = first_batch(train_data)
    lengths = batch[model.ITEM_SEQ_LEN]
    assert lengths.min() < 4 and lengths.max() == batch[model.ITEM_SEQ].size(1)
    return config, model, batch


def official_scores_and_loss(config, model, batch, multimodal, negatives=None):
    p = {name: t.detach() for name, t in model.state_dict().items()}
    if multimodal and "stream_attention.attention.weight" not in p:
        # a model without the reference's attention layer (fusion_mix: per_item): compare with the
        # reference code at some attention weights
        h = config["hidden_size"]
        generator = torch.Generator().manual_seed(1)
        p["stream_attention.attention.weight"] = torch.randn(h, 4 * h, generator=generator, dtype=torch.float64)
        p["stream_attention.attention.bias"] = torch.randn(h, generator=generator, dtype=torch.float64)
    input_ids = left_pad(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    seq = official_sequence(p, config, input_ids, multimodal)
    everything = torch.arange(model.n_items)
    scores = -official_wasserstein_matmul(*seq, *official_item_gaussians(p, everything))
    loss = official_bpr_loss(seq, official_item_gaussians(p, batch[model.POS_ITEM_ID]),
                             official_item_gaussians(p, batch[model.NEG_ITEM_ID] if negatives is None else negatives),
                             config["pvn_weight"])
    return scores, loss


def ours(model, batch):
    """Our scores and loss, and the negatives the loss used (the sampler's, or the mask id in their place)."""
    drawn = []
    draw = model.negative_items
    model.negative_items = lambda interaction: drawn.append(draw(interaction)) or drawn[-1]
    torch.manual_seed(3)
    with torch.no_grad():
        return model.full_sort_predict(batch), model.calculate_loss(batch), drawn[0]


def assert_parity(model_name, config_dict, multimodal, **overrides):
    config, model, batch = build(model_name, config_dict, **overrides)
    scores, loss, negatives = ours(model, batch)
    expected_scores, expected_loss = official_scores_and_loss(config, model, batch, multimodal, negatives)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    return model, negatives


def max_difference(model_name, config_dict, multimodal, **overrides):
    config, model, batch = build(model_name, config_dict, **overrides)
    scores, _, negatives = ours(model, batch)
    expected_scores, _ = official_scores_and_loss(config, model, batch, multimodal, negatives)
    return (scores - expected_scores).abs().max().item()


# -- tests -----------------------------------------------------------------------------------------------
def test_stosa_reference_mode_computes_the_reference_stosa(tiny_config):
    assert_parity("STOSA", tiny_config, multimodal=False, **REFERENCE)


def test_m3srec_reference_mode_computes_the_reference_m3srec(tiny_config):
    model, negatives = assert_parity("M3SRec", tiny_config, multimodal=True, **REFERENCE)
    assert (negatives == model.n_items).any(), "the comparison must cover a mask-id negative"


def test_m3srec_reference_negatives_can_be_the_mask_id(tiny_config):
    """The reference's negatives: ``randint(1, item_size - 1)`` (both ends included) outside the user's
    items, ``item_size = max_item + 2``: the items and the mask id ``max_item + 1``. Restated with the
    target as the only excluded item (what RecBole's sampler excludes): each of the ``item_size - 2``
    candidates, the mask id among them, has probability ``1 / (item_size - 2)``."""
    from recbole.data.interaction import Interaction

    _, model, batch = build("M3SRec", tiny_config, **REFERENCE)
    max_item = model.n_items - 1                     # RecBole's item ids: 1 .. n_items - 1
    item_size = max_item + 2
    mask_id = item_size - 1
    assert model.item_mean_embedding.num_embeddings == model.item_cov_embedding.num_embeddings == item_size
    sampled = batch[model.NEG_ITEM_ID].repeat(4000)
    torch.manual_seed(0)
    negatives = model.negative_items(Interaction({model.NEG_ITEM_ID: sampled}))
    is_mask = negatives == mask_id
    n, p = len(sampled), 1 / (item_size - 2)
    assert abs(is_mask.sum().item() - n * p) < 5 * (n * p * (1 - p)) ** 0.5
    assert torch.equal(negatives[~is_mask], sampled[~is_mask])       # the other draws stay the sampler's
    assert model.full_sort_predict(batch).shape[1] == model.n_items   # the mask id is never ranked
    _, default, _ = build("M3SRec", tiny_config)
    assert default.item_mean_embedding.num_embeddings == model.n_items
    assert torch.equal(default.negative_items(Interaction({default.NEG_ITEM_ID: sampled})), sampled)


@pytest.mark.parametrize("model_name, switch, fixed", [
    ("STOSA", "mean_skips_layers", False),
    ("M3SRec", "mean_skips_layers", False),
    ("M3SRec", "fusion_mix", "per_item"),
])
def test_each_switch_is_needed_for_parity(tiny_config, model_name, switch, fixed):
    """Reference mode with one switch at its default value no longer computes the reference."""
    multimodal = model_name == "M3SRec"
    assert max_difference(model_name, tiny_config, multimodal, **REFERENCE, **{switch: fixed}) > 1e-3


def test_the_default_model_is_not_the_reference(tiny_config):
    assert max_difference("M3SRec", tiny_config, True, n_layers=2) > 1e-3


def _covariance_encoder_input(model, batch):
    """The covariance stream entering the encoder at real positions (train mode: dropout on)."""
    seen = []
    hook = model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        model.calculate_loss(batch)
    hook.remove()
    aligned = model.left_align(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    return seen[0][aligned > 0]


@pytest.mark.parametrize("twice, dropped", [(False, 0.5), (True, 0.75)])
def test_covariance_dropout_twice_drops_with_the_compound_rate(tiny_config, twice, dropped):
    """Dropout p = 0.5 once drops half of the covariance inputs, twice three quarters; a dropped
    entry enters the encoder as ELU(0) + 1 = 1 exactly."""
    _, model, batch = build("M3SRec", tiny_config, hidden_dropout_prob=0.5, covariance_dropout_twice=twice)
    covariance = _covariance_encoder_input(model, batch)
    share_dropped = (covariance == 1.0).double().mean().item()
    assert abs(share_dropped - dropped) < 0.05


def test_reference_mode_leaves_the_other_switches_settable(tiny_config):
    _, model, _ = build("M3SRec", tiny_config, reference_mode=True, mean_skips_layers=False)
    assert model.fusion_mix == "reference" and model.covariance_dropout_twice
    assert not model.encoder.mean_skips_layers
    _, default, _ = build("M3SRec", tiny_config)
    assert default.fusion_mix == "per_item" and not default.covariance_dropout_twice
    assert not default.encoder.mean_skips_layers and default.candidate_embedding == "id"
