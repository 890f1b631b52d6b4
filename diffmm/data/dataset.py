"""The dataset object: three sparse interaction splits plus item features per modality.

Everything in diffmm reads data through :class:`RecDataset`. It is deliberately small:
a users x items CSR matrix per split, a ``dict`` of modality name -> (n_items, d) float32
array, and optional user / item names. Readers for the file formats live in
:mod:`diffmm.data.io`; validation lives here so every constructor gets it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Bad input data. The message names the source (file), the field, and expected vs found."""

    def __init__(self, source: str, field: str, expected: str, found: str):
        self.source, self.field, self.expected, self.found = source, field, expected, found
        super().__init__(f"{source}: field '{field}': expected {expected}, found {found}")


def _as_binary_csr(matrix, source: str, field: str) -> sp.csr_matrix:
    """Any scipy sparse / dense matrix -> binary float32 CSR with sorted, unique indices."""
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        raise DataError(source, field, "a scipy.sparse matrix or 2-d array", type(matrix).__name__)
    if matrix.ndim != 2:
        raise DataError(source, field, "a 2-d users x items matrix", f"{matrix.ndim}-d")
    csr = sp.csr_matrix(matrix, dtype=np.float32, copy=True)  # never mutate the caller's matrix
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.data[:] = 1.0
    csr.sort_indices()
    return csr


@dataclass
class RecDataset:
    """Implicit-feedback interactions in three splits, with multi-modal item features.

    Args:
        train, valid, test: (n_users, n_items) sparse matrices; any non-zero is an interaction.
        item_features: modality name -> (n_items, d_m) array (any number of modalities).
        name: a label used in tables and run directories.
        user_names, item_names: optional display names (e.g. movie titles), length n_users / n_items.
        source: where the data came from; used in error messages.
        meta: free-form extras, e.g. the planted user/item groups of synthetic data.
    """

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "dataset"
    user_names: Sequence[str] | None = None
    item_names: Sequence[str] | None = None
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)  # free-form extras (e.g. planted groups of synthetic data)
    SPLITS: ClassVar[tuple[str, ...]] = SPLITS

    def __post_init__(self):
        for split in SPLITS:
            setattr(self, split, _as_binary_csr(getattr(self, split), self.source, split))
        self.item_features = {str(k): v for k, v in dict(self.item_features).items()}
        self.validate()

    # ------------------------------------------------------------------ shape
    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    @property
    def modalities(self) -> list[str]:
        return list(self.item_features)

    def split(self, name: str) -> sp.csr_matrix:
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; expected one of {SPLITS}")
        return getattr(self, name)

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check shapes, features and overlaps; raise :class:`DataError` naming what is wrong."""
        shape = self.train.shape
        for split in ("valid", "test"):
            found = self.split(split).shape
            if found != shape:
                raise DataError(self.source, split, f"shape {shape} (same as train)", f"shape {found}")
        if self.train.nnz == 0:
            raise DataError(self.source, "train", "at least one training interaction", "an empty split")
        for modality, feats in list(self.item_features.items()):
            where = f"item_features['{modality}']"
            feats = np.asarray(feats)
            if feats.ndim != 2:
                raise DataError(self.source, where, "a 2-d (n_items, d) array", f"shape {feats.shape}")
            if feats.shape[0] != self.n_items:
                raise DataError(self.source, where, f"{self.n_items} rows (one per item)",
                                f"{feats.shape[0]} rows")
            if not np.issubdtype(feats.dtype, np.number):
                raise DataError(self.source, where, "a numeric array", f"dtype {feats.dtype}")
            feats = feats.astype(np.float32)
            bad = ~np.isfinite(feats)
            if bad.any():
                rows = np.unique(np.nonzero(bad)[0])
                raise DataError(self.source, where, "finite values",
                                f"{int(bad.sum())} NaN/inf values in {len(rows)} rows, e.g. row {int(rows[0])}")
            self.item_features[modality] = feats
        for names, n, label in ((self.user_names, self.n_users, "user_names"),
                                (self.item_names, self.n_items, "item_names")):
            if names is not None and len(names) != n:
                raise DataError(self.source, label, f"{n} names", f"{len(names)}")
        # a pair held out twice, or also trained on, is masked where it is evaluated: it can never be a hit
        for (a, b) in (("train", "valid"), ("train", "test"), ("valid", "test")):
            overlap = self.split(a).multiply(self.split(b)).nnz
            if overlap:
                warnings.warn(f"{self.source}: {overlap} (user, item) pairs are in both {a} and {b}",
                              stacklevel=2)

    # ---------------------------------------------------------------- summary
    def fingerprint(self) -> str:
        """sha256 over the three splits' CSR structure and every modality's feature bytes (16 hex digits)."""
        import hashlib

        h = hashlib.sha256()
        for split in SPLITS:
            matrix = self.split(split)
            h.update(split.encode())
            h.update(np.asarray(matrix.shape, np.int64).tobytes())
            h.update(np.ascontiguousarray(matrix.indptr, np.int64).tobytes())
            h.update(np.ascontiguousarray(matrix.indices, np.int64).tobytes())
        for name in sorted(self.item_features):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.item_features[name], np.float32).tobytes())
        return h.hexdigest()[:16]

    def user_activity(self) -> np.ndarray:
        """Number of training interactions per user, shape (n_users,)."""
        return np.diff(self.train.indptr)

    def item_popularity(self) -> np.ndarray:
        """Number of training interactions per item, shape (n_items,)."""
        return np.bincount(self.train.indices, minlength=self.n_items)

    def stats(self) -> pd.DataFrame:
        """The paper's Table 1 for this dataset, one row per statistic (see :func:`diffmm.data.card.dataset_card`)."""
        from diffmm.data.card import dataset_card

        card = dataset_card(self).T
        card.index.name = "statistic"
        return card

    def __repr__(self) -> str:
        mods = ", ".join(f"{m}:{f.shape[1]}" for m, f in self.item_features.items()) or "none"
        return (f"RecDataset('{self.name}', users={self.n_users}, items={self.n_items}, "
                f"train/valid/test={self.train.nnz}/{self.valid.nnz}/{self.test.nnz}, modalities={mods})")
