"""The x0-predicting denoiser of Sec. 2.2.2: an MLP over (noisy interaction vector, step embedding)."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
from torch import nn

from diffmm.dense import Workspace, linear
from diffmm.graph import sparse_mm


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f_k), sin(t f_k)], f_k = 10000^(-k / (dim/2)); shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


@contextlib.contextmanager
def frozen_weights(module: nn.Module) -> Iterator[None]:
    """Promise that no :class:`Denoiser` inside ``module`` changes its weights within the block, so
    each computes the map derived from its weights (:meth:`Denoiser.output_to_input`) once for all its
    reverse calls."""
    denoisers = [m for m in module.modules() if isinstance(m, Denoiser)]
    for d in denoisers:
        d._frozen, d._derived = True, {}
    try:
        yield
    finally:
        for d in denoisers:
            d._frozen, d._derived = False, {}


class Denoiser(nn.Module):
    """alpha_hat_theta(alpha_t, t): [dropout(alpha_t), W_e emb(t)] -> hidden (tanh) -> n_items.

    The first layer acting on the concatenation is stored as two blocks, ``input`` (items) and
    ``time_in`` (step embedding): the same function, but a sparse ``alpha_t`` (the observed vector
    that starts inference with T' = 0) is multiplied as sparse.

    Args:
        n_items: length of the interaction vector.
        hidden: hidden layer sizes, in order: items -> hidden[0] -> ... -> hidden[-1] -> items (authors:
            [1000]; for longer lists their code mirrors them, [a, b] giving items -> b -> a -> b -> items).
        time_dim: step-embedding size (authors: 10).
        dropout: dropout on the input vector during training (authors: 0.5).
    """

    def __init__(self, n_items: int, hidden: Sequence[int] = (1000,), time_dim: int = 10,
                 dropout: float = 0.5):
        super().__init__()
        self.time_dim = time_dim
        self._frozen, self._derived = False, {}  # see frozen_weights()
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
        # W_0 is stored as W_0^T's rows, (items, hidden) row-major (the same values): its weight gradient, a
        # (hidden x batch) @ (batch x items) product, is then written as (items, hidden) rows, which MKL does
        # 1.3-1.6x faster than 6,710-float rows (TikTok, 2 threads, 2026-12-03; docs/performance.md)
        first = self.layers[0]
        first.weight = nn.Parameter(first.weight.detach().T.contiguous().T)

    def _derive(self, name: str, compute) -> tuple[torch.Tensor, ...]:
        """``compute()``, a map derived from the weights: per call, or once inside :func:`frozen_weights`."""
        if name in self._derived:
            return self._derived[name]
        with torch.no_grad(), torch.autocast(self.layers[0].weight.device.type, enabled=False):
            value = compute()
        if self._frozen:
            self._derived[name] = value
        return value

    def input_product(self, x: torch.Tensor) -> torch.Tensor:
        """W_0 x: layer 0's items block without its bias, (B, H_0); ``x`` dense or sparse (CSR or COO).

        A sparse ``x`` (the observed vectors at T' = 0) is multiplied as sparse, in float32 (CUDA has
        no bf16 sparse product), against W_0^T, which is stored row-major.
        """
        weight = self.layers[0].weight
        if x.layout == torch.strided:
            return linear(x, weight)
        x = x.to_sparse_csr() if x.layout != torch.sparse_csr else x
        with torch.autocast(x.device.type, enabled=False):
            return sparse_mm(x.float(), weight.detach().T.contiguous())  # a view, unless W_0 was laid out anew

    def output_to_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_0 W_L, W_0 b_L): the output layer followed by the next input product, as one (H_0, H_L) map.

        Used by the hidden-space reverse. Computed per call, or once inside :func:`frozen_weights`.
        """
        first, last = self.layers[0].weight, self.layers[-1]
        return self._derive("mix", lambda: (first @ last.weight, first @ last.bias))

    def hidden(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The last hidden activation (B, H_L) from z = W_0 x: layer 0 on [x, emb(t)], tanh, middle layers."""
        h = z + self.layers[0].bias + self.time_in(self.time_proj(timestep_embedding(t, self.time_dim)))
        for layer in self.layers[1:-1]:
            h = linear(torch.tanh(h), layer.weight, layer.bias)
        return torch.tanh(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, n_items) noisy vectors, dense or sparse; t: (B,) steps in 1..T.

        Returns the predicted x0, (B, n_items): W_L hidden(W_0 x, t) + b_L.
        """
        last = self.layers[-1]
        return linear(self.hidden(self.input_product(self.drop(x)), t), last.weight, last.bias)

    def drop(self, x: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
        """Inverted dropout of the input vectors in training mode (each entry zeroed with probability p, the
        rest scaled by 1 / (1 - p)); ``x`` itself in eval mode or without dropout.

        ``workspace``: the mask and its random draws go into its buffers, and ``x`` (dense) is scaled in
        place. The same random numbers either way.
        """
        if not (self.training and self.dropout > 0):
            return x
        x = x.to_dense() if x.layout != torch.strided else x
        scale = 1.0 / (1.0 - self.dropout)
        if workspace is None:
            return (x * keep_mask(x.shape, self.dropout, x.device)).mul_(scale)
        words = workspace.take("dropout/words", (-(-x.numel() // 4),), x, dtype=torch.int64)
        keep = keep_mask(x.shape, self.dropout, x.device, words, out=workspace.take("dropout/mask", x.shape, x))
        return x.mul_(keep).mul_(scale)  # a float mask: a boolean one is cast to float on the fly, ~3x slower


def keep_mask(shape: Sequence[int], p: float, device=None, words: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverted dropout's mask of ``shape``: each entry 1 (kept) with probability 1 - p, else 0; boolean, or
    written into ``out``.

    Each entry reads 16 random bits, four to a 64-bit draw: a quarter of the generator's calls of one float
    uniform per entry (a TikTok (512 x 6,710) mask, drawn and applied: ~7-9 against ~15-18 ms on CPU, where
    the generator's calls dominate). p counts in steps of 2^-16 (0.5 exactly). ``words``: an int64 buffer of
    at least ceil(numel / 4) elements to draw into (None: a new one).
    """
    n = math.prod(shape)
    count = -(-n // 4)
    words = torch.empty(count, dtype=torch.int64, device=device) if words is None else words[:count]
    bits = words.random_(-2**63, None).view(torch.int16)[:n].view(tuple(shape))  # each of the 2^16 values alike
    threshold = round(p * 65536) - 32768  # P(bits >= c) = (32768 - c) / 65536 = 1 - p
    return torch.ge(bits, threshold) if out is None else torch.ge(bits, threshold, out=out)
