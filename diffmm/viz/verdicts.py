"""The gallery's verdicts: whether the stored runs agree with each claim of the paper.

Each check compares the quantities a claim is about against two seed std (twice the typical sample std
over seeds of one point): a difference has to exceed it to count. A status reads 'Yes', 'Partly', 'No',
'Not settled' (within the noise) or 'Not yet' (points without runs); the sentence beside it gives the
numbers that decide it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffmm.experiments.analyses import Analysis
from diffmm.experiments.tables import EQUAL_GROUPS, group_table, point_table, run_frame

def seed_std(table: pd.DataFrame, metric: str = "recall@20") -> float:
    """The typical seed-to-seed std of one point (median over points with >= 2 seeds)."""
    stds = table[f"{metric} std"].dropna()
    return float(stds.median()) if len(stds) else float("nan")


# What we think explains a result that differs from the paper's, per dataset (shown beside such a verdict).
EXPLAIN = {
    "tiktok": "our TikTok has image + audio only (the paper's text features are not in our copy); we take the epoch "
              "chosen on validation, the paper the best test epoch",
    "ml100k": "the paper has no MovieLens numbers: DiffMM runs with the settings its authors tuned for TikTok "
              "(only its message-passing layers and lambda2 chosen on validation here), on a dense dataset "
              "(every rating an interaction) with text + genre features",
    "baby": "the paper's baseline settings are in its Appendix A.3, which is not in the paper text this toolkit follows",
}


def _baselines_tuned(dataset: str, records: dict[str, dict], metric: str) -> str:
    """How far the baselines tuned here are from the paper's numbers for them: the largest ratio over the
    dataset's Table 2 ('' without paper numbers or runs)."""
    from diffmm.experiments.analyses import ANALYSES

    comparison = ANALYSES.get(f"{dataset}/table2_comparison")
    paper = {p["label"]: p[metric] for p in comparison.paper if p["label"] != "DiffMM"} if comparison else {}
    if not paper:
        return ""
    table = point_table(comparison, run_frame(comparison, records or {})).set_index("label")[f"{metric} mean"]
    ratios = {label: table[label] / value for label, value in paper.items() if np.isfinite(table.get(label, np.nan))}
    if not ratios:
        return ""
    top = max(ratios, key=ratios.get)
    return f"our baselines are tuned on validation ({top} here is {ratios[top]:.1f}x the paper's)"


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
    # a check may add the status of its comparison with the paper on this dataset, the part EXPLAIN is about
    # ('' where it compares datasets only); by default its status is that
    status, text, *own = check(analysis, table, m, 2 * noise, runs, records)
    if not status:  # the claim needs what the store cannot give yet (e.g. a second dataset)
        return "", ""
    planned = sum(len(p.seeds or analysis.seeds) for p in analysis.points)
    so_far = f" (so far: {len(runs)} of {planned} runs)" if len(runs) < planned else ""
    explain = EXPLAIN.get(analysis.dataset) if (own[0] if own else status) not in ("Yes", "") else None
    if explain and any(p.model != "diffmm" for p in analysis.points):
        explain = "; ".join(filter(None, (explain, _baselines_tuned(analysis.dataset, records, metric))))
    why = f" What we think explains it: {explain}." if explain else ""
    return status, f"{status}{so_far}: {text} (two seed std: {2 * noise:.4f}).{why}"


def _leads(analysis, table, m, bar, runs, records):
    if analysis.baselines_only:
        return _as_reported(analysis, table, m, bar, runs, records)
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


