"""The x0-predicting denoiser of Sec. 2.2.2: an MLP over (noisy interaction vector, step embedding)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f_k), sin(t f_k)], f_k = 10000^(-k / (dim/2)); shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Denoiser(nn.Module):
    """alpha_hat_theta(alpha_t, t): [dropout(alpha_t), W_e emb(t)] -> hidden (tanh) -> n_items.

    The first layer acting on the concatenation is stored as two blocks, ``input`` (items) and
    ``time_in`` (step embedding): the same function, but a sparse ``alpha_t`` (the observed vector
    that starts inference with T' = 0) is multiplied as sparse.

    Args:
        n_items: length of the interaction vector.
        hidden: hidden layer sizes (authors: [1000]).
        time_dim: step-embedding size (authors: 10).
        dropout: dropout on the input vector during training (authors: 0.5).
        normalize_input: L2-normalise the input vector first (authors' ``norm``, off by default).
    """

    def __init__(self, n_items: int, hidden: Sequence[int] = (1000,), time_dim: int = 10,
                 dropout: float = 0.5, normalize_input: bool = False):
        super().__init__()
        self.time_dim, self.normalize_input = time_dim, normalize_input
        self.time_proj = nn.Linear(time_dim, time_dim)
        sizes = [n_items, *hidden, n_items]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.time_in = nn.Linear(time_dim, sizes[1], bias=False)  # the step-embedding columns of layer 0
        self.dropout = dropout
        # the authors' init: N(0, 2 / (fan_in + fan_out)), with layer 0's fan_in = n_items + time_dim
        for layer, fan_in in [(self.time_proj, time_dim), (self.layers[0], n_items + time_dim),
                              (self.time_in, n_items + time_dim), *[(l, l.in_features) for l in self.layers[1:]]]:
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / (fan_in + layer.out_features)))
            if layer.bias is not None:
                nn.init.normal_(layer.bias, 0.0, 0.001)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, n_items) noisy vectors, dense or sparse; t: (B,) steps in 1..T.

        Returns the predicted x0, (B, n_items).
        """
        if x.is_sparse:  # only at inference, where dropout is the identity
            if self.normalize_input or self.training:
                x = x.to_dense()
            else:
                first = self.layers[0]
                with torch.autocast(x.device.type, enabled=False):  # CUDA has no bf16 sparse product
                    h = torch.sparse.mm(x.float(), first.weight.T) + first.bias
        if not x.is_sparse:
            if self.normalize_input:
                x = nn.functional.normalize(x, dim=-1)
            if self.training and self.dropout > 0:  # inverted dropout; a uniform mask is ~2x faster than bernoulli_
                x = x * torch.rand_like(x).ge_(self.dropout).mul_(1.0 / (1.0 - self.dropout))
            h = self.layers[0](x)
        h = h + self.time_in(self.time_proj(timestep_embedding(t, self.time_dim)))  # layer 0 on [x, emb]
        for layer in self.layers[1:]:
            h = layer(torch.tanh(h))
        return h
