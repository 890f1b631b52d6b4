"""Diffusion, step by step (Sec. 2.2), as tables and figures: ``notebooks/05_diffusion_walkthrough.ipynb``.

1. :func:`schedule_frame` / :func:`schedule_figure`: beta_t and gamma_bar_t (DDPM's alpha_bar_t) of Eq. 3.
2. :func:`forward_noising_frame` / :func:`noising_summary` / :func:`forward_noising_figure`: one user's
   interaction vector alpha_0 noised by Eq. 2 at every t, and how well the user's items stay separable.
3. :func:`reverse_frame` / :func:`reverse_figure`: the reverse steps of Sec. 2.2.3 (Eq. 10) with a slider;
   the k highest final scores become the user's edges in A^m.
4. :func:`generated_graph_stats` / :func:`msi_comparison` / :func:`msi_figure` / :func:`generated_side_by_side`:
   what models trained without and with modality-aware signal injection (lambda0, Eq. 24) generate.

Notation follows the paper and :mod:`diffmm.diffusion`: gamma_t = 1 - beta_t, gamma_bar_t = prod_{s<=t} gamma_s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import scipy.sparse as sp
import torch
from plotly.subplots import make_subplots
from scipy.stats import rankdata

from diffmm.config import DiffMMConfig
from diffmm.data.dataset import RecDataset
from diffmm.diffusion import GaussianDiffusion, linear_schedule

if TYPE_CHECKING:
    from diffmm.models.diffmm import DiffMM

TOP_K_COLOUR, BELOW_COLOUR, WATCHED_COLOUR, OTHER_COLOUR = "#dd8452", "#bbbbbb", "#4c72b0", "#8c8c8c"
MODEL_COLOURS = ("#8c8c8c", "#dd8452", "#55a868", "#8172b3")
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=30, t=90, b=60))  # no width: figures fill the cell


def _after(epochs: int | None) -> str:
    return "" if epochs is None else f", after {epochs} training epoch{'s' if epochs != 1 else ''}"


def _names(dataset: RecDataset, items: np.ndarray, width: int | None = None) -> list[str]:
    """Item titles (or 'item i'); with ``width``, shortened and suffixed ' [i]' so that they stay unique."""
    names = [str(dataset.item_names[i]) if dataset.item_names is not None else f"item {i}" for i in items.tolist()]
    return [n if width is None or len(n) <= width else f"{n[: width - 5]}… [{i}]" for n, i in zip(names, items)]


# ------------------------------------------------------------------------ 1. schedule
def schedule_frame(config: DiffMMConfig) -> pd.DataFrame:
    """The configured noise schedule, one row per t = 0..T (t = 0 is the clean vector alpha_0).

    Args:
        config: a :class:`DiffMMConfig` (``steps``, ``noise_scale``, ``noise_min``, ``noise_max``,
            ``first_beta``), e.g. ``model.config``.

    Returns:
        ``t`` and float64 columns: ``beta`` (beta_t, 0 at t = 0); ``gamma_bar`` (gamma_bar_t);
        ``one_minus_gamma_bar`` (the variance of Eq. 2's noise); ``eq3`` (1 - gamma_bar_t by Eq. 3 itself,
        without the ``first_beta`` override; NaN at t = 0); ``signal`` = sqrt(gamma_bar_t) and
        ``noise`` = sqrt(1 - gamma_bar_t), the two weights of Eq. 2; ``snr`` = gamma_bar_t / (1 - gamma_bar_t)
        (inf at t = 0); ``loss_weight``, the weight of t in the training loss (Eq. 11; 1 at t = 1, Eq. 12).
    """
    args = (config.steps, config.noise_scale, config.noise_min, config.noise_max)
    betas = linear_schedule(*args, config.first_beta)  # Eq. 3, then beta_1 := first_beta (float64, (T,))
    exact = 1.0 - np.cumprod(1.0 - linear_schedule(*args, None))  # Eq. 3 as printed: 1 - gamma_bar_t
    gamma_bar = np.cumprod(np.concatenate([[1.0], 1.0 - betas]))  # gamma_bar_t = prod_{s<=t} (1 - beta_s)
    with np.errstate(divide="ignore"):
        snr = gamma_bar / (1.0 - gamma_bar)
    weight = GaussianDiffusion(betas).loss_weight.double().numpy()  # Eq. 11: SNR(t-1) - SNR(t)
    return pd.DataFrame({"t": np.arange(config.steps + 1), "beta": np.concatenate([[0.0], betas]),
                         "gamma_bar": gamma_bar, "one_minus_gamma_bar": 1.0 - gamma_bar,
                         "eq3": np.concatenate([[np.nan], exact]), "signal": np.sqrt(gamma_bar),
                         "noise": np.sqrt(1.0 - gamma_bar), "snr": snr, "loss_weight": weight})


def schedule_figure(frame: pd.DataFrame) -> go.Figure:
    """Three panels of :func:`schedule_frame` over t = 1..T: noise levels, Eq. 2's weights, Eq. 11's weights."""
    f = frame[frame["t"] >= 1]
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.1, subplot_titles=(
        "noise levels (log scale)", "the two weights of Eq. 2", "loss weight (Eq. 11, log scale)"))
    lines = [(1, "one_minus_gamma_bar", "1 - gamma_bar_t (configured)", "solid", "#dd8452"),
             (1, "eq3", "1 - gamma_bar_t (Eq. 3, no beta_1 override)", "dot", "#937860"),
             (1, "beta", "beta_t", "solid", "#4c72b0"),
             (2, "signal", "sqrt(gamma_bar_t): weight of alpha_0", "solid", "#55a868"),
             (2, "noise", "sqrt(1 - gamma_bar_t): weight of eps", "solid", "#c44e52")]
    for col, column, name, dash, colour in lines:
        fig.add_trace(go.Scatter(x=f["t"], y=f[column], name=name, mode="lines+markers",
                                 line=dict(dash=dash, color=colour)), row=1, col=col)
    fig.add_trace(go.Bar(x=f["t"], y=f["loss_weight"], name="SNR(t-1) - SNR(t) (1 at t = 1)",
                         marker_color="#8172b3"), row=1, col=3)
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=3)
    fig.update_xaxes(title_text="step t", tick0=1, dtick=1)
    T, bar, signal, noise = frame.iloc[-1][["t", "gamma_bar", "signal", "noise"]]
    fig.update_layout(**LAYOUT, height=460, legend=dict(orientation="h", y=-0.22, x=0), title=dict(
        text=f"the noise schedule (Eq. 3), T = {T:.0f}<br><sup>at t = T: gamma_bar_T = {bar:.4f}, "
             f"alpha_0 weighs {signal:.3f} and the noise {noise:.3f}</sup>"))
    return fig


# ------------------------------------------------------------------ 2. forward noising
def forward_noising_frame(diffusion: GaussianDiffusion, observed: np.ndarray | sp.spmatrix,
                          seed: int = 0) -> pd.DataFrame:
    """One user's vector alpha_0 noised to alpha_t (Eq. 2) for every t = 0..T with one eps, shared by all t: the rows
    differ by the schedule only, so the noise visibly grows with t.

    Args:
        diffusion: the model's :class:`GaussianDiffusion` (``model.generators[m].diffusion``).
        observed: the user's interaction vector alpha_0, shape (I,) or a (1, I) sparse row
            (``dataset.train[user]``).
        seed: seeds eps ~ N(0, I).

    Returns:
        Long table, (T + 1) * I rows: ``t``, ``item``, ``observed`` (alpha_0 entry), ``noise`` (eps entry),
        ``value`` (alpha_t entry), ``signal`` = sqrt(gamma_bar_t) and ``noise_std`` = sqrt(1 - gamma_bar_t).
    """
    x0 = np.asarray(observed.todense() if sp.issparse(observed) else observed, dtype=np.float32).ravel()  # (I,)
    (T, I), device = (diffusion.steps, len(x0)), diffusion.gamma_bar.device
    noise = torch.randn(1, I, generator=torch.Generator().manual_seed(seed)).repeat(T + 1, 1)  # (T+1, I), one eps
    values = diffusion.q_sample(torch.from_numpy(x0).repeat(T + 1, 1).to(device), torch.arange(T + 1, device=device),
                                noise.to(device)).cpu()  # Eq. 2, (T+1, I)
    return pd.DataFrame({"t": np.repeat(np.arange(T + 1), I), "item": np.tile(np.arange(I), T + 1),
                         "observed": np.tile(x0, T + 1), "noise": noise.reshape(-1).numpy(),
                         "value": values.reshape(-1).numpy(),
                         "signal": np.repeat(diffusion.sqrt_gamma_bar.cpu().numpy(), I),
                         "noise_std": np.repeat(diffusion.sqrt_one_minus_gamma_bar.cpu().numpy(), I)})


def noising_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per t, how far the noised values of the user's items stay from the others'.

    Returns:
        ``t``, ``signal``, ``noise_std``, ``snr_db`` = 10 log10(gamma_bar_t / (1 - gamma_bar_t));
        ``watched_mean`` / ``watched_min`` and ``other_mean`` / ``other_max`` (items with alpha_0 = 1 / 0);
        ``margin`` = watched_min - other_max (> 0: every watched item is still above every other item);
        ``auc``: the share of (watched, other) item pairs whose noised values keep that order.
    """
    T = int(frame["t"].max())
    values = frame["value"].to_numpy().reshape(T + 1, -1)  # (T+1, I)
    watched = frame["observed"].to_numpy().reshape(T + 1, -1)[0] > 0  # (I,)
    n_pos, n_neg = int(watched.sum()), int((~watched).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"the vector needs watched and other items to compare, got {n_pos} and {n_neg}")
    ranks = rankdata(values, axis=1)  # (T+1, I), ties averaged
    auc = (ranks[:, watched].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)  # Mann-Whitney U / (n+ n-)
    per_t = frame.groupby("t")[["signal", "noise_std"]].first()
    with np.errstate(divide="ignore"):
        snr_db = 10 * np.log10(per_t["signal"].to_numpy() ** 2 / per_t["noise_std"].to_numpy() ** 2)
    return pd.DataFrame({"t": np.arange(T + 1), "signal": per_t["signal"].to_numpy(),
                         "noise_std": per_t["noise_std"].to_numpy(), "snr_db": snr_db,
                         "watched_mean": values[:, watched].mean(1), "watched_min": values[:, watched].min(1),
                         "other_mean": values[:, ~watched].mean(1), "other_max": values[:, ~watched].max(1),
                         "margin": values[:, watched].min(1) - values[:, ~watched].max(1), "auc": auc})


