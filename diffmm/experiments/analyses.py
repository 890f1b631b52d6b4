"""The paper's analyses as data: what to train (dataset, model, protocol, grid, seeds) and what the paper
reported for it.

An :class:`Analysis` is a list of points; a point is a model and the config values that differ from its
dataset's protocol; each (point, seed) is one run. Runs are identified by their full configuration
(:func:`diffmm.experiments.store.run_key`), so a point shared by several analyses (the defaults appear
in every sweep) is trained once.

Protocols (how each model is trained on each dataset) live in :data:`PROTOCOLS`; the analyses in
:data:`ANALYSES`, looked up by ``'<dataset>/<name>'`` (e.g. ``'tiktok/table3_ablation'``).
``quick_analyses()`` gives the same analyses on synthetic data with few epochs, for tests and demos.
"""

from __future__ import annotations

import itertools
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from diffmm.experiments.runs import RunConfig, build_run_config

SEEDS3 = (421, 422, 423)


@dataclass(frozen=True)
class Protocol:
    """How one model is trained on one dataset: a DiffMM preset and config / training values."""

    preset: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    why: str = ""  # where the values come from


# BM3's authors tune layers, dropout and lambda on validation (their code's grid: 1-2, 0.3-0.5, 0.01-0.1); here
# one at a time over a wider grid, starting from their Baby setting
BM3_WHY = ("its authors' code (features fine-tuned, alignment weight 2); dropout, lambda and layers chosen on "
           "validation one at a time; early stop after 20 validations")

LATTICE_WHY = ("its paper's model, features fine-tuned as in its authors' code; chosen on validation one setting at a "
               "time: the form of its graphs (its paper's or its authors' code's), then the learning rate at the "
               "baselines' batch of 2,048, then L2 (MMRec's grids); early stop after 20 validations")

