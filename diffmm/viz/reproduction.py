"""The paper's analyses drawn from the results store: for each one a static paper-style figure
(matplotlib + seaborn: PNG and PDF) and an interactive one (plotly: HTML), from the tables of
:mod:`diffmm.experiments.tables`.

    runs = run_frame(analysis, records)
    static_figure(analysis, runs, records), interactive_figure(analysis, runs, records)
    render(analyses, store, out)               # all of it to <out>/<dataset>/<name>.{png,pdf,html,csv}
    show(analyses, records)                    # in a notebook: claim, finding, figure and table of each

Every point is the mean over its seeds of the test metric at the validation-selected epoch, drawn with
its seeds and their sample standard deviation; the paper's numbers are drawn beside ours where it
prints them. Points without stored runs are kept (``seeds`` 0) and the figure says how many runs exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from diffmm.experiments.analyses import QUICK_DATA, Analysis, value_label
from diffmm.experiments.store import LATE_FROM, LATE_TO
from diffmm.experiments.tables import (EQUAL_GROUPS, METRICS, PAPER_EDGES, csv_table, display_table, group_table,
                                       point_table, run_frame)

NAMES = {"recall@20": "Recall@20", "ndcg@20": "NDCG@20", "msi_weight": "lambda0 (MSI weight)",
         "omega": "omega (weight of Norm(H_0))", "fusion_ratio": "fusion ratio rho", "temperature": "tau",
         "cl_weight": "lambda1", "l2": "L2 weight", "projection_l2": "L2 weight of the projection E (lambda_E)",
         "graphs": "graphs (authors' code / paper)", "lr": "learning rate"}
LOG_AXES = {"msi_weight", "l2", "projection_l2", "lr"}  # fields whose values span orders of magnitude


def _axis(t: pd.DataFrame, field: str) -> str:
    """'category' for named values, and for a log-spaced grid that holds 0 (a log axis cannot show it:
    its values are drawn evenly spaced); else 'log' for :data:`LOG_AXES`, 'linear' otherwise."""
    if not pd.api.types.is_numeric_dtype(t[field]):
        return "category"
    if field in LOG_AXES:
        return "log" if (t[field] > 0).all() else "category"
    return "linear"


def _metric_name(analysis: Analysis, m: str) -> str:
    return NAMES[m] if analysis.split == "test" else f"validation {NAMES[m]}"


def _caption(analysis: Analysis, runs: pd.DataFrame) -> str:
    planned = sum(len(p.seeds or analysis.seeds) for p in analysis.points)
    partial = f" | {len(runs)} of {planned} runs stored" if len(runs) < planned else ""
    toy = "TOY SETTINGS, not a finding: " if analysis.dataset == QUICK_DATA else ""
    what = ("validation-selected test metrics, mean +- std over seeds" if analysis.split == "test"
            else "validation metrics of the validation-selected epoch")
    return f"{toy}{analysis.dataset}: {what}{partial}"


# -------------------------------------------------------------------------------- static (PNG/PDF)
def static_figure(analysis: Analysis, runs: pd.DataFrame, records: dict[str, dict]):
    """A paper-style matplotlib figure (seaborn styling): one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    if analysis.kind == "heatmap":
        panels = _heatmap_panels(analysis)
        fig, axes = plt.subplots(2, len(panels), figsize=(9 if len(panels) > 1 else 6.5, 7.2), squeeze=False)
        table = point_table(analysis, runs)
        ty, tx = analysis.x
        for row, m in enumerate(METRICS):
            values = [table[value.format(m=m)].to_numpy(float) for _, value in panels]
            finite = np.concatenate([v[np.isfinite(v)] for v in values])
            vmin, vmax = (finite.min(), finite.max()) if len(finite) else (0, 1)
            for col, (title, value) in enumerate((title, value.format(m=m)) for title, value in panels):
                grid = table.pivot_table(index=ty, columns=tx, values=value, dropna=False, aggfunc="first")
                grid = grid.sort_index().sort_index(axis=1, ascending=False)
                annot = grid.map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
                if col == 0:  # our cells: mean, std and seeds
                    std = table.pivot_table(index=ty, columns=tx, values=f"{m} std", dropna=False, aggfunc="first")
                    seeds = table.pivot_table(index=ty, columns=tx, values="seeds", aggfunc="first")
                    annot = pd.DataFrame([[_cell(grid.loc[i, j], std.reindex_like(grid).loc[i, j],
                                                 seeds.reindex_like(grid).loc[i, j]) for j in grid.columns]
                                          for i in grid.index], index=grid.index, columns=grid.columns)
                sns.heatmap(grid, annot=annot, fmt="", cmap="viridis", vmin=vmin, vmax=vmax, ax=axes[row, col],
                            cbar=col == len(panels) - 1, annot_kws={"fontsize": 8}, linewidths=0.5)
                for (i, j) in zip(*np.nonzero(grid.isna().to_numpy())):  # seaborn leaves empty cells blank
                    axes[row, col].text(j + 0.5, i + 0.5, "no runs yet", ha="center", va="center", fontsize=8,
                                        color="0.5")
                axes[row, col].grid(False)
                axes[row, col].set_title(f"{NAMES[m]}: {title}")
                axes[row, col].set_xlabel(NAMES.get(tx, tx))
                axes[row, col].set_ylabel(NAMES.get(ty, ty))
        shared = "\n(one colour scale per metric, shared by both panels)" if len(panels) > 1 else ""
        fig.suptitle(f"{analysis.title}{shared}", fontsize=11)
    elif analysis.kind == "groups":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
        for ax, (name, edges) in zip(axes[0], (("the paper's groups", PAPER_EDGES),
                                               (f"{EQUAL_GROUPS} equal-size groups", EQUAL_GROUPS))):
            table = group_table(analysis, runs, records, edges)
            if not table.empty:
                table["group"] = table["group"] + "\n" + table["users"].map("{:,} users".format)
                sns.barplot(table, x="group", y="recall@20 mean", hue="label", ax=ax, errorbar=None)
                _error_bars(ax, table, "recall@20")
                for container in ax.containers:
                    if hasattr(container, "patches"):
                        ax.bar_label(container, fmt="%.3f", fontsize=6, padding=2)
            ax.set_title(f"Recall@20 by training interactions: {name}")
            ax.set_xlabel("training interactions")
            ax.set_ylabel("Recall@20")
        _single_legend(fig, axes[0])
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
        table = point_table(analysis, runs)
        for ax, m in zip(axes[0], METRICS):
            if analysis.kind == "line":
                _line_panel(ax, analysis, table, runs, m)
            else:
                _bar_panel(ax, table, runs, m)
            ax.set_ylabel(_metric_name(analysis, m))
        _single_legend(fig, axes[0])
    fig.text(0.01, 0.005, _caption(analysis, runs), fontsize=8, color="0.3")
    if analysis.kind != "heatmap":
        fig.suptitle(analysis.title, fontsize=12)
        fig.tight_layout(rect=(0, 0.03, 1, 0.88))
    else:
        fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig


