"""diffmm: a readable PyTorch toolkit for DiffMM, the multi-modal graph diffusion recommender."""

__version__ = "0.1.0"
