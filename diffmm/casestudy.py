"""The case study (RQ6, Fig. 5) as numbers: what the generated graphs A^m hold, over all users.

The paper shows one user's subgraph beside an item-similarity heatmap and reads off that the
items a modality's diffusion model links the user to resemble the user's items in that modality.
:func:`generation_measures` measures this for every user and modality, against two references
that a reader needs to judge it: the same number of **uniformly random** items per user, and
the same number of items **sampled by training popularity**. For each user u with the generated
items A^m_u (``model.generated[m]``, the top-k denoised items of Sec. 2.2.3), training items H_u
and test items T_u:

- consistency: for an edge (u, i), the cosine similarity, in modality m's item features,
  between item i and the user's training items other than i itself, H_u minus {i}; its mean over
  those items (``mean_cos``) and its maximum (``max_cos``). Leaving i out keeps an item the user
  already has from scoring its similarity 1 with itself;
- ``seen_share``: the share of a user's edges that are training items (i in H_u);
- ``hit_share``: the share of a user's edges that are test items (i in T_u).

Each is averaged over a user's edges, then over users, so every user counts once; ``*_sem`` is
the standard error of that mean over users (std / sqrt(users)). For the random and popular
references the two shares are exact expectations (|H_u| / n_items, the popularity mass of H_u),
so their ``sem`` is 0. Everything is sparse: per edge, the dot products with the user's own
training items only, in chunks; no users x items matrix is formed.

The numbers behind one user's case study are here too: :func:`case_users` picks users worth
drawing and :func:`modality_similarity` is the heatmap's matrix. The drawings of one user are in
:mod:`diffmm.viz.graphs`; :func:`generation_measures_figure` draws the measures (plotly is
imported only when it is called).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from diffmm.data.dataset import RecDataset

if TYPE_CHECKING:
    import plotly.graph_objects as go

SOURCES = ("generated", "generated_new", "random", "popular")  # generated_new: generated edges not in training
MEASURES = ("mean_cos", "max_cos", "seen_share", "hit_share")
MEASURE_TITLES = {"mean_cos": "mean cosine to the user's other training items",
                  "max_cos": "max cosine to the user's other training items",
                  "seen_share": "share already in the user's training items",
                  "hit_share": "share that are the user's test items (hits)"}
SOURCE_COLOURS = {"generated": "#dd8452", "generated_new": "#f2c29b", "random": "#8c8c8c", "popular": "#4c72b0"}
SOURCE_LABELS = {"generated": "generated (A^m)", "generated_new": "generated, not in training",
                 "random": "uniformly random items", "popular": "popularity-sampled items"}
CHUNK_ELEMENTS = 1 << 22  # feature values gathered per chunk of users (x 8 bytes): bounds memory on large data


# --------------------------------------------------------------------------- helpers
def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64; an all-zero row stays zero (cosine 0 to everything)."""
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def edge_list(matrix: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """The stored (user, item) pairs of a users x items matrix, sorted by user then item: (E,), (E,)."""
    csr = sp.csr_matrix(matrix)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr)), csr.indices.astype(np.int64)


def _padded(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, fill: int) -> np.ndarray:
    """Rows ``rows`` of a CSR structure as a (len(rows), longest row) array, short rows padded with ``fill``."""
    lengths = indptr[rows + 1] - indptr[rows]  # (B,)
    position = np.arange(int(lengths.max(initial=0)))  # (L,)
    inside = position[None, :] < lengths[:, None]  # (B, L)
    where = np.minimum(indptr[rows][:, None] + position[None, :], max(len(indices) - 1, 0))
    return np.where(inside, indices[where] if len(indices) else fill, fill)


