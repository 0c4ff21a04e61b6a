"""Layers shared by the plugin's models: Gaussian (STOSA-style) attention and mixture-of-experts fusion."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def elu_plus_one(x):
    """Map to a positive diagonal covariance, as STOSA does."""
    return F.elu(x) + 1.0


def wasserstein_distance(mean1, cov1, mean2, cov2):
    """Squared 2-Wasserstein distance between diagonal Gaussians, row by row: ``[...]``."""
    mean_term = ((mean1 - mean2) ** 2).sum(-1)
    cov_term = ((cov1.clamp_min(1e-24).sqrt() - cov2.clamp_min(1e-24).sqrt()) ** 2).sum(-1)
    return mean_term + cov_term


def wasserstein_distance_matmul(mean1, cov1, mean2, cov2):
    """All-pairs squared 2-Wasserstein distance: ``[..., n, d] x [..., m, d] -> [..., n, m]``."""
    mean_term = (
        (mean1**2).sum(-1, keepdim=True)
        + (mean2**2).sum(-1, keepdim=True).transpose(-1, -2)
        - 2 * mean1 @ mean2.transpose(-1, -2)
    )
    sqrt1, sqrt2 = cov1.clamp_min(1e-24).sqrt(), cov2.clamp_min(1e-24).sqrt()
    cov_term = (
        cov1.sum(-1, keepdim=True)
        + cov2.sum(-1, keepdim=True).transpose(-1, -2)
        - 2 * sqrt1 @ sqrt2.transpose(-1, -2)
    )
    return mean_term + cov_term


class WassersteinSelfAttention(nn.Module):
    """Multi-head self-attention over Gaussian embeddings (STOSA, Fan et al. WWW 2022).

    Scores are negative Wasserstein distances between query and key Gaussians; the mean output is the
    attention-weighted mean of the values, the covariance output weights value covariances by the
    squared attention probabilities (a linear combination of independent Gaussians).
    """

    def __init__(self, hidden_size, n_heads, attn_dropout_prob, hidden_dropout_prob, layer_norm_eps):
        super().__init__()
        if hidden_size % n_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.mean_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.cov_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.mean_dense = nn.Linear(hidden_size, hidden_size)
        self.cov_dense = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)
        self.mean_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.cov_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_size).transpose(1, 2)

    def forward(self, mean, cov, attention_mask):
        mq, mk, mv = (self._heads(t) for t in self.mean_qkv(mean).chunk(3, dim=-1))
        cq, ck, cv = (self._heads(elu_plus_one(t)) for t in self.cov_qkv(cov).chunk(3, dim=-1))
        scores = -wasserstein_distance_matmul(mq, cq, mk, ck) / math.sqrt(self.head_size)
        probs = self.attn_dropout(torch.softmax(scores + attention_mask, dim=-1))
        mean_ctx = (probs @ mv).transpose(1, 2).reshape(mean.shape)
        cov_ctx = ((probs**2) @ cv).transpose(1, 2).reshape(cov.shape)
        mean_out = self.mean_norm(self.out_dropout(self.mean_dense(mean_ctx)) + mean)
        cov_out = self.cov_norm(self.out_dropout(self.cov_dense(cov_ctx)) + cov)
        return mean_out, cov_out


class FeedForward(nn.Module):
    def __init__(self, hidden_size, inner_size, hidden_dropout_prob, layer_norm_eps):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            nn.ELU(),
            nn.Linear(inner_size, hidden_size),
            nn.Dropout(hidden_dropout_prob),
        )
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x):
        return self.norm(self.net(x) + x)


class WassersteinTransformerEncoder(nn.Module):
    """Stack of Wasserstein self-attention + feed-forward layers on (mean, covariance) streams.

    Unlike the STOSA reference code (whose layer loop assigns the new mean to a misspelt variable, so
    the mean stream skips every layer), each layer here feeds both streams to the next.
    """

    def __init__(self, n_layers, hidden_size, n_heads, inner_size, attn_dropout_prob,
                 hidden_dropout_prob, layer_norm_eps):
        super().__init__()
        self.attention = nn.ModuleList(
            WassersteinSelfAttention(hidden_size, n_heads, attn_dropout_prob, hidden_dropout_prob, layer_norm_eps)
            for _ in range(n_layers)
        )
        self.mean_ffn = nn.ModuleList(
            FeedForward(hidden_size, inner_size, hidden_dropout_prob, layer_norm_eps) for _ in range(n_layers)
        )
        self.cov_ffn = nn.ModuleList(
            FeedForward(hidden_size, inner_size, hidden_dropout_prob, layer_norm_eps) for _ in range(n_layers)
        )

    def forward(self, mean, cov, attention_mask):
        for attention, mean_ffn, cov_ffn in zip(self.attention, self.mean_ffn, self.cov_ffn):
            mean, cov = attention(mean, cov, attention_mask)
            mean, cov = mean_ffn(mean), elu_plus_one(cov_ffn(cov))
        return mean, cov


class Experts(nn.Module):
    """``n`` parallel linear experts evaluated in one einsum: ``[..., d_in] -> [..., n, d_out]``."""

    def __init__(self, n_experts, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n_experts, d_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return torch.einsum("...i,eio->...eo", x, self.weight) + self.bias


class GatedExperts(nn.Module):
    """A group of experts mixed by a softmax gate computed by a low-rank MLP on the same input."""

    def __init__(self, n_experts, d_in, d_out, gate_low_rank):
        super().__init__()
        self.experts = Experts(n_experts, d_in, d_out)
        self.gate = nn.Sequential(nn.Linear(d_in, gate_low_rank), nn.Linear(gate_low_rank, n_experts))

    def forward(self, x):
        weights = torch.softmax(self.gate(x), dim=-1).unsqueeze(-1)  # [..., n, 1]
        return (self.experts(x) * weights).sum(-2)


class MultimodalMoEFusion(nn.Module):
    """M3SRec's mixture-of-experts fusion of ID, vision and text embeddings, applied per position.

    Shared experts read the concatenation [id, vision, text]; each modality has its own gated experts
    fed with ``modality + shared``; a softmax over four streams (id, vision, text, shared), computed by
    one linear layer over their concatenation, mixes the expert outputs, and the mix is added to the
    sum of the three inputs. Every position (and every candidate item) gets its own gates: the
    reference code computed them at position 0 and broadcast them to the whole sequence.
    """

    streams = ("id", "vision", "text")

    def __init__(self, hidden_size, n_shared_experts, n_specific_experts, gate_low_rank):
        super().__init__()
        self.shared = GatedExperts(n_shared_experts, 3 * hidden_size, hidden_size, gate_low_rank)
        self.id_experts = GatedExperts(n_specific_experts, hidden_size, hidden_size, gate_low_rank)
        self.vision_experts = GatedExperts(n_specific_experts, hidden_size, hidden_size, gate_low_rank)
        self.text_experts = GatedExperts(n_specific_experts, hidden_size, hidden_size, gate_low_rank)
        self.stream_mix = nn.Linear(4 * hidden_size, 4)

    def forward(self, id_emb, vision_emb, text_emb):
        shared = self.shared(torch.cat([id_emb, vision_emb, text_emb], dim=-1))
        outputs = [
            self.id_experts(id_emb + shared),
            self.vision_experts(vision_emb + shared),
            self.text_experts(text_emb + shared),
            shared,
        ]
        mix = torch.softmax(self.stream_mix(torch.cat(outputs, dim=-1)), dim=-1).unsqueeze(-1)
        fused = (torch.stack(outputs, dim=-2) * mix).sum(-2)
        return id_emb + vision_emb + text_emb + fused
