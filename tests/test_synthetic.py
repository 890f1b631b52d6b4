"""Synthetic data: determinism, shape, long tail, splits, and that the planted signal is there."""

from __future__ import annotations

import time

import numpy as np
import pytest

from diffmm.data import SPLITS, make_synthetic


@pytest.fixture(scope="module")
def planted():
    return make_synthetic(modalities={"image": (64, 1.0), "weak": (64, 0.3), "noise": (64, 0.0)},
                          seed=7, return_groups=True)


def _same(a, b) -> bool:
    return all((a.split(s) != b.split(s)).nnz == 0 for s in SPLITS) and all(
        np.array_equal(a.item_features[m], b.item_features[m]) for m in a.modalities)


def test_defaults_shape_and_speed():
    start = time.perf_counter()
    ds = make_synthetic()
    assert time.perf_counter() - start < 2.0  # ~0.15 s on a laptop CPU
    assert (ds.n_users, ds.n_items) == (2000, 1000)
    assert ds.modalities == ["image", "text"]
    assert ds.item_features["image"].shape == (1000, 64) and ds.item_features["text"].shape == (1000, 32)
    assert ds.item_features["image"].dtype == np.float32
    assert ds.name == "synthetic"


def test_deterministic_by_seed():
    assert _same(make_synthetic(n_users=300, n_items=200, seed=5), make_synthetic(n_users=300, n_items=200, seed=5))
    assert not _same(make_synthetic(n_users=300, n_items=200, seed=5),
                     make_synthetic(n_users=300, n_items=200, seed=6))


def test_adding_a_modality_keeps_interactions():
    a = make_synthetic(n_users=300, n_items=200, modalities={"image": (8, 1.0)})
    b = make_synthetic(n_users=300, n_items=200, modalities={"image": (8, 1.0), "audio": (4, 0.2)})
    assert all((a.split(s) != b.split(s)).nnz == 0 for s in SPLITS)
    np.testing.assert_array_equal(a.item_features["image"], b.item_features["image"])


def test_splits_activity_and_long_tail(planted):
    ds, _ = planted
    assert (ds.user_activity() >= 1).all()  # every user trains
    for split in ("valid", "test"):
        assert ds.train.multiply(ds.split(split)).nnz == 0
    assert ds.valid.multiply(ds.test).nnz == 0
    total = ds.train.nnz + ds.valid.nnz + ds.test.nnz
    assert abs(ds.valid.nnz / total - 0.1) < 0.02 and abs(ds.test.nnz / total - 0.2) < 0.02
    per_user = ds.user_activity() + np.diff(ds.valid.indptr) + np.diff(ds.test.indptr)
    assert (per_user <= 5).sum() > 300 and (per_user >= 30).sum() > 50  # sparse and dense users
    assert abs(per_user.mean() - 12) < 2
    flat = make_synthetic(n_users=200, n_items=100, activity_skew=0.0, mean_activity=6)
    per_user = flat.user_activity() + np.diff(flat.valid.indptr) + np.diff(flat.test.indptr)
    assert (per_user == 6).all()


def test_users_interact_mostly_in_their_group(planted):
    ds, groups = planted
    coo = ds.train.tocoo()
    in_group = (groups["user_groups"][coo.row] == groups["item_groups"][coo.col]).mean()
    assert in_group > 0.6  # chance is 1/8
    assert groups["item_groups"].shape == (ds.n_items,) and groups["user_groups"].shape == (ds.n_users,)


def _group_cosine_gap(feats: np.ndarray, item_groups: np.ndarray) -> float:
    """Mean cosine similarity within groups minus across groups (diagonal excluded)."""
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cos = x @ x.T
    same = item_groups[:, None] == item_groups[None, :]
    off_diag = ~np.eye(len(x), dtype=bool)
    return float(cos[same & off_diag].mean() - cos[~same].mean())


def test_features_carry_group_signal_by_snr(planted):
    ds, groups = planted
    gaps = {m: _group_cosine_gap(ds.item_features[m], groups["item_groups"]) for m in ds.modalities}
    assert gaps["image"] > 0.2
    assert gaps["image"] > gaps["weak"] > 0.02
    assert abs(gaps["noise"]) < 0.01


@pytest.mark.parametrize("kw", [dict(n_groups=0), dict(valid_frac=0.5, test_frac=0.5), dict(mean_activity=0),
                                dict(modalities={"image": (8, -1.0)}), dict(activity_skew=-1)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        make_synthetic(n_users=20, n_items=10, **kw)