def _heatmap_panels(analysis: Analysis) -> list[tuple[str, str]]:
    """(title, column template) per heatmap column: this toolkit's, and the paper's where it prints numbers."""
    return [("this toolkit", "{m} mean")] + ([("paper", "paper {m}")] if analysis.paper else [])


def _cell(mean, std, seeds) -> str:
    if pd.isna(mean):
        return "no runs"
    spread = f"\n+- {std:.4f}" if pd.notna(std) else ""
    return f"{mean:.4f}{spread}\n(n={int(seeds)})"


def _error_bars(ax, table: pd.DataFrame, metric: str) -> None:
    """Std error bars on seaborn's bars (seaborn draws the means; the std is over seeds, computed here)."""
    for patch, (_, row) in zip(_bar_patches(ax), table.sort_values("label", key=lambda s: s.map(
            {label: i for i, label in enumerate(dict.fromkeys(table["label"]))}), kind="stable").iterrows()):
        if pd.notna(row[f"{metric} std"]):
            ax.errorbar(patch.get_x() + patch.get_width() / 2, row[f"{metric} mean"], yerr=row[f"{metric} std"],
                        color="0.2", capsize=2, lw=1)


def _bar_patches(ax):
    return [p for p in ax.patches if p.get_height() == p.get_height() and p.get_width() > 0]


