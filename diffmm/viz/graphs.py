"""What the diffusion model generated for one user: the subgraph, item similarity, the case study (RQ6).

For a user u, :func:`user_subgraph` collects u's training items, test items and the items each
modality's generated graph A^m (``DiffMM.generated[m]``, the top-k denoised items of Sec. 2.2.3)
links u to. :func:`case_study_figure` draws it beside the cosine similarity of the items'
features in that modality: items that A^m adds should resemble the user's training items in
that modality, and the generated items the user later interacted with (test) are starred.
The same question over all users, with random and popular items as references, is
:func:`diffmm.casestudy.generation_measures`.
"""

from __future__ import annotations

from typing import Sequence

import networkx as nx
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from diffmm.casestudy import case_users, modality_similarity, unit_rows  # noqa: F401 (re-exported)
from diffmm.data.dataset import RecDataset

ROLE_ORDER = ("generated", "train", "test")  # items are listed top to bottom in this order
EDGE_COLOURS = {"train": "#4c72b0", "test": "#55a868"}
MODALITY_COLOURS = ("#dd8452", "#8172b3", "#c44e52", "#937860", "#da8bc3", "#8c8c8c")


# ---------------------------------------------------------------------- subgraph
def _item_name(dataset: RecDataset, item: int) -> str:
    return str(dataset.item_names[item]) if dataset.item_names is not None else f"item {item}"


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
    features = unit_rows(dataset.item_features[modality or modalities[0]])
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


def _subgraph_traces(G: nx.MultiGraph, item_names: Sequence[str] | None = None,
                     rows: bool = False) -> list[go.Scatter]:
    """Bipartite layout: the user at x=0, the items in a column at x=1; one line trace per edge source.

    ``rows=False``: y in [0, 1] (top to bottom), items labelled on their right. ``rows=True``: item k
    at y=k (the k-th row of a heatmap with a reversed y axis) and no labels: the heatmap names them.
    """
    items = _ordered_items(G)
    y = {node: 1.0 - k / max(len(items) - 1, 1) for k, node in enumerate(items)}  # (top=1 .. bottom=0)
    user = ("user", G.graph["user"])
    y[user] = 0.5
    scale = max(len(items) - 1, 1)
    to_axis = (lambda v: np.round((1.0 - v) * scale, 9)) if rows else (lambda v: v)  # rows: 1 -> row 0, 0 -> n-1
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
        traces.append(go.Scatter(x=xs, y=to_axis(ys), mode="lines", name=_source_label(source), legendgroup=source,
                                 hoverinfo="skip", connectgaps=False,
                                 line=dict(color=_edge_colour(source, modalities), width=2,
                                           dash="dot" if source == "test" else "solid")))
    labels = [str(item_names[n[1]]) if item_names is not None else G.nodes[n]["label"] for n in items]
    roles = [G.nodes[n]["roles"] for n in items]
    hit = ["test" in r and any(x.startswith("generated") for x in r) for r in roles]
    colours = [_edge_colour(next((x for x in r if x.startswith("generated")), r[0]), modalities) for r in roles]
    traces.append(go.Scatter(
        x=[1.0] * len(items), y=[to_axis(y[n]) for n in items], mode="markers" if rows else "markers+text",
        name="items", showlegend=False, text=None if rows else [_short(t) for t in labels],
        textposition="middle right", cliponaxis=False,
        marker=dict(size=[16 if h else 10 for h in hit], color=colours, symbol=["star" if h else "circle" for h in hit],
                    line=dict(color="black", width=1)),
        customdata=[[f"{n[1]}", t, ", ".join(r)] for n, t, r in zip(items, labels, roles)],
        hovertemplate="item %{customdata[0]}: %{customdata[1]}<br>%{customdata[2]}<extra></extra>"))
    if any(hit):  # a legend entry for the star
        traces.append(go.Scatter(x=[None], y=[None], mode="markers", name="generated and a test item (hit)",
                                 marker=dict(symbol="star", size=14, color="white", line=dict(color="black", width=1))))
    traces.append(go.Scatter(x=[0.0], y=[to_axis(y[user])], mode="markers+text", text=[G.nodes[user]["label"]],
                             textposition="middle left", name="user", showlegend=False, cliponaxis=False,
                             hovertemplate=f"{G.nodes[user]['label']}<extra></extra>",
                             marker=dict(size=18, color="black", symbol="diamond")))
    return traces


def _source_label(source: str) -> str:
    """Legend text of an edge source: 'train' -> 'training item', 'generated:text' -> 'generated (text)'."""
    if source.startswith("generated:"):
        return f"generated ({source.split(':', 1)[1]})"
    return {"train": "training item", "test": "test item"}.get(source, source)


