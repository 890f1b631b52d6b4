"""Dataset cards: the paper's Table 1, and the user-activity distribution behind its sparsity figure."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from diffmm.data.dataset import SPLITS, RecDataset


def dataset_card(*datasets: RecDataset) -> pd.DataFrame:
    """Table 1 of the paper: one row per dataset.

    Columns: ``users``, ``items``, ``interactions`` (all splits), ``train``, ``valid``,
    ``test``, ``sparsity (%)`` = 100 * (1 - interactions / (users * items)), users and items
    without a training interaction,
    ``modalities`` (e.g. ``'image:128, audio:128'``) and one ``<modality> dim`` column per
    modality (empty where a dataset lacks it). Index: the dataset names.
    """
    if not datasets:
        raise ValueError("dataset_card needs at least one dataset")
    rows = []
    for data in datasets:
        counts = {split: data.split(split).nnz for split in SPLITS}
        total = sum(counts.values())
        row = {"dataset": data.name, "users": data.n_users, "items": data.n_items, "interactions": total,
               **counts, "sparsity (%)": 100.0 * (1.0 - total / (data.n_users * data.n_items)),
               "users without train": int((data.user_activity() == 0).sum()),
               "items without train": int((data.item_popularity() == 0).sum()),
               "modalities": ", ".join(f"{m}:{f.shape[1]}" for m, f in data.item_features.items())}
        row.update({f"{m} dim": f.shape[1] for m, f in data.item_features.items()})
        rows.append(row)
    card = pd.DataFrame(rows).set_index("dataset")
    dims = [c for c in card.columns if c.endswith(" dim")]
    card[dims] = card[dims].astype("Int64")  # integer dims, <NA> where a dataset lacks the modality
    return card


def activity_distribution(dataset: RecDataset,
                          bins: Sequence[float] = (0, 5, 10, 20, 50, np.inf)) -> pd.DataFrame:
    """Users per bin of training activity (number of training interactions).

    Bin ``i`` holds users with ``bins[i] <= activity < bins[i+1]``; users outside every bin
    are not counted.

    Returns:
        One row per bin, columns: ``low``, ``high``, ``users``, ``share`` (of all users),
        ``test users`` (users with >= 1 test interaction), ``test interactions``;
        index labels like ``'[5, 10)'``.
    """
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be >= 2 increasing edges, got {list(bins)}")
    activity = dataset.user_activity()                      # (n_users,)
    test_counts = np.diff(dataset.test.indptr)              # (n_users,)
    which = np.searchsorted(edges, activity, side="right") - 1  # bin index; -1 or len-1 = outside
    inside = (which >= 0) & (which < len(edges) - 1)
    n_bins = len(edges) - 1
    users = np.bincount(which[inside], minlength=n_bins)
    test_users = np.bincount(which[inside], weights=test_counts[inside] > 0, minlength=n_bins)
    test_inter = np.bincount(which[inside], weights=test_counts[inside], minlength=n_bins)

    def edge(x: float) -> str:
        return "inf" if np.isinf(x) else f"{x:g}"

    labels = [f"[{edge(lo)}, {edge(hi)})" for lo, hi in zip(edges[:-1], edges[1:])]
    return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "users": users,
                         "share": users / max(dataset.n_users, 1),
                         "test users": test_users.astype(np.int64),
                         "test interactions": test_inter.astype(np.int64)},
                        index=pd.Index(labels, name="train interactions"))