def _bar_panel(ax, table: pd.DataFrame, runs: pd.DataFrame, m: str) -> None:
    import seaborn as sns

    labels = list(table["label"])
    x = np.arange(len(labels))
    ours = table[f"{m} mean"].to_numpy(float)
    ax.bar(x, np.nan_to_num(ours), yerr=table[f"{m} std"].fillna(0), color=sns.color_palette()[0], alpha=0.8,
           capsize=3, label="this toolkit (mean +- std)")
    if not runs.empty:
        position = {label: i for i, label in enumerate(labels)}
        ax.scatter(runs["label"].map(position), runs[m], color="0.15", s=12, zorder=3, label="one seed")
    paper = table[f"paper {m}"].to_numpy(float)
    if np.isfinite(paper).any():  # no legend entry for numbers the paper does not print
        ax.scatter(x, paper, marker="D", color=sns.color_palette()[3], s=30, zorder=4, label="paper (test-selected)")
    top = np.fmax(ours + table[f"{m} std"].fillna(0).to_numpy(float), paper)  # the label clears bar, std and paper
    for i, (value, seeds) in enumerate(zip(ours, table["seeds"])):
        if np.isfinite(value):
            ax.annotate(f"{value:.4f}", (i, top[i]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        else:
            text = "no runs yet" if pd.notna(table["model"].iloc[i]) else "paper only"
            ax.annotate(text, (i, 0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xticks(x, labels, rotation=20, ha="right")


def _line_panel(ax, analysis: Analysis, table: pd.DataFrame, runs: pd.DataFrame, m: str) -> None:
    import seaborn as sns

    (field,) = analysis.x
    t = table.sort_values(field)
    axis = _axis(t, field)
    categories = axis == "category"  # e.g. a search over named variants
    xs = np.arange(len(t), dtype=float) if categories else t[field].to_numpy(float)
    mean, std = t[f"{m} mean"].to_numpy(float), t[f"{m} std"].to_numpy(float)
    color = sns.color_palette()[0]
    if categories:  # named variants: points with error bars, no line between them
        ax.errorbar(xs, mean, yerr=np.nan_to_num(std), fmt="o", color=color, capsize=4,
                    label="validation-selected (mean +- std over seeds)")
    else:
        ax.plot(xs, mean, "o-", color=color, label="validation-selected (mean)")
        ax.fill_between(xs, mean - np.nan_to_num(std), mean + np.nan_to_num(std), color=color, alpha=0.2,
                        label="+- std over seeds")
    late = t[f"late {m} mean"].to_numpy(float)
    if np.isfinite(late).any():
        ax.plot(xs, late, "s", ls="none" if categories else "--", color=sns.color_palette()[2], ms=4,
                label=f"mean over epochs {LATE_FROM}-{LATE_TO}")
    if not runs.empty:
        at = runs[field].map(dict(zip(t[field], xs))) if categories else runs[field]
        ax.scatter(at, runs[m], color="0.15", s=10, zorder=3, label="one seed")
    if axis == "log":
        ax.set_xscale("log")
        ax.set_xlim(xs.min() / 1.5, xs.max() * 1.5)
    else:
        pad = 0.5 if categories else 0.05 * (xs.max() - xs.min() or 1)
        ax.set_xlim(xs.min() - pad, xs.max() + pad)
    labels = [value_label(v) for v in t[field]] if categories else _spaced_labels(xs, log=axis == "log")
    ax.set_xticks(xs, labels)
    ax.minorticks_off()
    if not np.isfinite(mean).any():
        ax.text(0.5, 0.5, "no runs stored yet", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_ylim(0, 1)
    ax.set_xlabel(NAMES.get(field, field))


def _spaced_labels(xs: np.ndarray, log: bool = False, min_gap: float = 0.06) -> list[str]:
    """A label per tick, left blank where it would crowd the previous label (closer than ``min_gap`` of the
    axis span; e.g. 0, 0.05 and 0.1 on a 0-0.9 axis), so labels never print over each other."""
    where = np.log10(xs) if log else xs.astype(float)
    span = (where.max() - where.min()) or 1.0
    labels, last = [], None
    for x, w in zip(xs, where):
        show = last is None or (w - last) / span >= min_gap
        labels.append(f"{x:g}" if show else "")
        last = w if show else last
    return labels


def _single_legend(fig, axes) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend():
            ax.get_legend().remove()
    if handles:  # one row under the title
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.93), ncol=min(len(labels), 6),
                   fontsize=8, frameon=False)


# --------------------------------------------------------------------------- interactive (HTML)
def interactive_figure(analysis: Analysis, runs: pd.DataFrame, records: dict[str, dict]):
    """The same figure in plotly: hover gives every number, seeds, epochs and wall time."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    if analysis.kind == "heatmap":
        table = point_table(analysis, runs)
        ty, tx = analysis.x
        panels = _heatmap_panels(analysis)
        fig = make_subplots(2, len(panels), subplot_titles=[f"{NAMES[m]}: {w}" for m in METRICS for w, _ in panels],
                            horizontal_spacing=0.12, vertical_spacing=0.14)
        for row, m in enumerate(METRICS, 1):
            both = np.concatenate([table[value.format(m=m)].to_numpy(float) for _, value in panels])
            both = both[np.isfinite(both)]
            zmin, zmax = (both.min(), both.max()) if len(both) else (0, 1)
            for col, value in enumerate((value.format(m=m) for _, value in panels), 1):
                grid = table.pivot_table(index=ty, columns=tx, values=value, dropna=False, aggfunc="first")
                grid = grid.sort_index(ascending=False).sort_index(axis=1, ascending=False)
                text = grid.map(lambda v: "no runs" if pd.isna(v) else f"{v:.4f}")
                fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=[f"{c:g}" for c in grid.columns],
                                         y=[f"{i:g}" for i in grid.index], text=text.to_numpy(),
                                         texttemplate="%{text}", zmin=zmin, zmax=zmax, colorscale="Viridis",
                                         showscale=col == len(panels),
                                         colorbar=dict(len=0.4, y=0.79 if row == 1 else 0.21),
                                         hovertemplate=f"{NAMES[tx]} %{{x}}<br>{NAMES[ty]} %{{y}}<br>"
                                                       f"{NAMES[m]} %{{z:.4f}}<extra></extra>"), row, col)
                fig.update_xaxes(title_text=NAMES[tx], type="category", row=row, col=col)
                fig.update_yaxes(title_text=NAMES[ty], type="category", row=row, col=col)
        height = 700
    elif analysis.kind == "groups":
        fig = make_subplots(1, 2, subplot_titles=("the paper's groups", f"{EQUAL_GROUPS} equal-size groups"))
        for col, edges in enumerate((PAPER_EDGES, EQUAL_GROUPS), 1):
            table = group_table(analysis, runs, records, edges)
            for i, (label, part) in enumerate(table.groupby("label", sort=False)):
                fig.add_trace(go.Bar(x=part["group"] + " (" + part["users"].map("{:,}".format) + " users)",
                                     y=part["recall@20 mean"], name=label, legendgroup=label, showlegend=col == 1,
                                     marker_color=palette[i % len(palette)],
                                     error_y=dict(type="data", array=part["recall@20 std"].fillna(0)),
                                     customdata=part[["seeds"]],
                                     hovertemplate=f"{label}<br>%{{x}}<br>Recall@20 %{{y:.4f}} "
                                                   "(%{customdata[0]} seeds)<extra></extra>"), 1, col)
            fig.update_xaxes(title_text="training interactions", row=1, col=col)
            fig.update_yaxes(title_text="Recall@20", row=1, col=col)
        fig.update_layout(barmode="group")
        height = 460
    else:
        table = point_table(analysis, runs)
        fig = make_subplots(1, 2, subplot_titles=[_metric_name(analysis, m) for m in METRICS])
        for col, m in enumerate(METRICS, 1):
            show = col == 1
            if analysis.kind == "line":
                (field,) = analysis.x
                t = table.sort_values(field)
                fig.add_trace(go.Scatter(x=t[field], y=t[f"{m} mean"], mode="lines+markers", name="mean over seeds",
                                         legendgroup="mean", showlegend=show, line_color=palette[0],
                                         error_y=dict(type="data", array=t[f"{m} std"].fillna(0)),
                                         customdata=t[["seeds"]],
                                         hovertemplate=f"{field} %{{x}}<br>{NAMES[m]} %{{y:.4f}} "
                                                       "(%{customdata[0]} seeds)<extra></extra>"), 1, col)
                if t[f"late {m} mean"].notna().any():
                    fig.add_trace(go.Scatter(x=t[field], y=t[f"late {m} mean"], mode="lines+markers",
                                             name=f"mean over epochs {LATE_FROM}-{LATE_TO}", legendgroup="late", showlegend=show,
                                             line=dict(color=palette[2], dash="dash")), 1, col)
                x_runs = runs[field] if not runs.empty else []
                fig.update_xaxes(title_text=NAMES.get(field, field), type=_axis(t, field), row=1, col=col)
            else:
                fig.add_trace(go.Bar(x=table["label"], y=table[f"{m} mean"], name="this toolkit (mean +- std)",
                                     legendgroup="ours", showlegend=show, marker_color=palette[0],
                                     error_y=dict(type="data", array=table[f"{m} std"].fillna(0)),
                                     customdata=table[["seeds", "epoch_s"]],
                                     hovertemplate="%{x}<br>" + NAMES[m] + " %{y:.4f}<br>%{customdata[0]} seeds, "
                                                   "%{customdata[1]:.1f} s/epoch<extra></extra>"), 1, col)
                if table[f"paper {m}"].notna().any():
                    fig.add_trace(go.Scatter(x=table["label"], y=table[f"paper {m}"], mode="markers",
                                             name="paper (test-selected)", legendgroup="paper", showlegend=show,
                                             marker=dict(symbol="diamond", size=10, color=palette[3])), 1, col)
                x_runs = runs["label"] if not runs.empty else []
            if not runs.empty:
                fig.add_trace(go.Scatter(x=x_runs, y=runs[m], mode="markers", name="one seed", legendgroup="seed",
                                         showlegend=show, marker=dict(color="#333", size=5),
                                         customdata=runs[["seed", "best_epoch"]],
                                         hovertemplate="seed %{customdata[0]}, best epoch %{customdata[1]}"
                                                       "<br>%{y:.4f}<extra></extra>"), 1, col)
            fig.update_yaxes(title_text=_metric_name(analysis, m), row=1, col=col)
        height = 460
    fig.update_layout(title=dict(text=f"{analysis.title}<br><sup>{_caption(analysis, runs)}</sup>"),
                      height=height, template="plotly_white", margin=dict(t=90, l=60, r=30, b=60))
    return fig


# ----------------------------------------------------------------------------------- rendering
def render(analyses: Sequence[Analysis], records: dict[str, dict], out: str | Path = "figures",
           plotlyjs: str = "cdn") -> list[Path]:
    """Write ``<out>/<dataset>/<name>.{png,pdf,html,csv}`` for each analysis; return the files."""
    import matplotlib.pyplot as plt

    from diffmm.utils import atomic_path

    written = []
    for analysis in analyses:
        base = Path(out) / analysis.dataset / analysis.name
        base.parent.mkdir(parents=True, exist_ok=True)
        runs = run_frame(analysis, records)
        with atomic_path(base.with_suffix(".csv")) as tmp:
            csv_table(analysis, runs, records).to_csv(tmp, index=False, float_format="%.6g")
        fig = static_figure(analysis, runs, records)
        for suffix in (".png", ".pdf"):
            with atomic_path(base.with_suffix(suffix)) as tmp:
                fig.savefig(tmp, format=suffix[1:], dpi=150, metadata={"CreationDate": None}
                            if suffix == ".pdf" else None)
        plt.close(fig)
        with atomic_path(base.with_suffix(".html")) as tmp:
            # a fixed div id: a redraw of unchanged numbers writes the same bytes (plotly's default is random)
            interactive_figure(analysis, runs, records).write_html(tmp, include_plotlyjs=plotlyjs, full_html=True,
                                                                    div_id=f"{analysis.dataset}-{analysis.name}")
        written += [base.with_suffix(s) for s in (".csv", ".png", ".pdf", ".html")]
    return written


def show(analyses: Sequence[Analysis], records: dict[str, dict], out: str | Path | None = None) -> None:
    """In a notebook: for each analysis the paper's claim, what the stored runs measure, the interactive figure
    (also written to ``<out>/<dataset>_<name>.html`` when ``out`` is given) and the table behind it."""
    from IPython.display import Markdown, display

    from diffmm.viz.gallery import finding

    for analysis in analyses:
        runs = run_frame(analysis, records)
        display(Markdown(f"### {analysis.title}\n\n**The paper:** {analysis.claim}\n\n"
                         f"**Measured here:** {finding(analysis, runs, records)}"))
        fig = interactive_figure(analysis, runs, records)
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            fig.write_html(Path(out) / f"{analysis.dataset}_{analysis.name}.html", include_plotlyjs="cdn")
        fig.show()
        display(display_table(analysis, runs, records))  # every number (the .csv beside each figure)