# The paper's settings where they exist (the authors' README commands: tiktok preset, 50 epochs, no early
# stop); the baselines with the defaults of diffmm.config, MF's L2 chosen on TikTok's validation split.
# ``progress`` is off: runs are driven by the reproduction's own progress bar.
PROTOCOLS: dict[str, dict[str, Protocol]] = {
    "tiktok": {
        "diffmm": Protocol("tiktok", {"patience": 0, "progress": False},
                           "the authors' TikTok command: tiktok preset, 50 epochs, batch 1024, lr 1e-3"),
        "lightgcn": Protocol(None, {"l2": 1e-3, "progress": False},
                             "3 layers, 64-d, L2 1e-3 chosen on validation among 1e-6 ... 0.5 (1e-6 ... 1e-3 within "
                             "0.0004 of each other), early stop after 20 validations"),
        "mf": Protocol(None, {"l2": 0.1, "progress": False},
                       "item bias, L2 0.1 chosen on validation among 1e-4 ... 0.5"),
        "popularity": Protocol(None, {"progress": False}, "training-interaction counts"),
        "lightgcn-m": Protocol(None, {"l2": 1e-6, "progress": False},
                               "LightGCN's settings; L2 1e-6 chosen on validation among 1e-6 ... 0.5 (1e-6 ... 1e-3 "
                               "within 0.001 of each other); early stop after 20 validations"),
        "lattice": Protocol(None, {"graphs": "paper", "lr": 1e-3, "progress": False}, LATTICE_WHY),
        "bm3": Protocol(None, {"dropout": 0.0, "l2": 0.1, "layers": 1, "progress": False}, BM3_WHY),
        "vbpr": Protocol(None, {"l2": 1e-2, "projection_l2": 0.1, "progress": False},
                         "its paper's model; chosen on validation one setting at a time: L2 1e-3 (E free), then "
                         "lambda_E 0.1, then L2 1e-2 at that lambda_E; early stop after 20 validations"),
    },
    "ml100k": {
        # the authors give no MovieLens settings: the tiktok preset's model settings, trained like the
        # baselines (up to 300 epochs, stopped after 20 validations without a better validation Recall@20)
        "diffmm": Protocol("tiktok", {"layers": 2, "l2": 1e-6, "epochs": 300, "patience": 20, "progress": False},
                           "tiktok preset's model settings but chosen on validation one at a time: the message-"
                           "passing layers among 1 ... 4 (3 at lambda2 1e-4), lambda2 1e-6 among 1e-8 ... 1e-3 (at "
                           "3 layers), then the layers again at 1e-6: 2; up to 300 epochs, early stop after 20 "
                           "validations"),
        "lightgcn": Protocol(None, {"l2": 1e-6, "progress": False},
                             "3 layers, 64-d, L2 1e-6 chosen on validation among 1e-6 ... 0.5 (1e-6 ... 1e-4 within "
                             "0.001 of each other); early stop after 20 validations"),
        "mf": Protocol(None, {"l2": 0.01, "progress": False},
                       "item bias, L2 0.01 chosen on validation among 1e-4 ... 0.5"),
        "popularity": Protocol(None, {"progress": False}, "training-interaction counts"),
        "lightgcn-m": Protocol(None, {"l2": 1e-4, "progress": False},
                               "LightGCN's settings; L2 1e-4 (the default) chosen on validation among 1e-6 ... 0.5 "
                               "(1e-6 ... 1e-3 within 0.003 of each other); early stop after 20 validations"),
        "lattice": Protocol(None, {"graphs": "paper", "lr": 1e-3, "l2": 1e-4, "progress": False}, LATTICE_WHY),
        "bm3": Protocol(None, {"dropout": 0.7, "l2": 0.1, "layers": 1, "progress": False}, BM3_WHY),
        "vbpr": Protocol(None, {"l2": 1e-4, "projection_l2": 0.01, "progress": False},
                         "its paper's model; chosen on validation one setting at a time: L2 1e-4 (E free), then "
                         "lambda_E 0.01; early stop after 20 validations"),
    },
    # Amazon-Baby's copy has no item features: the interaction-only baselines of the paper's Table 2
    "baby": {
        "lightgcn": Protocol(None, {"l2": 1e-2, "progress": False},
                             "3 layers, 64-d, L2 1e-2 chosen on validation among 1e-6 ... 0.5; early stop after 20 "
                             "validations"),
        # at 300 epochs MF-BPR's best L2 (0.01) still improved at the last epoch
        "mf": Protocol(None, {"l2": 0.01, "epochs": 1000, "progress": False},
                       "item bias, L2 chosen on validation among 1e-4 ... 0.5; up to 1,000 epochs"),
        "popularity": Protocol(None, {"progress": False}, "training-interaction counts"),
    },
}


@dataclass(frozen=True)
class Point:
    """One point of an analysis: a model and the values that differ from its protocol."""

    label: str  # the x-axis / row label, e.g. 'w/o CL', '0.5', 'LightGCN'
    model: str = "diffmm"
    values: dict[str, Any] = field(default_factory=dict)
    coords: dict[str, Any] = field(default_factory=dict)  # grid coordinates (e.g. {'temperature': 0.1})
    seeds: tuple[int, ...] | None = None  # None: the analysis's seeds


