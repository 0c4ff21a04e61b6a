"""MMSBR's building blocks (Zhang et al., TKDE 2024): the feature tokenizers and the Transformer layer
of the hierarchical pivot transformer, the Wasserstein self-attention of the price branch, and the
pseudo-modality contrastive loss."""

import math

import torch
from torch import nn

from recbole_reveal.model.wasserstein_layers import elu_plus_one, wasserstein_distance_matmul


class FeatureTokenizer(nn.Module):
    """One pseudo token of an item's feature vector: two tanh layers, dropout after each."""

    def __init__(self, input_size, output_size, dropout):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(input_size, output_size), nn.Linear(output_size, output_size)])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        for layer in self.layers:
            x = self.dropout(torch.tanh(layer(x)))
        return x


class PivotTransformerLayer(nn.Module):
    """Post-LN Transformer layer of the reference: multi-head attention (q/k/v with bias, dropout on
    them, an output projection without bias), a 4x ReLU feed-forward, and ONE LayerNorm applied after
    both residual sums; no mask (every token of an item sees every other). ``softmax_over_queries``:
    normalise the attention over the queries instead of the keys, as the reference's
    ``F.softmax(energies, dim=2)`` does."""

    def __init__(self, hidden_size, n_heads, dropout, attention_dropout=0.0, softmax_over_queries=False):
        super().__init__()
        self.softmax_dim = -2 if softmax_over_queries else -1
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size, bias=False)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size), nn.ReLU(),
                                 nn.Linear(4 * hidden_size, hidden_size))
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def _heads(self, x):
        return x.view(*x.shape[:-1], self.n_heads, -1).transpose(-2, -3)    # [..., heads, tokens, d_head]

    def attention(self, x):
        q, k, v = (self._heads(self.attention_dropout(f(x))) for f in (self.query, self.key, self.value))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=self.softmax_dim)
        context = (weights @ v).transpose(-2, -3).reshape(x.shape)
        return self.attention_dropout(self.output(context))

    def forward(self, x):
        x = self.layer_norm(x + self.dropout(self.attention(x)))
        return self.layer_norm(x + self.dropout(self.ffn(x)))


class PriceAttention(nn.Module):
    """Wasserstein self-attention over the price Gaussians of a session (one layer, as the reference):
    scores ``-W2(query, key) / sqrt(d_head)``; the mean context weights the value means by the
    attention, the covariance context the value covariances by its square. The residual adds the raw
    price embeddings and goes through the model's shared LayerNorm ``norm``."""

    def __init__(self, hidden_size, n_heads, attn_dropout_prob, hidden_dropout_prob):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.mean_qkv = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(3))
        self.cov_qkv = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(3))
        self.mean_dense = nn.Linear(hidden_size, hidden_size)
        self.cov_dense = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)

    def _heads(self, x):
        return x.view(*x.shape[:-1], self.n_heads, -1).transpose(1, 2)

    def forward(self, mean_in, cov_in, mean_raw, cov_raw, padding, norm):
        mq, mk, mv = (self._heads(f(mean_in)) for f in self.mean_qkv)
        cq, ck, cv = (self._heads(elu_plus_one(f(cov_in))) for f in self.cov_qkv)
        scores = -wasserstein_distance_matmul(mq, cq, mk, ck) / math.sqrt(mq.shape[-1])
        scores = scores - 10000.0 * padding[:, None, None, :].to(scores.dtype)
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        mean_ctx = (probs @ mv).transpose(1, 2).reshape(mean_in.shape)
        cov_ctx = ((probs ** 2) @ cv).transpose(1, 2).reshape(cov_in.shape)
        mean = norm(self.out_dropout(self.mean_dense(mean_ctx)) + mean_raw)
        cov = norm(self.out_dropout(self.cov_dense(cov_ctx)) + cov_raw)
        return mean, cov


def pseudo_modality_contrast(real, pseudo, num_negatives):
    """``sum_i [log10 sum_topk_j exp(<r_i, p_j>) - log10 exp(<r_i, p_i>)]`` over the items (rows): each
    item's real-modality vector against its pseudo-modality vector (the positive) and the ``num_negatives``
    most similar pseudo vectors (the positive among them when it is one of the top). Computed in log space
    (the reference exponentiates first, which overflows for large inner products)."""
    logits = real @ pseudo.T
    top = logits.topk(min(num_negatives, logits.shape[1]), dim=1).values
    return (torch.logsumexp(top, dim=1) - logits.diagonal()).sum() / math.log(10)


def masked_session_mean(seq, lengths):
    """Mean of each session's item vectors (padding rows are zero): ``[B, L, d] -> [B, d]``."""
    return seq.sum(1) / lengths.unsqueeze(1).to(seq.dtype)


def soft_attention_readout(seq, mask, mean, glu1, glu2, w_2):
    """The session's interest: ``sum_t beta_t h_t`` with ``beta = w_2(sigmoid(glu1(h_t) + glu2(mean)))``."""
    beta = w_2(torch.sigmoid(glu1(seq) + glu2(mean).unsqueeze(1))) * mask.unsqueeze(-1)
    return (beta * seq).sum(1)
