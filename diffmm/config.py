"""Configs are data: dataclasses validated on construction, serialisable, with paper presets.

``TrainConfig`` drives the :class:`~diffmm.train.Trainer`; each model has its own config.
:class:`diffmm.experiments.runs.RunConfig` bundles the two with the model's registered name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


class UnknownFieldError(ValueError):
    """A config names a field this version does not have (a typo, or a file written by newer code)."""


class ConfigBase:
    """Shared (de)serialisation and validation for config dataclasses."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:  # overridden where there is something to check
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """The config from plain values (a JSON/YAML file's, the CLI's strings): each is read as its field's
        declared type (:func:`coerce`); a value that is not one raises ``ValueError`` naming the field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UnknownFieldError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        typed = {}
        for name, value in values.items():
            try:
                typed[name] = coerce(hints[name], value)
            except ValueError as error:
                raise ValueError(f"{cls.__name__}.{name}: {error}") from None
        return cls(**typed)

    def replace(self, **changes):
        return self.from_dict({**self.to_dict(), **changes})


def _positive(config, *names):
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be > 0, got {getattr(config, name)}")


@dataclass
class TrainConfig(ConfigBase):
    epochs: int = 300  # maximum number of epochs
    batch_size: int = 2048  # BPR triples per step
    lr: float = 1e-3  # Adam learning rate (recommender; DiffMM's denoisers use the same)
    eval_every: int = 1  # validate every N epochs
    patience: int = 20  # stop after this many validations without improvement (0 = never stop early)
    metric: str = "recall@20"  # validation metric that selects the best epoch
    ks: tuple[int, ...] = (10, 20, 50)  # cut-offs for Recall/NDCG/Precision/Hit
    eval_batch_size: int = 1024  # users per evaluation batch
    seed: int = 2024  # seeds torch, numpy and the negative sampler
    device: str = "auto"  # 'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1', ...
    progress: bool = True  # tqdm progress bars
    threads: int = 0  # torch CPU threads (0 = torch default)

    def validate(self):
        _positive(self, "epochs", "batch_size", "lr", "eval_every", "eval_batch_size")
        if not math.isfinite(self.lr):
            raise ValueError(f"TrainConfig.lr must be a finite number, got {self.lr}")
        self.ks = tuple(int(k) for k in self.ks)
        if not self.ks or min(self.ks) < 1 or len(set(self.ks)) < len(self.ks):
            raise ValueError(f"TrainConfig.ks must be distinct cut-offs >= 1, got {self.ks}")
        if self.threads < 0:
            raise ValueError(f"TrainConfig.threads must be >= 0 (0 = torch's default), got {self.threads}")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got "
                                 f"'{self.device}'") from None
        metric, _, k = self.metric.partition("@")
        if metric not in ("recall", "ndcg", "precision", "hit") or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"TrainConfig.metric must look like 'recall@20' with K in ks={self.ks}, "
                             f"got '{self.metric}'")


@dataclass
class MFConfig(ConfigBase):
    """MF-BPR (Rendle et al. 2009): score = <e_u, e_i> + b_i."""

    dim: int = 64  # embedding size
    item_bias: bool = True  # learn b_i (captures popularity; without it MF-BPR trails most-popular on TikTok)
    l2: float = 1e-4  # L2 on the batch's embeddings, divided by batch size
    init_std: float = 0.1  # embeddings start as N(0, init_std^2)

    def validate(self):
        _positive(self, "dim")


@dataclass
class LightGCNConfig(ConfigBase):
    """LightGCN (He et al. 2020): mean of K propagations over the normalised bipartite graph."""

    dim: int = 64  # embedding size
    layers: int = 3  # propagation layers
    l2: float = 1e-4  # L2 on the batch's ego embeddings, divided by batch size
    init_std: float = 0.1  # embeddings start as N(0, init_std^2)

    def validate(self):
        _positive(self, "dim")
        if self.layers < 0:
            raise ValueError(f"LightGCNConfig.layers must be >= 0, got {self.layers}")


@dataclass
class PopularityConfig(ConfigBase):
    """Most-popular: score = number of training interactions of the item (a sanity floor)."""


@dataclass
class VBPRConfig(ConfigBase):
    """VBPR (He & McAuley, AAAI 2016): MF-BPR plus a user's preference for projected item features."""

    dim: int = 64  # K: size of gamma_u, gamma_i (64 as this toolkit's other models; the paper splits K = K')
    feature_dim: int = 64  # K': size of theta_u and of theta_i = sum_m E^m f^m_i (as MMRec's VBPR: 64 + 64)
    feature_bias: bool = True  # the paper's visual bias beta'^T f_i, one beta'^m per modality
    l2: float = 1e-4  # lambda_Theta on the batch's gamma_u, theta_u, gamma_i, beta_i / batch size (MF's value)
    projection_l2: float = 0.0  # lambda_E on ||E^m||^2 + ||beta'^m||^2 per step (0: E is left free)
    init_std: float = 0.1  # gamma and theta_u start as N(0, init_std^2), as MF here

    def validate(self):
        _positive(self, "dim", "feature_dim")
        if self.l2 < 0 or self.projection_l2 < 0:
            raise ValueError(f"VBPRConfig.l2 and projection_l2 must be >= 0, got {self.l2}, {self.projection_l2}")


