"""What the diffusion model generated for one user: the subgraph, item similarity, the case study (RQ6).

For a user u, :func:`user_subgraph` collects u's training items, test items and the items each
modality's generated graph A^m (``DiffMM.generated[m]``, the top-k denoised items of Sec. 2.2.3)
links u to. :func:`case_study_figure` draws it beside the cosine similarity of the items'
features in that modality: items that A^m adds should resemble the user's training items in
that modality, and the generated items the user later interacted with (test) are starred.
"""

from __future__ import annotations

from typing import Sequence

import networkx as nx
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from diffmm.data.dataset import RecDataset

ROLE_ORDER = ("generated", "train", "test")  # items are listed top to bottom in this order
EDGE_COLOURS = {"train": "#4c72b0", "test": "#55a868"}
MODALITY_COLOURS = ("#dd8452", "#8172b3", "#c44e52", "#937860", "#da8bc3", "#8c8c8c")


# ---------------------------------------------------------------------- subgraph
def _item_name(dataset: RecDataset, item: int) -> str:
    return str(dataset.item_names[item]) if dataset.item_names is not None else f"item {item}"


def _unit_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _closest(items: np.ndarray, reference: np.ndarray, unit_features: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` of ``items``: those most cosine-similar (max over ``reference``) to the reference items."""
    if limit is None or len(items) <= limit:
        return items
    if len(reference) == 0:
        return items[:limit]
    closeness = (unit_features[items] @ unit_features[reference].T).max(1)  # (len(items),)
    return np.sort(items[np.argsort(-closeness, kind="stable")[:limit]])


def user_subgraph(model, dataset: RecDataset, user: int, modality: str | None = None,
                  max_items: int | None = 30) -> nx.MultiGraph:
    """The user, their training and test items, and the items each generated graph A^m links them to.

    Args:
        model: a trained :class:`~diffmm.models.DiffMM` (reads ``model.generated[m]``, users x items).
        dataset: the dataset the model was trained on (train / test rows, item names).
        user: user id.
        modality: only this modality's generated edges; None (default) = every modality.
        max_items: at most this many training items, and at most this many test items besides
            the generated ones, are kept: those whose features in ``modality`` (default: the first
            one) are most similar (cosine, max over the generated items) to the generated items.
            Generated items are always kept. None keeps every item.

    Returns:
        A ``networkx.MultiGraph``. Nodes ``("user", u)`` and ``("item", i)`` with attributes
        ``kind`` ('user' / 'item'), ``index``, ``label`` (title or 'item i') and, for items,
        ``roles`` (sorted subset of 'train', 'test', 'generated:<m>'). One edge per source,
        keyed and attributed ``source`` = 'train' / 'test' / 'generated:<m>', so an item that is
        both a training item and generated has two edges. ``G.graph`` holds ``user``,
        ``modalities``, ``n_train``, ``n_test`` (before ``max_items``), ``dropped_train_items`` and
        ``dropped_test_items``.
    """
    generated = getattr(model, "generated", None)
    if not isinstance(generated, dict) or not generated:
        raise ValueError(f"{type(model).__name__} has no generated graphs (expected a DiffMM with .generated)")
    if not 0 <= user < dataset.n_users:
        raise ValueError(f"user must be in [0, {dataset.n_users}), got {user}")
    modalities = list(generated) if modality is None else [modality]
    for m in modalities:
        if m not in generated:
            raise ValueError(f"unknown modality '{m}'; the model generated {list(generated)}")
    edges = {f"generated:{m}": generated[m][user].indices for m in modalities}  # (k,) items per modality
    added = np.unique(np.concatenate(list(edges.values())))
    train, test = dataset.train[user].indices, dataset.test[user].indices
    features = _unit_rows(dataset.item_features[modality or modalities[0]])
    kept_train = _closest(train, added, features, max_items)
    hits = np.intersect1d(test, added)  # generated test items are always kept
    kept_test = np.union1d(hits, _closest(np.setdiff1d(test, added), added, features, max_items))
    edges = {"train": kept_train, "test": kept_test, **edges}

    G = nx.MultiGraph(user=int(user), modalities=modalities, n_train=len(train), n_test=len(test),
                      dropped_train_items=len(train) - len(kept_train), dropped_test_items=len(test) - len(kept_test))
    label = str(dataset.user_names[user]) if dataset.user_names is not None else f"user {user}"
    G.add_node(("user", int(user)), kind="user", index=int(user), label=label)
    for source, items in edges.items():
        for item in items.tolist():
            node = ("item", item)
            if node not in G:
                G.add_node(node, kind="item", index=item, label=_item_name(dataset, item), roles=[])
            G.nodes[node]["roles"] = sorted({*G.nodes[node]["roles"], source})
            G.add_edge(("user", int(user)), node, key=source, source=source)
    return G


def _item_rank(roles: Sequence[str]) -> tuple[int, int]:
    """Sort key (ROLE_ORDER): generated items first (generated-and-test at the very top), then train, then test."""
    if any(r.startswith("generated") for r in roles):
        return 0, 0 if "test" in roles else 1
    return (1 if "train" in roles else 2), 0


def _ordered_items(G: nx.MultiGraph) -> list:
    items = [n for n, d in G.nodes(data=True) if d["kind"] == "item"]
    return sorted(items, key=lambda n: (_item_rank(G.nodes[n]["roles"]), n[1]))


def _edge_colour(source: str, modalities: Sequence[str]) -> str:
    if source.startswith("generated:"):
        m = source.split(":", 1)[1]
        return MODALITY_COLOURS[modalities.index(m) % len(MODALITY_COLOURS)] if m in modalities else "#333333"
    return EDGE_COLOURS.get(source, "#333333")


def _bend(source: str, modalities: Sequence[str]) -> float:
    """How far an edge curves: 0 for train / test, more for each generated modality, so overlapping
    edges between the same user and item stay visible."""
    if not source.startswith("generated:"):
        return 0.0
    m = source.split(":", 1)[1]
    return 0.12 * (1 + (list(modalities).index(m) if m in modalities else 0))


def _short(text: str, width: int = 36) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _subgraph_traces(G: nx.MultiGraph, item_names: Sequence[str] | None = None) -> list[go.Scatter]:
    """Bipartite layout: the user at x=0, the items in a column at x=1; one line trace per edge source."""
    items = _ordered_items(G)
    y = {node: 1.0 - k / max(len(items) - 1, 1) for k, node in enumerate(items)}  # (top=1 .. bottom=0)
    user = ("user", G.graph["user"])
    y[user] = 0.5
    sources = sorted({d["source"] for *_, d in G.edges(keys=True, data=True)},
                     key=lambda s: (s.startswith("generated"), s))
    modalities = list(G.graph.get("modalities", []))
    traces = []
    curve = np.linspace(0.0, 1.0, 21)[None, :, None]  # (1, 21, 1) points along each edge
    for source in sources:
        ends = np.array([y[b if a == user else a] for a, b, key in G.edges(keys=True) if key == source])  # (E,)
        start = np.array([0.0, y[user]])  # (2,)
        end = np.stack([np.ones_like(ends), ends], 1)  # (E, 2)
        normal = np.stack([-(end - start)[:, 1], (end - start)[:, 0]], 1)  # (E, 2), perpendicular to the chord
        control = (start + end) / 2 + _bend(source, modalities) * normal  # generated edges curve away from train
        points = ((1 - curve) ** 2 * start + 2 * (1 - curve) * curve * control[:, None]
                  + curve ** 2 * end[:, None])  # (E, 21, 2) quadratic Bezier
        gaps = np.full((len(ends), 1, 2), np.nan)  # plotly breaks a line at NaN
        xs, ys = np.concatenate([points, gaps], 1).reshape(-1, 2).T
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", name=source, hoverinfo="skip", connectgaps=False,
                                 line=dict(color=_edge_colour(source, modalities), width=2,
                                           dash="dot" if source == "test" else "solid")))
    labels = [str(item_names[n[1]]) if item_names is not None else G.nodes[n]["label"] for n in items]
    roles = [G.nodes[n]["roles"] for n in items]
    hit = ["test" in r and any(x.startswith("generated") for x in r) for r in roles]
    colours = [_edge_colour(next((x for x in r if x.startswith("generated")), r[0]), modalities) for r in roles]
    traces.append(go.Scatter(
        x=[1.0] * len(items), y=[y[n] for n in items], mode="markers+text", name="items", showlegend=False,
        text=[_short(t) for t in labels], textposition="middle right",
        marker=dict(size=[16 if h else 10 for h in hit], color=colours, symbol=["star" if h else "circle" for h in hit],
                    line=dict(color="black", width=1)),
        customdata=[[f"{n[1]}", t, ", ".join(r)] for n, t, r in zip(items, labels, roles)],
        hovertemplate="item %{customdata[0]}: %{customdata[1]}<br>%{customdata[2]}<extra></extra>"))
    traces.append(go.Scatter(x=[0.0], y=[y[user]], mode="markers+text", text=[G.nodes[user]["label"]],
                             textposition="middle left", name="user", showlegend=False,
                             marker=dict(size=18, color="black", symbol="diamond")))
    return traces


def subgraph_figure(G: nx.MultiGraph, item_names: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """Draw :func:`user_subgraph`: user left, items right (generated, then train, then test), edges
    coloured by source; a star marks a generated item that is also a test item (a hit).

    Args:
        G: the subgraph.
        item_names: overrides the node labels (indexed by item id), e.g. ``dataset.item_names``.
    """
    fig = go.Figure(_subgraph_traces(G, item_names))
    _style_graph_axes(fig)
    n_items = sum(1 for _, d in G.nodes(data=True) if d["kind"] == "item")
    fig.update_layout(title=title or f"user {G.graph['user']}: training, test and generated items" + _dropped_note(G),
                      height=max(400, 22 * n_items), template="plotly_white", legend_title_text="edge")
    return fig


def _dropped_note(G: nx.MultiGraph) -> str:
    dropped = [f"{G.graph.get(f'dropped_{s}_items', 0)} {s}" for s in ("train", "test")
               if G.graph.get(f"dropped_{s}_items", 0)]
    return f" ({' and '.join(dropped)} items not shown)" if dropped else ""


def _style_graph_axes(fig: go.Figure, row: int | None = None, col: int | None = None) -> None:
    fig.update_xaxes(visible=False, range=[-0.35, 2.2], row=row, col=col)
    fig.update_yaxes(visible=False, range=[-0.05, 1.05], row=row, col=col)


# -------------------------------------------------------------------- similarity
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
    unit = _unit_rows(feats)  # (k, d)
    sim = np.clip(unit @ unit.T, -1.0, 1.0)  # (k, k)
    sim = (sim + sim.T) / 2  # exact symmetry despite rounding
    np.fill_diagonal(sim, 1.0)
    return sim


def similarity_heatmap(sim: np.ndarray, labels: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """A (k, k) similarity matrix as a heatmap, rows and columns labelled (e.g. movie titles)."""
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (k, k) matrix, got shape {sim.shape}")
    labels = [str(x) for x in (labels if labels is not None else range(len(sim)))]
    if len(labels) != len(sim):
        raise ValueError(f"{len(labels)} labels for a {sim.shape} matrix")
    fig = go.Figure(_heatmap_trace(sim, labels))
    fig.update_layout(title=title or "cosine similarity", template="plotly_white", height=max(400, 20 * len(sim) + 150),
                      yaxis_autorange="reversed")
    return fig


def _heatmap_trace(sim: np.ndarray, labels: Sequence[str], **kw) -> go.Heatmap:
    short = _unique_short(labels)
    return go.Heatmap(z=sim, x=short, y=short, zmin=-1, zmax=1, colorscale="RdBu_r", colorbar_title="cosine",
                      customdata=np.array([[[a, b] for b in labels] for a in labels], dtype=object),
                      hovertemplate="%{customdata[0]}<br>%{customdata[1]}<br>cosine %{z:.3f}<extra></extra>", **kw)


def _unique_short(labels: Sequence[str], width: int = 28) -> list[str]:
    """Truncated labels, made unique (plotly merges equal category labels)."""
    out, seen = [], {}
    for label in labels:
        short = _short(str(label), width)
        seen[short] = seen.get(short, 0) + 1
        out.append(short if seen[short] == 1 else f"{short} ({seen[short]})")
    return out


# -------------------------------------------------------------------- case study
def case_users(model, dataset: RecDataset, n: int = 10, modality: str | None = None) -> np.ndarray:
    """Users worth a case study, best first: most generated items that are also test items (hits,
    summed over modalities or for ``modality``), then fewest training items (sparse users are where
    generated edges matter), then most test items."""
    modalities = list(model.generated) if modality is None else [modality]
    hits = sum(model.generated[m].multiply(dataset.test).tocsr().getnnz(axis=1) for m in modalities)  # (U,)
    order = np.lexsort((-np.diff(dataset.test.indptr), dataset.user_activity(), -np.asarray(hits)))
    return order[:n]


def case_study_figure(model, dataset: RecDataset, user: int, modality: str, max_items: int = 20,
                      features: str = "dataset") -> go.Figure:
    """The paper's RQ6 case study: the user's subgraph with A^m's edges beside the similarity of its items.

    Args:
        model: a trained DiffMM.
        dataset: its dataset (item titles label the heatmap when ``item_names`` is set, e.g. ml100k).
        user: user id.
        modality: whose generated edges and features are shown.
        max_items: training items kept in the subgraph (see :func:`user_subgraph`).
        features: 'dataset' (raw item features) or 'model' (the learned Trans(f^m)).
    """
    if features not in ("dataset", "model"):
        raise ValueError(f"features must be 'dataset' or 'model', got {features!r}")
    G = user_subgraph(model, dataset, user, modality, max_items)
    items = [n[1] for n in _ordered_items(G)]
    sim = modality_similarity(dataset if features == "dataset" else model, items, modality)
    labels = [G.nodes[("item", i)]["label"] for i in items]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.42, 0.58], horizontal_spacing=0.16,
                        subplot_titles=(f"user {user}: edges (generated by the {modality} diffusion)",
                                        f"{modality} cosine similarity of these items"))
    for trace in _subgraph_traces(G):
        fig.add_trace(trace, row=1, col=1)
    fig.add_trace(_heatmap_trace(sim, labels, colorbar=dict(title="cosine", x=1.02)), row=1, col=2)
    _style_graph_axes(fig, row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(tickangle=45, row=1, col=2)
    fig.update_layout(template="plotly_white", height=max(500, 24 * len(items) + 200), width=1300,
                      legend=dict(x=0.0, y=1.0, xanchor="left", yanchor="top", bgcolor="rgba(255,255,255,0.8)"),
                      title=f"case study: user {user}, modality '{modality}'" + _dropped_note(G))
    return fig


# ------------------------------------------------------------ denoising trajectory
def denoising_frame(model, dataset: RecDataset, user: int, modality: str, top: int = 10) -> pd.DataFrame:
    """Scores of the user's ``top`` items (by the final denoised scores) at every reverse diffusion step.

    Uses ``model.denoising_trajectory([user], modality)`` = [alpha_hat_T, ..., alpha_hat_0].

    Returns:
        Long table: ``step`` (0 = the input alpha_hat_T, ..., T = alpha_hat_0), ``t`` (= T - step),
        ``item``, ``name``, ``rank`` (1 = highest final score), ``score`` and ``role``
        ('train', 'test', 'generated', joined with '+', or 'other').
    """
    trajectory = model.denoising_trajectory([user], modality)  # T+1 tensors of shape (1, I)
    scores = torch.cat(trajectory).double().numpy()  # (T+1, I)
    top = min(top, scores.shape[1])
    items = np.argsort(-scores[-1], kind="stable")[:top]  # (top,)
    roles = {i: [] for i in items.tolist()}
    for role, row in (("train", dataset.train[user].indices), ("test", dataset.test[user].indices),
                      ("generated", model.generated[modality][user].indices)):
        for i in set(row.tolist()) & set(roles):
            roles[i].append(role)
    T = len(trajectory) - 1
    steps = np.repeat(np.arange(T + 1), top)
    return pd.DataFrame({
        "step": steps, "t": T - steps, "item": np.tile(items, T + 1),
        "name": [_item_name(dataset, i) for i in np.tile(items, T + 1)],
        "rank": np.tile(np.arange(1, top + 1), T + 1),
        "score": scores[:, items].reshape(-1),
        "role": ["+".join(roles[i]) or "other" for i in np.tile(items, T + 1)],
    })


def denoising_figure(frame: pd.DataFrame, step: int | None = None, title: str | None = None) -> go.Figure:
    """Bars of :func:`denoising_frame` at one reverse step (default the last), coloured by role.

    The y range covers every step, so moving through the steps shows scores change, not axes.
    """
    if frame.empty:
        raise ValueError("denoising_figure needs a non-empty frame from denoising_frame()")
    T = int(frame["step"].max())
    step = T if step is None else int(step)
    if not 0 <= step <= T:
        raise ValueError(f"step must be in [0, {T}], got {step}")
    part = frame[frame["step"] == step].sort_values("rank")
    palette = {"train": EDGE_COLOURS["train"], "test": EDGE_COLOURS["test"], "generated": MODALITY_COLOURS[0],
               "other": "#bbbbbb"}
    colours = [palette.get(r.split("+")[-1], "#333333") for r in part["role"]]
    low, high = float(frame["score"].min()), float(frame["score"].max())
    pad = 0.05 * (high - low or 1.0)
    fig = go.Figure(go.Bar(x=_unique_short(part["name"].tolist()), y=part["score"], marker_color=colours,
                           customdata=part[["item", "role"]].to_numpy(),
                           hovertemplate="item %{customdata[0]}: %{x}<br>%{customdata[1]}<br>score %{y:.4f}"
                                         "<extra></extra>"))
    fig.update_layout(title=title or f"reverse step {step}/{T}: denoised scores alpha_hat_{T - step}",
                      yaxis_range=[min(low, 0.0) - pad, high + pad], yaxis_title="score", xaxis_tickangle=30,
                      template="plotly_white")
    return fig
