"""Checked conversions shared by the format readers: ids to CSR matrices, feature arrays, files.

Every function raises :class:`~diffmm.data.dataset.DataError` naming the file, the field, and what was
expected against what was found. Pickled matrices are read with an unpickler that admits only the
scipy.sparse / numpy names a matrix needs, so a crafted file cannot run code.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import scipy.sparse as sp

from diffmm.data.dataset import SPLITS, DataError, RecDataset
from diffmm.utils import atomic_path, atomic_write_text

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

SPLIT_CODES = {split: code for code, split in enumerate(SPLITS)}  # MMRec's x_label code per split


def int_ids(values, source: str, field: str) -> np.ndarray:
    """Any 1-d array of ids -> int64, raising if a value is not a whole number."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values) | (values != np.round(values))
        if not bad.any():
            return values.astype(np.int64)
        example = values[bad][0]
    else:  # strings or objects (text files): the only case that needs pandas
        import pandas as pd

        as_num = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()
        bad = ~np.isfinite(as_num) | (as_num != np.round(as_num))
        if not bad.any():
            return as_num.astype(np.int64)
        example = values[bad][0]
    raise DataError(source, field, "integer ids",
                    f"{int(bad.sum())} non-integer values, e.g. {example!r}")


def build_csr(users, items, n_users: int, n_items: int, source: str,
               fields: tuple[str, str] = ("user", "item")) -> sp.csr_matrix:
    """(user, item) id arrays -> binary (n_users, n_items) CSR, checking every id is in range.

    Shared by all readers: the only place ids become a matrix.
    """
    ids = (int_ids(users, source, fields[0]), int_ids(items, source, fields[1]))
    for values, n, field in zip(ids, (n_users, n_items), fields):
        if values.size and values.min() < 0:
            raise DataError(source, field, "ids >= 0",
                            f"{int((values < 0).sum())} negative ids, e.g. {int(values.min())}")
        if values.size and values.max() >= n:
            raise DataError(source, field, f"ids < {n} (0-based, {n} in all)",
                            f"{int((values >= n).sum())} ids out of range, max {int(values.max())}")
    data = np.ones(len(ids[0]), dtype=np.float32)
    csr = sp.csr_matrix((data, ids), shape=(n_users, n_items))
    csr.sum_duplicates()
    csr.data[:] = 1.0
    return csr