def forward_noising_figure(frame: pd.DataFrame, others: int = 60, title: str | None = None) -> go.Figure:
    """Left: alpha_t as a heatmap, t on y, the user's watched items then ``others`` other items (evenly spaced
    ids) on x. Right: per t, the mean of the watched and of all other items, a bar to the closest other group.

    Args:
        frame: from :func:`forward_noising_frame`.
        others: other items drawn in the heatmap (the right panel uses all of them).
        title: replaces the default title.
    """
    summary = noising_summary(frame)
    T = int(frame["t"].max())
    values = frame["value"].to_numpy().reshape(T + 1, -1)  # (T+1, I)
    observed = frame["observed"].to_numpy()[: values.shape[1]]  # alpha_0 (the rows at t = 0)
    watched, rest = np.flatnonzero(observed > 0), np.flatnonzero(observed <= 0)
    rest = rest[np.unique(np.linspace(0, len(rest) - 1, min(others, len(rest))).round().astype(int))]
    shown = np.concatenate([watched, rest])
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1, subplot_titles=(
        f"alpha_t: {len(watched)} watched | {len(rest)} of {int((observed <= 0).sum())} others",
        "watched vs all other items"))
    fig.add_trace(go.Heatmap(z=values[:, shown], y=np.arange(T + 1), customdata=np.tile(shown, (T + 1, 1)),
                             colorscale="Viridis", name="alpha_t", hovertemplate="item %{customdata}<br>t = %{y}"
                             "<br>value %{z:.3f}<extra></extra>", colorbar=dict(title="alpha_t", orientation="h",
                                                                                x=0.27, y=-0.24, len=0.5, thickness=9)),
                  row=1, col=1)
    fig.add_vline(x=len(watched) - 0.5, line=dict(color="white", dash="dash"), row=1, col=1)
    for group, colour, up in (("watched", WATCHED_COLOUR, False), ("other", OTHER_COLOUR, True)):
        mean = summary[f"{group}_mean"]
        gap = (mean - summary[f"{group}_{'max' if up else 'min'}"]).abs().to_numpy()
        fig.add_trace(go.Scatter(x=summary["t"], y=mean, mode="lines+markers", line_color=colour,
                                 name=f"{group} items: mean, bar to the {'highest' if up else 'lowest'}",
                                 error_y=dict(type="data", symmetric=False, array=gap * up,
                                              arrayminus=gap * (not up))), row=1, col=2)
    ticks = [f"{t}<br>{f'{db:.0f} dB' if np.isfinite(db) else 'clean'}" for t, db in enumerate(summary["snr_db"])]
    fig.update_yaxes(title_text="step t", tick0=0, dtick=1, autorange="reversed", row=1, col=1)
    fig.update_xaxes(showticklabels=False, row=1, col=1)  # items: the subplot title says which
    fig.update_xaxes(title_text="step t and its SNR", tickvals=summary["t"].tolist(), ticktext=ticks, row=1, col=2)
    fig.update_yaxes(title_text="alpha_t", row=1, col=2)
    worst = summary.iloc[-1]
    fig.update_layout(**LAYOUT, height=480, legend=dict(orientation="h", y=-0.3, x=1.0, xanchor="right"),
                      title=dict(text=title or (
                          f"forward noising (Eq. 2) of one user's interaction vector, one eps for every t"
                          f"<br><sup>at t = {T}: the lowest watched value is {worst['margin']:.2f} above the highest "
                          f"other; {worst['auc']:.1%} of (watched, other) pairs keep their order</sup>")))
    return fig


