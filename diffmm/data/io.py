"""Readers and writers for the interaction + item-feature formats diffmm understands.

Formats (one reader and one writer each; every writer is atomic, every reader raises
:class:`~diffmm.data.dataset.DataError` naming the file, the field, and expected vs found):

* **DiffMM directory** (the reference code's format): ``trnMat.pkl``, ``valMat.pkl``,
  ``tstMat.pkl`` (pickled users x items ``scipy.sparse`` matrices) and one
  ``<modality>_feat.npy`` per modality, row ``i`` = item ``i``.
* **MMRec**: one tab-separated ``<name>.inter`` with columns
  ``userID itemID rating timestamp x_label`` (x_label 0 = train, 1 = valid, 2 = test,
  0-based ids) and ``<modality>_feat*.npy`` feature files.
* **RecBole atomic files**: ``<name>.train.inter``, ``<name>.valid.inter``,
  ``<name>.test.inter`` with header ``user_id:token<TAB>item_id:token``. RecBole has no
  standard item-feature file, so features are stored next to them as
  ``<name>.<modality>_feat.npy`` (row ``i`` = item token ``i``).
* **DataFrame**: columns ``user, item, split``.

The MMRec and RecBole files cannot say how many users / items there are when the last ids
have no interaction at all, so their writers also leave a small ``<name>.diffmm.json``
(``{"n_users": .., "n_items": ..}``) which the readers use when present; other tools
ignore it.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import scipy.sparse as sp

from diffmm.data.dataset import SPLITS, DataError, RecDataset
from diffmm.data.parsing import (SPLIT_CODES, build_csr, check_features, int_ids, load_pickle, make_dataset, read_features,
                                 read_shape, split_frame, write_features, write_shape)
from diffmm.utils import atomic_path

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

PathLike = str | os.PathLike

# DiffMM's file name per split.
DIFFMM_FILES = {"train": "trnMat.pkl", "valid": "valMat.pkl", "test": "tstMat.pkl"}


# ----------------------------------------------------------------------- DiffMM
def read_diffmm_dir(path: PathLike, name: str | None = None) -> RecDataset:
    """Read DiffMM's directory format.

    Args:
        path: directory with ``trnMat.pkl``, ``valMat.pkl``, ``tstMat.pkl`` (pickled users x
            items sparse matrices) and any number of ``<modality>_feat.npy`` files.
        name: dataset name (default: the directory name).

    Returns:
        The dataset; modalities are in sorted order of their names.
    """
    path = Path(path)
    missing = [f for f in DIFFMM_FILES.values() if not (path / f).is_file()]
    if missing:
        raise DataError(str(path), "split files", f"all of {list(DIFFMM_FILES.values())}",
                        f"missing {missing}")
    splits, shape = {}, None
    for split, file_name in DIFFMM_FILES.items():
        file = path / file_name
        matrix = load_pickle(file)
        if not sp.issparse(matrix) or matrix.ndim != 2:
            raise DataError(str(file), split, "a pickled 2-d scipy.sparse matrix", type(matrix).__name__)
        shape = shape or matrix.shape  # train first: the reference shape
        if matrix.shape != shape:
            raise DataError(str(file), split, f"shape {shape} (same as {DIFFMM_FILES['train']})",
                            f"shape {matrix.shape}")
        coo = matrix.tocoo()
        keep = coo.data != 0
        splits[split] = build_csr(coo.row[keep], coo.col[keep], *shape, str(file), ("row (user)", "col (item)"))
    files = {f.name[: -len("_feat.npy")]: f for f in sorted(path.glob("*_feat.npy"))}
    return make_dataset(splits, read_features(files, shape[1]), name or path.name, str(path),
                    str(path / DIFFMM_FILES["train"]))


def _warn_one_based(source: str, field: str, ids: np.ndarray) -> None:
    """Ids are 0-based and the user count is the largest id + 1: where no user has id 0 (a file counting from
    1, say), user 0 is an empty user. Said, not refused: a split may leave out user 0."""
    if ids.size and ids.min() > 0:
        warnings.warn(f"{source}: no '{field}' is 0; ids are read as 0-based, so users 0..{int(ids.min()) - 1} have "
                      "no interactions (if the file counts from 1, subtract 1 from its ids)", stacklevel=3)


def write_diffmm_dir(dataset: RecDataset, path: PathLike) -> None:
    """Write ``dataset`` in DiffMM's directory format (float64 COO of ones; float32 features).

    Other ``*_feat.npy`` files already in ``path`` would be read back as extra modalities;
    a warning names them.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for split, file_name in DIFFMM_FILES.items():
        coo = dataset.split(split).tocoo().astype(np.float64)
        with atomic_path(path / file_name) as tmp, open(tmp, "wb") as f:
            pickle.dump(coo, f, protocol=pickle.HIGHEST_PROTOCOL)
    write_features(dataset, path, "{modality}_feat.npy")
    stale = sorted(f.name for f in path.glob("*_feat.npy") if f.name[: -len("_feat.npy")] not in dataset.item_features)
    if stale:
        warnings.warn(f"{path}: {stale} are not modalities of '{dataset.name}' but will be read back "
                      "by read_diffmm_dir; delete them or write to an empty directory", stacklevel=2)