def history_similarity(users: np.ndarray, items: np.ndarray, history: sp.csr_matrix,
                       unit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and max cosine between each edge's item and the user's *other* history items.

    Users are processed in chunks of similar history length: per chunk, the users' history
    features (B, n, d) and edge features (B, k, d) are gathered once and multiplied (batched
    matmul), so each history item is read once per user, not once per edge.

    Args:
        users, items: (E,) edges (u, i), in any order.
        history: (n_users, n_items) binary CSR with sorted indices, e.g. ``dataset.train``.
        unit: (n_items, d) unit-norm item features (:func:`unit_rows`).

    Returns:
        ``mean`` (E,), ``max`` (E,): over the items j in H_u minus {i} of cos(i, j) = unit[i] . unit[j];
        NaN where that set is empty. ``seen`` (E,): whether i is in H_u.
    """
    n_items, d = unit.shape
    padded_unit = np.vstack([unit, np.zeros((1, d))])  # row n_items: padding, cosine 0
    order = np.argsort(users, kind="stable")  # (E,) edges grouped by user
    edge_ptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=history.shape[0]))])  # (U+1,)
    n_history = np.diff(history.indptr)  # (U,)
    todo = np.flatnonzero((np.diff(edge_ptr) > 0) & (n_history > 0))
    todo = todo[np.argsort(n_history[todo], kind="stable")]  # similar lengths share a chunk: little padding
    k_max = int(np.diff(edge_ptr).max(initial=0))
    mean, best = np.full(len(users), np.nan), np.full(len(users), np.nan)
    seen = np.zeros(len(users), dtype=bool)
    start = 0
    while start < len(todo):  # a loop over chunks of users, each one vectorised
        cost = (np.arange(1, len(todo) - start + 1) * (n_history[todo[start:]] + k_max) * d)  # elements gathered
        stop = start + max(1, int(np.searchsorted(cost, CHUNK_ELEMENTS, side="right")))
        chunk = todo[start:stop]  # (B,) users
        past = _padded(history.indptr, history.indices, chunk, n_items)  # (B, n) H_u, padded
        edges = _padded(edge_ptr, order, chunk, -1)  # (B, k) positions of u's edges in users / items
        item = np.where(edges >= 0, items[np.maximum(edges, 0)], n_items)  # (B, k) i
        sims = padded_unit[item] @ padded_unit[past].transpose(0, 2, 1)  # (B, k, n) cos(i, j)
        itself = past[:, None, :] == item[:, :, None]  # (B, k, n) the pair (i, i)
        other = (past < n_items)[:, None, :] & ~itself  # (B, k, n) j in H_u minus {i}
        count = other.sum(2)  # (B, k)
        sums = np.where(other, sims, 0.0).sum(2)
        maxs = np.where(other, sims, -np.inf).max(2)
        ok = (edges >= 0) & (count > 0)
        mean[edges[ok]] = sums[ok] / count[ok]
        best[edges[ok]] = maxs[ok]
        real = edges >= 0
        seen[edges[real]] = (itself & (past < n_items)[:, None, :]).any(2)[real]
        start = stop
    return mean, best, seen


def _user_mean(users: np.ndarray, values: np.ndarray, n_users: int) -> tuple[float | None, float, int]:
    """Mean over users of each user's mean over their edges (NaN edges skipped), its standard error, users."""
    ok = ~np.isnan(values)
    n = np.bincount(users[ok], minlength=n_users)
    per_user = np.bincount(users[ok], weights=values[ok], minlength=n_users)[n > 0] / n[n > 0]  # (U',)
    if len(per_user) == 0:
        return None, 0.0, 0
    sem = float(per_user.std(ddof=1) / math.sqrt(len(per_user))) if len(per_user) > 1 else 0.0
    return float(per_user.mean()), sem, int(len(per_user))


def _expected_share(rows: sp.csr_matrix, probability: np.ndarray, with_edges: np.ndarray) -> float:
    """Mean over the users ``with_edges`` of P(a drawn item is in the user's row), items drawn with ``probability``."""
    return float((rows @ probability)[with_edges].mean())


# ----------------------------------------------------------- one user's case study
def case_users(model, dataset: RecDataset, n: int = 10, modality: str | None = None) -> np.ndarray:
    """Users worth a case study, best first: most generated items that are also test items (hits,
    summed over modalities or for ``modality``), then fewest training items (sparse users are where
    generated edges matter), then most test items."""
    modalities = list(model.generated) if modality is None else [modality]
    hits = sum(model.generated[m].multiply(dataset.test).tocsr().getnnz(axis=1) for m in modalities)  # (U,)
    order = np.lexsort((-np.diff(dataset.test.indptr), dataset.user_activity(), -np.asarray(hits)))
    return order[:n]


def modality_similarity(source, items: Sequence[int], modality: str) -> np.ndarray:
    """Cosine similarity of the items' features in one modality, shape (k, k).

    Args:
        source: a :class:`RecDataset` (raw features ``item_features[modality]``) or a DiffMM model
            (its learned projections ``modal_features()[modality]``, Trans(f^m) of Eq. 15).
        items: k item ids.
        modality: a modality name.

    Returns:
        Symmetric float64 matrix with values in [-1, 1] and ones on the diagonal (also for an
        all-zero feature row, whose similarity to every other item is 0).
    """
    items = np.asarray(items, dtype=np.int64)
    if isinstance(source, RecDataset):
        if modality not in source.item_features:
            raise ValueError(f"unknown modality '{modality}'; the dataset has {source.modalities}")
        feats = source.item_features[modality][items]
    elif hasattr(source, "modal_features"):
        with torch.no_grad():
            all_feats = source.modal_features()
        if modality not in all_feats:
            raise ValueError(f"unknown modality '{modality}'; the model has {list(all_feats)}")
        feats = all_feats[modality][torch.as_tensor(items, device=all_feats[modality].device)].cpu().numpy()
    else:
        raise ValueError(f"source must be a RecDataset or a model with modal_features(), got {type(source).__name__}")
    unit = unit_rows(feats)  # (k, d)
    sim = np.clip(unit @ unit.T, -1.0, 1.0)  # (k, k)
    sim = (sim + sim.T) / 2  # exact symmetry despite rounding
    np.fill_diagonal(sim, 1.0)
    return sim


# ------------------------------------------------------------------------ measures
def generation_measures(model, dataset: RecDataset, seed: int = 0) -> dict[str, Any]:
    """How the generated graphs A^m relate to each user's history and future, against random and popular items.

    For each modality m of ``model.generated`` and every user u with generated edges (A^m_u, the
    k items the modality's reverse diffusion scores highest, Sec. 2.2.3):

    - ``mean_cos``: mean over u's edges (u, i) of mean_{j in H_u minus {i}} cos(f^m_i, f^m_j), with
      H_u the training items and f^m the dataset's item features of modality m; then mean over users.
    - ``max_cos``: the same with max_{j in H_u minus {i}} in place of the inner mean.
    - ``seen_share``: mean over users of |A^m_u intersect H_u| / |A^m_u|.
    - ``hit_share``: mean over users of |A^m_u intersect T_u| / |A^m_u|, T_u the test items.

    Sources: ``generated`` (the edges of A^m), ``generated_new`` (those not in H_u; the cosine
    measures only), ``random`` (per user, as many items as u has edges, drawn uniformly from all
    items) and ``popular`` (drawn with probability proportional to training popularity). The
    references' cosines are sampled with ``numpy.random.default_rng(seed)``; their shares are the
    exact expectations: mean over users of |H_u| / n_items (random) or of the popularity mass of
    H_u (popular), and likewise with T_u. ``<measure>_sem`` is the standard error over users
    (0 for the exact expectations); a user without another training item has no cosine and is
    left out of the cosine means (``users_scored``).

    Args:
        model: a trained DiffMM, or any object with ``generated``: modality -> (n_users, n_items)
            sparse binary matrix.
        dataset: the dataset it was trained on (``train``, ``test``, ``item_features[m]``).
        seed: seed of the random and popular reference items. Default 0.

    Returns:
        A JSON-serialisable dict: ``k`` (most edges of any user), ``users`` (users with generated
        edges), ``items``, ``seed`` and ``modalities``: m -> {``edges``, ``new_edges`` (not training
        items; as test items are never training items, ``hit_share * edges / new_edges`` is the hit
        share among new edges), ``users_scored``, ``users_scored_new`` (users in the cosine means of
        ``generated`` and ``generated_new``), and for
        each measure ``<measure>`` and ``<measure>_sem``: source -> float, or None where undefined}.
    """
    generated = getattr(model, "generated", None)
    if not isinstance(generated, dict) or not generated:
        raise ValueError(f"{type(model).__name__} has no generated graphs (expected .generated: "
                         "modality -> users x items matrix, as a trained DiffMM has)")
    shape = (dataset.n_users, dataset.n_items)
    popularity = dataset.item_popularity().astype(np.float64)
    popularity /= popularity.sum()  # (I,)
    uniform = np.full(dataset.n_items, 1.0 / dataset.n_items)  # (I,)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"k": 0, "users": 0, "items": int(dataset.n_items), "seed": int(seed), "modalities": {}}
    for m, matrix in generated.items():
        if m not in dataset.item_features:
            raise ValueError(f"model.generated has modality '{m}' but dataset '{dataset.name}' has features for "
                             f"{dataset.modalities} only")
        if matrix.shape != shape:
            raise ValueError(f"model.generated['{m}'] has shape {matrix.shape}; dataset '{dataset.name}' is {shape}")
        users, items = edge_list(matrix)  # (E,), (E,)
        if len(users) == 0:
            raise ValueError(f"model.generated['{m}'] has no edges: train the model (or call "
                             "model.generate_graphs()) before measuring what it generates")
        per_user = np.bincount(users, minlength=dataset.n_users)  # (U,) edges per user
        with_edges = per_user > 0
        unit = unit_rows(dataset.item_features[m])  # (I, d)
        draws = {"generated": items, "random": rng.integers(0, dataset.n_items, len(items)),
                 "popular": rng.choice(dataset.n_items, len(items), p=popularity)}
        cosines, seen = {}, None
        for source, drawn in draws.items():
            mean, best, is_seen = history_similarity(users, drawn, dataset.train, unit)
            cosines[source] = (mean, best)
            if source == "generated":
                seen = is_seen
                cosines["generated_new"] = (np.where(seen, np.nan, mean), np.where(seen, np.nan, best))
        in_test = np.asarray(dataset.test[users, items]).ravel() != 0  # (E,) the edge is a test interaction
        stats: dict[str, Any] = {"edges": int(len(users)), "new_edges": int((~seen).sum()), "users_scored": 0,
                                 "users_scored_new": 0}
        for name, index in (("mean_cos", 0), ("max_cos", 1)):
            values = {s: _user_mean(users, cosines[s][index], dataset.n_users) for s in SOURCES}
            stats[name] = {s: v[0] for s, v in values.items()}
            stats[f"{name}_sem"] = {s: v[1] for s, v in values.items()}
        stats["users_scored"], stats["users_scored_new"] = values["generated"][2], values["generated_new"][2]
        seen_rate = np.bincount(users, weights=seen, minlength=dataset.n_users)[with_edges] / per_user[with_edges]
        hit_rate = np.bincount(users, weights=in_test, minlength=dataset.n_users)[with_edges] / per_user[with_edges]
        for name, rate, rows in (("seen_share", seen_rate, dataset.train), ("hit_share", hit_rate, dataset.test)):
            stats[name] = {"generated": float(rate.mean()),
                           "random": _expected_share(rows, uniform, with_edges),
                           "popular": _expected_share(rows, popularity, with_edges)}
            sem = float(rate.std(ddof=1) / math.sqrt(len(rate))) if len(rate) > 1 else 0.0
            stats[f"{name}_sem"] = {"generated": sem, "random": 0.0, "popular": 0.0}
        out["modalities"][m] = stats
        out["k"] = max(out["k"], int(per_user.max()))
        out["users"] = max(out["users"], int(with_edges.sum()))
    return out


# ----------------------------------------------------------------- table and figure
def generation_measures_frame(measures: dict[str, Any]) -> pd.DataFrame:
    """:func:`generation_measures` as a tidy table.

    Returns:
        One row per (modality, measure, source): ``modality``, ``measure`` (see :data:`MEASURES`),
        ``source`` ('generated', 'generated_new', 'random', 'popular'), ``value`` and ``sem``
        (NaN where undefined, e.g. no generated item outside the training items).
    """
    rows = [{"modality": m, "measure": measure, "source": source,
             "value": np.nan if value is None else float(value),
             "sem": float(stats[f"{measure}_sem"].get(source) or 0.0) if value is not None else np.nan}
            for m, stats in measures["modalities"].items() for measure in MEASURES
            for source, value in stats[measure].items()]
    return pd.DataFrame(rows, columns=["modality", "measure", "source", "value", "sem"])


def generation_measures_figure(measures: dict[str, Any], title: str | None = None,
                               note: str | None = None) -> go.Figure:
    """Generated vs random vs popular items, per modality: one panel per measure, grouped bars.

    Error bars are +-1.96 standard errors over users (an approximate 95% interval); the shares of
    the random and popular references are exact expectations and have none.

    Args:
        measures: the dict of :func:`generation_measures`.
        title: the figure title; default names k and the number of users.
        note: a second, smaller title line, e.g. 'brief training: 3 epochs'.

    Returns:
        A plotly ``Figure`` whose width follows the page (autosize), 680 px high.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    frame = generation_measures_frame(measures)
    modalities = list(measures["modalities"])
    fig = make_subplots(rows=2, cols=2, subplot_titles=[MEASURE_TITLES[m] for m in MEASURES],
                        horizontal_spacing=0.1, vertical_spacing=0.16)
    for n, measure in enumerate(MEASURES):
        row, col = divmod(n, 2)
        part = frame[frame["measure"] == measure]
        for source in SOURCES:
            bars = part[part["source"] == source].set_index("modality").reindex(modalities)
            if bars["value"].isna().all():
                continue
            half = (1.96 * bars["sem"].fillna(0.0)).tolist()  # (M,) 95% interval half-width
            fig.add_trace(go.Bar(
                x=modalities, y=bars["value"], name=SOURCE_LABELS[source], legendgroup=source,
                showlegend=n == 0, marker_color=SOURCE_COLOURS[source],
                error_y=dict(type="data", array=half, visible=any(h > 0 for h in half), thickness=1.2, width=3),
                customdata=[[h, SOURCE_LABELS[source]] for h in half],
                hovertemplate="%{customdata[1]}<br>modality %{x}<br>%{y:.4f} ± %{customdata[0]:.4f}<extra></extra>"),
                row=row + 1, col=col + 1)
        half = 1.96 * part["sem"].fillna(0.0)
        low, high = min(0.0, (part["value"] - half).min()), max(0.0, (part["value"] + half).max())
        fig.update_yaxes(range=[1.1 * low, 1.1 * high or 1.0], row=row + 1, col=col + 1)  # headroom for the bars
        fig.update_xaxes(title_text="modality" if row == 1 else None, row=row + 1, col=col + 1)
    fig.update_yaxes(title_text="cosine", row=1, col=1)
    fig.update_yaxes(title_text="share of edges", row=2, col=1)
    head = title or (f"generated edges vs random and popular items: k={measures['k']} per user, "
                     f"{measures['users']} users")
    fig.update_layout(
        title=dict(text=head + (f"<br><sup>{note}</sup>" if note else ""), x=0.01, xanchor="left", y=1.0,
                   yref="container", yanchor="top", pad=dict(t=16)),
        barmode="group", template="plotly_white", height=680, margin=dict(l=70, r=30, t=112 if note else 96, b=110),
        legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.14, yanchor="top", title_text="items"))
    for annotation in fig.layout.annotations:  # subplot titles: smaller than the figure title
        annotation.font.size = 13
    return fig