def subgraph_figure(G: nx.MultiGraph, item_names: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """Draw :func:`user_subgraph`: user left, items right (generated, then train, then test), edges
    coloured by source; a star marks a generated item that is also a test item (a hit).

    The width follows the page (autosize); the height grows with the number of items.

    Args:
        G: the subgraph.
        item_names: overrides the node labels (indexed by item id), e.g. ``dataset.item_names``.
        title: the figure title; default names the user and the items not shown.
    """
    fig = go.Figure(_subgraph_traces(G, item_names))
    fig.update_xaxes(visible=False, range=[-0.3, 2.2])
    fig.update_yaxes(visible=False, range=[-0.05, 1.08])
    n_items = sum(1 for _, d in G.nodes(data=True) if d["kind"] == "item")
    dropped = None if title else _dropped_note(G)
    fig.update_layout(title=_title(title or f"user {G.graph['user']}: training, test and generated items", dropped),
                      height=max(400, 22 * n_items + 160),
                      template="plotly_white", margin=dict(l=40, r=20, t=_top_margin(dropped), b=70),
                      legend=dict(orientation="h", x=0.0, y=-0.02, yanchor="top", title_text="edge"))
    return fig


def _dropped_note(G: nx.MultiGraph) -> str:
    dropped = [f"{G.graph.get(f'dropped_{s}_items', 0)} {s}" for s in ("train", "test")
               if G.graph.get(f"dropped_{s}_items", 0)]
    return f"{' and '.join(dropped)} items not shown (the least similar to the generated ones)" if dropped else ""


def _top_margin(*lines: str | None) -> int:
    """Room for the title and its subtitle lines."""
    return 64 + 16 * sum(1 for line in lines if line)


def _title(text: str, *lines: str | None) -> dict:
    """A title at the top left of the figure, each non-empty line below it in smaller type (plotly titles do
    not wrap by themselves), never over the plots."""
    return dict(text=text + "".join(f"<br><sup>{line}</sup>" for line in lines if line), x=0.01, xanchor="left", y=1.0, yref="container", yanchor="top",
                pad=dict(t=16))


# -------------------------------------------------------------------- similarity
def similarity_heatmap(sim: np.ndarray, labels: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """A (k, k) similarity matrix as a heatmap, rows and columns labelled (e.g. movie titles)."""
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (k, k) matrix, got shape {sim.shape}")
    labels = [str(x) for x in (labels if labels is not None else range(len(sim)))]
    if len(labels) != len(sim):
        raise ValueError(f"{len(labels)} labels for a {sim.shape} matrix")
    short = _unique_short(labels)
    fig = go.Figure(_heatmap_trace(sim, labels, short, short))
    fig.update_layout(title=title or "cosine similarity", template="plotly_white", height=max(400, 20 * len(sim) + 200),
                      yaxis_autorange="reversed", xaxis_tickangle=-45, margin=dict(r=20))
    return fig


def _heatmap_trace(sim: np.ndarray, labels: Sequence[str], x: Sequence[str], y: Sequence[str], **kw) -> go.Heatmap:
    """A cosine heatmap with axis labels ``x`` / ``y`` and the full ``labels`` in the hover."""
    return go.Heatmap(z=sim, x=list(x), y=list(y), zmin=-1, zmax=1, colorscale="RdBu_r",
                      customdata=np.array([[[a, b] for b in labels] for a in labels], dtype=object),
                      hovertemplate="%{customdata[0]}<br>%{customdata[1]}<br>cosine %{z:.3f}<extra></extra>",
                      **{"colorbar": dict(title=dict(text="cosine", side="top"), thickness=14), **kw})


def _unique_short(labels: Sequence[str], width: int = 28) -> list[str]:
    """Truncated labels, made unique (plotly merges equal category labels)."""
    out, seen = [], {}
    for label in labels:
        short = _short(str(label), width)
        seen[short] = seen.get(short, 0) + 1
        out.append(short if seen[short] == 1 else f"{short} ({seen[short]})")
    return out


# -------------------------------------------------------------------- case study
def case_study_figure(model, dataset: RecDataset, user: int, modality: str, max_items: int = 20,
                      features: str = "dataset", note: str | None = None) -> go.Figure:
    """The paper's RQ6 case study (Fig. 5): the user's subgraph with A^m's edges beside the similarity of its items.

    Each item sits on the same row as its heatmap row, so the heatmap's row labels name the
    subgraph's items (``k. title``; columns are numbered alike; hover shows the full names). The
    width follows the page (autosize, readable from about 700 px); the height grows with the items.

    Args:
        model: a trained DiffMM.
        dataset: its dataset (item titles label the heatmap when ``item_names`` is set, e.g. ml100k).
        user: user id.
        modality: whose generated edges and features are shown.
        max_items: training items kept in the subgraph (see :func:`user_subgraph`).
        features: 'dataset' (raw item features) or 'model' (the learned Trans(f^m)).
        note: appended to the subtitle, e.g. 'brief training: 3 epochs'.
    """
    if features not in ("dataset", "model"):
        raise ValueError(f"features must be 'dataset' or 'model', got {features!r}")
    G = user_subgraph(model, dataset, user, modality, max_items)
    items = [n[1] for n in _ordered_items(G)]
    sim = modality_similarity(dataset if features == "dataset" else model, items, modality)
    labels = [G.nodes[("item", i)]["label"] for i in items]
    rows = [f"{k}. {_short(name, 22)}" for k, name in enumerate(labels, start=1)]  # unique by their number
    user_label = G.nodes[("user", int(user))]["label"]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.3, 0.7], horizontal_spacing=0.25,
                        subplot_titles=(f"{user_label}: edges", f"cosine similarity ({modality} features)"))
    for trace in _subgraph_traces(G, rows=True):
        fig.add_trace(trace, row=1, col=1)
    fig.add_trace(_heatmap_trace(sim, labels, [str(k) for k in range(1, len(items) + 1)], rows,
                                 colorbar=dict(title=dict(text="cosine", side="top"), thickness=14, x=1.0,
                                               xanchor="left", len=0.8)), row=1, col=2)
    fig.update_xaxes(visible=False, range=[-0.5, 1.15], row=1, col=1)  # room for the user's label on the left
    fig.update_yaxes(visible=False, range=[len(items) - 0.5, -0.5], row=1, col=1)  # row k at y = k, as the heatmap
    fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=10), row=1, col=2)
    fig.update_xaxes(type="category", tickangle=0, tickfont=dict(size=10), row=1, col=2)
    fig.update_layout(template="plotly_white", height=max(480, 20 * len(items) + 230),
                      margin=dict(l=40, r=80, t=_top_margin(_dropped_note(G), note) + 24, b=80),  # + subplot titles
                      legend=dict(orientation="h", x=0.0, y=-0.04, yanchor="top"),
                      title=_title(f"case study: {user_label}, modality '{modality}'", _dropped_note(G), note))
    for annotation in fig.layout.annotations:  # subplot titles
        annotation.font.size = 13
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


