"""Parity of HM4SR in reference mode with the authors' code (SStarCCat/HM4SR, ``recbole_model/HM4SR.py``,
the same file the REVEAL repository ships), and that each switch matters.

``official_forward`` and ``official_loss`` restate the reference's ``forward`` (embeddings, Align_MoE,
Temporal_MoE_C, per-stream LayerNorm + RecBole TransformerEncoder, scores) and ``calculate_loss``
(CE + IDCL + CP + PCL) from its equations, on our model's parameters read by name. The reference's
experts are ``Linear(3h, 3h)`` shared by the three streams; ours hold each stream's third separately,
so the restatement stacks them back. Sequence encoders are RecBole's ``TransformerEncoder``, which the
reference itself uses. float64, tiny random weights, raw Unix-second timestamps with varied gaps.
"""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.model.layers import TransformerEncoder

from recbole_reveal.infra.errors import ConfigError
from helpers import build_pipeline, first_batch, write_tiny_dataset

DATASET = "tinytime"


@pytest.fixture(scope="module")
def tinytime_root(tmp_path_factory):
    """The tiny dataset with Unix-second timestamps 1 minute to 30 days apart, and item categories."""
    root = str(tmp_path_factory.mktemp("atomic_hm4sr_parity"))
    folder, tokens, _, _ = write_tiny_dataset(root, name=DATASET)
    path = os.path.join(folder, f"{DATASET}.inter")
    with open(path, encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    rng = np.random.default_rng(1)
    clock, previous_user, lines = {}, None, [header]
    for row in rows:
        user, item, _ = row.split("\t")
        if user != previous_user:
            clock[user] = 1_500_000_000 + int(rng.integers(0, 10_000_000))
        clock[user] += int(rng.integers(60, 30 * 86400))
        previous_user = user
        lines.append(f"{user}\t{item}\t{clock[user]}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, f"{DATASET}.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tcategories:token_seq\n")
        for index, token in enumerate(tokens):
            f.write(f"{token}\ttop{index % 3} leaf{index % 5}\n")
    return root


@pytest.fixture
def parity_config(tinytime_root, tmp_path):
    return {
        "data_path": tinytime_root,
        "checkpoint_dir": str(tmp_path / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]},
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 2,
        "train_batch_size": 64,
        "MAX_ITEM_LIST_LENGTH": 8,
    }


# -- the reference code, restated ---------------------------------------------------------------------
def linear(x, p, name):
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def layer_norm(x, p, name, eps=1e-12):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], eps)


def recbole_attention_mask(item_seq):
    keys = (item_seq != 0).unsqueeze(1).unsqueeze(2)
    allowed = torch.tril(keys.expand((-1, -1, item_seq.size(-1), -1)))
    return torch.where(allowed, 0.0, -10000.0).double()


def encoder_like_reference(model, name, config):
    """``TransformerEncoder(...)`` as the reference builds it, holding our stream encoder's weights."""
    encoder = TransformerEncoder(
        n_layers=config["n_layers"], n_heads=config["n_heads"], hidden_size=config["hidden_size"],
        inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
        attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
        layer_norm_eps=config["layer_norm_eps"],
    ).double().eval()
    encoder.load_state_dict(getattr(model, name).state_dict())
    return encoder


def official_time_embedding(p, config, timestamp, n_buckets):
    """Temporal_MoE_C.get_time_embedding on raw timestamps."""
    h = config["hidden_size"]
    # freq_enhance_ab builds the frequencies in float32; with raw seconds (~1.5e9) the cosine's argument
    # is ~1e8 rad, so even their last float32 bit matters
    inv_freq = (1 / torch.pow(10000, torch.arange(0, h, 1.0, dtype=torch.float) / h)).view(1, -1).double()
    absolute = torch.cos(linear(timestamp.unsqueeze(2), p, "temporal_moe.absolute_proj") * inv_freq)
    interval = torch.log2(timestamp[:, 1:] - timestamp[:, :-1] + 1)
    index = torch.floor(config["interval_scale"] * interval)
    # after a history's end the reference takes log2 of a negative gap (NaN): undefined there, and only
    # the padding's own outputs (masked keys, never read) see it; any bucket does
    index = torch.nan_to_num(index, nan=0.0).long().clamp(0, n_buckets - 1)
    index = torch.cat([torch.zeros(timestamp.size(0), 1, dtype=torch.long), index], dim=-1)
    return torch.cat([p["temporal_moe.interval_embedding.weight"][index], absolute], dim=-1)