# ------------------------------------------------------------------------ MMRec
def _find_inter_file(path: Path) -> Path:
    if path.is_file():
        return path
    candidates = sorted(f for f in path.glob("*.inter") if not f.name.endswith(
        tuple(f".{s}.inter" for s in SPLITS)))
    preferred = path / f"{path.name}.inter"
    if preferred in candidates:
        return preferred
    if len(candidates) != 1:
        raise DataError(str(path), "inter file", "exactly one '*.inter' file (or pass inter_file=...)",
                        f"{[c.name for c in candidates] or 'none'}")
    return candidates[0]


def read_mmrec(path: PathLike, inter_file: str | None = None,
               feature_files: Mapping[str, str] | None = None, name: str | None = None,
               min_rating: float | None = None, n_users: int | None = None,
               n_items: int | None = None) -> RecDataset:
    """Read MMRec's format: a tab-separated ``.inter`` file plus ``*_feat*.npy`` features.

    Args:
        path: the dataset directory (or the ``.inter`` file itself).
        inter_file: file name of the interactions inside ``path`` (default: the directory's
            single ``*.inter``, preferring ``<dirname>.inter``).
        feature_files: modality -> file name inside the directory (default: every
            ``<modality>_feat*.npy``, e.g. ``text_feat_minilm.npy`` -> ``text``).
        name: dataset name (default: the ``.inter`` file's stem).
        min_rating: keep only rows with ``rating >= min_rating`` (default None: every row).
        n_users, n_items: override the shape. Default: from ``<name>.diffmm.json`` if
            present, else max id + 1 over all rows; ``n_items`` = the feature files' row
            count when there are feature files.
    """
    import pandas as pd
    path = Path(path)
    file = path / inter_file if inter_file else _find_inter_file(path)
    folder = file.parent
    if not file.is_file():
        raise DataError(str(file), "inter file", "an existing tab-separated .inter file", "no such file")
    try:
        frame = pd.read_csv(file, sep="\t")
    except Exception as err:
        raise DataError(str(file), "file", "a readable tab-separated table", f"{type(err).__name__}: {err}") from err
    required = ["userID", "itemID", "x_label"] + (["rating"] if min_rating is not None else [])
    for column in required:
        if column not in frame.columns:
            raise DataError(str(file), column, f"columns {required}", f"columns {list(frame.columns)}")
    users = int_ids(frame["userID"].to_numpy(), str(file), "userID")
    items = int_ids(frame["itemID"].to_numpy(), str(file), "itemID")
    labels = int_ids(frame["x_label"].to_numpy(), str(file), "x_label")
    bad = ~np.isin(labels, list(SPLIT_CODES.values()))
    if bad.any():
        raise DataError(str(file), "x_label", "0 (train), 1 (valid) or 2 (test)",
                        f"{int(bad.sum())} other values, e.g. {int(labels[bad][0])}")
    name = name or file.stem
    shape = read_shape(folder, name)
    if feature_files is None:
        found = sorted(folder.glob("*_feat*.npy"))
        feature_files = {f.name.split("_feat")[0]: f.name for f in found}
        if len(feature_files) != len(found):
            raise DataError(str(folder), "feature files", "one '<modality>_feat*.npy' per modality "
                            "(or pass feature_files=...)", f"{[f.name for f in found]}")
    features = read_features({m: folder / f for m, f in feature_files.items()}, n_items or shape.get("n_items"))
    if not (n_users or shape.get("n_users")):
        _warn_one_based(str(file), "userID", users)
    n_users = n_users or shape.get("n_users") or (int(users.max()) + 1 if users.size else 0)
    if n_items is None:
        n_items = shape.get("n_items") or (next(iter(features.values())).shape[0] if features
                                           else (int(items.max()) + 1 if items.size else 0))
    keep = np.ones(len(frame), dtype=bool)
    if min_rating is not None:
        keep = pd.to_numeric(frame["rating"], errors="coerce").to_numpy() >= min_rating
    build_csr(users, items, n_users, n_items, str(file), ("userID", "itemID"))  # range-check every row
    splits = {split: build_csr(users[keep & (labels == code)], items[keep & (labels == code)],
                                n_users, n_items, str(file), ("userID", "itemID"))
              for split, code in SPLIT_CODES.items()}
    return make_dataset(splits, features, name, str(file), f"{file} (x_label 0)")


