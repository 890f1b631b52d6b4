"""Dataset cards: the paper's Table 1, and the user-activity distribution behind its sparsity figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # the dataset module uses this one (RecDataset.stats): no import back at run time
    from diffmm.data.dataset import RecDataset


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
        counts = {split: data.split(split).nnz for split in data.SPLITS}
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


DEFAULT_BINS = (0, 5, 10, 20, 50, np.inf)  # training interactions per user, right-open groups


def group_edges(activity: np.ndarray, bins: Sequence[float] | int) -> np.ndarray:
    """Increasing group edges: ``bins`` itself, or for an int q the q-quantiles of ``activity``
    (rounded up to whole interactions; duplicate edges merged, so there may be fewer groups)."""
    if isinstance(bins, (int, np.integer)):
        if bins < 1 or len(activity) == 0:
            raise ValueError(f"quantile groups need bins >= 1 and at least one user, got bins={bins}, "
                             f"{len(activity)} users")
        inner = np.ceil(np.quantile(activity, np.linspace(0, 1, int(bins) + 1)[1:-1]))
        return np.unique(np.concatenate(([activity.min()], inner, [np.inf])).astype(np.float64))
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be >= 2 increasing edges or an int, got {bins!r}")
    return edges


def activity_groups(activity: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Group index per user (group i = ``edges[i] <= activity < edges[i+1]``; -1 = outside) and labels '[lo, hi)'."""
    which = np.searchsorted(edges, activity, side="right") - 1
    which[(which < 0) | (which >= len(edges) - 1)] = -1

    def edge(x: float) -> str:
        return "inf" if np.isinf(x) else f"{x:g}"

    return which, [f"[{edge(lo)}, {edge(hi)})" for lo, hi in zip(edges[:-1], edges[1:])]


def activity_distribution(dataset: RecDataset, bins: Sequence[float] | int = DEFAULT_BINS) -> pd.DataFrame:
    """Users per group of training activity (number of training interactions).

    Group ``i`` holds users with ``edges[i] <= activity < edges[i+1]``; users outside every group
    are not counted. ``bins``: the edges, or an int q for q quantile groups of the *test users'*
    activity (the users a per-user test table holds, so the groups are those of
    :func:`diffmm.viz.sparsity_table` with the same q).

    Returns:
        One row per group, columns: ``low``, ``high``, ``users``, ``share`` (of all users),
        ``test users`` (users with >= 1 test interaction), ``test interactions``;
        index labels like ``'[5, 10)'``.
    """
    activity = dataset.user_activity()                      # (n_users,)
    test_counts = np.diff(dataset.test.indptr)              # (n_users,)
    edges = group_edges(activity[test_counts > 0], bins)
    which, labels = activity_groups(activity, edges)
    inside = which >= 0
    n_bins = len(edges) - 1
    users = np.bincount(which[inside], minlength=n_bins)
    test_users = np.bincount(which[inside], weights=test_counts[inside] > 0, minlength=n_bins)
    test_inter = np.bincount(which[inside], weights=test_counts[inside], minlength=n_bins)
    return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "users": users,
                         "share": users / max(dataset.n_users, 1),
                         "test users": test_users.astype(np.int64),
                         "test interactions": test_inter.astype(np.int64)},
                        index=pd.Index(labels, name="train interactions"))
