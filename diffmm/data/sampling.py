"""Vectorised uniform negative sampling for BPR (Eq. 25's unobserved set O^-)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp


class NegativeSampler:
    """Draws, for each (user, positive) pair, an item the user never interacted with in training.

    Membership is checked against the sorted keys ``user * n_items + item`` of the training
    matrix with one ``searchsorted`` per rejection round; only the collisions are redrawn, so a
    round costs O(n log nnz) and no Python loop runs per interaction.

    Args:
        train: (n_users, n_items) CSR matrix of training interactions.
        max_rounds: give up after this many rejection rounds (only reachable when a user has
            interacted with almost every item).
    """

    def __init__(self, train: sp.csr_matrix, max_rounds: int = 100):
        train = sp.csr_matrix(train)
        train.sort_indices()
        self.n_users, self.n_items = train.shape
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(train.indptr))
        self._keys = rows * self.n_items + train.indices.astype(np.int64)  # sorted (CSR order)
        self.users, self.items = rows, train.indices.astype(np.int64)  # every training pair
        full = np.diff(train.indptr) >= self.n_items
        if full.any():  # no negative exists for these users: their pairs take no BPR step
            keep = ~full[rows]
            self.users, self.items = rows[keep], self.items[keep]
            warnings.warn(f"{int(full.sum())} user(s) (e.g. user {int(np.argmax(full))}) interacted with every item: "
                          "no negative item exists for them, so their pairs are left out of the BPR steps",
                          stacklevel=2)
            if not len(self.users):
                raise ValueError("every user interacted with every item: no negative item exists for BPR")
        self.max_rounds = max_rounds

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(self._keys, keys)
        pos[pos == len(self._keys)] = 0
        return self._keys[pos] == keys

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniformly drawn non-positive item per entry of ``users``."""
        negatives = rng.integers(0, self.n_items, size=len(users))
        todo = np.flatnonzero(self.is_positive(users, negatives))
        for _ in range(self.max_rounds):
            if len(todo) == 0:
                return negatives
            negatives[todo] = rng.integers(0, self.n_items, size=len(todo))
            todo = todo[self.is_positive(users[todo], negatives[todo])]
        raise RuntimeError(f"negative sampling did not converge after {self.max_rounds} rounds")

    def epoch_triples(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every training pair once, shuffled, with one sampled negative each: (users, positives, negatives)."""
        order = rng.permutation(len(self.users))
        users, positives = self.users[order], self.items[order]
        return users, positives, self.sample(users, rng)

    def epoch(self, batch_size: int, rng: np.random.Generator):
        """Yield shuffled (users, positives, negatives) int64 batches covering every training pair once."""
        users, positives, negatives = self.epoch_triples(rng)
        for start in range(0, len(users), batch_size):
            end = start + batch_size
            yield users[start:end], positives[start:end], negatives[start:end]

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self.users) // batch_size)