@dataclass(frozen=True)
class Analysis:
    """One of the paper's tables or figures, reproduced on one dataset."""

    name: str  # file stem under figures/<dataset>/, e.g. 'table3_ablation'
    dataset: str
    kind: str  # 'bars' (one bar per point), 'line' (metric against coords[x]), 'heatmap' (2-d grid), 'groups'
    title: str
    points: tuple[Point, ...]
    seeds: tuple[int, ...] = SEEDS3
    x: tuple[str, ...] = ()  # coordinate names for 'line' (1) and 'heatmap' (2)
    paper: tuple[dict, ...] = ()  # the paper's numbers: {'label': ..., 'recall@20': ..., 'ndcg@20': ...}
    claim: str = ""  # what the paper states for this analysis
    note: str = ""  # how our setting differs from the paper's
    split: str = "test"  # the metrics drawn: 'test' (validation-selected epoch), or 'valid' for a search

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.name}"

    @property
    def baselines_only(self) -> bool:
        """A comparison without DiffMM (a dataset it cannot train on, e.g. one without item features)."""
        return all(p.label != "DiffMM" for p in self.points)

    def runs(self, protocols: dict[str, dict[str, Protocol]] | None = None) -> list[tuple[Point, int, RunConfig]]:
        """Every (point, seed, full RunConfig) of this analysis."""
        protocols = PROTOCOLS if protocols is None else protocols
        out = []
        for point in self.points:
            protocol = protocols[self.dataset][point.model]
            for seed in point.seeds or self.seeds:
                values = {**protocol.values, **point.values, "seed": seed}
                out.append((point, seed, build_run_config(point.model, protocol.preset, values)))
        return out


# ------------------------------------------------------------------------------- the paper's numbers
# Table 2 (TikTok, Recall@20 / NDCG@20); the authors select the best epoch on the test set.
PAPER_TABLE2_TIKTOK = {"MF-BPR": (0.0346, 0.0130), "LightGCN": (0.0653, 0.0282), "VBPR": (0.0380, 0.0134),
                       "LGCN-M": (0.0679, 0.0273), "LATTICE": (0.0843, 0.0367), "BM3": (0.0957, 0.0404),
                       "DiffMM": (0.1129, 0.0456)}
# Table 2 (Amazon-Baby): the baselines that need no item features (its DiffMM: 0.0975 / 0.0411)
PAPER_TABLE2_BABY = {"MF-BPR": (0.0440, 0.0200), "LightGCN": (0.0698, 0.0319)}
PAPER_TABLE3_TIKTOK = {"w/o CL": (0.1026, 0.0420), "w/o DM": (0.1075, 0.0433), "w/o MSI": (0.1086, 0.0426),
                       "DiffMM": (0.1129, 0.0456)}
# Table 4, TikTok: (tau, lambda1) -> (Recall@20, NDCG@20)
PAPER_TABLE4_TIKTOK = {(0.1, 1.0): (0.0474, 0.0198), (0.1, 0.1): (0.0411, 0.0186), (0.1, 0.01): (0.0987, 0.0417),
                       (0.5, 1.0): (0.0722, 0.0313), (0.5, 0.1): (0.0849, 0.0373), (0.5, 0.01): (0.1129, 0.0456),
                       (1.0, 1.0): (0.0740, 0.0323), (1.0, 0.1): (0.0983, 0.0410), (1.0, 0.01): (0.1064, 0.0432)}


def _paper(numbers: dict) -> tuple[dict, ...]:
    return tuple({"label": label, "recall@20": r, "ndcg@20": n} for label, (r, n) in numbers.items())


# ------------------------------------------------------------------------------------ the analyses
BASELINES = (("popularity", "Most popular"), ("mf", "MF-BPR"), ("lightgcn", "LightGCN"), ("vbpr", "VBPR"),
             ("lightgcn-m", "LGCN-M"), ("lattice", "LATTICE"), ("bm3", "BM3"))
ABLATIONS = (("DiffMM", {}), ("w/o CL", {"cl_weight": 0.0}), ("w/o DM", {"generator": "vgae"}),
             ("w/o MSI", {"msi_weight": 0.0}))


TABLE2_CLAIM = "DiffMM outperforms every baseline (TikTok: +18% Recall@20 over the best, BM3)."


