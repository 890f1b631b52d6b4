"""All-rank top-K evaluation (Sec. 3.1.2): every user is ranked against every item.

For each evaluated user the model scores all items; items seen in training (and, when
evaluating on test, in validation) are masked out; the top max(K) items are compared to the
user's held-out items. Recall@K = hits / n_held_out; Precision@K = hits / K;
NDCG@K = DCG@K / IDCG@K with IDCG over min(n_held_out, K) ideal positions; Hit@K = [hits > 0].
Users without held-out items are skipped and counted.

Work is batched over users so memory stays at (batch, n_items), never users x items.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from diffmm.data.dataset import RecDataset
from diffmm.graph import SparseRows
from diffmm.utils import atomic_path

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # (B,) user ids -> (B, n_items) scores
METRICS = ("recall", "ndcg", "precision", "hit")


@dataclass
class EvalResult:
    """Mean metrics, the per-user columns, and how many users were skipped (no held-out items)."""

    metrics: dict[str, float]
    columns: dict[str, np.ndarray] = field(repr=False)  # user, n_train, n_<split>, then one per metric@K
    n_skipped: int
    topk: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # users, items, scores

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    @functools.cached_property
    def per_user(self) -> pd.DataFrame:
        """The per-user table (one row per evaluated user), built on first use."""
        import pandas as pd
        return pd.DataFrame(self.columns)


def evaluate(
    score_fn: ScoreFn,
    dataset: RecDataset,
    split: str = "test",
    ks: Sequence[int] = (10, 20, 50),
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    return_topk: bool = False,
    mask_valid: bool = True,
) -> EvalResult:
    """Evaluate a scoring function with the all-rank protocol.

    Args:
        score_fn: maps a 1-d LongTensor of user ids to a (B, n_items) score tensor.
        dataset: the data; ``split`` selects the held-out items ('valid' or 'test').
        split: 'valid' masks train items; 'test' masks train and valid items.
        ks: cut-offs, all computed from one top-max(ks) pass.
        batch_size: users per batch (bounds memory at batch_size x n_items).
        device: where the score tensor lives.
        return_topk: also keep each user's top-max(ks) items and scores (for export).
        mask_valid: on 'test', mask validation items too (False: training items only, as the authors' code).
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got '{split}'")
    device = torch.device(device)
    ks = sorted(int(k) for k in ks)
    if not ks or ks[0] < 1 or len(set(ks)) < len(ks):
        raise ValueError(f"ks must be distinct positive cut-offs, got {tuple(ks)}")
    kmax = min(max(ks), dataset.n_items)
    held_out = dataset.split(split)
    seen = SparseRows(dataset.train if split == "valid" or not mask_valid else dataset.train + dataset.valid, device)
    n_held = np.diff(held_out.indptr)
    users = np.flatnonzero(n_held > 0)
    n_skipped = dataset.n_users - len(users)

    discounts = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64, device=device))  # (kmax,)
    ideal = torch.cumsum(discounts, 0)  # IDCG for 1..kmax held-out items
    k_index = torch.tensor([min(k, kmax) - 1 for k in ks], device=device)
    kk = torch.tensor(ks, device=device, dtype=torch.float64)
    # held-out pairs as sorted keys user * n_items + item: a top-K hit is one searchsorted lookup
    rows = np.repeat(np.arange(dataset.n_users, dtype=np.int64), n_held)
    keys = torch.from_numpy(rows * dataset.n_items + held_out.indices.astype(np.int64)).to(device)
    columns: dict[str, list[torch.Tensor]] = {f"{m}@{k}": [] for m in METRICS for k in ks}
    top_items, top_scores = [], []
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            batch = users[start:start + batch_size]
            batch_t = torch.from_numpy(batch).to(device)
            scores = score_fn(batch_t).float()  # (B, n_items)
            scores[seen.coordinates(batch_t)] = -torch.inf  # never recommend seen items
            top_val, top_idx = torch.topk(scores, kmax, dim=1)  # (B, kmax)
            query = batch_t[:, None] * dataset.n_items + top_idx  # (B, kmax)
            found = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
            # a masked item is no recommendation: picked only when a user has fewer unseen items than kmax
            hits = ((keys[found] == query) & (top_val > -torch.inf)).double()  # (B, kmax)
            n_true = torch.from_numpy(n_held[batch]).to(device).double()  # (B,)
            cum_hits = torch.cumsum(hits, 1)[:, k_index]  # (B, len(ks))
            dcg = torch.cumsum(hits * discounts, 1)[:, k_index]
            idcg = ideal[(torch.minimum(n_true[:, None], kk[None]) - 1).long().clamp(max=kmax - 1)]
            for j, k in enumerate(ks):
                columns[f"recall@{k}"].append(cum_hits[:, j] / n_true)
                columns[f"precision@{k}"].append(cum_hits[:, j] / k)
                columns[f"ndcg@{k}"].append(dcg[:, j] / idcg[:, j])
                columns[f"hit@{k}"].append((cum_hits[:, j] > 0).double())
            if return_topk:
                top_items.append(top_idx.cpu().numpy())
                top_scores.append(top_val.cpu().numpy())
    per_user = {"user": users, "n_train": np.diff(dataset.train.indptr)[users], f"n_{split}": n_held[users],
                **{name: torch.cat(vals).cpu().numpy() if vals else np.zeros(0) for name, vals in columns.items()}}
    metrics = {name: float(per_user[name].mean()) if len(users) else float("nan") for name in columns}
    topk = None
    if return_topk:
        topk = (users, np.concatenate(top_items) if top_items else np.zeros((0, kmax), np.int64),
                np.concatenate(top_scores) if top_scores else np.zeros((0, kmax), np.float32))
    return EvalResult(metrics, per_user, n_skipped, topk)


def topk_frame(result: EvalResult, item_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table (user, rank, item, score[, item_name]) of the top-K lists of ``evaluate(..., return_topk=True)``."""
    import pandas as pd
    if result.topk is None:
        raise ValueError("this EvalResult has no top-K lists; call evaluate(..., return_topk=True)")
    users, items, scores = result.topk
    k = items.shape[1]
    frame = pd.DataFrame({
        "user": np.repeat(users, k),
        "rank": np.tile(np.arange(1, k + 1), len(users)),
        "item": items.reshape(-1),
        "score": scores.reshape(-1),
    })
    if item_names is not None:
        frame["item_name"] = np.asarray(item_names, dtype=object)[frame["item"].to_numpy()]
    return frame


def export_topk(result: EvalResult, path: str | Path, item_names: Sequence[str] | None = None,
                run_id: str | None = None) -> Path:
    """Write the top-K lists to CSV (or parquet if the suffix is .parquet), atomically; ``run_id`` as a column."""
    path = Path(path)
    frame = topk_frame(result, item_names)
    if run_id is not None:
        frame["run_id"] = run_id
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return path
