"""STOSA's layers (Fan et al., WWW 2022): Gaussian item embeddings compared by the 2-Wasserstein distance.

Used by STOSA and M3SRec (through :class:`~recbole_reveal.model.gaussian_recommender.GaussianSequentialRecommender`).
"""

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
    """Multi-head self-attention over Gaussian embeddings.

    Scores are negative Wasserstein distances between query and key Gaussians; the mean output is the
    attention-weighted mean of the values, the covariance output weights value covariances by the
    squared attention probabilities (a linear combination of independent Gaussians). One LayerNorm
    serves both streams, as in STOSA.
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
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

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
        mean_out = self.norm(self.out_dropout(self.mean_dense(mean_ctx)) + mean)
        cov_out = self.norm(self.out_dropout(self.cov_dense(cov_ctx)) + cov)
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

    ``mean_skips_layers``: the reference code's layer loop assigns each layer's new mean to a misspelt
    variable, so every layer reads the encoder's input mean and the mean stream leaves the encoder
    unchanged (only the covariance is encoded). False (the fix) feeds both streams to the next layer.
    """

    def __init__(self, n_layers, hidden_size, n_heads, inner_size, attn_dropout_prob,
                 hidden_dropout_prob, layer_norm_eps, mean_skips_layers=False):
        super().__init__()
        self.mean_skips_layers = mean_skips_layers
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
            new_mean, cov = attention(mean, cov, attention_mask)
            cov = elu_plus_one(cov_ffn(cov))
            if not self.mean_skips_layers:
                mean = mean_ffn(new_mean)
        return mean, cov
