"""UniSRec's text adaptor (Hou et al., KDD 2022, §3.2): parametric whitening experts mixed by a
noisy softmax gate. Kept apart from the model so a pre-trained adaptor is one module to load."""

import torch
import torch.nn.functional as F
from torch import nn


class PWLayer(nn.Module):
    """One parametric whitening expert: ``(dropout(x) - b) W`` (paper eq. 2; ``b`` learned, starts at 0)."""

    def __init__(self, input_size, output_size, dropout=0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(input_size))
        self.lin = nn.Linear(input_size, output_size, bias=False)
        nn.init.normal_(self.lin.weight, mean=0.0, std=0.02)

    def forward(self, x):
        return self.lin(self.dropout(x) - self.bias)


class MoEAdaptor(nn.Module):
    """``sum_k g_k * expert_k(x)`` with ``g = softmax(x W_gate + noise)`` over all experts (paper eqs. 3-4);
    while training, ``noise = N(0, 1) * (softplus(x W_noise) + 0.01)``. Both gate matrices start at zero,
    so the experts begin equally weighted, as in the reference code."""

    def __init__(self, n_experts, input_size, output_size, dropout=0.0, noisy_gating=True):
        super().__init__()
        self.noisy_gating = noisy_gating
        self.experts = nn.ModuleList(PWLayer(input_size, output_size, dropout) for _ in range(n_experts))
        self.w_gate = nn.Parameter(torch.zeros(input_size, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(input_size, n_experts))

    def gates(self, x, noise_epsilon=1e-2):
        logits = x @ self.w_gate
        if self.noisy_gating and self.training:
            noise_std = F.softplus(x @ self.w_noise) + noise_epsilon
            logits = logits + torch.randn_like(logits) * noise_std
        return torch.softmax(logits, dim=-1)

    def forward(self, x):
        gates = self.gates(x)      # before the experts' dropout: the reference's order of random draws
        experts = torch.stack([expert(x) for expert in self.experts], dim=-2)   # [..., n_experts, d]
        return (gates.unsqueeze(-1) * experts).sum(dim=-2)
