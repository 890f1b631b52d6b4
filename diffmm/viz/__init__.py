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

import importlib

_SOURCES = {
    "graphs": ["case_study_figure", "case_users", "denoising_figure", "denoising_frame", "modality_similarity",
               "similarity_heatmap", "subgraph_figure", "user_subgraph"],
    "plots": ["fusion_ratio_figure", "hyperparameter_figure", "hyperparameter_heatmap", "modality_weights_figure",
              "save_figure", "sparsity_figure", "sparsity_table", "training_curves"],
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """Load plotly and networkx only when a figure function is first used (``python -m diffmm`` stays lean)."""
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"diffmm.viz.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'diffmm.viz' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
