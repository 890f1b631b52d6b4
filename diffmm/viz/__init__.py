"""Figures, subgraphs and widgets for DiffMM results. Every function returns an object; nothing prints.

One backend: **plotly** for every figure (interactive in notebooks, self-contained HTML on disk).
:func:`save_figure` always writes ``<name>.html`` and also ``<name>.png`` when plotly's static
export works (``pip install kaleido`` plus a Chrome that kaleido can drive); without it the PNG
is skipped, or an error is raised if you ask for it with ``png=True``.

- :mod:`diffmm.viz.plots`: result tables -> figures (sparsity groups, fusion ratio, hyperparameters,
  training curves, modality weights).
- :mod:`diffmm.viz.graphs`: a trained model -> the user subgraph with the generated edges A^m,
  item-feature similarity, the case study, the denoising trajectory.
- :mod:`diffmm.viz.widgets`: an ipywidgets explorer over users, modalities and diffusion steps.
- :mod:`diffmm.viz.cli`: ``python -m diffmm figures --run <run dir>``.
"""

from diffmm.viz.graphs import (
    case_study_figure,
    case_users,
    denoising_figure,
    denoising_frame,
    modality_similarity,
    similarity_heatmap,
    subgraph_figure,
    user_subgraph,
)
from diffmm.viz.plots import (
    fusion_ratio_figure,
    hyperparameter_figure,
    hyperparameter_heatmap,
    modality_weights_figure,
    save_figure,
    sparsity_figure,
    sparsity_table,
    training_curves,
)

__all__ = [
    "sparsity_table", "sparsity_figure", "fusion_ratio_figure", "hyperparameter_figure", "hyperparameter_heatmap",
    "training_curves", "modality_weights_figure", "save_figure",
    "user_subgraph", "subgraph_figure", "modality_similarity", "similarity_heatmap", "case_study_figure", "case_users",
    "denoising_frame", "denoising_figure",
]
