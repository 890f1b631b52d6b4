"""Models: the DiffMM recommender and the baselines, behind one registry."""

from __future__ import annotations

import torch

from diffmm.config import (BM3Config, DiffMMConfig, LATTICEConfig, LightGCNConfig, LightGCNMConfig, MFConfig,
                           PopularityConfig, VBPRConfig)
from diffmm.models.base import Recommender
from diffmm.models.baselines import MF, LightGCN, Popularity
from diffmm.models.diffmm import DiffMM
from diffmm.models.multimodal import BM3, LATTICE, VBPR, LightGCNM

# name -> (config class, model class); the CLI and experiments look models up here.
MODELS: dict[str, tuple[type, type]] = {
    "diffmm": (DiffMMConfig, DiffMM),
    "mf": (MFConfig, MF),
    "lightgcn": (LightGCNConfig, LightGCN),
    "popularity": (PopularityConfig, Popularity),
    "vbpr": (VBPRConfig, VBPR),
    "lightgcn-m": (LightGCNMConfig, LightGCNM),
    "lattice": (LATTICEConfig, LATTICE),
    "bm3": (BM3Config, BM3),
}


def build_model(name: str, dataset, config=None, seed: int | None = None) -> Recommender:
    """Instantiate a registered model; ``config`` may be a config object, a dict, or None (defaults).

    With a ``seed``, the initial weights are drawn from torch's generator seeded with it inside
    ``torch.random.fork_rng``: they depend on the seed alone, and the caller's random streams are left
    as they were (the :class:`~diffmm.train.Trainer` seeds the training's streams itself).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; available: {sorted(MODELS)}")
    config_cls, model_cls = MODELS[name]
    if config is None:
        config = config_cls()
    elif isinstance(config, dict):
        config = config_cls.from_dict(config)
    if seed is None:
        return model_cls(dataset, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(dataset, config)


__all__ = ["MODELS", "build_model", "Recommender", "DiffMM", "MF", "LightGCN", "Popularity", "VBPR", "LightGCNM",
           "LATTICE", "BM3"]