# -------------------------------------------------------------------- 3. reverse steps
def reverse_frame(model: DiffMM, dataset: RecDataset, user: int, modality: str, top: int = 15) -> pd.DataFrame:
    """The user's scores at every deterministic reverse step (Sec. 2.2.3) for the ``top`` final items.

    Step s holds alpha_hat_{T-s}: step 0 is the start alpha_hat_T (the observed vector when
    ``forward_steps`` = 0), step T is alpha_hat_0, whose ``rebuild_k`` highest items are the user's
    edges in ``model.generated[modality]``.

    Args:
        model: a trained :class:`~diffmm.models.DiffMM`.
        dataset: its dataset (training and test items, titles).
        user: user id.
        modality: one of ``model.modalities``.
        top: items kept, those with the highest final scores (at least ``rebuild_k``).

    Returns:
        Long table, (T + 1) * top rows in the final ranking's order: ``step``, ``t``, ``item``, ``name``,
        ``score``, ``rank`` (among all items at that step, 1 = highest, ties share the best rank),
        ``in_top_k`` (rank <= k: the score reaches ``kth_score``, the k-th highest score at that step),
        ``watched`` (a training item), ``test`` (a test item), ``generated`` (an edge of A^m).
    """
    k = model.config.rebuild_k
    if top < k:
        raise ValueError(f"top = {top} must be at least rebuild_k = {k} to show every generated edge")
    if modality not in model.generated:
        raise ValueError(f"unknown modality '{modality}'; the model has {list(model.generated)}")
    scores = torch.cat(model.denoising_trajectory([user], modality)).double().numpy()  # (T+1, I), Eq. 10 per step
    n_steps, n_items = scores.shape
    rank = rankdata(-scores, method="min", axis=1).astype(np.int64)  # (T+1, I); tied scores share the best rank
    items = np.argsort(-scores[-1], kind="stable")[: min(top, n_items)]  # (top,) by final score
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]  # (T+1,) k-th highest score per step
    steps, tiled = np.repeat(np.arange(n_steps), len(items)), np.tile(items, n_steps)  # (T+1) * top rows
    return pd.DataFrame({
        "step": steps, "t": n_steps - 1 - steps, "item": tiled, "name": np.tile(_names(dataset, items, 30), n_steps),
        "score": scores[:, items].reshape(-1), "rank": rank[:, items].reshape(-1),
        "in_top_k": rank[:, items].reshape(-1) <= k, "kth_score": kth[steps],
        "watched": np.isin(tiled, dataset.train[user].indices), "test": np.isin(tiled, dataset.test[user].indices),
        "generated": np.isin(tiled, model.generated[modality][user].indices)})