@dataclass
class LightGCNMConfig(ConfigBase):
    """LightGCN-M (DiffMM's "LGCN-M"): LightGCN whose item ego embedding is e_i + sum_m W^m f^m_i."""

    dim: int = 64  # embedding size
    layers: int = 3  # propagation layers (LightGCN's default here)
    l2: float = 1e-4  # L2 on the batch's user and item id embeddings, divided by batch size
    init_std: float = 0.1  # id embeddings start as N(0, init_std^2)

    def validate(self):
        _positive(self, "dim")
        if self.layers < 0:
            raise ValueError(f"LightGCNMConfig.layers must be >= 0, got {self.layers}")


@dataclass
class LATTICEConfig(ConfigBase):
    """LATTICE (Zhang et al., ACM MM 2021): LightGCN plus item-item kNN graphs learned per modality.

    Paper symbols: k = ``knn_k``, lambda = ``skip_weight`` (the skip connection to the initial
    graph), L = ``item_layers``; alpha_m (modality weights) are learned.
    """

    dim: int = 64  # embedding size (authors' code: embed_size 64)
    feature_dim: int = 64  # size of the projected features W^m f^m + b^m (authors' feat_embed_dim)
    layers: int = 2  # LightGCN layers on the user-item graph (authors' weight_size [64, 64])
    item_layers: int = 1  # L: convolutions on the item-item graph (paper: 1)
    knn_k: int = 10  # k of the kNN sparsification (paper: 10)
    skip_weight: float = 0.9  # lambda: weight of the initial raw-feature graph (paper and authors' lambda_coeff: 0.9)
    l2: float = 1e-5  # L2 on the batch's final embeddings / batch size (authors' regs[0] = 1e-5)
    knn_chunk_rows: int = 1024  # items per (rows, n_items) similarity block when building kNN graphs
    fine_tune_features: bool = True  # train the raw features f^m too (authors' code: from_pretrained(freeze=False))
    # "paper": as the paper writes them (each learned graph normalised before the mix; LightGCN's
    # D^-1/2 A D^-1/2); "code": the graphs of the authors' code (the learned kNN graphs alpha-mixed, then
    # normalised once; user-item graph D^-1 (A + I)). Validation prefers the paper's on TikTok and ml100k.
    graphs: str = "paper"

    def validate(self):
        _positive(self, "dim", "feature_dim", "knn_k", "knn_chunk_rows")
        if self.graphs not in ("code", "paper"):
            raise ValueError(f"LATTICEConfig.graphs must be 'code' or 'paper', got {self.graphs!r}")
        if self.layers < 0 or self.item_layers < 0:
            raise ValueError(f"LATTICEConfig.layers and item_layers must be >= 0, "
                             f"got {self.layers}, {self.item_layers}")
        if not 0 <= self.skip_weight <= 1:
            raise ValueError(f"LATTICEConfig.skip_weight must be in [0, 1], got {self.skip_weight}")