def write_mmrec(dataset: RecDataset, path: PathLike, name: str | None = None) -> None:
    """Write ``<name>.inter`` (rating 1, timestamp 0) and ``<modality>_feat.npy`` to ``path``."""
    import pandas as pd
    path, name = Path(path), name or dataset.name
    frame = split_frame(dataset)
    table = pd.DataFrame({"userID": frame["user"], "itemID": frame["item"], "rating": 1,
                          "timestamp": 0, "x_label": frame["code"]})
    with atomic_path(path / f"{name}.inter") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    write_features(dataset, path, "{modality}_feat.npy")
    write_shape(dataset, path, name)


# ---------------------------------------------------------------------- RecBole
def _recbole_name(path: Path) -> str:
    names = sorted(f.name[: -len(".train.inter")] for f in path.glob("*.train.inter"))
    if len(names) != 1:
        raise DataError(str(path), "name", "exactly one '<name>.train.inter' (or pass name=...)",
                        f"{names or 'none'}")
    return names[0]


def read_recbole(path: PathLike, name: str | None = None) -> RecDataset:
    """Read RecBole atomic files ``<name>.{train,valid,test}.inter`` (+ ``<name>.<m>_feat.npy``).

    Tokens must be 0-based integer ids (as :func:`write_recbole` writes them).
    """
    import pandas as pd
    path = Path(path)
    name = name or _recbole_name(path)
    files = {split: path / f"{name}.{split}.inter" for split in SPLITS}
    missing = [f.name for f in files.values() if not f.is_file()]
    if missing:
        raise DataError(str(path), "split files", f"all of {[f.name for f in files.values()]}",
                        f"missing {missing}")
    ids = {}
    for split, file in files.items():
        try:
            frame = pd.read_csv(file, sep="\t", dtype=str)
        except Exception as err:
            raise DataError(str(file), "file", "a readable tab-separated table",
                            f"{type(err).__name__}: {err}") from err
        columns = {c.split(":")[0]: c for c in frame.columns}
        for field in ("user_id", "item_id"):
            if field not in columns:
                raise DataError(str(file), field, f"a column '{field}:token'", f"columns {list(frame.columns)}")
        ids[split] = (int_ids(frame[columns["user_id"]].to_numpy(), str(file), "user_id"),
                      int_ids(frame[columns["item_id"]].to_numpy(), str(file), "item_id"))
    prefix = f"{name}."
    feature_files = {f.name[len(prefix): -len("_feat.npy")]: f for f in sorted(path.glob(f"{name}.*_feat.npy"))}
    shape = read_shape(path, name)
    features = read_features(feature_files, shape.get("n_items"))
    if not shape.get("n_users"):
        _warn_one_based(str(files["train"]), "user_id", np.concatenate([u for u, _ in ids.values()]))
    n_users = shape.get("n_users") or max(int(u.max()) if u.size else -1 for u, _ in ids.values()) + 1
    n_items = shape.get("n_items") or (next(iter(features.values())).shape[0] if features
                                       else max(int(i.max()) if i.size else -1 for _, i in ids.values()) + 1)
    splits = {split: build_csr(*ids[split], n_users, n_items, str(files[split]), ("user_id", "item_id"))
              for split in SPLITS}
    return make_dataset(splits, features, name, str(path), str(files["train"]))


def write_recbole(dataset: RecDataset, path: PathLike, name: str | None = None) -> None:
    """Write RecBole atomic files; features go to ``<name>.<modality>_feat.npy`` (not a RecBole standard)."""
    import pandas as pd
    path, name = Path(path), name or dataset.name
    frame = split_frame(dataset)
    for code, split in enumerate(SPLITS):
        rows = frame[frame["code"] == code]
        table = pd.DataFrame({"user_id:token": rows["user"], "item_id:token": rows["item"]})
        with atomic_path(path / f"{name}.{split}.inter") as tmp:
            table.to_csv(tmp, sep="\t", index=False)
    write_features(dataset, path, f"{name}.{{modality}}_feat.npy")
    write_shape(dataset, path, name)