def _reverse_values(part: pd.DataFrame) -> list[list]:
    """The y values of the four data traces at one step (None where a bar belongs to the other trace)."""
    score, top = part["score"].to_numpy(), part["in_top_k"].to_numpy()
    ys = [np.where(top, score, np.nan), np.where(top, np.nan, score), np.full(len(part), part["kth_score"].iloc[0]),
          np.where(part["test"], score, np.nan)]
    return [np.where(np.isnan(y), None, y).tolist() for y in ys]


def _step_caption(t: int, T: int, k: int, part: pd.DataFrame) -> str:
    what = (f"the start alpha_hat_{T} (the observed vector when forward_steps = 0)" if t == T else
            f"alpha_hat_0: its top {k} become the user's edges in A^m" if t == 0 else
            f"alpha_hat_{t}, after {T - t} reverse step{'s' if T - t > 1 else ''}")
    return f"t = {t}: {what}; {int(part['in_top_k'].sum())} of these items reach the k-th score"


def reverse_figure(frame: pd.DataFrame, k: int, epochs: int | None = None, title: str | None = None) -> go.Figure:
    """Bars of :func:`reverse_frame` at one step, and a slider over the steps that restyles them (no animation
    frames: the same in JupyterLab and a saved HTML file); opens on t = 0. Bars reaching the k-th highest
    score of their step are coloured, training items hatched, test items starred.

    Args:
        frame: from :func:`reverse_frame`.
        k: ``rebuild_k`` of the model: the top k at t = 0 are the user's generated edges.
        epochs: how long the model was trained, written into the title.
        title: replaces the first line of the title.
    """
    if frame.empty:
        raise ValueError("reverse_figure needs a non-empty frame from reverse_frame()")
    T = int(frame["step"].max())
    parts = [frame[frame["step"] == s] for s in range(T + 1)]  # each in the final ranking's order
    last = parts[-1]
    x, y, hatch = last["name"].tolist(), _reverse_values(last), np.where(last["watched"], "/", "").tolist()
    hover = "%{x}<br>score %{y:.4f}<extra></extra>"
    fig = go.Figure([
        go.Bar(x=x, y=y[0], name=f"reaches the k-th highest score (k = {k})", marker_color=TOP_K_COLOUR,
               marker_pattern_shape=hatch, hovertemplate=hover),
        go.Bar(x=x, y=y[1], name="below it", marker_color=BELOW_COLOUR, marker_pattern_shape=hatch,
               hovertemplate=hover),
        go.Scatter(x=x, y=y[2], mode="lines", name="k-th highest score over all items", hoverinfo="skip",
                   line=dict(color="black", dash="dash")),
        go.Scatter(x=x, y=y[3], mode="markers", name="watched later (test item)", hoverinfo="skip",
                   marker=dict(symbol="star", size=13, color="#55a868", line=dict(color="black", width=1))),
        go.Bar(x=[None], y=[None], name="hatched: already watched (training item)",
               marker=dict(color="white", pattern_shape="/", line=dict(color="black", width=1)))])
    head = title or f"reverse denoising (Eq. 10) for one user{_after(epochs)}"
    captions = [_step_caption(T - s, T, k, p) for s, p in enumerate(parts)]
    slider = dict(active=T, x=0.0, len=1.0, y=-0.5, pad=dict(t=10), currentvalue=dict(prefix="showing "),
                  steps=[dict(method="update", label=f"t = {T - s}",
                              args=[{"y": _reverse_values(p)}, {"title.text": f"{head}<br><sup>{captions[s]}</sup>"},
                                    [0, 1, 2, 3]]) for s, p in enumerate(parts)])
    low, high = min(0.0, float(frame["score"].min())), float(frame["score"].max())
    pad = 0.06 * (high - low or 1.0)
    fig.update_layout(**{**LAYOUT, "margin": dict(l=60, r=30, t=130, b=60)}, height=600, barmode="overlay",
                      sliders=[slider], yaxis=dict(title="denoised score alpha_hat_t", range=[low - pad, high + pad]),
                      xaxis=dict(tickangle=35, automargin=True), legend=dict(orientation="h", y=1.0, yanchor="bottom"),
                      title=dict(y=0.97, text=f"{head}<br><sup>{captions[-1]}</sup>"))
    return fig


