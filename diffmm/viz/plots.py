"""Result tables -> plotly figures: the paper's sparsity study (Fig. 2), fusion ratio (Sec. 3.6),
hyperparameters (Fig. 3, Table 4), training curves and the learned modality weights (Eq. 21).

Inputs are the package's own tables: ``EvalResult.per_user`` / ``per_user_test.csv`` (columns
``user, n_train, recall@20, ...``), ``FitResult.history`` / ``history.csv`` and the table returned
by :func:`diffmm.experiments.sweep` (metric columns ``test_recall@20``; a bare ``recall@20`` works too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diffmm.data.card import DEFAULT_BINS, activity_groups, group_edges
from diffmm.experiments.analyses import value_label


# ------------------------------------------------------------------------- saving
def save_figure(fig: go.Figure, path: str | Path, png: bool | None = None, include_plotlyjs: str | bool = "directory",
                scale: float = 2.0) -> list[Path]:
    """Write ``fig`` as ``<path>.html`` and, when possible, ``<path>.png``.

    Args:
        fig: a plotly figure.
        path: target; any suffix is replaced (``figures/sparsity`` -> ``sparsity.html``, ``.png``).
        png: None (default) writes the PNG if plotly's static export (kaleido + Chrome) works and
            skips it otherwise; True raises if it does not work; False never tries.
        include_plotlyjs: passed to ``fig.write_html``; the default 'directory' writes one shared
            ``plotly.min.js`` beside the HTML files, so a folder of figures opens offline.
        scale: PNG resolution multiplier.

    Returns:
        The files written.
    """
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    html = base.with_name(base.name + ".html")
    fig.write_html(html, include_plotlyjs=include_plotlyjs, div_id=base.name)  # fixed id: same input, same bytes
    written = [html]
    if png is not False:
        target = base.with_name(base.name + ".png")
        try:
            fig.write_image(target, scale=scale)
            written.append(target)
        except Exception as error:  # kaleido missing, or no Chrome for it to drive
            target.unlink(missing_ok=True)
            if png:
                raise RuntimeError(f"could not write {target}: {error}; install kaleido "
                                   "(pip install kaleido) and a Chrome it can use (plotly_get_chrome)") from error
    return written


# ------------------------------------------------------------------------ helpers
def _integer_ticks(largest: float) -> dict:
    """Axis settings for counts (epochs, users): ticks at whole numbers, never '1.5 epochs'."""
    return {"tickformat": "d", **({"dtick": 1} if largest <= 10 else {})}  # above 10, plotly's steps are whole


def _metric_column(table: pd.DataFrame, metric: str, split: str = "test") -> str:
    """``metric`` if the table has it, else ``<split>_<metric>`` (the sweep / history naming)."""
    for name in (metric, f"{split}_{metric}"):
        if name in table.columns:
            return name
    raise ValueError(f"no column '{metric}' or '{split}_{metric}' in the table; columns: {list(table.columns)}")


def sparsity_table(per_user_tables: Mapping[str, pd.DataFrame], bins: Sequence[float] | int = DEFAULT_BINS,
                   metric: str = "recall@20") -> pd.DataFrame:
    """Mean ``metric`` per model and user-activity group.

    Args:
        per_user_tables: model name -> per-user table (``EvalResult.per_user`` or ``per_user_test.csv``).
        bins: group edges on ``n_train`` (default 0, 5, 10, 20, 50, inf), or an int q for q
            quantile groups (edges computed on the first table, so every model shares them).
        metric: a per-user column, e.g. 'recall@20' or 'ndcg@20'.

    Returns:
        One row per (model, group): ``model``, ``group`` (ordered categorical), ``users``, ``metric``, ``value``.
        Users outside every group are dropped; empty groups appear with ``users`` 0 and NaN ``value``.
    """
    if not per_user_tables:
        raise ValueError("sparsity_table needs at least one per-user table")
    first = next(iter(per_user_tables.values()))
    edges = group_edges(first["n_train"].to_numpy(), bins)  # quantile edges come from the first table
    rows = []
    for model, table in per_user_tables.items():
        for column in ("n_train", metric):
            if column not in table.columns:
                raise ValueError(f"per-user table of '{model}' has no column '{column}'; "
                                 f"columns: {list(table.columns)}")
        which, labels = activity_groups(table["n_train"].to_numpy(), edges)
        values = table[metric].to_numpy(dtype=np.float64)
        inside = which >= 0
        users = np.bincount(which[inside], minlength=len(labels))
        sums = np.bincount(which[inside], weights=values[inside], minlength=len(labels))
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(users > 0, sums / np.maximum(users, 1), np.nan)
        rows.append(pd.DataFrame({"model": model, "group": labels, "users": users, "metric": metric, "value": means}))
    out = pd.concat(rows, ignore_index=True)
    out["group"] = pd.Categorical(out["group"], categories=labels, ordered=True)
    return out


def sparsity_figure(per_user_tables: Mapping[str, pd.DataFrame], bins: Sequence[float] | int = DEFAULT_BINS,
                    metric: str = "recall@20", title: str | None = None) -> go.Figure:
    """The paper's Fig. 2: performance by user-activity group, one bar per model and group.

    The x axis names each group with its number of users (``n=``, from the first model's table);
    a grey line on the right axis repeats the user counts. Arguments as :func:`sparsity_table`.
    """
    table = sparsity_table(per_user_tables, bins, metric)
    groups = list(table["group"].cat.categories)
    first = table[table["model"] == table["model"].iloc[0]].set_index("group")["users"]
    ticks = [f"{g}<br>n={int(first[g])}" for g in groups]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for model, part in table.groupby("model", sort=False):
        part = part.set_index("group").reindex(groups)
        fig.add_trace(go.Bar(x=ticks, y=part["value"], name=model, customdata=part["users"],
                             hovertemplate=f"{model}<br>%{{x}}<br>{metric} %{{y:.4f}}<br>users %{{customdata}}"
                                           "<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=ticks, y=[int(first[g]) for g in groups], name="users", mode="lines+markers",
                             line=dict(color="grey", dash="dot"), marker=dict(symbol="square")), secondary_y=True)
    fig.update_layout(barmode="group", title=title or f"{metric} by user activity (training interactions)",
                      xaxis_title="training interactions per user", legend_title_text="model",
                      template="plotly_white")
    fig.update_yaxes(title_text=metric, secondary_y=False)
    fig.update_yaxes(title_text="users", secondary_y=True, showgrid=False, rangemode="tozero",
                     **_integer_ticks(max(int(first[g]) for g in groups)))
    return fig


# ------------------------------------------------------- fusion ratio and hyperparameters
def hyperparameter_figure(results: pd.DataFrame, param: str, metrics: Sequence[str] = ("recall@20", "ndcg@20"),
                          by: str | None = None, split: str = "test", title: str | None = None) -> go.Figure:
    """Metrics against one hyperparameter (the paper's Fig. 3: lambda0, omega, ...), one panel per metric.

    Args:
        results: one row per run, with a ``param`` column and the metric columns (``recall@20``
            or the sweep's ``test_recall@20``).
        param: the column on the x axis; values are shown as categories, so 0.01, 0.1, 1 are evenly spaced.
        metrics: one panel each.
        by: optional column whose values get one line each (e.g. dataset).
            A ``<metric column>_std`` column, when present, is drawn as error bars.
        split: prefix tried when a bare metric column is missing ('test' or 'valid').
    """
    if param not in results.columns:
        raise ValueError(f"no column '{param}' in the results; columns: {list(results.columns)}")
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=list(metrics))
    # one category order for every line: the sorted union of all values (else plotly orders by first appearance)
    order = [value_label(v) for v in results[param].drop_duplicates().sort_values(na_position="last")]
    groups = results.groupby(by, sort=False) if by else [(None, results)]
    for g, (name, part) in enumerate(groups):
        part = part.sort_values(param, na_position="last")
        x = [value_label(v) for v in part[param]]
        for j, metric in enumerate(metrics):
            column = _metric_column(part, metric, split)
            std = part.get(f"{column}_std")  # error bars when the table carries a spread (e.g. over seeds)
            fig.add_trace(go.Scatter(x=x, y=part[column], mode="lines+markers", name=str(name if by else metric),
                                     error_y=None if std is None else dict(type="data", array=std.fillna(0).tolist()),
                                     legendgroup=str(name), showlegend=bool(by) and j == 0,
                                     marker=dict(size=9), line=dict(color=_colour(g))), row=1, col=j + 1)
            fig.update_xaxes(title_text=param, type="category", categoryorder="array", categoryarray=order,
                             row=1, col=j + 1)
    fig.update_layout(title=title or f"sensitivity to {param}", template="plotly_white", showlegend=bool(by))
    return fig


def fusion_ratio_figure(results: pd.DataFrame, param: str = "rho", metrics: Sequence[str] = ("recall@20", "ndcg@20"),
                        split: str = "test") -> go.Figure:
    """Sec. 3.6: metrics against the fusion ratio rho of the contrastive views (0 = generated graph only,
    1 = randomly dropped interaction graph only). ``results`` has a ``rho`` column and metric columns."""
    return hyperparameter_figure(results, param, metrics, split=split,
                                 title="fusion ratio rho: (1 - rho) A^m + rho * edge-dropped A")


def hyperparameter_heatmap(results: pd.DataFrame, rows: str = "temperature", cols: str = "cl_weight",
                           metric: str = "recall@20", split: str = "test", title: str | None = None) -> go.Figure:
    """The paper's Table 4 as a heatmap: ``metric`` for each (rows, cols) pair, e.g. tau x lambda1.

    Repeated (rows, cols) pairs are averaged; missing pairs stay blank.
    """
    for name in (rows, cols):
        if name not in results.columns:
            raise ValueError(f"no column '{name}' in the results; columns: {list(results.columns)}")
    column = _metric_column(results, metric, split)
    grid = results.pivot_table(index=rows, columns=cols, values=column, aggfunc="mean").sort_index().sort_index(axis=1)
    fmt = [f"{v:g}" for v in grid.columns], [f"{v:g}" for v in grid.index]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=fmt[0], y=fmt[1], colorscale="Viridis", colorbar_title=metric,
                               text=np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.4f}")(grid.to_numpy()),
                               texttemplate="%{text}", hovertemplate=f"{rows} %{{y}}<br>{cols} %{{x}}<br>{metric} "
                                                                     "%{z:.4f}<extra></extra>"))
    fig.update_layout(title=title or f"{metric}: {rows} x {cols}", xaxis_title=cols, yaxis_title=rows,
                      xaxis_type="category", yaxis_type="category", template="plotly_white")
    return fig


# ----------------------------------------------------------------- training curves
def _colour(i: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")
    return palette[i % len(palette)]


def _loss_columns(history: pd.DataFrame) -> list[str]:
    """Recommender losses (``train_*``) and each generator's total (``gen_<modality>_loss``)."""
    return [c for c in history.columns
            if (c.startswith("train_") or (c.startswith("gen_") and c.endswith("_loss"))) and history[c].notna().any()]


def training_curves(history: pd.DataFrame | Mapping[str, pd.DataFrame], metric: str = "recall@20",
                    losses: Sequence[str] | None = None, log_losses: bool = True) -> go.Figure:
    """Losses (top) and validation / test ``metric`` (bottom) per epoch, the best validation epoch marked.

    Args:
        history: ``FitResult.history`` / ``history.csv``, or a dict run name -> history (one colour per run).
        metric: plotted as ``valid_<metric>`` (solid) and ``test_<metric>`` (dotted); the epoch with
            the highest ``valid_<metric>`` (the one the Trainer reports) gets a star and a dashed line.
        losses: loss columns to plot (default: every ``train_*`` column and ``gen_<modality>_loss``).
        log_losses: log-scale loss axis (the L2 term is orders of magnitude above BPR).
    """
    histories = dict(history) if isinstance(history, Mapping) else {"": history}
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("losses", f"{metric} (solid: valid, dotted: test)"))
    dashes = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
    for r, (run, frame) in enumerate(histories.items()):
        if "epoch" not in frame.columns:
            raise ValueError(f"history {run!r} has no 'epoch' column; columns: {list(frame.columns)}")
        prefix = f"{run}: " if run else ""
        for k, column in enumerate(losses or _loss_columns(frame)):
            part = frame[["epoch", column]].dropna()
            fig.add_trace(go.Scatter(x=part["epoch"], y=part[column], mode="lines+markers", name=prefix + column,
                                     line=dict(color=_colour(r if run else k), dash=dashes[k % len(dashes)] if run
                                               else "solid")), row=1, col=1)
        valid_col, test_col = f"valid_{metric}", f"test_{metric}"
        if valid_col not in frame.columns or frame[valid_col].isna().all():
            continue
        evaluated = frame[["epoch", valid_col] + ([test_col] if test_col in frame.columns else [])].dropna()
        colour = _colour(r) if run else _colour(0)
        fig.add_trace(go.Scatter(x=evaluated["epoch"], y=evaluated[valid_col], mode="lines+markers",
                                 name=f"{prefix}valid {metric}", line=dict(color=colour)), row=2, col=1)
        if test_col in evaluated.columns:
            fig.add_trace(go.Scatter(x=evaluated["epoch"], y=evaluated[test_col], mode="lines+markers",
                                     name=f"{prefix}test {metric}", line=dict(color=colour, dash="dot")), row=2, col=1)
        best = evaluated.loc[evaluated[valid_col].idxmax()]
        fig.add_trace(go.Scatter(x=[best["epoch"]], y=[best[valid_col]], mode="markers",
                                 marker=dict(symbol="star", size=16, color=colour, line=dict(color="black", width=1)),
                                 name=f"{prefix}best valid epoch {int(best['epoch'])}"), row=2, col=1)
        fig.add_vline(x=float(best["epoch"]), line=dict(color=colour, dash="dash", width=1), row="all", col=1)
    fig.update_xaxes(title_text="epoch", row=2, col=1)
    fig.update_xaxes(**_integer_ticks(max(float(frame["epoch"].max()) for frame in histories.values())))
    fig.update_yaxes(type="log" if log_losses else "linear", row=1, col=1)
    fig.update_yaxes(title_text=metric, row=2, col=1)
    fig.update_layout(template="plotly_white", height=650, title="training curves")
    return fig


# --------------------------------------------------------------- modality weights
def modality_weights_figure(weights: Mapping[str, float] | Mapping[str, Mapping[str, float]]) -> go.Figure:
    """softmax(kappa) of Eq. 21 as bars: ``{'image': 0.6, 'text': 0.4}`` (``DiffMM.modality_weights()``),
    or ``{run name: {modality: weight}}`` for grouped bars."""
    if not weights:
        raise ValueError("modality_weights_figure needs at least one modality weight")
    nested = all(isinstance(v, Mapping) for v in weights.values())
    runs = dict(weights) if nested else {"": dict(weights)}
    fig = go.Figure()
    for r, (run, values) in enumerate(runs.items()):
        fig.add_trace(go.Bar(x=list(values), y=list(values.values()), name=run or "weight", marker_color=_colour(r),
                             text=[f"{v:.3f}" for v in values.values()], textposition="outside"))
    fig.add_hline(y=1.0 / max(len(v) for v in runs.values()), line=dict(color="grey", dash="dot"),
                  annotation_text="uniform", annotation_position="top left")
    fig.update_layout(barmode="group", title="modality weights softmax(kappa) (Eq. 21)", xaxis_title="modality",
                      yaxis_title="weight", yaxis_range=[0, 1], showlegend=nested, template="plotly_white")
    return fig
