"""Baselines on the shared machinery: most-popular, MF-BPR and LightGCN."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diffmm.config import LightGCNConfig, MFConfig, PopularityConfig
from diffmm.data.dataset import RecDataset
from diffmm.graph import normalized_adjacency
from diffmm.models.base import Recommender, bpr


class Popularity(Recommender):
    """Scores every item by its number of training interactions; nothing to train."""

    trainable = False

    def __init__(self, dataset: RecDataset, config: PopularityConfig | None = None):
        super().__init__(dataset)
        self.config = config or PopularityConfig()
        self.register_buffer("popularity", torch.from_numpy(dataset.item_popularity().astype(np.float32)))

    def scorer(self):
        return lambda users: self.popularity.expand(len(users), -1).clone()

    def __repr__(self):
        return f"Popularity(items={self.n_items})"


class EmbeddingModel(Recommender):
    """Shared part of MF and LightGCN: ego embeddings, BPR, L2 on the batch's ego embeddings."""

    def __init__(self, dataset: RecDataset, dim: int, l2: float, init_std: float):
        super().__init__(dataset)
        self.l2 = l2
        # N(0, 0.1^2) as in the LightGCN reference code; Xavier's ~0.02 for 10k rows learns far slower
        self.user_embedding = nn.Parameter(torch.randn(self.n_users, dim) * init_std)
        self.item_embedding = nn.Parameter(torch.randn(self.n_items, dim) * init_std)

    def item_bias(self, items: torch.Tensor) -> torch.Tensor | float:
        return 0.0

    def loss(self, users, positives, negatives):
        users_emb, items_emb = self.final_embeddings()
        u, i, j = users_emb[users], items_emb[positives], items_emb[negatives]  # (B, d)
        rec = bpr((u * i).sum(-1) + self.item_bias(positives), (u * j).sum(-1) + self.item_bias(negatives))
        reg = 0.5 * (self.user_embedding[users].square().sum() + self.item_embedding[positives].square().sum()
                     + self.item_embedding[negatives].square().sum()) / len(users)
        return {"loss": rec + self.l2 * reg, "bpr": rec, "l2": reg}


class MF(EmbeddingModel):
    """MF-BPR: score(u, i) = <e_u, e_i> + b_i (Rendle et al., UAI 2009; b_i optional)."""

    def __init__(self, dataset: RecDataset, config: MFConfig | None = None):
        self.config = config or MFConfig()
        super().__init__(dataset, self.config.dim, self.config.l2, self.config.init_std)
        self.bias = nn.Parameter(torch.zeros(self.n_items)) if self.config.item_bias else None

    def item_bias(self, items):
        return self.bias[items] if self.bias is not None else 0.0

    def final_embeddings(self):
        return self.user_embedding, self.item_embedding

    @torch.no_grad()
    def scorer(self):
        bias = self.bias if self.bias is not None else torch.zeros(self.n_items, device=self.device)
        return lambda users: self.user_embedding[users] @ self.item_embedding.T + bias

    def __repr__(self):
        return f"MF(users={self.n_users}, items={self.n_items}, dim={self.config.dim})"


class LightGCN(EmbeddingModel):
    """LightGCN (He et al., SIGIR 2020): E = mean_{l=0..L} A_hat^l E_0, A_hat = D^-1/2 A D^-1/2.

    Args:
        dataset: supplies the training graph.
        config: dim, layers, l2.
    """

    def __init__(self, dataset: RecDataset, config: LightGCNConfig | None = None):
        self.config = config or LightGCNConfig()
        super().__init__(dataset, self.config.dim, self.config.l2, self.config.init_std)
        self._train = dataset.train

    @property
    def adjacency(self):
        return self.on_device("graph", lambda device: normalized_adjacency(self._train, device=device))

    def final_embeddings(self):
        ego = torch.cat([self.user_embedding, self.item_embedding])  # (U + I, d)
        total = self.adjacency.power_sum(ego, self.config.layers) / (self.config.layers + 1)
        return total[: self.n_users], total[self.n_users:]

    def __repr__(self):
        return f"LightGCN(users={self.n_users}, items={self.n_items}, dim={self.config.dim}, layers={self.config.layers})"
