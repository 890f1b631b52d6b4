"""diffmm: a readable PyTorch toolkit for DiffMM, the multi-modal graph diffusion recommender."""

__version__ = "0.1.0"
# The sequence of random draws a seeded run makes. It goes up when a change draws other numbers or draws them
# in another order (2: ded2e51, 2026-12-03, dropout masks from 16-bit draws): a stored run is reproduced draw
# for draw only by code of its own stream, and in distribution by any. Store records name it
# (:func:`diffmm.experiments.store.code_version`; records without it are of stream 1).
RANDOM_STREAM = 2


def __getattr__(name: str):
    """``from diffmm import datasets``: the dataset registry (:mod:`diffmm.data.registry`), imported on first use."""
    if name == "datasets":
        from diffmm.data import registry

        return registry
    raise AttributeError(f"module 'diffmm' has no attribute '{name}'")