def official_forward(model, config, p, item_seq, item_seq_len, timestamp):
    h, streams = config["hidden_size"], ("id", "text", "vision")
    item = p["item_embedding.weight"][item_seq]
    txt = linear(p["text_table.weight"][item_seq], p, "text_proj")
    img = linear(p["vision_table.weight"][item_seq], p, "vision_proj")
    position = p["position_embedding.weight"][: item_seq.shape[1]]
    item, txt, img = item + position, txt + position, img + position
    # Align_MoE: experts Linear(3h, 3h); stream s reads its third of each expert's output
    vector = torch.cat([item, txt, img], dim=-1)
    n_experts = config["align_experts"]
    expert_output = []
    for e in range(n_experts):
        weight = torch.cat([p[f"align_moe.{s}_experts.experts.weight"][e * h:(e + 1) * h] for s in streams])
        bias = torch.cat([p[f"align_moe.{s}_experts.experts.bias"][e * h:(e + 1) * h] for s in streams])
        expert_output.append((vector @ weight.T + bias).unsqueeze(2))
    expert_output = torch.cat(expert_output, dim=2)
    aligned = []
    for i, (s, stream) in enumerate(zip(streams, (item, txt, img))):
        gate = torch.softmax(linear(vector[:, :, i * h:(i + 1) * h], p, f"align_moe.{s}_experts.gate"), dim=-1)
        weight = p[f"align_moe.{s}_experts.weight"]
        aligned.append(stream + weight * torch.sum(expert_output[:, :, :, i * h:(i + 1) * h] * gate.unsqueeze(3), dim=2))
    # Temporal_MoE_C: experts are [1, 3h] vectors scaling [id | text | image]
    time_embedding = official_time_embedding(p, config, timestamp, model.temporal_moe.n_buckets)
    route = torch.softmax(linear(time_embedding, p, "temporal_moe.gate"), dim=-1)
    vector = torch.cat(aligned, dim=-1)
    experts = [torch.cat([p[f"temporal_moe.{s}_experts.weight"][e] for s in streams]).view(1, -1)
               for e in range(config["temporal_experts"])]
    proba = torch.sum(torch.stack([vector * expert for expert in experts], dim=2) * route.unsqueeze(3), dim=2)
    item, txt, img = proba[:, :, :h], proba[:, :, h:2 * h], proba[:, :, 2 * h:]
    # LayerNorm + (eval) dropout + one encoder per stream, the last real position
    mask = recbole_attention_mask(item_seq)
    rows = torch.arange(item_seq.size(0))
    vectors = []
    for stream, norm, encoder in ((item, "id_norm", "id_encoder"), (txt, "text_norm", "text_encoder"),
                                  (img, "vision_norm", "vision_encoder")):
        out = encoder_like_reference(model, encoder, config)(layer_norm(stream, p, norm), mask)[-1]
        vectors.append(out[rows, item_seq_len - 1])
    item_full = p["item_embedding.weight"]
    txt_full = linear(p["text_table.weight"], p, "text_proj")
    img_full = linear(p["vision_table.weight"], p, "vision_proj")
    score = vectors[0] @ item_full.T + vectors[1] @ txt_full.T + vectors[2] @ img_full.T
    return (item, txt, img), vectors, score, time_embedding