@dataclass
class BM3Config(ConfigBase):
    """BM3 (Zhou et al., WWW 2023): self-supervised, no negatives; cosine alignment of online and
    dropped-out target views. The BPR negatives the Trainer passes are ignored.

    Paper symbols: p = ``dropout``, lambda = ``l2``, L = ``layers``. The defaults are the authors' Baby
    setting; chosen on validation here (``diffmm.experiments.analyses.PROTOCOLS``), TikTok takes
    ``--dropout 0`` (at 0.5 its validation curve collapses after a few epochs) and ml100k ``--dropout 0.7``.
    """

    dim: int = 64  # embedding size of ids, projected features and the predictor (paper: 64)
    layers: int = 1  # L: LightGCN layers, Eq. 2-3 (authors' README, best on Baby and Sports: 1)
    dropout: float = 0.5  # p: dropout ratio making the target views (README, Baby and Sports: 0.5)
    l2: float = 0.1  # lambda on (||H_u|| + ||H_i||) / n_items, as the authors' code (README: Baby 0.1, Sports 0.01)
    alignment_weight: float = 2.0  # weight of L_align + L_mask (authors' code: cl_weight = 2; the paper's plain sum: 1)
    fine_tune_features: bool = True  # train the raw features f^m too (authors' code: from_pretrained(freeze=False))

    def validate(self):
        _positive(self, "dim")
        if self.layers < 0:
            raise ValueError(f"BM3Config.layers must be >= 0, got {self.layers}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"BM3Config.dropout must be in [0, 1), got {self.dropout}")
        if self.l2 < 0 or self.alignment_weight < 0:
            raise ValueError(f"BM3Config.l2 and alignment_weight must be >= 0, got {self.l2}, {self.alignment_weight}")


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce(hint: Any, value: Any) -> Any:
    """``value`` read as the declared type ``hint`` of a config field: strings (the CLI's, YAML's ``1e-4``)
    are parsed ('none' / 'null' for an optional field; comma-separated for a tuple), a whole float becomes an
    int where an int is declared; a bool is no number and a number no bool. Anything else raises ``ValueError``
    saying what was expected. Numbers of either kind stay as they are where a float is declared."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        (hint,) = [a for a in args if a is not type(None)]
    tuple_of = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None
    try:
        if tuple_of is not None:
            items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise TypeError
            return tuple(_scalar(tuple_of, v) for v in items)
        return _scalar(hint, value)
    except (KeyError, ValueError, TypeError, OverflowError):
        expected = (f"comma-separated {'numbers, e.g. 10,20,50' if tuple_of is int else 'names'}" if tuple_of
                    else _EXPECTED.get(hint, getattr(hint, "__name__", str(hint))))
        raise ValueError(f"expected {expected}{' or none' if optional else ''}, got {value!r}") from None


def _scalar(kind: Any, value: Any) -> Any:
    if kind is bool:
        return value if isinstance(value, bool) else _BOOLEANS[value.strip().lower()]
    if kind is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if kind not in (int, float):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError
    if kind is float:
        return float(value) if isinstance(value, str) else value
    if isinstance(value, str):
        value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)  # '10', '1e3'
    if value != int(value):
        raise ValueError
    return int(value)


@dataclass
class DiffMMConfig(ConfigBase):
    """DiffMM (Sec. 2). Defaults are the authors' ``Params.py``; see :meth:`preset` for datasets.

    Paper symbols: lambda0 = ``msi_weight`` (Eq. 24), lambda1 = ``cl_weight``, lambda2 = ``l2``
    (Eq. 26), tau = ``temperature`` (Eq. 18-19), omega = ``omega`` (Eq. 23), s / gamma_min /
    gamma_max / T = ``noise_scale`` / ``noise_min`` / ``noise_max`` / ``steps`` (Eq. 3).
    """

    # encoder (Sec. 2.3-2.4)
    dim: int = 64  # embedding size d
    layers: int = 1  # message-passing layers L on the interaction graph (Eq. 17, 22)
    projection: str = "leaky"  # Trans(.) of Eq. 15: 'linear' (nn.Linear) or 'leaky' (W then LeakyReLU 0.2)
    omega: float = 0.5  # weight of Norm(H_0) in Eq. 23 (authors' ris_lambda)
    generated_graph_weight: float = 0.2  # weight of the A^m term in Eq. 20 (authors' ris_adj_lambda)
    keep_rate: float = 0.5  # edge keep rate of the dropout applied to each A^m every epoch
    eval_graph: str = "dropped"  # A^m at evaluation: 'dropped' (the epoch's edge-dropped A^m, as the authors) or
    # 'full' (the undropped A^m, the dropout's expectation: evaluation does not depend on a random draw)
    modality_order: tuple[str, ...] = ()  # modalities in this order first (others after, in the dataset's order);
    # the order of concatenation and of Eq. 18's anchor; () = the dataset's order (sorted file names)
    l2: float = 1e-4  # lambda2: L2 on user and item id embeddings (Eq. 26)
    # cross-modal contrastive learning (Sec. 2.3.2)
    cl_weight: float = 1e-2  # lambda1 (0 disables contrastive learning: the 'w/o CL' ablation)
    temperature: float = 0.5  # tau
    cl_anchor: str = "modality"  # 'modality' (Eq. 18) or 'main' (Eq. 19)
    fusion_ratio: float = 0.0  # rho of Sec. 3.6: views from (1-rho) A^m + rho * edge-dropped A
    view_keep_rate: float = 0.5  # edge keep rate of that randomly dropped A (its own: keep_rate is 1 on Baby/Sports)
    # graph generation (Sec. 2.2)
    generator: str = "diffusion"  # 'diffusion', or 'vgae' (the 'w/o DM' ablation)
    steps: int = 5  # T
    noise_scale: float = 0.1  # s
    noise_min: float = 1e-4  # gamma_min
    noise_max: float = 0.02  # gamma_max
    first_beta: float | None = 1e-4  # authors fix beta_1 = 1e-4; None = Eq. 3 exactly
    forward_steps: int = 0  # T' of Sec. 2.2.3 (authors: 0, denoise the observed vector)
    denoiser_hidden: tuple[int, ...] = (1000,)  # MLP hidden sizes
    time_dim: int = 10  # step-embedding size
    denoiser_dropout: float = 0.5  # dropout on the denoiser input
    msi_weight: float = 0.1  # lambda0 (0 disables MSI: the 'w/o MSI' ablation)
    rebuild_k: int = 1  # k: items per user added to each A^m
    generator_batch_size: int = 1024  # users per denoiser step and per generation batch
    precision: str = "fp32"  # 'bf16': bfloat16 autocast for the denoiser and the InfoNCE products

    def validate(self):
        _positive(self, "dim", "steps", "rebuild_k", "generator_batch_size", "temperature")
        choices = {"projection": ("linear", "leaky"), "cl_anchor": ("modality", "main"),
                   "generator": ("diffusion", "vgae"), "precision": ("fp32", "bf16"), "eval_graph": ("dropped", "full")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"DiffMMConfig.{name} must be one of {allowed}, got '{getattr(self, name)}'")
        if not 0 <= self.fusion_ratio <= 1:
            raise ValueError(f"DiffMMConfig.fusion_ratio must be in [0, 1], got {self.fusion_ratio}")
        for name in ("keep_rate", "view_keep_rate"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"DiffMMConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.forward_steps <= self.steps:
            raise ValueError(f"DiffMMConfig.forward_steps must be in [0, steps={self.steps}]")
        from diffmm.diffusion import linear_schedule

        try:  # the schedule's own check, before any model is built
            linear_schedule(self.steps, self.noise_scale, self.noise_min, self.noise_max)
        except ValueError as error:
            raise ValueError(f"DiffMMConfig: {error}") from None
        self.denoiser_hidden = tuple(int(h) for h in self.denoiser_hidden)
        self.modality_order = tuple(str(m) for m in self.modality_order)
        if len(set(self.modality_order)) != len(self.modality_order):
            raise ValueError(f"DiffMMConfig.modality_order names a modality twice: {self.modality_order}")

    # The authors' README commands, on top of their Params.py defaults, and their modality order (image,
    # text, audio). TikTok keeps the dataset's order (audio, image): with two modalities and the 'main'
    # anchor the order only decides which random numbers initialise which modality, and the stored TikTok
    # runs were trained so.
    PRESETS: ClassVar[dict[str, dict]] = {
        "tiktok": dict(l2=1e-4, cl_weight=1e-2, projection="linear", msi_weight=0.1, cl_anchor="main"),
        "baby": dict(l2=1e-5, cl_weight=1e-1, keep_rate=1.0, msi_weight=0.01, modality_order=("image", "text")),
        "sports": dict(l2=1e-6, cl_weight=1e-2, temperature=0.1, omega=0.1, msi_weight=0.5, keep_rate=1.0,
                       projection="linear", modality_order=("image", "text")),
    }
    # Training settings that go with each preset (the authors: batch 1024, lr 1e-3, a fixed 50 epochs).
    TRAIN_PRESETS: ClassVar[dict[str, dict]] = {
        "tiktok": dict(batch_size=1024, lr=1e-3, epochs=50),
        "baby": dict(batch_size=1024, lr=1e-3, epochs=50),
        "sports": dict(batch_size=1024, lr=1e-3, epochs=50),
    }

    @classmethod
    def preset(cls, name: str, **overrides) -> "DiffMMConfig":
        """The authors' hyperparameters for a paper dataset ('tiktok', 'baby', 'sports')."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown DiffMM preset '{name}'; available: {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})