# --------------------------------------------------------------------------- 4. MSI
def _history_similarity(dataset: RecDataset, modality: str, users: np.ndarray,
                        items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (user, item) edge: the mean cosine of the item to the user's training items in ``modality``, and
    the same mean for the user's average unwatched item (the level a random new item would reach)."""
    unit = np.asarray(dataset.item_features[modality], dtype=np.float64)  # (I, d)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)  # unit rows: dot = cosine
    train = dataset.train.tocsr().astype(np.float64)
    n_train = np.maximum(np.diff(train.indptr), 1)[:, None]  # (U, 1)
    summed = train @ unit  # (U, d): sum of the history's unit vectors
    history = summed / n_train  # mean of cos(i, j) over j = dot with the mean unit vector
    unwatched = (unit.sum(0) - summed) / np.maximum(dataset.n_items - n_train, 1)  # (U, d)
    edge = (unit[items] * history[users]).sum(1)  # (E,)
    baseline = (unwatched[users] * history[users]).sum(1)  # (E,)
    return edge, baseline


def generated_graph_stats(model: DiffMM, dataset: RecDataset) -> pd.DataFrame:
    """What each generated graph A^m (``model.generated[m]``, users x items) holds, one row per modality.

    Returns:
        ``modality``, ``edges``, ``distinct_items`` (items with an edge); ``overlap``: the share of a user's
        generated items that another user also got, averaged over ordered pairs of users (1 = all the same);
        ``new_share``: edges to items the user did not watch in training; ``test_share``: of those new edges,
        the share the user watched later (test); ``history_similarity``: the new items' mean cosine to the
        user's training items in that modality's features; ``baseline_similarity``: the same for the users'
        average unwatched item.
    """
    rows = []  # one per modality
    for m, graph in model.generated.items():
        graph = (graph.tocsr() != 0).astype(np.float64)  # (U, I) binary
        n_users, counts = graph.shape[0], np.asarray(graph.sum(0)).ravel()  # counts: (I,) users per item
        # sum over u != v of |G_u & G_v| = sum_i c_i (c_i - 1); per pair, over a user's k = nnz / U items
        overlap = (counts @ counts - counts.sum()) / max((n_users - 1) * graph.nnz, 1)
        new = (graph - graph.multiply(dataset.train != 0)).tocoo()  # edges to unwatched items
        new.eliminate_zeros()
        hits = new.multiply(dataset.test != 0).nnz  # new edges to test items
        similarity, baseline = _history_similarity(dataset, m, new.row, new.col)  # (E_new,) each
        rows.append({"modality": m, "edges": graph.nnz, "distinct_items": int((counts > 0).sum()), "overlap": overlap,
                     "new_share": new.nnz / max(graph.nnz, 1), "test_share": hits / max(new.nnz, 1),
                     "history_similarity": similarity.mean() if new.nnz else np.nan,
                     "baseline_similarity": baseline.mean() if new.nnz else np.nan})
    return pd.DataFrame(rows)


def msi_comparison(models: Mapping[str, DiffMM], dataset: RecDataset) -> pd.DataFrame:
    """:func:`generated_graph_stats` of several models (e.g. MSI off and on), with ``model`` and ``msi_weight``."""
    return pd.concat([generated_graph_stats(m, dataset).assign(model=label, msi_weight=m.config.msi_weight)
                      for label, m in models.items()], ignore_index=True)


def msi_figure(table: pd.DataFrame, epochs: int | None = None) -> go.Figure:
    """Four panels of :func:`msi_comparison`, bars per modality and model: distinct items, overlap across
    users, the new items' similarity to the history above the baseline, and the share of new edges hit later."""
    panels = [("distinct_items", "distinct items in A^m", ",d"),
              ("overlap", "overlap of users' generated items", ".0%"),
              ("history_lift", "new items: cosine to the history, minus baseline", "+.3f"),
              ("test_share", "new edges the user watched later", ".1%")]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in panels], vertical_spacing=0.2,
                        horizontal_spacing=0.12)
    table = table.assign(history_lift=table["history_similarity"] - table["baseline_similarity"])
    models = list(dict.fromkeys(table["model"]))
    for n, (column, _, fmt) in enumerate(panels):
        row, col = divmod(n, 2)
        for j, label in enumerate(models):
            part = table[table["model"] == label]
            fig.add_trace(go.Bar(x=part["modality"], y=part[column], name=label, legendgroup=label, showlegend=n == 0,
                                 marker_color=MODEL_COLOURS[j % len(MODEL_COLOURS)], offsetgroup=label,
                                 text=[format(v, fmt) for v in part[column]], textposition="outside",
                                 cliponaxis=False), row=row + 1, col=col + 1)
        low, high = min(0.0, table[column].min()), max(0.0, table[column].max())  # room for the labels
        fig.update_yaxes(tickformat=fmt, range=[1.3 * low, 1.3 * high + 1e-9], row=row + 1, col=col + 1)
    fig.update_yaxes(dtick=1 if table["distinct_items"].max() < 8 else None, row=1, col=1)  # counts: integer ticks
    weights = ", ".join(f"{m}: lambda0 = {w:g}" for m, w in dict(zip(table["model"], table["msi_weight"])).items())
    fig.update_layout(**LAYOUT, height=640, barmode="group", legend=dict(orientation="h", y=-0.12, x=0),
                      title=dict(text=f"the generated graphs A^m without and with MSI{_after(epochs)}"
                                      f"<br><sup>{weights}; same seed, same data. Baseline: the users' average "
                                      "unwatched item</sup>"))
    return fig


def generated_side_by_side(models: Mapping[str, DiffMM], dataset: RecDataset, user: int, modality: str) -> pd.DataFrame:
    """The user's generated items in ``modality`` under each model, one row per item any model generated.

    Returns:
        Indexed by item title (``name``) with ``item``; one boolean column per model (generated by it);
        ``watched`` and ``test`` (the user's training / test items); ``history_similarity``: the item's mean
        cosine to the user's training items in that modality. Items generated by every model come first.
    """
    rows = {label: m.generated[modality][user].indices for label, m in models.items()}
    items = np.unique(np.concatenate(list(rows.values()))).astype(np.int64)
    similarity, _ = _history_similarity(dataset, modality, np.full(len(items), user), items)
    table = pd.DataFrame({"name": _names(dataset, items), "item": items,
                          **{label: np.isin(items, r) for label, r in rows.items()},
                          "watched": np.isin(items, dataset.train[user].indices),
                          "test": np.isin(items, dataset.test[user].indices), "history_similarity": similarity})
    order = np.lexsort((-similarity, -table[list(rows)].sum(axis=1).to_numpy()))  # most models first
    return table.iloc[order].set_index("name")