def official_contrastive(seq_1, seq_2, targets, temperature):
    """IDCL / seq2seq_contrastive: same-target logits set to 0 (each still adds exp(0) to the denominator)."""
    same = torch.logical_xor(targets.unsqueeze(1) == targets.unsqueeze(0), torch.eye(len(targets), dtype=torch.bool))
    seq_1, seq_2 = F.normalize(seq_1, dim=1), F.normalize(seq_2, dim=1)
    pos = torch.exp((seq_1 * seq_2).sum(dim=1) / temperature)
    neg = torch.where(same, torch.tensor([0.0], dtype=torch.float64), seq_1 @ seq_2.T / temperature)
    return (-torch.log(pos / torch.exp(neg).sum(dim=1))).mean()


def official_loss(model, config, p, batch, chosen):
    item_seq, item_seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    timestamp, targets = batch["timestamp_list"].double(), batch[model.POS_ITEM_ID]
    streams, vectors, score, time_embedding = official_forward(model, config, p, item_seq, item_seq_len, timestamp)
    loss = F.cross_entropy(score, targets)
    idcl = official_contrastive(vectors[0], p["item_embedding.weight"][targets], targets, config["temperature"])
    # CP as HM4SR.py computes it: [B*L, C] scores and targets of the flattened history (padding included),
    # indexed with torch.where(input_idx != 0), the (row, position) pairs of the 2-D history
    items = item_seq.flatten()
    nonzero_idx = torch.where(item_seq != 0)
    features = torch.cat([p["item_embedding.weight"][items], linear(p["text_table.weight"][items], p, "text_proj"),
                          linear(p["vision_table.weight"][items], p, "vision_proj")], dim=-1)
    cp = F.binary_cross_entropy_with_logits(linear(features, p, "category_head")[nonzero_idx],
                                            model.item_categories[items].double()[nonzero_idx])
    # PCL at the positions the model drew
    placeholder = chosen.unsqueeze(2)
    mask, rows = recbole_attention_mask(item_seq), torch.arange(item_seq.size(0))
    losses = []
    for stream, vector, name, norm, encoder in ((streams[1], vectors[1], "text", "text_norm", "text_encoder"),
                                                (streams[2], vectors[2], "vision", "vision_norm", "vision_encoder")):
        augmented = stream.masked_fill(placeholder, 0.0) + \
            linear(time_embedding, p, f"{name}_placeholder").masked_fill(~placeholder, 0.0)
        out = encoder_like_reference(model, encoder, config)(layer_norm(augmented, p, norm), mask)[-1]
        losses.append(official_contrastive(vector, out[rows, item_seq_len - 1], targets,
                                           config["placeholder_temperature"]) * config["placeholder_weight"])
    return loss + idcl + cp + (losses[0] + losses[1]) / 2


# -- our model ---------------------------------------------------------------------------------------------
def build(config_dict, **overrides):
    config, (train_data, _, _), model, _ = build_pipeline("HM4SR", dict(config_dict, **overrides), dataset=DATASET)
    model.double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return config, model, first_batch(train_data)


def ours_with_drawn_positions(model, batch):
    """Our loss and scores, and the placeholder positions the model drew for the loss."""
    drawn = []
    draw = model.placeholder_positions
    model.placeholder_positions = lambda *args: drawn.append(draw(*args)) or drawn[-1]
    with torch.no_grad():
        loss, scores = model.calculate_loss(batch), model.full_sort_predict(batch)
    return loss, scores, drawn[0]


def official_loss_and_scores(config, model, batch, chosen):
    p = {name: t.detach() for name, t in model.state_dict().items()}
    for name, param in model.named_parameters():   # frozen tables are parameters, not always in the state dict
        p.setdefault(name, param.detach())
    _, _, scores, _ = official_forward(model, config, p, batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN],
                                       batch["timestamp_list"].double())
    return official_loss(model, config, p, batch, chosen), scores