def comparison(dataset: str, paper: dict | None = None, note: str = "", models: Sequence[str] | None = None,
               claim: str = TABLE2_CLAIM) -> Analysis:
    """Table 2: the baselines and DiffMM, or only ``models`` (those a dataset without item features can train)."""
    points = tuple(Point(label, model, seeds=(SEEDS3[0],) if model == "popularity" else None)
                   for model, label in (*BASELINES, ("diffmm", "DiffMM")) if models is None or model in models)
    title = "Table 2: DiffMM against the baselines" if "DiffMM" in (p.label for p in points) else (
        "Table 2: the baselines without item features")
    return Analysis("table2_comparison", dataset, "bars", title, points, paper=_paper(paper or {}), note=note,
                    claim=claim)


def sparsity(dataset: str) -> Analysis:
    base = comparison(dataset)
    return Analysis("fig2_sparsity", dataset, "groups", "Fig. 2: Recall@20 by training interactions per user",
                    base.points, claim="DiffMM outperforms the baselines in every activity group, most for the "
                    "sparsest users.", note="the paper's Fig. 2 is on Amazon-Baby; groups are drawn both as the "
                    "paper's edges (0-5, 5-10, ...) where users exist, and as equal-size groups")


def ablation(dataset: str, paper: dict | None = None) -> Analysis:
    points = tuple(Point(label, values=values) for label, values in ABLATIONS)
    return Analysis("table3_ablation", dataset, "bars", "Table 3: ablations", points, paper=_paper(paper or {}),
                    claim="Each component helps: removing CL, DM (VGAE instead) or MSI lowers Recall@20 and NDCG@20.",
                    note="w/o CL: lambda1 = 0; w/o DM: a VGAE generates A^m; w/o MSI: lambda0 = 0")