def check_features(feats, n_items: int | None, source: str, field: str) -> np.ndarray:
    """Validate one modality's (n_items, d) array against its file; return float32."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number):
        raise DataError(source, field, "a numeric 2-d (n_items, d) array",
                        f"dtype {feats.dtype}, shape {feats.shape}")
    if n_items is not None and feats.shape[0] != n_items:
        raise DataError(source, field, f"{n_items} rows (one per item)", f"{feats.shape[0]} rows")
    feats = feats.astype(np.float32)
    bad = ~np.isfinite(feats)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DataError(source, field, "finite values",
                        f"{int(bad.sum())} NaN/inf values in {len(rows)} rows, e.g. row {int(rows[0])}")
    return feats


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # corrupt header, truncated data, pickled objects
        raise DataError(str(path), "file", "a readable .npy array", f"{type(err).__name__}: {err}") from err


# What a pickled scipy.sparse matrix needs, and nothing else: its class and numpy's array reconstruction.
# (module prefix, names); scipy and numpy moved these between private modules over the versions.
_PICKLE_ALLOWED = (
    (("scipy.sparse",), {"coo_matrix", "csr_matrix", "csc_matrix", "coo_array", "csr_array", "csc_array"}),
    (("numpy.core.multiarray", "numpy._core.multiarray"), {"_reconstruct", "scalar"}),
    (("numpy.core.numeric", "numpy._core.numeric"), {"_frombuffer"}),  # numpy >= 1.25's arrays, protocol 5
    (("_codecs",), {"encode"}),  # bytes in protocol 2 pickles (as written by Python 2 code)
    (("numpy",), {"ndarray", "dtype"}),
)


class _SparseUnpickler(pickle.Unpickler):
    """Unpickles a scipy.sparse matrix and refuses every other class or function, so a crafted file
    cannot run code (``pickle.load`` would call whatever the file names)."""

    def find_class(self, module: str, name: str):
        for prefixes, names in _PICKLE_ALLOWED:
            if name in names and any(module == p or module.startswith(p + ".") for p in prefixes):
                return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a pickled sparse matrix does not "
                                     "need; refused (loading a pickle may run code it names)")


def load_pickle(path: Path):
    """A pickled scipy.sparse matrix, read with :class:`_SparseUnpickler`: data, never code."""
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            # old pickles name scipy.sparse.coo etc., which scipy deprecates on load
            warnings.simplefilter("ignore", DeprecationWarning)
            matrix = _SparseUnpickler(f).load()
    except Exception as err:
        raise DataError(str(path), "file", "a pickled scipy.sparse matrix", f"{type(err).__name__}: {err}") from err
    if sp.issparse(matrix) and matrix.dtype == object:
        raise DataError(str(path), "dtype", "a numeric sparse matrix", "object values")
    if sp.issparse(matrix):  # unpickling checks nothing; COO index ranges are checked (by axis) where ids are read
        try:
            if matrix.format == "coo":
                if not len(matrix.row) == len(matrix.col) == len(matrix.data):
                    raise ValueError(f"row, col and data hold {len(matrix.row)}, {len(matrix.col)} and "
                                     f"{len(matrix.data)} entries")
            elif matrix.format in ("csr", "csc"):
                matrix.check_format(full_check=True)  # indptr, and indices within the shape
            else:
                matrix.tocoo()
        except Exception as err:
            raise DataError(str(path), "matrix", "a well-formed sparse matrix (index and data arrays that agree)",
                            f"{type(err).__name__}: {err}") from None
    return matrix


def read_features(files: Mapping[str, Path], n_items: int | None) -> dict[str, np.ndarray]:
    """Load modality -> file; all must have the same row count (n_items if given)."""
    features = {}
    for modality, file in files.items():
        features[modality] = check_features(load_npy(file), n_items, str(file), modality)
        n_items = features[modality].shape[0]
    return features


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a handle: np.save would add ".npy"
        np.save(f, array)


def write_features(dataset: RecDataset, path: Path, pattern: str) -> None:
    for modality, feats in dataset.item_features.items():
        save_npy(path / pattern.format(modality=modality), np.asarray(feats, dtype=np.float32))


def split_frame(dataset: RecDataset) -> pd.DataFrame:
    """All interactions as (user, item, split code) rows, split-major, then user, then item."""
    import pandas as pd
    parts = []
    for code, split in enumerate(SPLITS):
        coo = dataset.split(split).tocoo()  # canonical CSR -> rows sorted by (user, item)
        parts.append(pd.DataFrame({"user": coo.row.astype(np.int64), "item": coo.col.astype(np.int64),
                                   "code": np.full(coo.nnz, code, dtype=np.int64)}))
    return pd.concat(parts, ignore_index=True)


def shape_file(path: Path, name: str) -> Path:
    return path / f"{name}.diffmm.json"


def read_shape(path: Path, name: str) -> dict[str, int]:
    file = shape_file(path, name)
    if not file.exists():
        return {}
    try:
        shape = json.loads(file.read_text())
        return {k: int(shape[k]) for k in ("n_users", "n_items")}
    except Exception as err:
        raise DataError(str(file), "n_users/n_items", "a JSON object with integer n_users and n_items",
                        f"{type(err).__name__}: {err}") from err


def write_shape(dataset: RecDataset, path: Path, name: str) -> None:
    atomic_write_text(shape_file(path, name),
                      json.dumps({"n_users": dataset.n_users, "n_items": dataset.n_items}) + "\n")


def make_dataset(splits: dict[str, sp.csr_matrix], features: dict[str, np.ndarray], name: str,
             source: str, train_source: str) -> RecDataset:
    """The RecDataset, after checking the training split (``train_source``: its file) is not empty."""
    if splits["train"].nnz == 0:
        raise DataError(train_source, "train", "at least one training interaction", "an empty split")
    return RecDataset(**splits, item_features=features, name=name, source=source)
