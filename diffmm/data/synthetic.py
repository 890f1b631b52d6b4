"""A synthetic multi-modal dataset with planted structure, for tests, teaching and sanity checks.

Generative story (all vectorised, deterministic by ``seed``):

1. Each of ``n_groups`` latent groups has a centre ``c_g`` in R^k. Every user and item gets a
   group and a latent factor ``z = c_group + 0.5 * eps`` (``eps ~ N(0, I)``).
2. User ``u`` has a long-tailed number of interactions ``n_u ~ LogNormal`` (spread
   ``activity_skew``, mean ``mean_activity``, at least 1), so both sparse (1-5) and dense
   users exist.
3. ``u`` picks ``n_u`` distinct items with probability ``softmax_i(z_u . z_i / sqrt(k) + b_i)``
   (``b_i`` an item popularity bias), sampled without replacement by the Gumbel-top-k trick.
   Most picks fall in the user's own group.
4. Each modality ``m`` with ``(d_m, snr_m)``: ``x_i = snr_m * standardise(z_i W_m) + noise``,
   ``W_m`` a random (k, d_m) projection, noise ``N(0, I)``. ``snr_m = 0`` is pure noise.
5. Each user's interactions are shuffled and split into test / valid / train with the
   expected fractions (stochastic rounding, so sparse users sometimes have a test item),
   keeping at least one training interaction per user.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import scipy.sparse as sp

from diffmm.data.dataset import RecDataset


def _sample_interactions(user_factors: np.ndarray, item_factors: np.ndarray, item_bias: np.ndarray,
                         counts: np.ndarray, rng: np.random.Generator,
                         chunk_cells: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k: user u takes its ``counts[u]`` highest ``logit + Gumbel`` items.

    Users are processed in chunks of ``chunk_cells / n_items`` rows, so memory stays bounded.
    Returns (users, items), both int64 and grouped by user.
    """
    n_users, k = user_factors.shape
    n_items = item_factors.shape[0]
    rows = max(1, chunk_cells // n_items)
    users, items = [], []
    for start in range(0, n_users, rows):  # a loop over chunks, not users
        stop = min(start + rows, n_users)
        logits = user_factors[start:stop] @ item_factors.T / np.sqrt(k) + item_bias  # (B, n_items)
        scores = logits + rng.gumbel(size=logits.shape)
        order = np.argsort(-scores, axis=1)  # (B, n_items), best first
        take = np.arange(n_items) < counts[start:stop, None]  # (B, n_items)
        users.append(np.nonzero(take)[0] + start)
        items.append(order[take])
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


def _split_codes(users: np.ndarray, counts: np.ndarray, valid_frac: float, test_frac: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Per interaction: 0 = train, 1 = valid, 2 = test; a random per-user order decides.

    ``users`` must be grouped by user with ``counts[u]`` rows for user ``u``.
    """
    n_users = len(counts)
    n_test = np.floor(test_frac * counts + rng.random(n_users)).astype(np.int64)  # stochastic rounding
    n_valid = np.floor(valid_frac * counts + rng.random(n_users)).astype(np.int64)
    n_test = np.minimum(n_test, counts - 1)  # keep >= 1 train interaction
    n_valid = np.minimum(n_valid, counts - 1 - n_test)
    order = np.lexsort((rng.random(len(users)), users))  # random order within each user
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.empty(len(users), dtype=np.int64)
    position[order] = np.arange(len(users)) - starts[users[order]]
    return np.where(position < n_test[users], 2, np.where(position < (n_test + n_valid)[users], 1, 0))


def make_synthetic(n_users: int = 2000, n_items: int = 1000, n_groups: int = 8,
                   modalities: Mapping[str, tuple[int, float]] | None = None,
                   mean_activity: float = 12, activity_skew: float = 1.0, valid_frac: float = 0.1,
                   test_frac: float = 0.2, seed: int = 0, name: str = "synthetic", latent_dim: int = 16,
                   return_groups: bool = False) -> RecDataset | tuple[RecDataset, dict[str, np.ndarray]]:
    """Build a synthetic :class:`RecDataset` with planted groups (see the module docstring).

    Args:
        n_users, n_items: matrix shape. Defaults 2000, 1000.
        n_groups: number of latent groups shared by users and items. Default 8.
        modalities: name -> (dimension, signal-to-noise ratio); 0 = pure noise.
            Default ``{"image": (64, 1.0), "text": (32, 0.5)}``.
        mean_activity: mean interactions per user (before clipping to [1, n_items // 2]). Default 12.
        activity_skew: sigma of the log-normal activity; 0 = every user has ``mean_activity``.
        valid_frac, test_frac: expected fraction of each user's interactions held out.
        seed: same seed -> identical dataset.
        name: the dataset's name.
        latent_dim: k, the dimension of the latent factors. Default 16.
        return_groups: also return ``{"user_groups", "item_groups", "user_factors",
            "item_factors"}`` (``RecDataset`` has no field for them).

    Returns:
        The dataset, or ``(dataset, groups)`` when ``return_groups``.
    """
    if modalities is None:
        modalities = {"image": (64, 1.0), "text": (32, 0.5)}
    if min(n_users, n_items, n_groups, latent_dim) < 1 or n_groups > n_items:
        raise ValueError(f"need n_users, n_items, latent_dim >= 1 and 1 <= n_groups <= n_items; "
                         f"got {n_users}, {n_items}, {latent_dim}, n_groups={n_groups}")
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise ValueError(f"need valid_frac, test_frac >= 0 with sum < 1; got {valid_frac}, {test_frac}")
    if mean_activity < 1 or activity_skew < 0:
        raise ValueError(f"need mean_activity >= 1 and activity_skew >= 0; got {mean_activity}, {activity_skew}")
    for modality, (dim, snr) in modalities.items():
        if int(dim) < 1 or snr < 0:
            raise ValueError(f"modality '{modality}': need dimension >= 1 and snr >= 0; got {(dim, snr)}")

    structure_seq, *feature_seqs = np.random.SeedSequence(seed).spawn(1 + len(modalities))
    rng = np.random.default_rng(structure_seq)
    # 1. groups and latent factors
    centres = rng.normal(size=(n_groups, latent_dim))  # (G, k)
    user_groups = rng.integers(n_groups, size=n_users)  # (n_users,)
    item_groups = rng.permutation(np.arange(n_items) % n_groups)  # balanced, every group non-empty
    user_factors = centres[user_groups] + 0.5 * rng.normal(size=(n_users, latent_dim))
    item_factors = centres[item_groups] + 0.5 * rng.normal(size=(n_items, latent_dim))
    item_bias = rng.normal(scale=0.5, size=n_items)  # popularity
    # 2. long-tailed activity, mean_activity on average before clipping
    sigma = float(activity_skew)
    counts = rng.lognormal(np.log(mean_activity) - sigma ** 2 / 2, sigma, size=n_users)
    counts = np.clip(np.round(counts), 1, max(1, n_items // 2)).astype(np.int64)
    # 3. interactions, 5. splits
    users, items = _sample_interactions(user_factors, item_factors, item_bias, counts, rng)
    codes = _split_codes(users, counts, valid_frac, test_frac, rng)
    splits = {split: sp.csr_matrix((np.ones(int((codes == c).sum()), dtype=np.float32),
                                    (users[codes == c], items[codes == c])), shape=(n_users, n_items))
              for c, split in enumerate(("train", "valid", "test"))}
    # 4. features: random projection of the latent signal + unit noise
    features = {}
    for (modality, (dim, snr)), seq in zip(modalities.items(), feature_seqs):
        frng = np.random.default_rng(seq)
        signal = item_factors @ frng.normal(size=(latent_dim, int(dim)))  # (n_items, d)
        signal = (signal - signal.mean(0)) / signal.std()
        features[modality] = (snr * signal + frng.normal(size=signal.shape)).astype(np.float32)

    groups = {"user_groups": user_groups, "item_groups": item_groups,
              "user_factors": user_factors, "item_factors": item_factors}
    dataset = RecDataset(**splits, item_features=features, name=name, source=f"make_synthetic(seed={seed})",
                         meta=groups)  # the planted truth, for analysis
    return (dataset, groups) if return_groups else dataset
