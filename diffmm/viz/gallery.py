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

DATASET_TITLES = {"tiktok": "TikTok (DiffMM's split, image + audio)",
                  "ml100k": "MovieLens-100k (every rating an interaction; text + genre)"}


def _fmt(mean: float, std: float, n: int) -> str:
    if not np.isfinite(mean):
        return "no runs yet"
    spread = f" +- {std:.4f}" if np.isfinite(std) else ""
    return f"{mean:.4f}{spread} ({int(n)} seed{'s' if n != 1 else ''})"


def seed_std(table: pd.DataFrame, metric: str = "recall@20") -> float:
    """The typical seed-to-seed std of one point (median over points with >= 2 seeds)."""
    stds = table[f"{metric} std"].dropna()
    return float(stds.median()) if len(stds) else float("nan")


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


# What we think explains a result that differs from the paper's, per dataset (shown beside such a verdict).
EXPLAIN = {
    "tiktok": "our TikTok has image + audio only (the paper's text features are not in our copy); we take the epoch "
              "chosen on validation, the paper the best test epoch",
    "ml100k": "the paper has no MovieLens numbers: DiffMM runs with the settings its authors tuned for TikTok "
              "(only its message-passing layers and lambda2 chosen on validation here), on a dense dataset "
              "(every rating an interaction) with text + genre features",
}


BASELINES_TUNED = {"tiktok": "our baselines are tuned on validation (MF-BPR here is 1.9x the paper's)"}


def verdict(analysis: Analysis, runs: pd.DataFrame, records: dict[str, dict],
            metric: str = "recall@20") -> tuple[str, str]:
    """Whether the stored runs agree with the paper's claim: the status ('Yes', 'Partly', 'No', 'Not settled'
    (a difference within two seed std) or 'Not yet') and a sentence with the numbers that decide it;
    ('', '') where the claim is not testable."""
    check = _CHECKS.get(analysis.name)
    if check is None or runs.empty:
        return "", ""
    points = point_table(analysis, runs)
    table = points[points["model"].notna()]
    if (table["seeds"] == 0).any():
        return "Not yet", f"Not yet: {int((table['seeds'] > 0).sum())} of {len(table)} points have runs."
    m = f"{metric} mean"
    noise = seed_std(points, metric)
    if analysis.kind == "groups":
        groups = group_table(analysis, runs, records, EQUAL_GROUPS)
        noise = float(groups[f"{metric} std"].median())
    if not np.isfinite(noise):
        return "Not settled", "Not settled: one seed per point so far."
    status, text = check(analysis, table, m, 2 * noise, runs, records)
    planned = sum(len(p.seeds or analysis.seeds) for p in analysis.points)
    so_far = f" (so far: {len(runs)} of {planned} runs)" if len(runs) < planned else ""
    explain = EXPLAIN.get(analysis.dataset) if status != "Yes" else None
    if explain and analysis.dataset in BASELINES_TUNED and any(p.model != "diffmm" for p in analysis.points):
        explain += f"; {BASELINES_TUNED[analysis.dataset]}"
    why = f" What we think explains it: {explain}." if explain else ""
    return status, f"{status}{so_far}: {text} (two seed std: {2 * noise:.4f}).{why}"


def _leads(analysis, table, m, bar, runs, records):
    ours = table[table["label"] == "DiffMM"]
    others = table[table["label"] != "DiffMM"]
    if ours.empty or others.empty:
        return "Not settled", "DiffMM or the baselines have no runs yet"
    best = others.loc[others[m].idxmax()]
    margin = ours[m].iloc[0] - best[m]
    paper = {p["label"]: p.get(m.replace(" mean", "")) for p in analysis.paper}
    theirs = ""
    if paper.get("DiffMM") and len(paper) > 1:
        rival = max(v for k, v in paper.items() if k != "DiffMM")
        theirs = f"; the paper's margin over its best baseline is {paper['DiffMM'] / rival - 1:+.0%}"
    text = f"DiffMM {margin:+.4f} ({margin / best[m]:+.1%}) over the best baseline, {best['label']}{theirs}"
    if margin > bar:  # 'Partly' when the lead is under half the paper's
        return ("Partly" if theirs and margin / best[m] < (paper["DiffMM"] / rival - 1) / 2 else "Yes"), text
    return ("No", text) if margin < -bar else ("Not settled", text)


def _each_helps(analysis, table, m, bar, runs, records):
    full, rest = table.iloc[0], table.iloc[1:]
    if full["label"] != analysis.points[0].label or rest.empty:
        return "Not settled", "the full model or the ablations have no runs yet"
    drops = {row["label"]: full[m] - row[m] for _, row in rest.iterrows()}
    helps = [k for k, d in drops.items() if d > bar]
    hurts = [k for k, d in drops.items() if d < -bar]
    # each change written as ablated - full (not -drop: an exact tie would print as -0.0000)
    text = "; ".join(f"{row['label']}: {row[m] - full[m]:+.4f}" for _, row in rest.iterrows()) + " against the full model"
    if len(helps) == len(drops):
        return "Yes", text
    if helps:
        return "Partly", text + f"; clearly lower: {', '.join(helps)}" + (f"; clearly higher: {', '.join(hurts)}"
                                                                         if hurts else "")
    # no removal clearly lowers the metric: a contradiction only where one clearly raises it, or where the
    # paper's own drops are large enough to show at this noise and ours fall short of them by more than it
    metric = m.replace(" mean", "")
    paper = {p["label"]: p.get(metric) for p in analysis.paper}
    theirs = {k: paper[full["label"]] - paper[k] for k in drops if paper.get(k) and paper.get(full["label"])}
    missed = [k for k, d in theirs.items() if d > bar and d - drops[k] > bar]
    if missed:
        text += "; the paper's drops, which this noise would show: " + "; ".join(
            f"{k}: {-theirs[k]:+.4f}" for k in missed)
    return ("No" if missed or any(d < -bar for d in drops.values()) else "Not settled"), text