def value_label(value: Any) -> str:
    """How a setting's value reads in labels and sentences: numbers compactly (1e-05, 0.5), others as text,
    'none' for an optional setting left unset (e.g. first_beta)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "none"
    numeric = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    return f"{value:g}" if numeric else str(value)


def line(dataset: str, name: str, field_name: str, values: tuple, title: str, claim: str, note: str = "",
         model: str = "diffmm", fixed: dict[str, Any] | None = None, seeds: tuple[int, ...] = SEEDS3) -> Analysis:
    points = tuple(Point(value_label(v), model, values={**(fixed or {}), field_name: v}, coords={field_name: v})
                   for v in values)
    return Analysis(name, dataset, "line", title, points, seeds=seeds, x=(field_name,), claim=claim, note=note)


def search(dataset: str, model: str, field_name: str, values: tuple, label: str,
           fixed: dict[str, Any] | None = None, name: str = "") -> Analysis:
    """A validation search for a setting (one the model's paper leaves to tuning, or one that fails on this
    data): one seed per value, drawn on the validation split, on top of the protocol and ``fixed``.

    Several settings are searched one at a time (coordinate-wise): each pass fixes the others at the values
    it was run with. The pass whose ``fixed`` values are the protocol's is the current one, and its best
    value (``tables.search_choice``; a tie keeps the setting without the search) is the one :data:`PROTOCOLS`
    uses (checked against the store by the tests)."""
    given = "".join(f", {k} = {value_label(v)}" for k, v in (fixed or {}).items())
    note = ("validation Recall@20 of the selected epoch, seed 421; settings searched one at a time, the protocol "
            "takes the best value of the pass run at its other settings" if fixed else
            "validation Recall@20 of the selected epoch, seed 421; the best value is the one the protocol uses")
    analysis = line(dataset, name or f"search_{model}_{field_name}", field_name, values,
                    f"{label}: {field_name} chosen on the validation split{given}", "", note, model, fixed)
    return Analysis(**{**analysis.__dict__, "seeds": (SEEDS3[0],), "split": "valid"})


L2_GRID = (1e-4, 1e-3, 1e-2, 0.1, 0.5)
PROJECTION_L2_GRID = (1e-3, 1e-2, 0.1, 1.0, 10.0)  # VBPR's lambda_E
BM3_DROPOUT_GRID = (0.0, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9)
BM3_L2_GRID = (1e-3, 1e-2, 0.1, 1.0)  # lambda on the authors' (||H_u|| + ||H_i||) / n_items
BM3_LAYERS_GRID = (1, 2, 3)
LATTICE_GRAPHS = ("code", "paper")  # its authors' code's graphs, or the paper's form (LATTICEConfig.graphs)
LATTICE_LR_GRID = (1e-4, 5e-4, 1e-3, 5e-3)  # MMRec's LATTICE grid (its authors' code: 5e-4, batch 1024)
LATTICE_L2_GRID = (0.0, 1e-5, 1e-4, 1e-3)  # MMRec's LATTICE grid (its authors' code: 1e-5)


def fusion_ratio(dataset: str) -> Analysis:
    return line(dataset, "fig4_fusion_ratio", "fusion_ratio", (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                "Fig. 4: contrastive views from (1 - rho) A^m + rho A_dropped",
                "Performance falls as the fusion ratio rho grows: diffusion-generated views beat random ones.",
                "the paper ran this on Amazon-Baby and Amazon-Sports")


def lambda0(dataset: str) -> Analysis:
    return line(dataset, "fig3a_lambda0", "msi_weight", (0.01, 0.05, 0.1, 0.5, 1.0), "Fig. 3a: MSI weight lambda0",
                "The best lambda0 is dataset-specific.")


def omega(dataset: str) -> Analysis:
    return line(dataset, "fig3b_omega", "omega", (0.1, 0.25, 0.5, 0.75, 1.0), "Fig. 3b: weight omega of Norm(H_0)",
                "A small omega over-smooths (worse on TikTok at 0.1); omega = 1 drops high-order information and is "
                "worst on every dataset.")


def tau_lambda1(dataset: str) -> Analysis:
    points = tuple(Point(f"tau={t:g}, lambda1={c:g}", values={"temperature": t, "cl_weight": c},
                         coords={"temperature": t, "cl_weight": c})
                   for t, c in itertools.product((0.1, 0.5, 1.0), (1.0, 0.1, 0.01)))
    paper = tuple({"label": f"tau={t:g}, lambda1={c:g}", "temperature": t, "cl_weight": c, "recall@20": r,
                   "ndcg@20": n} for (t, c), (r, n) in PAPER_TABLE4_TIKTOK.items()) if dataset == "tiktok" else ()
    return Analysis("table4_tau_lambda1", dataset, "heatmap", "Table 4: temperature tau x InfoNCE weight lambda1",
                    points, x=("temperature", "cl_weight"), paper=paper,
                    claim="The best (tau, lambda1) is dataset-specific; on TikTok tau = 0.5, lambda1 = 0.01.")


TIKTOK_NOTE = ("TikTok here has image + audio (the paper's text features are not in this copy); test metrics of the "
               "validation-selected epoch (the paper selects on test)")
# in the order a sweep trains them: the comparison and ablations first, Table 4's nine cells last
ANALYSES: dict[str, Analysis] = {a.id: a for a in (
    search("tiktok", "mf", "l2", L2_GRID, "MF-BPR"),
    # VBPR, coordinate-wise: L2 with E free, then lambda_E at that L2, then L2 again at that lambda_E
    search("tiktok", "vbpr", "l2", L2_GRID, "VBPR", fixed={"projection_l2": 0.0}),
    search("tiktok", "vbpr", "projection_l2", PROJECTION_L2_GRID, "VBPR", fixed={"l2": 1e-3}),
    search("tiktok", "vbpr", "l2", L2_GRID, "VBPR", fixed={"projection_l2": 0.1},
           name="search_vbpr_l2_given_projection_l2"),
    search("tiktok", "lightgcn", "l2", (1e-6, 1e-5, *L2_GRID), "LightGCN"),  # DiffMM's closest baseline
    search("tiktok", "bm3", "dropout", BM3_DROPOUT_GRID, "BM3", fixed={"l2": 0.1, "layers": 1}),
    search("tiktok", "bm3", "l2", BM3_L2_GRID, "BM3", fixed={"dropout": 0.0, "layers": 1}),
    search("tiktok", "bm3", "layers", BM3_LAYERS_GRID, "BM3", fixed={"dropout": 0.0, "l2": 0.1}),
    # LATTICE, coordinate-wise: the form of its graphs, then the learning rate (the baselines' batch of 2,048)
    search("tiktok", "lattice", "graphs", LATTICE_GRAPHS, "LATTICE", fixed={"lr": 1e-3, "l2": 1e-5}),
    search("tiktok", "lattice", "lr", LATTICE_LR_GRID, "LATTICE", fixed={"graphs": "paper", "l2": 1e-5}),
    search("tiktok", "lattice", "l2", LATTICE_L2_GRID, "LATTICE", fixed={"graphs": "paper", "lr": 1e-3}),
    search("tiktok", "lightgcn-m", "l2", (1e-6, 1e-5, *L2_GRID), "LightGCN-M"),
    comparison("tiktok", PAPER_TABLE2_TIKTOK, TIKTOK_NOTE),
    sparsity("tiktok"),
    ablation("tiktok", PAPER_TABLE3_TIKTOK),
    fusion_ratio("tiktok"),
    lambda0("tiktok"),
    omega("tiktok"),
    tau_lambda1("tiktok"),
    search("ml100k", "mf", "l2", L2_GRID, "MF-BPR"),
    search("ml100k", "vbpr", "l2", L2_GRID, "VBPR", fixed={"projection_l2": 0.0}),
    search("ml100k", "vbpr", "projection_l2", PROJECTION_L2_GRID, "VBPR", fixed={"l2": 1e-4}),
    # DiffMM, coordinate-wise as the baselines' settings: the layers (the authors set one for their sparser
    # datasets), then lambda2 (the authors' presets: 1e-4 TikTok, 1e-5 Baby, 1e-6 Sports) at those layers
    search("ml100k", "diffmm", "layers", (1, 2, 3, 4), "DiffMM", fixed={"l2": 1e-4}),
    search("ml100k", "diffmm", "l2", (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3), "DiffMM", fixed={"layers": 3}),
    search("ml100k", "diffmm", "layers", (1, 2, 3, 4), "DiffMM", fixed={"l2": 1e-6},
           name="search_diffmm_layers_given_l2"),
    search("ml100k", "lightgcn", "l2", (1e-6, 1e-5, *L2_GRID), "LightGCN"),  # DiffMM's closest baseline
    search("ml100k", "bm3", "dropout", BM3_DROPOUT_GRID, "BM3", fixed={"l2": 0.1, "layers": 1}),
    search("ml100k", "bm3", "l2", BM3_L2_GRID, "BM3", fixed={"dropout": 0.7, "layers": 1}),
    search("ml100k", "bm3", "layers", BM3_LAYERS_GRID, "BM3", fixed={"dropout": 0.7, "l2": 0.1}),
    # LATTICE, coordinate-wise: the form of its graphs, then the learning rate (the baselines' batch of 2,048)
    search("ml100k", "lattice", "graphs", LATTICE_GRAPHS, "LATTICE", fixed={"lr": 1e-3, "l2": 1e-5}),
    search("ml100k", "lattice", "lr", LATTICE_LR_GRID, "LATTICE", fixed={"graphs": "paper", "l2": 1e-5}),
    search("ml100k", "lattice", "l2", LATTICE_L2_GRID, "LATTICE", fixed={"graphs": "paper", "lr": 1e-3}),
    search("ml100k", "lightgcn-m", "l2", (1e-6, 1e-5, *L2_GRID), "LightGCN-M"),
    comparison("ml100k", note="MovieLens-100k with text + genre modalities; no paper numbers"),
    sparsity("ml100k"),  # the comparison's runs by user activity: no runs of its own
    ablation("ml100k"),
    fusion_ratio("ml100k"),
    lambda0("ml100k"),  # the paper: the best lambda0 is dataset-specific
    omega("ml100k"),  # the paper: omega = 1 is the worst "on every dataset"
    tau_lambda1("ml100k"),  # the paper: the best (tau, lambda1) is dataset-specific
    search("baby", "mf", "l2", L2_GRID, "MF-BPR"),
    search("baby", "lightgcn", "l2", (1e-6, 1e-5, *L2_GRID), "LightGCN"),
    comparison("baby", PAPER_TABLE2_BABY, "Amazon-Baby without its image and text features (not in this copy): the "
               "models that need none; test metrics of the validation-selected epoch (the authors' code reports "
               "DiffMM's best test epoch)",
               models=("popularity", "mf", "lightgcn"),
               claim="On Amazon-Baby MF-BPR reaches 0.0440 and LightGCN 0.0698 Recall@20, DiffMM 0.0975, +16% over "
                     "the best baseline, BM3 (0.0839)."),
)}


def select(names: str | None = None, analyses: dict[str, Analysis] | None = None) -> list[Analysis]:
    """Analyses by comma-separated id, name or dataset ('tiktok', 'table3_ablation', 'ml100k/fig4_fusion_ratio')."""
    analyses = ANALYSES if analyses is None else analyses
    if not names:
        return list(analyses.values())
    chosen = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        found = [a for a in analyses.values() if name in (a.id, a.name, a.dataset)]
        if not found:
            raise ValueError(f"--only: no analysis '{name}'; known: {', '.join(analyses)} (or a dataset name)")
        chosen += [a for a in found if a not in chosen]
    return chosen


# The quick variants: every analysis of TikTok (each kind of figure) on the built-in synthetic data, a few
# epochs, one seed: a demonstration and a test of the whole pipeline, minutes on a laptop, not a finding.
QUICK_EPOCHS = 2
QUICK_DATA = "synthetic-small"
PROTOCOLS[QUICK_DATA] = {
    model: Protocol(protocol.preset, {**protocol.values, "epochs": QUICK_EPOCHS, "patience": 0},
                    f"quick variant: {QUICK_EPOCHS} epochs")
    for model, protocol in PROTOCOLS["tiktok"].items()}


def quick_analyses() -> dict[str, Analysis]:
    """The TikTok analyses on :data:`QUICK_DATA` (``QUICK_EPOCHS`` epochs, seed 1), by id."""
    quick = {}
    for analysis in ANALYSES.values():
        if analysis.dataset != "tiktok":
            continue
        points = tuple(Point(p.label, p.model, p.values, p.coords) for p in analysis.points)
        quick_one = Analysis(**{**analysis.__dict__, "dataset": QUICK_DATA, "points": points, "seeds": (1,),
                                "paper": (),
                                "note": f"quick variant: synthetic data, {QUICK_EPOCHS} epochs, one seed"})
        quick[quick_one.id] = quick_one
    return quick


def for_dataset(dataset: str, names: Sequence[str], quick: bool = False) -> list[Analysis]:
    """The analyses ``<dataset>/<name>`` for ``names`` that ``dataset`` declares, in that order (``quick``: the
    toy variants of :func:`quick_analyses`, whose dataset is :data:`QUICK_DATA`); a warning names the rest."""
    pool = quick_analyses() if quick else ANALYSES
    dataset = QUICK_DATA if quick else dataset
    chosen = [pool[f"{dataset}/{name}"] for name in names if f"{dataset}/{name}" in pool]
    left = [name for name in names if f"{dataset}/{name}" not in pool]
    if left:
        own = [a for a in pool.values() if a.dataset == dataset]
        figures = [a.name for a in own if a.split == "test"]
        searches = f" and {len(own) - len(figures)} settings searches (search_*)" if len(own) > len(figures) else ""
        warnings.warn(f"{dataset} does not declare {', '.join(left)}; it declares {', '.join(figures)}{searches}",
                      stacklevel=2)
    return chosen
