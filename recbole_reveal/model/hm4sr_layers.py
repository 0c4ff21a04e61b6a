"""Layers of HM4SR (Zhang et al., WWW 2025): the alignment and the temporal mixtures of experts.

HM4SR runs three parallel streams per position (item ID, text, image). In the reference code each
mixture's experts act on the concatenation [id | text | image] and every stream reads its own third
of their output. Here each stream owns its third as separate parameters (same function, same
initial distribution), so that the image stream's experts and gates are modules of their own — the
vision parameters REVEAL rescales.
"""

import math

import torch
from torch import nn

STREAMS = ("id", "text", "vision")
# how the contrastive losses treat other batch rows with the same target item
SAME_TARGET_NEGATIVES = ("drop", "zero_logit")
CATEGORY_LOSS_INDEXING = ("per_item", "reference")


class AlignExperts(nn.Module):
    r"""One stream's part of the alignment MoE.

    ``n_experts`` experts read the whole position ``[id | text | image]`` (``3h``) and write this
    stream's ``h`` values; a softmax gate on the stream's own embedding mixes them, and a learned
    scalar (the reference's ``initializer_weight`` entry for the stream) scales the mixture.
    """

    def __init__(self, hidden_size, n_experts, initial_weight):
        super().__init__()
        self.n_experts = n_experts
        self.gate = nn.Linear(hidden_size, n_experts)
        # the n_experts linear experts stacked into one layer: output [..., n_experts * h]
        self.experts = nn.Linear(len(STREAMS) * hidden_size, n_experts * hidden_size)
        self.weight = nn.Parameter(torch.tensor(float(initial_weight)))

    def forward(self, stream, joint):
        expert_out = self.experts(joint).unflatten(-1, (self.n_experts, -1))  # [..., E, h]
        gate = torch.softmax(self.gate(stream), dim=-1).unsqueeze(-1)  # [..., E, 1]
        return self.weight * (expert_out * gate).sum(dim=-2)


class AlignMoE(nn.Module):
    """HM4SR's alignment MoE: per stream, ``stream + AlignExperts(stream, [id | text | image])``."""

    def __init__(self, hidden_size, n_experts, initial_weights):
        super().__init__()
        if len(initial_weights) != len(STREAMS):
            raise ValueError(
                f"config key 'align_stream_weights' needs {len(STREAMS)} numbers {STREAMS}, "
                f"got {initial_weights}"
            )
        self.id_experts = AlignExperts(hidden_size, n_experts, initial_weights[0])
        self.text_experts = AlignExperts(hidden_size, n_experts, initial_weights[1])
        self.vision_experts = AlignExperts(hidden_size, n_experts, initial_weights[2])

    def forward(self, id_emb, text_emb, vision_emb):
        joint = torch.cat([id_emb, text_emb, vision_emb], dim=-1)
        return (
            id_emb + self.id_experts(id_emb, joint),
            text_emb + self.text_experts(text_emb, joint),
            vision_emb + self.vision_experts(vision_emb, joint),
        )


class ScalingExperts(nn.Module):
    """One stream's temporal experts: ``n_experts`` learned vectors that rescale the embedding
    element-wise. The reference kept them in a plain Python list (never registered, never trained,
    created on ``cuda``): they kept their random N(0, 0.1) values. Here they are a registered parameter
    ``weight [n_experts, h]``, trained unless frozen (``temporal_experts_trainable: False``)."""

    def __init__(self, hidden_size, n_experts, std):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, hidden_size))
        nn.init.normal_(self.weight, std=std)

    def forward(self, stream, route):
        # sum_e route_e * (stream * expert_e) == stream * (route @ experts)
        return stream * torch.matmul(route, self.weight)


