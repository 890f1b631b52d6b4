"""Readers / writers: exact round trips, real dataset statistics, and one test per bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from diffmm.data import (SPLITS, DataError, RecDataset, from_dataframe, load_dataset, make_synthetic,
                         read_diffmm_dir, read_mmrec, read_recbole, to_dataframe, write_diffmm_dir,
                         write_mmrec, write_recbole)

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def real(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real dataset {path} not available")
    return path


def assert_same(a: RecDataset, b: RecDataset) -> None:
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    for split in SPLITS:
        assert (a.split(split) != b.split(split)).nnz == 0, split
        assert a.split(split).nnz == b.split(split).nnz
    assert a.modalities == b.modalities
    for m in a.modalities:
        assert b.item_features[m].dtype == np.float32
        np.testing.assert_array_equal(a.item_features[m], b.item_features[m])


@pytest.fixture
def small() -> RecDataset:
    """A small synthetic set padded with one user and one item that have no interaction at all."""
    base = make_synthetic(n_users=50, n_items=30, n_groups=3, mean_activity=4,
                          modalities={"image": (6, 1.0), "text": (4, 0.5)}, seed=3)
    pad = {s: sp.csr_matrix(sp.vstack([sp.hstack([base.split(s), sp.csr_matrix((50, 1))]),
                                       sp.csr_matrix((1, 31))])) for s in SPLITS}
    feats = {m: np.vstack([f, np.full((1, f.shape[1]), 0.25, np.float32)]) for m, f in base.item_features.items()}
    return RecDataset(**pad, item_features=feats, name="small")


# ------------------------------------------------------------------ round trips
def _via_dataframe(ds: RecDataset, path: Path) -> RecDataset:
    return from_dataframe(to_dataframe(ds), item_features=ds.item_features, name=ds.name)


ROUND_TRIPS = {
    "diffmm": (write_diffmm_dir, read_diffmm_dir),
    "mmrec": (write_mmrec, read_mmrec),
    "recbole": (write_recbole, read_recbole),
    "auto-diffmm": (write_diffmm_dir, load_dataset),
    "auto-mmrec": (write_mmrec, load_dataset),
    "auto-recbole": (write_recbole, load_dataset),
}


@pytest.mark.parametrize("fmt", list(ROUND_TRIPS))
def test_round_trip_small(small, tmp_path, fmt):
    write, read = ROUND_TRIPS[fmt]
    write(small, tmp_path)
    assert_same(small, read(tmp_path))
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes left temporary files"


def test_round_trip_dataframe(small):
    df = to_dataframe(small)
    assert list(df.columns) == ["user", "item", "split"]
    assert set(df["split"]) == set(SPLITS)
    assert len(df) == sum(small.split(s).nnz for s in SPLITS)
    assert_same(small, _via_dataframe(small, Path()))
    # split codes 0/1/2 and explicit shape work too
    coded = df.assign(split=df["split"].map({s: i for i, s in enumerate(SPLITS)}))
    coded.attrs = {}
    back = from_dataframe(coded, item_features=small.item_features, n_users=small.n_users)
    assert_same(small, back)
    assert_same(small, load_dataset(df, item_features=small.item_features))


def test_writers_produce_the_documented_files(small, tmp_path):
    write_diffmm_dir(small, tmp_path / "d")
    write_mmrec(small, tmp_path / "m", name="toy")
    write_recbole(small, tmp_path / "r", name="toy")
    assert {p.name for p in (tmp_path / "d").iterdir()} == {
        "trnMat.pkl", "valMat.pkl", "tstMat.pkl", "image_feat.npy", "text_feat.npy"}
    coo = pickle.load(open(tmp_path / "d" / "trnMat.pkl", "rb"))
    assert isinstance(coo, sp.coo_matrix) and coo.dtype == np.float64 and set(coo.data) == {1.0}
    inter = pd.read_csv(tmp_path / "m" / "toy.inter", sep="\t")
    assert list(inter.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert (inter["rating"] == 1).all() and (inter["timestamp"] == 0).all()
    assert (tmp_path / "m" / "image_feat.npy").is_file()
    header = (tmp_path / "r" / "toy.train.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token"
    assert (tmp_path / "r" / "toy.image_feat.npy").is_file()


def test_stale_feature_file_warns(small, tmp_path):
    np.save(tmp_path / "old_feat.npy", np.zeros((small.n_items, 2)))
    with pytest.warns(UserWarning, match="old_feat.npy"):
        write_diffmm_dir(small, tmp_path)


def test_reading_does_not_mutate_input_matrix():
    matrix = sp.csr_matrix(np.array([[5.0, 0.0], [0.0, 2.0]], dtype=np.float32))
    RecDataset(matrix, matrix * 0, matrix * 0)
    np.testing.assert_array_equal(matrix.data, [5.0, 2.0])


# ----------------------------------------------------------------- real data
def test_tiktok_stats_and_round_trip(tmp_path):
    path = real("tiktok")
    ds = read_diffmm_dir(path)
    assert (ds.n_users, ds.n_items) == (9308, 6710)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (59541, 3051, 6130)
    assert ds.modalities == ["audio", "image"]
    np.testing.assert_array_equal(ds.item_features["image"], np.load(path / "image_feat.npy").astype(np.float32))
    assert int((ds.item_popularity() == 0).sum()) == 465 and int((ds.user_activity() == 0).sum()) == 10
    assert load_dataset(path).n_users == 9308
    for fmt in ("diffmm", "mmrec", "recbole"):
        write, read = ROUND_TRIPS[fmt]
        write(ds, tmp_path / fmt)
        assert_same(ds, read(tmp_path / fmt))


def test_ml100k_stats_and_round_trip(tmp_path):
    path = real("ml100k")
    ds = read_mmrec(path)
    assert ds.name == "ml100k"
    assert (ds.n_users, ds.n_items) == (943, 1682)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (75000, 12000, 13000)
    assert ds.modalities == ["text"] and ds.item_features["text"].shape == (1682, 384)
    assert_same(ds, load_dataset(path))
    assert_same(ds, _via_dataframe(ds, tmp_path))
    write_mmrec(ds, tmp_path)
    assert_same(ds, read_mmrec(tmp_path))
    # min_rating keeps only rows at or above the threshold
    inter = pd.read_csv(path / "ml100k.inter", sep="\t")
    liked = read_mmrec(path, min_rating=4)
    assert liked.train.nnz == int(((inter["rating"] >= 4) & (inter["x_label"] == 0)).sum())
    assert liked.n_users == 943


# ------------------------------------------------------------------ bad inputs
def _dump(obj, file: Path) -> None:
    with open(file, "wb") as f:
        pickle.dump(obj, f)


def _error(match_all: list[str], func, *args, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        func(*args, **kw)
    for text in match_all:
        assert text in str(info.value), (text, str(info.value))
    return info.value


def test_feature_rows_mismatch(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    np.save(tmp_path / "image_feat.npy", np.zeros((small.n_items - 1, 6), np.float32))
    _error(["image_feat.npy", "'image'", f"{small.n_items} rows", f"{small.n_items - 1} rows"],
           read_diffmm_dir, tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features(small, tmp_path, bad):
    write_mmrec(small, tmp_path)
    feats = small.item_features["text"].copy()
    feats[7, 1] = bad
    np.save(tmp_path / "text_feat.npy", feats)
    _error(["text_feat.npy", "'text'", "finite values", "row 7"], read_mmrec, tmp_path)


def test_ids_out_of_range(small, tmp_path):
    write_mmrec(small, tmp_path, name="toy")
    (tmp_path / "toy.diffmm.json").unlink()
    inter = pd.read_csv(tmp_path / "toy.inter", sep="\t")
    inter.loc[0, "itemID"] = small.n_items + 5  # beyond the feature files' rows
    inter.to_csv(tmp_path / "toy.inter", sep="\t", index=False)
    _error(["toy.inter", "'itemID'", f"ids < {small.n_items}", "out of range"], read_mmrec, tmp_path)


def test_negative_ids_mmrec(small, tmp_path):
    write_mmrec(small, tmp_path, name="toy")
    inter = pd.read_csv(tmp_path / "toy.inter", sep="\t")
    inter.loc[3, "userID"] = -1
    inter.to_csv(tmp_path / "toy.inter", sep="\t", index=False)
    _error(["toy.inter", "'userID'", "negative"], read_mmrec, tmp_path)


def test_negative_ids_diffmm(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    coo = pickle.load(open(tmp_path / "valMat.pkl", "rb"))
    coo.col[0] = -2  # bypasses scipy's constructor checks, as a hand-made pickle can
    _dump(coo, tmp_path / "valMat.pkl")
    _error(["valMat.pkl", "col (item)", "negative"], read_diffmm_dir, tmp_path)


def test_missing_split_file(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    (tmp_path / "valMat.pkl").unlink()
    _error(["missing ['valMat.pkl']", "trnMat.pkl", "tstMat.pkl"], read_diffmm_dir, tmp_path)
    write_recbole(small, tmp_path / "r", name="toy")
    (tmp_path / "r" / "toy.test.inter").unlink()
    _error(["missing ['toy.test.inter']"], read_recbole, tmp_path / "r", name="toy")


def test_corrupt_files(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    (tmp_path / "tstMat.pkl").write_bytes(b"not a pickle")
    _error(["tstMat.pkl", "a pickled scipy.sparse matrix"], read_diffmm_dir, tmp_path)
    write_diffmm_dir(small, tmp_path)
    (tmp_path / "text_feat.npy").write_bytes(b"\x93NUMPY garbage")
    _error(["text_feat.npy", "readable .npy"], read_diffmm_dir, tmp_path)


def test_pickle_not_sparse(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    _dump([[1, 0], [0, 1]], tmp_path / "trnMat.pkl")
    _error(["trnMat.pkl", "scipy.sparse", "list"], read_diffmm_dir, tmp_path)


def test_splits_of_different_shapes(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    _dump(sp.coo_matrix((small.n_users + 1, small.n_items)), tmp_path / "tstMat.pkl")
    _error(["tstMat.pkl", "'test'", f"({small.n_users + 1}, {small.n_items})"], read_diffmm_dir, tmp_path)


def test_empty_training_split(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    _dump(sp.coo_matrix(small.train.shape), tmp_path / "trnMat.pkl")
    _error(["trnMat.pkl", "'train'", "empty"], read_diffmm_dir, tmp_path)


def test_train_test_overlap_warns_with_count(small):
    df = to_dataframe(small)
    train = df[df["split"] == "train"].head(3).assign(split="test")
    with pytest.warns(UserWarning, match=r"3 \(user, item\) pairs are in both train and test"):
        from_dataframe(pd.concat([df, train]), item_features=small.item_features)


def test_ids_counted_from_one_are_warned_about():
    df = pd.DataFrame({"user": [1, 2, 3, 1], "item": [0, 1, 2, 2], "split": ["train", "train", "train", "test"]})
    df = pd.concat([df, pd.DataFrame({"user": [2], "item": [0], "split": ["valid"]})])
    with pytest.warns(UserWarning, match="no 'user' is 0; ids are read as 0-based, so users 0..0 have no interactions"):
        data = from_dataframe(df)
    assert data.n_users == 4


def test_the_real_datasets_count_from_zero(shared_datasets, recwarn):
    from diffmm import datasets

    for name in ("tiktok", "ml100k"):
        datasets.load(shared_datasets / name)
    assert not [w for w in recwarn if "0-based" in str(w.message)]


def test_valid_test_overlap_warns_with_count(small):
    df = to_dataframe(small)
    twice = df[df["split"] == "valid"].head(2).assign(split="test")
    with pytest.warns(UserWarning, match=r"2 \(user, item\) pairs are in both valid and test"):
        from_dataframe(pd.concat([df, twice]), item_features=small.item_features)


def test_mmrec_bad_columns_and_values(small, tmp_path):
    write_mmrec(small, tmp_path, name="toy")
    file = tmp_path / "toy.inter"
    inter = pd.read_csv(file, sep="\t")
    inter.drop(columns="x_label").to_csv(file, sep="\t", index=False)
    _error(["toy.inter", "'x_label'"], read_mmrec, tmp_path)
    inter.assign(x_label=inter["x_label"].where(inter.index != 4, 3)).to_csv(file, sep="\t", index=False)
    _error(["toy.inter", "'x_label'", "e.g. 3"], read_mmrec, tmp_path)
    inter.assign(userID=inter["userID"].astype(float).where(inter.index != 2, 1.5)).to_csv(file, sep="\t", index=False)
    _error(["toy.inter", "'userID'", "non-integer", "1.5"], read_mmrec, tmp_path)
    inter.drop(columns="rating").to_csv(file, sep="\t", index=False)
    assert read_mmrec(tmp_path).train.nnz == small.train.nnz  # rating is only needed for min_rating
    _error(["toy.inter", "'rating'"], read_mmrec, tmp_path, min_rating=1)


def test_missing_inter_file(tmp_path):
    _error([str(tmp_path), "*.inter"], read_mmrec, tmp_path)
    _error(["nope.inter", "no such file"], read_mmrec, tmp_path, inter_file="nope.inter")


def test_dataframe_bad_split_value(small):
    df = to_dataframe(small)
    df.loc[0, "split"] = "dev"
    _error(["'split'", "'dev'"], from_dataframe, df)


def test_load_dataset_unknown_format(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    _error(["trnMat.pkl", "x_label", ".train.inter", "readme.txt"], load_dataset, tmp_path)
    _error(["no such path"], load_dataset, tmp_path / "missing")


def test_mmrec_ambiguous_feature_files(small, tmp_path):
    write_mmrec(small, tmp_path)
    np.save(tmp_path / "text_feat_other.npy", small.item_features["text"])
    _error(["text_feat.npy", "text_feat_other.npy", "feature_files"], read_mmrec, tmp_path)
    chosen = read_mmrec(tmp_path, feature_files={"text": "text_feat_other.npy"})
    assert chosen.modalities == ["text"]