# -------------------------------------------------------------------- DataFrame
def to_dataframe(dataset: RecDataset) -> pd.DataFrame:
    """All interactions as a DataFrame with columns ``user, item, split`` ('train'/'valid'/'test').

    ``df.attrs`` keeps ``n_users`` and ``n_items`` so :func:`from_dataframe` restores the shape.
    """
    import pandas as pd
    frame = split_frame(dataset)
    df = pd.DataFrame({"user": frame["user"], "item": frame["item"],
                       "split": np.asarray(SPLITS, dtype=object)[frame["code"].to_numpy()]})
    df.attrs.update(n_users=dataset.n_users, n_items=dataset.n_items, name=dataset.name)
    return df


def from_dataframe(df: pd.DataFrame, item_features: Mapping[str, np.ndarray] | None = None,
                   n_users: int | None = None, n_items: int | None = None, name: str | None = None,
                   user_col: str = "user", item_col: str = "item", split_col: str = "split") -> RecDataset:
    """Build a dataset from one row per interaction.

    Args:
        df: interactions; ``split_col`` holds 'train'/'valid'/'test' or 0/1/2.
        item_features: modality -> (n_items, d) array.
        n_users, n_items: shape (default: ``df.attrs`` if set, else max id + 1; ``n_items``
            = the features' row count when features are given).
        name: dataset name (default: ``df.attrs['name']`` or 'dataframe').
        user_col, item_col, split_col: column names.
    """
    import pandas as pd
    source = "<DataFrame>"
    for column in (user_col, item_col, split_col):
        if column not in df.columns:
            raise DataError(source, column, f"columns {[user_col, item_col, split_col]}", f"columns {list(df.columns)}")
    users = int_ids(df[user_col].to_numpy(), source, user_col)
    items = int_ids(df[item_col].to_numpy(), source, item_col)
    named = df[split_col].map(SPLIT_CODES)  # 'train'/'valid'/'test' -> 0/1/2, else NaN
    codes = named.where(named.notna(), pd.to_numeric(df[split_col], errors="coerce")).to_numpy()
    bad = ~np.isin(codes, list(SPLIT_CODES.values()))
    if bad.any():
        raise DataError(source, split_col, f"one of {list(SPLITS)} or 0/1/2",
                        f"{int(bad.sum())} other values, e.g. {df[split_col].to_numpy()[bad][0]!r}")
    codes = codes.astype(np.int64)
    features = {m: check_features(f, None, source, f"item_features['{m}']")
                for m, f in (item_features or {}).items()}
    if not (n_users or df.attrs.get("n_users")):
        _warn_one_based(source, user_col, users)
    n_users = n_users or df.attrs.get("n_users") or (int(users.max()) + 1 if users.size else 0)
    n_items = n_items or df.attrs.get("n_items") or (next(iter(features.values())).shape[0] if features
                                                     else (int(items.max()) + 1 if items.size else 0))
    splits = {split: build_csr(users[codes == code], items[codes == code], n_users, n_items, source,
                                (user_col, item_col))
              for split, code in SPLIT_CODES.items()}
    return make_dataset(splits, features, name or df.attrs.get("name", "dataframe"), source, source)


# ---------------------------------------------------------------- auto-detect
def load_dataset(path_or_dataframe: PathLike | pd.DataFrame | RecDataset, **kw) -> RecDataset:
    """Load a dataset in any supported format, detected from the directory's contents.

    Detection order: ``trnMat.pkl`` -> DiffMM; ``*.train.inter`` -> RecBole; a ``*.inter``
    whose header has ``x_label`` -> MMRec. A DataFrame goes to :func:`from_dataframe`;
    a :class:`RecDataset` is returned as is. ``kw`` is passed to the reader.
    """
    if isinstance(path_or_dataframe, RecDataset):
        return path_or_dataframe
    if not isinstance(path_or_dataframe, (str, os.PathLike)):  # a DataFrame (pandas is not loaded for a path)
        return from_dataframe(path_or_dataframe, **kw)
    path = Path(path_or_dataframe)
    if not path.exists():
        raise DataError(str(path), "path", "an existing dataset directory or .inter file", "no such path")
    if path.is_file() and path.suffix == ".inter":
        return read_mmrec(path, **kw)
    if (path / DIFFMM_FILES["train"]).is_file():
        return read_diffmm_dir(path, **kw)
    if any(path.glob("*.train.inter")):
        return read_recbole(path, **kw)
    for file in sorted(path.glob("*.inter")):
        with open(file) as f:
            header = f.readline().rstrip("\n").split("\t")
        if "x_label" in header:
            return read_mmrec(path, inter_file=file.name, **kw)
    raise DataError(str(path), "format", "one of: DiffMM ('trnMat.pkl', 'valMat.pkl', 'tstMat.pkl'), "
                    "RecBole ('<name>.train.inter', ...), MMRec ('*.inter' with an 'x_label' column)",
                    f"files {sorted(p.name for p in path.iterdir())[:20]}")
