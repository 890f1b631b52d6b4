"""The interface every recommender implements, so one Trainer and one evaluator serve them all."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from diffmm.data.dataset import RecDataset
from diffmm.optim import Adam

T = TypeVar("T")


def adam(params, lr: float) -> Adam:
    """Adam with the fused kernel: one pass per tensor instead of a dozen elementwise ops (the
    13.4M-parameter denoisers' step: 16 ms vs 75-100 ms with the default on 2 CPU threads), without
    torch.optim's import of torch._dynamo (:mod:`diffmm.optim`)."""
    return Adam(params, lr=lr)


class Recommender(nn.Module):
    """Base class.

    A subclass implements :meth:`final_embeddings` (or overrides :meth:`scorer`) and
    :meth:`loss`; models with extra per-epoch work (DiffMM's diffusion training and graph
    regeneration) override :meth:`before_epoch`. Optimisers are created by the model in
    :meth:`configure_optimizers` and the ``"rec"`` one is stepped on :meth:`loss`.
    """

    trainable: bool = True

    def __init__(self, dataset: RecDataset):
        super().__init__()
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self._device_cache: dict[str, tuple[torch.device, object]] = {}

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def on_device(self, key: str, build: Callable[[torch.device], T]) -> T:
        """``build(device)`` for the model's current device, made once per key (graphs, CSR rows).

        Rebuilt when the model has moved to another device, or after :meth:`forget`.
        """
        hit = self._device_cache.get(key)
        if hit is None or hit[0] != self.device:
            hit = self._device_cache[key] = (self.device, build(self.device))
        return hit[1]

    def forget(self, prefix: str) -> None:
        """Drop the device-side objects whose key starts with ``prefix`` (their source changed)."""
        for key in [k for k in self._device_cache if k.startswith(prefix)]:
            del self._device_cache[key]

    def configure_optimizers(self, lr: float) -> dict[str, Adam]:
        return {"rec": adam(self.parameters(), lr)}

    def before_epoch(self, epoch: int, optimizers: dict, progress: bool = False) -> dict[str, float]:
        """Work done once per epoch before the BPR steps; returns numbers to log."""
        return {}

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses for a batch of BPR triples; the key ``"loss"`` is what gets minimised."""
        raise NotImplementedError

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_users, d) and (n_items, d) embeddings whose inner product is the score."""
        raise NotImplementedError

    @torch.no_grad()
    def scorer(self):
        """A function users -> (B, n_items) scores, with the embeddings computed once."""
        was_training = self.training
        self.eval()
        users_emb, items_emb = self.final_embeddings()
        self.train(was_training)
        return lambda users: users_emb[users] @ items_emb.T


def bpr(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Eq. 25: mean over the batch of -log sigmoid(y_ui - y_uj)."""
    return -torch.nn.functional.logsigmoid(pos_scores - neg_scores).mean()
