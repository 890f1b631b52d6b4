"""``figures/README.md``: each reproduced figure as an image, the command that made it, the paper's claim,
and what the stored runs measure, in numbers recomputed from the store on every render.

The measured sentence is computed, not written by hand, so it stays true as runs land: it compares
the quantities the paper's claim is about against the spread between seeds (the sample std over seeds
of one point), which is what a difference has to exceed to mean anything.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd

from diffmm.experiments.analyses import Analysis, value_label
from diffmm.experiments.store import LATE_FROM, LATE_TO
from diffmm.experiments.tables import EQUAL_GROUPS, group_table, point_table, run_frame, search_choice
from diffmm.viz.verdicts import seed_std, verdict

DATASET_TITLES = {"tiktok": "TikTok (DiffMM's split, image + audio)",
                  "ml100k": "MovieLens-100k (every rating an interaction; text + genre)",
                  "baby": "Amazon-Baby (DiffMM's split, interactions only)"}


def _fmt(mean: float, std: float, n: int) -> str:
    if not np.isfinite(mean):
        return "no runs yet"
    spread = f" +- {std:.4f}" if np.isfinite(std) else ""
    return f"{mean:.4f}{spread} ({int(n)} seed{'s' if n != 1 else ''})"


def finding(analysis: Analysis, runs: pd.DataFrame, records: dict[str, dict], metric: str = "recall@20") -> str:
    """One or two sentences of what the stored runs show for this analysis (Recall@20)."""
    if runs.empty:
        return "No runs stored yet."
    table = point_table(analysis, runs)
    table = table[table["model"].notna()]
    have = table[table["seeds"] > 0]
    noise = seed_std(table, metric)
    noise_text = f"the seed std of one point is ~{noise:.4f}" if np.isfinite(noise) else "one seed per point so far"
    m = f"{metric} mean"
    if analysis.kind == "bars" and analysis.baselines_only:
        return ("Recall@20 at the validation-selected epoch: " + "; ".join(
            f"{row['label']} {_fmt(row[m], row[f'{metric} std'], row['seeds'])}" for _, row in have.iterrows())
            + f"; {noise_text}.")
    if analysis.kind == "bars":
        first = table.iloc[0] if analysis.name == "table3_ablation" else table[table["label"] == "DiffMM"].iloc[0]
        others = have[have["label"] != first["label"]]
        if not np.isfinite(first[m]) or others.empty:
            return f"{first['label']}: {_fmt(first[m], first[f'{metric} std'], first['seeds'])}; others pending."
        parts = [f"{first['label']}: {_fmt(first[m], first[f'{metric} std'], first['seeds'])}"]
        for _, row in others.iterrows():
            delta = row[m] - first[m]
            parts.append(f"{row['label']} {row[m]:.4f} ({delta:+.4f})")
        best = others.loc[others[m].idxmax()]
        verdict = (f"{first['label']} minus the best of the others ({best['label']}): {first[m] - best[m]:+.4f}; "
                   f"{noise_text}.")
        return "Recall@20: " + "; ".join(parts) + ". " + verdict
    if analysis.kind == "line":
        (field,) = analysis.x
        t = have.sort_values(field)
        if t.empty:
            return "No runs stored yet."
        if len(t) == 1:
            return f"Only {field} = {value_label(t[field].iloc[0])} has runs so far: Recall@20 {t[m].iloc[0]:.4f}."
        best = t.loc[t[m].idxmax()]
        if analysis.split != "test":
            choice, tied, default = search_choice(analysis, runs, metric)
            rule = "the setting without the search is kept" if default else "the first in the grid is kept"
            tie = f"; tied with {', '.join(value_label(x) for x in tied)}, {rule}" if tied else ""
            return (f"Validation Recall@20 is highest at {field} = {value_label(choice)} ({best[m]:.4f}{tie}); "
                    + ", ".join(f"{v:.4f} at {value_label(x)}" for x, v in zip(t[field], t[m])) + ".")
        ends = f"{t[m].iloc[0]:.4f} at {field} = {t[field].iloc[0]:g} and {t[m].iloc[-1]:.4f} at {t[field].iloc[-1]:g}"
        late = t[f"late {m}"]
        late_text = (f"; averaged over epochs {LATE_FROM}-{LATE_TO} the points span {late.max() - late.min():.4f}"
                     if late.notna().sum() > 1 else "")
        return (f"Recall@20 is {ends}, highest at {field} = {best[field]:g} ({best[m]:.4f}); the points span "
                f"{t[m].max() - t[m].min():.4f}, while {noise_text}{late_text}.")
    if analysis.kind == "heatmap":
        if have.empty:
            return "No runs stored yet."
        if len(have) == 1:
            return f"Only {have['label'].iloc[0]} has runs so far: Recall@20 {have[m].iloc[0]:.4f}."
        best = have.loc[have[m].idxmax()]
        worst = have.loc[have[m].idxmin()]
        paper = pd.DataFrame(analysis.paper)
        paper_text = ""
        if not paper.empty:
            top = paper.loc[paper[metric].idxmax()]
            paper_text = f" The paper's best cell is {top['label']} ({top[metric]:.4f})."
        cells = (f"Of the {len(have)} cells with runs so far (of {len(analysis.points)}), best"
                 if len(have) < len(analysis.points) else "Best cell")
        return (f"{cells} {best['label']} ({best[m]:.4f}), worst {worst['label']} ({worst[m]:.4f}); "
                f"{noise_text}." + paper_text)
    if analysis.kind == "groups":
        parts = []
        table = group_table(analysis, runs, records, EQUAL_GROUPS)
        for group, part in table.groupby("group", sort=False):
            ours = part[part["label"] == "DiffMM"]
            others = part[part["label"] != "DiffMM"]
            if ours.empty or others.empty:
                continue
            best = others.loc[others[f"{metric} mean"].idxmax()]
            margin = ours[f"{metric} mean"].iloc[0] - best[f"{metric} mean"]
            parts.append(f"{group} ({int(part['users'].iloc[0]):,} users): DiffMM {margin:+.4f} over {best['label']}")
        return ("Recall@20 by equal-size activity groups: " + "; ".join(parts) + ".") if parts else "Pending."
    return ""


def case_study_table(records: dict[str, dict], comparison: Analysis) -> pd.DataFrame:
    """The case-study measures (:func:`diffmm.casestudy.generation_measures`) of the stored DiffMM runs of
    the default configuration (the comparison's DiffMM point): per modality, the mean over seeds of each
    measure for the generated edges and for the random / popular references. ``records``: by key."""
    from diffmm.experiments.store import run_key

    keys = {run_key(comparison.dataset, config) for point, _, config in comparison.runs() if point.label == "DiffMM"}
    rows = [{"modality": m, "seed": record["seed"], "k": record["generation"]["k"],
             **{f"{measure} {source}": value for measure in ("mean_cos", "seen_share", "hit_share")
                for source, value in stats[measure].items()}}
            for key, record in records.items() if key in keys
            for m, stats in record.get("generation", {}).get("modalities", {}).items()]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    values = [c for c in frame.columns if c not in ("modality", "seed", "k")]
    frame[values] = frame[values].astype(float)
    return frame.groupby("modality").agg(seeds=("seed", "size"), k=("k", "max"), **{c: (c, "mean") for c in values})


def case_study_markdown(records: dict[str, dict], comparison: Analysis) -> list[str]:
    """The gallery's case-study lines for the comparison's dataset (none when no stored run has the measures)."""
    table = case_study_table(records, comparison)
    if table.empty:
        return []
    seeds = int(table["seeds"].max())
    planned = len(next(p for p in comparison.points if p.label == "DiffMM").seeds or comparison.seeds)
    # records stored before the measures existed lack them: say how many of the run's seeds are averaged
    which = (f"{seeds} seed(s)" if seeds >= planned
             else f"the {seeds} of its {planned} seeds whose records hold the measures")
    lines = ["### Case study, measured (the paper's Fig. 5 over all users)", "",
             f"What each modality's generated graph A^m holds at the selected epoch (k = {int(table['k'].max())} edges "
             f"per user), mean over {which} of the default DiffMM run "
             "(`diffmm.casestudy.generation_measures`; notebook 04 explains each measure):", "",
             "| modality | cosine to history: generated / new only / random / popular | already in training | "
             "test hits: generated / random / popular |", "|---|---|---|---|"]
    for m, row in table.iterrows():
        cos = " / ".join("n/a" if pd.isna(row.get(f"mean_cos {s}")) else f"{row[f'mean_cos {s}']:.3f}"
                         for s in ("generated", "generated_new", "random", "popular"))
        hits = " / ".join(f"{row[f'hit_share {s}']:.4f}" for s in ("generated", "random", "popular"))
        lines.append(f"| {m} | {cos} | {row['seen_share generated']:.1%} | {hits} |")
    return lines + [""]


def gallery_markdown(analyses: Sequence[Analysis], records: dict[str, dict]) -> str:
    """The text of ``figures/README.md`` for these analyses."""
    lines = ["# Figures: the paper's analyses, reproduced", "",
             "Every figure below is drawn from the results store in `results/` (one JSON record per training run: "
             "config, code version, seed, device, wall time, peak memory (runs stored from 2026-12-01 on), metrics, per-epoch history) by",
             "", "```bash", "python -m diffmm reproduce --render-only        # redraw all of them, no training",
             "python -m diffmm reproduce --status             # what is stored, what is missing", "```", "",
             "Each comes as `.png` and `.pdf` (static), `.html` (interactive: hover for every number) and `.csv` "
             "(the numbers). Each point is the mean over seeds of the test metric at the epoch with the best "
             "validation Recall@20 (the paper selects the epoch on the test set: its numbers are optimistic); "
             "error bars are the sample std over seeds. The measured sentences are recomputed from the store "
             "each time the figures are drawn.", ""]
    body, glance = [], []
    for dataset in dict.fromkeys(a.dataset for a in analyses):
        body += [f"## {DATASET_TITLES.get(dataset, dataset)}", ""]
        for analysis in (a for a in analyses if a.dataset == dataset):
            runs = run_frame(analysis, records)
            planned = sum(len(p.seeds or analysis.seeds) for p in analysis.points)
            stem = f"{dataset}/{analysis.name}"
            status, agrees = verdict(analysis, runs, records)
            if analysis.claim:
                glance.append((analysis, len(body), f"{len(runs)} of {planned}", status or "not testable"))
            body += [f"### {analysis.title}", "",
                     f"![{analysis.title}]({stem}.png)", "",
                     f"[interactive]({stem}.html) · [pdf]({stem}.pdf) · [csv]({stem}.csv) · "
                     f"`python -m diffmm reproduce --only {analysis.id}` · {len(runs)} of {planned} runs stored", ""]
            if analysis.claim:
                body += [f"**The paper:** {analysis.claim}", ""]
            body += [f"**Measured here:** {finding(analysis, runs, records)}", ""]
            if agrees:
                body += [f"**Agrees with the paper?** {agrees}", ""]
            if analysis.note:
                body += [f"*Setting:* {analysis.note}.", ""]
        body += [line for a in analyses if a.dataset == dataset and a.name == "table2_comparison"
                 for line in case_study_markdown(records, a)]
    if glance:  # one row per analysis of the paper, linked to its section below
        lines += ["## At a glance", "", "| dataset | analysis | runs stored | agrees with the paper? |",
                  "|---|---|---|---|"]
        anchors = _anchors([line for line in lines + body if line.startswith("#")])
        rank = {i: sum(line.startswith("#") for line in lines + body[:i]) for _, i, _, _ in glance}  # heading index
        lines += [f"| {analysis.dataset} | [{analysis.title}](#{anchors[rank[i]]}) | {stored} | {status} |"
                  for analysis, i, stored, status in glance] + [""]
    return "\n".join(lines + body).rstrip() + "\n"


def _anchors(headings: list[str]) -> list[str]:
    """GitHub's link targets for these Markdown headings, in order (a repeated heading gets -1, -2, ...)."""
    seen, out = Counter(), []
    for heading in headings:
        slug = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")
        out.append(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return out