def _as_reported(analysis, table, m, bar, runs, records):
    """The paper's numbers for these models against ours at the best test epoch, the one the authors' code reports
    for DiffMM (the paper does not say how its baselines' epochs were chosen): 'Yes' when every one is within the
    noise, 'Partly' when some are, else 'No'."""
    paper = {p["label"]: p[m.replace(" mean", "")] for p in analysis.paper}
    rows = table[table["label"].isin(paper)]
    if rows.empty:
        return "", ""
    gaps = {row["label"]: row[f"optimistic {m}"] - paper[row["label"]] for _, row in rows.iterrows()}
    text = "at the best test epoch, the one the authors' code reports for DiffMM: " + "; ".join(
        f"{label} {gap + paper[label]:.4f} against the paper's {paper[label]:.4f} ({gap / paper[label]:+.0%})"
        for label, gap in gaps.items())
    close = sum(abs(gap) <= bar for gap in gaps.values())
    return ("No", "Partly", "Yes")[(close > 0) + (close == len(gaps))], text


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
    """Table 4: the paper's best cell is ours too (within the noise), and the best cell is dataset-specific."""
    own = ("", "")
    if analysis.paper:
        metric = m.replace(" mean", "")
        top = max(analysis.paper, key=lambda p: p[metric])
        best = table.loc[table[m].idxmax()]
        mine = table[table["label"] == top["label"]]
        if mine.empty:
            own = ("Not settled", "the paper's best cell has no runs yet")
        else:
            gap = best[m] - mine[m].iloc[0]
            own = (("Yes" if gap <= bar else "No"),
                   f"the paper's best cell {top['label']} is {gap:+.4f} from our best, {best['label']} ({best[m]:.4f})")
    return *_all_of(own, _best_differs(analysis, table, m, bar, runs, records)[:2]), own[0]


def _best_differs(analysis, table, m, bar, runs, records):
    """'The best setting is dataset-specific', against the same analysis on each other dataset that declares it:
    each dataset's best point beats the other's best there by more than that dataset's two seed std. 'Yes'
    when that holds on both datasets, 'Partly' on one; 'No' when one point is the clear best (beyond the
    noise) on both; ('', '') when no other dataset declares the analysis, or this one is not declared (a toy
    variant has no other dataset to compare with)."""
    from diffmm.experiments.analyses import ANALYSES

    if ANALYSES.get(analysis.id) != analysis:
        return "", "", ""
    metric = m.replace(" mean", "")
    best = table.loc[table[m].idxmax()]
    results = []
    for other in (a for a in ANALYSES.values() if a.name == analysis.name and a.dataset != analysis.dataset):
        theirs = point_table(other, run_frame(other, records or {}))
        theirs = theirs[theirs["model"].notna()].set_index("label")
        if (theirs["seeds"] == 0).any() or best["label"] not in theirs.index:
            done = int((theirs["seeds"] > 0).sum())
            results.append(("Not settled", f"{other.dataset} has runs for {done} of {len(theirs)} points so far"))
            continue
        top = theirs[m].idxmax()
        their_bar = 2 * seed_std(theirs, metric)
        here = best[m] - table.loc[table["label"] == top, m].iloc[0]  # our best over theirs, on our data
        there = theirs.loc[top, m] - theirs.loc[best["label"], m]  # their best over ours, on theirs
        if top == best["label"]:
            lead_here, lead_there = (t[m].nlargest(2).diff().abs().iloc[-1] for t in (table, theirs))
            results.append(("No" if lead_here > bar and lead_there > their_bar else "Not settled",
                            f"{top} is the best on {other.dataset} too, ahead of the next point by {lead_here:.4f} "
                            f"here and by {lead_there:.4f} on {other.dataset} (two seed std on {other.dataset}: "
                            f"{their_bar:.4f})"))
        else:
            holds = int(here > bar) + int(there > their_bar)
            results.append((("Not settled", "Partly", "Yes")[holds],
                            f"{other.dataset}'s best point, {top}, is {here:.4f} below the best here, {best['label']}; "
                            f"on {other.dataset} that one is {there:.4f} below its best (two seed std on "
                            f"{other.dataset}: {their_bar:.4f})"))
    return (*_all_of(*results), "") if results else ("", "", "")


def _all_of(*results: tuple[str, str]) -> tuple[str, str]:
    """Several checks of one claim: 'Yes' when all hold, 'Partly' when one does, else 'No' when one is
    contradicted, else 'Not settled'. Untestable checks, ('', ''), are left out."""
    results = [r for r in results if r[0]]
    statuses = {status for status, _ in results}
    text = "; ".join(text for _, text in results)
    if len(statuses) <= 1:
        return (statuses.pop() if statuses else ""), text
    if statuses & {"Yes", "Partly"}:
        return "Partly", text
    return ("No" if "No" in statuses else "Not settled"), text


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
           "fig3b_omega": _worse_at_both_ends, "table4_tau_lambda1": _paper_best_cell, "fig2_sparsity": _every_group,
           "fig3a_lambda0": _best_differs}