def _falls(analysis, table, m, bar, runs, records):
    (field,) = analysis.x
    t = table.sort_values(field)
    first, last = t.iloc[0], t.iloc[-1]
    drop = first[m] - last[m]
    slope = np.polyfit(t[field].astype(float), t[m].astype(float), 1)[0] if len(t) > 1 else 0.0
    text = (f"{first[m]:.4f} at {field} = {first[field]:g}, {last[m]:.4f} at {last[field]:g}, "
            f"least-squares slope {slope:+.4f}")
    if drop > bar and slope < 0:
        return "Yes", text
    return ("No", text) if drop < -bar else ("Not settled", text)


def _worse_at_both_ends(analysis, table, m, bar, runs, records):
    """Both halves of Fig. 3b's claim: the smallest value is below the best (over-smoothing), and the largest is
    the worst of all. 'Yes' when both hold beyond the noise, 'Partly' when one does, 'No' when one is
    contradicted and neither holds."""
    (field,) = analysis.x
    t = table.sort_values(field)
    first, last, best = t.iloc[0], t.iloc[-1], t.loc[t[m].idxmax()]
    text = (f"{first[m]:.4f} at {field} = {first[field]:g}, {last[m]:.4f} at {last[field]:g}, "
            f"best {best[m]:.4f} at {best[field]:g}")
    # the smallest value is worse than the best: the best is elsewhere, and above it by more than the noise
    low = "Yes" if best[m] - first[m] > bar else "Not settled"
    # the largest value is worst only if it is below every other point by more than the noise
    if last[m] == t[m].min() and (len(t) < 2 or t[m].iloc[:-1].min() - last[m] > bar):
        high = "Yes" if best[m] - last[m] > bar else "Not settled"
    else:
        high = "No" if t[m].min() < last[m] - bar else "Not settled"
    if low == high:
        return low, text
    text += f"; worse than the best at {field} = {first[field]:g}: {low}; the worst at {last[field]:g}: {high}"
    if "Yes" in (low, high):
        return "Partly", text
    return ("No" if "No" in (low, high) else "Not settled"), text


def _paper_best_cell(analysis, table, m, bar, runs, records):
    metric = m.replace(" mean", "")
    top = max(analysis.paper, key=lambda p: p[metric]) if analysis.paper else None
    best = table.loc[table[m].idxmax()]
    mine = table[table["label"] == (top or {}).get("label")]
    if top is None or mine.empty:
        return "Not settled", "the paper's best cell has no runs yet"
    gap = best[m] - mine[m].iloc[0]
    text = f"the paper's best cell {top['label']} is {gap:+.4f} from our best, {best['label']} ({best[m]:.4f})"
    return ("Yes" if gap <= bar else "No"), text


def _every_group(analysis, table, m, bar, runs, records):
    groups = group_table(analysis, runs, records, EQUAL_GROUPS)
    margins = {}
    for group, part in groups.groupby("group", sort=False):
        ours, others = part[part["label"] == "DiffMM"], part[part["label"] != "DiffMM"]
        if not ours.empty and not others.empty:
            margins[group] = ours[m].iloc[0] - others[m].max()
    if not margins:
        return "Not settled", "no group has DiffMM and a baseline yet"
    clear = [g for g, d in margins.items() if d > bar]
    text = "DiffMM over the best baseline per group: " + "; ".join(f"{g} {d:+.4f}" for g, d in margins.items())
    sparsest = next(iter(margins.values()))  # the groups run from the sparsest users up
    if len(clear) == len(margins):  # 'most for the sparsest' is the claim's second half
        return ("Yes", text) if sparsest == max(margins.values()) else (
            "Partly", text + "; it leads in every group, but not most in the sparsest")
    behind = any(d < -bar for d in margins.values())
    return ("Partly" if clear else "No" if behind else "Not settled"), text


_CHECKS = {"table2_comparison": _leads, "table3_ablation": _each_helps, "fig4_fusion_ratio": _falls,
           "fig3b_omega": _worse_at_both_ends, "table4_tau_lambda1": _paper_best_cell, "fig2_sparsity": _every_group}


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
    lines = ["### Case study, measured (the paper's Fig. 5 over all users)", "",
             f"What each modality's generated graph A^m holds at the selected epoch (k = {int(table['k'].max())} edges "
             "per user), mean over "
             f"{int(table['seeds'].max())} seed(s) of the default DiffMM run "
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