def interval_buckets(times, valid, scale, n_buckets):
    """Bucket of the time since the previous interaction: ``floor(scale * log2(dt + 1))``.

    ``times`` [B, L] are in the model's time unit (seconds at ``time_unit: 1``, as the reference); the
    first position of a sequence gets bucket 0, as in the reference, and so do padding and positions
    after it (the reference takes log2 of the negative gap to the padding's timestamp 0 there, which
    only the padding's own outputs see). Buckets beyond the table (gaps longer than any seen when the
    model was built) share the last bucket.
    """
    gaps = torch.zeros_like(times)
    gaps[:, 1:] = (times[:, 1:] - times[:, :-1]).clamp(min=0)
    gaps = torch.where(valid & valid.roll(1, dims=1), gaps, torch.zeros_like(gaps))
    gaps[:, 0] = 0
    return torch.floor(scale * torch.log2(gaps + 1)).long().clamp(0, n_buckets - 1)


def n_interval_buckets(longest_gap, scale):
    """Size of the interval table for gaps up to ``longest_gap`` time units."""
    return int(math.floor(scale * math.log2(max(longest_gap, 0.0) + 1))) + 1


class TemporalMoE(nn.Module):
    r"""HM4SR's temporal MoE.

    A time embedding per position, ``[interval embedding | absolute-time embedding]`` (``2h``), drives
    a softmax gate over ``n_experts``; each stream is rescaled by its own experts mixed with that gate.
    The absolute-time embedding is ``cos(inv_freq * Linear(1, h)(t))`` with the sinusoidal frequencies
    ``inv_freq_j = 10000^{-j/h}`` (the reference's ``freq_enhance_ab``).
    """

    def __init__(self, hidden_size, n_experts, n_buckets, interval_scale, expert_std=0.1):
        super().__init__()
        self.n_buckets = n_buckets
        self.interval_scale = interval_scale
        self.interval_embedding = nn.Embedding(n_buckets, hidden_size)
        self.absolute_proj = nn.Linear(1, hidden_size)
        inv_freq = 1.0 / torch.pow(10000.0, torch.arange(hidden_size, dtype=torch.float) / hidden_size)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.gate = nn.Linear(2 * hidden_size, n_experts)
        self.id_experts = ScalingExperts(hidden_size, n_experts, expert_std)
        self.text_experts = ScalingExperts(hidden_size, n_experts, expert_std)
        self.vision_experts = ScalingExperts(hidden_size, n_experts, expert_std)

    def time_embedding(self, times, valid):
        """``[B, L, 2h]`` from ``times`` [B, L] (timestamps in time units; 0 at padding)."""
        intervals = self.interval_embedding(
            interval_buckets(times, valid, self.interval_scale, self.n_buckets)
        )
        absolute = torch.cos(self.absolute_proj(times.unsqueeze(-1)) * self.inv_freq)
        return torch.cat([intervals, absolute], dim=-1)

    def requires_grad_experts(self, trainable):
        for experts in (self.id_experts, self.text_experts, self.vision_experts):
            experts.weight.requires_grad_(trainable)

    def forward(self, id_emb, text_emb, vision_emb, time_embedding):
        route = torch.softmax(self.gate(time_embedding), dim=-1)
        return (
            self.id_experts(id_emb, route),
            self.text_experts(text_emb, route),
            self.vision_experts(vision_emb, route),
        )


def in_batch_info_nce(queries, keys, targets, temperature, same_target="drop"):
    """InfoNCE of each query against the batch's keys, its own key (same row) the positive; queries and
    keys are L2-normalised per vector (as the reference, after UniSRec).

    Other rows with the same target item are false negatives. ``same_target="drop"`` leaves them out of
    the denominator; ``"zero_logit"`` sets their logits to 0, as the reference and UniSRec do, so each
    still adds exp(0) = 1 to the denominator.
    """
    queries = nn.functional.normalize(queries, dim=-1)
    keys = nn.functional.normalize(keys, dim=-1)
    logits = torch.matmul(queries, keys.transpose(0, 1)) / temperature
    same_target_rows = targets.unsqueeze(1) == targets.unsqueeze(0)
    same_target_rows.fill_diagonal_(False)
    logits = logits.masked_fill(same_target_rows, float("-inf") if same_target == "drop" else 0.0)
    return nn.functional.cross_entropy(logits, torch.arange(len(queries), device=queries.device))