def denoising_figure(frame: pd.DataFrame, step: int | None = None, title: str | None = None,
                     note: str | None = None) -> go.Figure:
    """Bars of :func:`denoising_frame` at one reverse step (default the last), one colour and legend entry
    per role (an item with two roles, e.g. generated and a training item, is hatched).

    The y range covers every step, so moving through the steps shows scores change, not axes; each
    bar carries its value, so a score of 0 (every non-training item at step 0) is visible, and the
    subtitle says what the step is (and ``note``, e.g. 'brief training: 3 epochs', when given).
    """
    if frame.empty:
        raise ValueError("denoising_figure needs a non-empty frame from denoising_frame()")
    T = int(frame["step"].max())
    step = T if step is None else int(step)
    if not 0 <= step <= T:
        raise ValueError(f"step must be in [0, {T}], got {step}")
    part = frame[frame["step"] == step].sort_values("rank")
    part = part.assign(label=_unique_short(part["name"].tolist(), 24))
    palette = {"train": EDGE_COLOURS["train"], "test": EDGE_COLOURS["test"], "generated": MODALITY_COLOURS[0],
               "other": "#bbbbbb"}
    fig = go.Figure()
    for role, bars in part.groupby("role", sort=False):  # legend in rank order of first appearance
        parts = role.split("+")
        primary = next((r for r in ("generated", "test", "train") if r in parts), "other")
        fig.add_trace(go.Bar(
            x=bars["label"], y=bars["score"], name=" + ".join(parts), marker_color=palette[primary],
            marker_pattern_shape="/" if len(parts) > 1 else "", text=[f"{v:.2f}" for v in bars["score"]],
            textposition="outside", cliponaxis=False, customdata=bars[["item", "name", "role"]].to_numpy(),
            hovertemplate="item %{customdata[0]}: %{customdata[1]}<br>%{customdata[2]}<br>score %{y:.4f}"
                          "<extra></extra>"))
    low, high = float(frame["score"].min()), float(frame["score"].max())
    pad = 0.12 * (high - low or 1.0)  # room for the value labels
    if step == 0:
        what = "step 0 is the input: the user's training row (1 = a training item, 0 = not)"
    elif step == T:
        what = "the last step: the top-k of these scores become the user's generated edges in A^m"
    else:
        what = f"after {step} of {T} denoising steps"
    if step == 0 and not part["score"].any():  # an empty chart would look broken: say why
        fig.add_annotation(text="all 0: none of these items is a training item of the user;<br>"
                                "the later reverse steps give them their scores",
                           xref="paper", yref="paper", x=0.5, y=0.6, showarrow=False, bgcolor="#f4f4f4")
    fig.update_layout(title=_title(title or f"reverse step {step}/{T}: denoised scores alpha_hat_{T - step}",
                                   what, note),
                      yaxis_range=[min(low, 0.0) - pad, high + pad], yaxis_title="score", xaxis_tickangle=-30,
                      xaxis=dict(categoryorder="array", categoryarray=part["label"].tolist()), barmode="relative",
                      legend_title_text="role", template="plotly_white", height=460,
                      margin=dict(t=_top_margin(what, note)))
    return fig
