"""The tidy tables behind the reproduced figures, computed from the results store's records.

    runs = run_frame(analysis, records)        # one row per stored run of the analysis
    table = point_table(analysis, runs)        # one row per point: mean, std, seeds; the paper's value
    groups = group_table(analysis, runs, records, edges)   # per model and user-activity group

Every point is the mean over its seeds of the test metric at the validation-selected epoch (of the
validation metric, for a search: ``Analysis.split``); points without stored runs are kept (``seeds`` 0).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from diffmm.data.card import activity_groups, group_edges
from diffmm.experiments.analyses import PROTOCOLS, Analysis
from diffmm.experiments.runs import build_run_config
from diffmm.experiments.store import run_key

METRICS = ("recall@20", "ndcg@20")
PAPER_EDGES = (0, 5, 10, 20, 50, np.inf)  # the paper's groups ("the first group: users with 0-5 interactions")
EQUAL_GROUPS = 4


def run_frame(analysis: Analysis, records: dict[str, dict]) -> pd.DataFrame:
    """One row per stored run of the analysis: label, coordinates, seed, and the test metrics
    (validation-selected, late-epoch mean, optimistic), wall time, peak memory where recorded."""
    rows = []
    for point, seed, config in analysis.runs():
        record = records.get(run_key(analysis.dataset, config))
        if record is None:
            continue
        row = {"label": point.label, "model": point.model, **point.coords, "seed": seed, "key": record["key"],
               "best_epoch": record["best_epoch"], "epochs": record.get("epochs_run"),
               "wall_s": record.get("wall_s"), "epoch_s": record.get("epoch_s"),
               "peak_rss_mib": record.get("peak_rss_mib"), "peak_gpu_mib": record.get("peak_gpu_mib")}
        test = analysis.split == "test"  # a search draws validation metrics: no late / optimistic test values
        for m in METRICS:
            row[m] = record[analysis.split].get(m)
            row[f"late {m}"] = record["late_mean"].get(m) if test else np.nan
            row[f"optimistic {m}"] = record["optimistic_test"].get(m) if test else np.nan
        rows.append(row)
    columns = ["label", "model", *analysis.x, "seed", "key", "best_epoch", "epochs", "wall_s", "epoch_s",
               "peak_rss_mib", "peak_gpu_mib", *[f"{p}{m}" for m in METRICS for p in ("", "late ", "optimistic ")]]
    return pd.DataFrame(rows, columns=columns)


def search_choice(analysis: Analysis, runs: pd.DataFrame, metric: str = "recall@20") -> tuple[Any, list, bool]:
    """What a search's stored runs choose: (value, the other values tied with it, whether it is the default).

    The best validation ``metric``; among tied values the setting the model has without the search (its
    protocol's preset and defaults), so a tie changes nothing, else the first in the grid.
    """
    (field,) = analysis.x
    model = analysis.points[0].model
    best = runs[metric].max()
    tied = list(dict.fromkeys(runs.loc[runs[metric] == best, field]))  # grid order
    default = build_run_config(model, PROTOCOLS[analysis.dataset][model].preset, {}).setting(field)
    choice = default if default in tied else tied[0]
    return choice, [v for v in tied if v != choice], choice == default


def point_table(analysis: Analysis, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per point (declared order, then paper-only rows): seeds, mean and std of each metric,
    the paper's value."""
    paper = {p["label"]: p for p in analysis.paper}
    rows = []
    for point in analysis.points:
        mine = runs[runs["label"] == point.label]
        row = {"label": point.label, "model": point.model, **point.coords, "seeds": len(mine),
               "seeds planned": len(point.seeds or analysis.seeds)}
        for m in METRICS:
            for prefix in ("", "late ", "optimistic "):
                values = mine[f"{prefix}{m}"].dropna().astype(float)
                row[f"{prefix}{m} mean"] = values.mean() if len(values) else np.nan
                row[f"{prefix}{m} std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"paper {m}"] = paper.get(point.label, {}).get(m, np.nan)
        row["epoch_s"] = mine["epoch_s"].median() if mine["epoch_s"].notna().any() else np.nan
        rows.append(row)
    ours = {p.label for p in analysis.points}
    for label, p in paper.items():  # models the paper compares that this toolkit does not have
        if label not in ours:
            rows.append({"label": label, "model": None, "seeds": 0, "seeds planned": 0,
                         **{k: v for k, v in p.items() if k in analysis.x},
                         **{f"paper {m}": p.get(m, np.nan) for m in METRICS}})
    return pd.DataFrame(rows)


def group_table(analysis: Analysis, runs: pd.DataFrame, records: dict[str, dict],
                edges: Sequence[float] | int, metric: str = "recall@20") -> pd.DataFrame:
    """Per model and training-activity group: test users, and the mean over seeds (with std) of the
    group's mean ``metric``. ``edges``: group edges on training interactions, or an int q for q
    equal-size groups of the test users."""
    by_key = {r["key"]: r for r in records.values()}
    if runs.empty:
        return pd.DataFrame(columns=["label", "group", "users", "seeds", f"{metric} mean", f"{metric} std"])
    first = by_key[runs["key"].iloc[0]]["by_n_train"]
    activity = np.repeat(np.asarray(first["n_train"], float), first["users"])  # every test user's activity
    edge_values = _merge_small(group_edges(activity, edges), activity) if isinstance(edges, int) \
        else group_edges(activity, edges)
    rows = []
    for (label, seed, key) in runs[["label", "seed", "key"]].itertuples(index=False):
        table = by_key[key]["by_n_train"]
        which, names = activity_groups(np.asarray(table["n_train"], float), edge_values)
        users = np.bincount(which[which >= 0], np.asarray(table["users"], float)[which >= 0], len(names))
        sums = np.bincount(which[which >= 0], np.asarray(table[metric], float)[which >= 0], len(names))
        for g, name in enumerate(names):
            if users[g] > 0:
                rows.append({"label": label, "seed": seed, "group": name, "users": int(users[g]),
                             "value": sums[g] / users[g]})
    per_run = pd.DataFrame(rows)
    order = {p.label: i for i, p in enumerate(analysis.points)}
    out = (per_run.groupby(["label", "group"], sort=False)
           .agg(users=("users", "first"), seeds=("value", "size"), mean=("value", "mean"),
                std=("value", lambda v: v.std(ddof=1) if len(v) > 1 else np.nan))
           .reset_index().rename(columns={"mean": f"{metric} mean", "std": f"{metric} std"}))
    out["group order"] = out["group"].map({n: i for i, n in enumerate(activity_groups(
        np.zeros(0), edge_values)[1])})
    return out.sort_values(["group order", "label"], key=lambda s: s.map(order) if s.name == "label" else s) \
        .drop(columns="group order").reset_index(drop=True)


def _merge_small(edges: np.ndarray, activity: np.ndarray, share: float = 0.05) -> np.ndarray:
    """Quantile edges without groups of under ``share`` of the users (e.g. TikTok's 5 test users without a
    training interaction would be a group of their own): each is merged into its neighbour."""
    edges = list(edges)
    while len(edges) > 2:
        counts = np.histogram(activity, bins=edges)[0]
        small = np.flatnonzero(counts < share * len(activity))
        if not len(small):
            break
        g = int(small[0])
        del edges[g + 1 if g + 1 < len(edges) - 1 else g]  # the edge shared with the next group (or the previous)
    return np.asarray(edges, dtype=np.float64)


def csv_table(analysis: Analysis, runs: pd.DataFrame, records: dict[str, dict]) -> pd.DataFrame:
    """What the ``.csv`` beside each figure holds."""
    if analysis.kind != "groups":
        return point_table(analysis, runs)
    parts = [group_table(analysis, runs, records, edges).assign(grouping=name)
             for name, edges in (("paper edges", PAPER_EDGES), ("equal-size groups", EQUAL_GROUPS))]
    return pd.concat(parts, ignore_index=True)


def display_table(analysis: Analysis, runs: pd.DataFrame, records: dict[str, dict]) -> pd.DataFrame:
    """A narrow table for reading (a notebook, a README): per point, 'mean +- std' of each metric, the seeds
    and the paper's value; for the activity groups, Recall@20 per group (rows) and model (columns)."""
    if analysis.kind == "groups":
        parts = [group_table(analysis, runs, records, edges).assign(grouping=name)
                 for name, edges in (("paper edges", PAPER_EDGES), ("equal-size groups", EQUAL_GROUPS))]
        groups = pd.concat(parts, ignore_index=True)
        if groups.empty:
            return groups
        groups["group"] = groups["group"] + " (" + groups["users"].astype(str) + " users)"
        order = list(dict.fromkeys(p.label for p in analysis.points))
        return (groups.pivot_table(index=["grouping", "group"], columns="label", values="recall@20 mean",
                                   sort=False).reindex(columns=[o for o in order if o in set(groups["label"])])
                .round(4))
    table = point_table(analysis, runs)
    prefix = "" if analysis.split == "test" else "validation "
    out = pd.DataFrame({"label": table["label"], "seeds": table["seeds"]})
    for m in METRICS:
        mean, std = table[f"{m} mean"], table[f"{m} std"]
        out[f"{prefix}{m}"] = [("" if pd.isna(a) else f"{a:.4f}" + ("" if pd.isna(s) else f" +- {s:.4f}"))
                               for a, s in zip(mean, std)]
    if analysis.paper:
        for m in METRICS:
            out[f"paper {m}"] = table[f"paper {m}"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    return out.set_index("label")
