"""diffmm: a readable PyTorch toolkit for DiffMM, the multi-modal graph diffusion recommender."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from diffmm import datasets``: the dataset registry (:mod:`diffmm.data.registry`), imported on first use."""
    if name == "datasets":
        from diffmm.data import registry

        return registry
    raise AttributeError(f"module 'diffmm' has no attribute '{name}'")
