"""M3SRec's mixture-of-experts fusion of ID, vision and text embeddings (the REVEAL authors' M3SRec).

Shapes follow the reference code: each expert is an MLP ``Linear(d_in, h) -> GELU -> Linear(h, h)``;
each gate is ``Linear(d_in, h / low_rank, no bias) -> GELU -> Linear(h / low_rank, E, no bias) ->
softmax``. The shared experts read ``[id | vision | text]``; a modality's experts read ``modality +
shared`` and its gate reads the modality alone.
"""

import torch
import torch.nn.functional as F
from torch import nn

STREAMS = ("id", "vision", "text", "shared")


class MLPExperts(nn.Module):
    """``n`` parallel two-layer experts evaluated in one einsum: ``[..., d_in] -> [..., n, d_out]``."""

    def __init__(self, n_experts, d_in, d_hidden, d_out):
        super().__init__()
        self.weight1 = nn.Parameter(torch.empty(n_experts, d_in, d_hidden))
        self.bias1 = nn.Parameter(torch.zeros(n_experts, d_hidden))
        self.weight2 = nn.Parameter(torch.empty(n_experts, d_hidden, d_out))
        self.bias2 = nn.Parameter(torch.zeros(n_experts, d_out))

    def reset_parameters(self, mean, std):
        """The reference initialises each expert's Linear layers like every other Linear of the model."""
        for weight in (self.weight1, self.weight2):
            nn.init.normal_(weight, mean=mean, std=std)
        for bias in (self.bias1, self.bias2):
            nn.init.zeros_(bias)

    def forward(self, x):
        hidden = F.gelu(torch.einsum("...i,eio->...eo", x, self.weight1) + self.bias1)
        return torch.einsum("...ei,eio->...eo", hidden, self.weight2) + self.bias2


class GatedExperts(nn.Module):
    """A group of MLP experts mixed by a softmax gate; the gate may read another input than the experts."""

    def __init__(self, n_experts, d_in, hidden_size, gate_low_rank):
        super().__init__()
        width = hidden_size // gate_low_rank
        self.experts = MLPExperts(n_experts, d_in, hidden_size, hidden_size)
        self.gate = nn.Sequential(
            nn.Linear(d_in, width, bias=False), nn.GELU(), nn.Linear(width, n_experts, bias=False)
        )

    def forward(self, expert_input, gate_input):
        weights = torch.softmax(self.gate(gate_input), dim=-1).unsqueeze(-1)  # [..., n, 1]
        return (self.experts(expert_input) * weights).sum(-2)


class MultimodalMoEFusion(nn.Module):
    """The experts of one Gaussian stream (mean or covariance), applied to each item.

    ``forward(id, vision, text)`` returns ``(id + vision + text, streams)`` with ``streams`` the four
    gated outputs ``[..., 4, h]`` in the order of :data:`STREAMS`. How the four are combined is the
    model's choice: :meth:`mix` (a per-item softmax over the four, the default) or
    :class:`ReferenceStreamAttention` (what the reference code computes).
    """

    def __init__(self, hidden_size, n_shared_experts, n_specific_experts, gate_low_rank, per_item_mix=True):
        super().__init__()
        h = hidden_size
        self.shared = GatedExperts(n_shared_experts, 3 * h, h, gate_low_rank)
        self.id_experts = GatedExperts(n_specific_experts, h, h, gate_low_rank)
        self.vision_experts = GatedExperts(n_specific_experts, h, h, gate_low_rank)
        self.text_experts = GatedExperts(n_specific_experts, h, h, gate_low_rank)
        self.stream_mix = nn.Linear(len(STREAMS) * h, len(STREAMS)) if per_item_mix else None

    def forward(self, id_emb, vision_emb, text_emb):
        joint = torch.cat([id_emb, vision_emb, text_emb], dim=-1)
        shared = self.shared(joint, joint)
        streams = torch.stack([
            self.id_experts(id_emb + shared, id_emb),
            self.vision_experts(vision_emb + shared, vision_emb),
            self.text_experts(text_emb + shared, text_emb),
            shared,
        ], dim=-2)
        return id_emb + vision_emb + text_emb, streams

    def mix(self, streams):
        """``[..., 4, h] -> [..., h]``: the streams weighted by a softmax over the four, computed by one
        linear layer from their concatenation (each item gets its own weights)."""
        weights = torch.softmax(self.stream_mix(streams.flatten(-2)), dim=-1).unsqueeze(-1)
        return (streams * weights).sum(-2)


class ReferenceStreamAttention(nn.Module):
    """The reference code's combination of the four streams (one instance shared by mean and covariance).

    ``A = softmax(Linear(4h, h)([id | vision | text | shared]))`` is a softmax over the h features,
    per position. The reference then weights stream k's output at sequence position 0 by ``A`` at
    sequence *position* k (k = 0..3) and adds the sum to every position. Sequences are left-padded, so
    positions 0-3 are padding for almost every user: the term is a learned constant, the same for
    every user and position.
    """

    def __init__(self, hidden_size):
        super().__init__()
        self.attention = nn.Linear(len(STREAMS) * hidden_size, hidden_size)

    def forward(self, streams):
        """``streams`` of the first four positions of left-padded sequences ``[B, 4, 4, h]`` -> ``[B, 1, h]``."""
        scores = torch.softmax(self.attention(streams.flatten(-2)), dim=-1)  # [B, 4 positions, h]
        first_position = streams[:, 0]                                       # [B, 4 streams, h]
        return (first_position * scores).sum(1, keepdim=True)