def test_reference_mode_computes_the_reference_hm4sr(parity_config):
    config, model, batch = build(parity_config, reference_mode=True)
    assert config["time_unit"] == 1 and config["interval_scale"] == 100, "the reference's time units are the defaults"
    loss, scores, chosen = ours_with_drawn_positions(model, batch)
    assert chosen.any(), "some placeholders must be drawn for the comparison to cover them"
    expected_loss, expected_scores = official_loss_and_scores(config, model, batch, chosen)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)


def test_same_target_negatives_switch_is_needed_for_parity(parity_config):
    config, model, batch = build(parity_config, reference_mode=True, same_target_negatives="drop")
    targets = batch[model.POS_ITEM_ID]
    assert len(targets.unique()) < len(targets), "the batch must repeat a target for this test to mean anything"
    loss, _, chosen = ours_with_drawn_positions(model, batch)
    expected_loss, _ = official_loss_and_scores(config, model, batch, chosen)
    assert abs(loss.item() - expected_loss.item()) > 1e-3


def test_category_loss_indexing_switch_is_needed_for_parity(parity_config):
    """The per-item category loss (the default) is not what the reference computes."""
    config, model, batch = build(parity_config, reference_mode=True, category_loss_indexing="per_item")
    assert (batch[model.ITEM_SEQ] != 0).sum() > len(batch[model.ITEM_SEQ]), "histories of several items needed"
    loss, _, chosen = ours_with_drawn_positions(model, batch)
    expected_loss, _ = official_loss_and_scores(config, model, batch, chosen)
    assert abs(loss.item() - expected_loss.item()) > 1e-3


def test_reference_category_loss_is_refused_where_the_reference_cannot_run(parity_config, tmp_path):
    """3 categories: a training history of 4+ items makes the reference raise IndexError (it reads category
    column l for history position l); said before training. Histories cut to 3 items run."""
    import shutil

    shutil.copytree(os.path.join(parity_config["data_path"], DATASET), tmp_path / DATASET)
    item_file = tmp_path / DATASET / f"{DATASET}.item"
    rows = item_file.read_text(encoding="utf-8").splitlines()
    item_file.write_text("\n".join(rows[:1] + [r.split(" ")[0] for r in rows[1:]]) + "\n", encoding="utf-8")
    three = dict(parity_config, data_path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"category_loss_indexing: reference cannot run.*3 categories.*histories "
                                          r"of 8 items.*MAX_ITEM_LIST_LENGTH to at most 3"):
        build(three, reference_mode=True)
    config, model, batch = build(three, reference_mode=True, MAX_ITEM_LIST_LENGTH=3)
    loss, _, chosen = ours_with_drawn_positions(model, batch)
    torch.testing.assert_close(loss, official_loss_and_scores(config, model, batch, chosen)[0], rtol=1e-6, atol=1e-6)
    build(three, reference_mode=True, category_loss_indexing="per_item")


@pytest.mark.parametrize("reference_mode, trainable", [(False, True), (True, False)])
def test_temporal_experts_are_frozen_in_reference_mode_only(parity_config, reference_mode, trainable):
    """The reference's temporal experts are never registered: they keep their random values."""
    _, model, batch = build(parity_config, reference_mode=reference_mode)
    experts = [model.temporal_moe.id_experts.weight, model.temporal_moe.vision_experts.weight]
    assert all(e.requires_grad == trainable for e in experts)
    model.calculate_loss(batch).backward()
    assert all((e.grad is not None and e.grad.abs().sum() > 0) == trainable for e in experts)


def test_time_unit_changes_the_intervals_and_the_absolute_time(parity_config):
    _, seconds, batch = build(parity_config)
    _, days, _ = build(parity_config, time_unit=86400, interval_scale=1)
    with torch.no_grad():
        assert not torch.allclose(seconds.full_sort_predict(batch), days.full_sort_predict(batch))
    assert seconds.temporal_moe.n_buckets > 100 * days.temporal_moe.n_buckets
