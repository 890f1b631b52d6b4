"""diffmm.casestudy: the case-study measures against dense float64 loops, and on a briefly trained DiffMM."""

from __future__ import annotations

import json
import math
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from diffmm import casestudy
from diffmm.casestudy import (MEASURES, generation_measures, generation_measures_figure, generation_measures_frame,
                              history_similarity, unit_rows)
from diffmm.data.dataset import RecDataset

N_USERS, N_ITEMS = 5, 6
TRAIN = {0: [0, 1, 2], 1: [3], 2: [], 3: [1, 4], 4: [0, 5]}
TEST = {0: [4], 1: [5], 2: [0], 3: [2], 4: []}
# k = 2 per user: user 0 gets a seen item (0) and a hit (4); user 1's seen item 3 is its only
# training item (no other item to compare with); user 2 has no history; user 4 gets seen item 5
GENERATED = {"a": {0: [0, 4], 1: [3, 5], 2: [1, 2], 3: [2, 3], 4: [1, 5]},
             "b": {0: [3, 5], 1: [0, 1], 2: [4, 5], 3: [1, 0], 4: [2, 3]}}


def matrix(rows: dict[int, list[int]]) -> sp.csr_matrix:
    dense = np.zeros((N_USERS, N_ITEMS))
    for u, items in rows.items():
        dense[u, items] = 1.0
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def tiny():
    features = {
        "a": np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 2, 3], [-1, 0, 1]], dtype=np.float32),
        "b": np.array([[2, 1], [-1, 3], [0.5, 0.5], [4, -1], [1, 0], [0, 1]], dtype=np.float32),
    }  # item 3 has an all-zero 'a' row: cosine 0 to everything
    data = RecDataset(matrix(TRAIN), matrix({}), matrix(TEST), features, name="tiny")
    model = SimpleNamespace(generated={m: matrix(rows) for m, rows in GENERATED.items()})
    return data, model


# ------------------------------------------------------ independent float64 loops
def cosine(x: np.ndarray, y: np.ndarray) -> float:
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return 0.0 if nx == 0 or ny == 0 else float(x @ y / (nx * ny))


def mean_and_sem(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def loop_cosines(edges: dict[int, list[int]], features: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per user: mean over edges of mean / max cos to the other training items; then mean and sem over users."""
    feats = features.astype(np.float64)
    per_user = {"mean": [], "max": []}
    for u, items in edges.items():
        means, maxes = [], []
        for i in items:
            others = [j for j in TRAIN[u] if j != i]
            if others:
                sims = [cosine(feats[i], feats[j]) for j in others]
                means.append(sum(sims) / len(sims))
                maxes.append(max(sims))
        if means:
            per_user["mean"].append(sum(means) / len(means))
            per_user["max"].append(sum(maxes) / len(maxes))
    return {k: mean_and_sem(v) for k, v in per_user.items()}


def test_generated_measures_match_dense_loops(tiny):
    data, model = tiny
    measures = generation_measures(model, data, seed=7)
    assert (measures["k"], measures["users"], measures["items"], measures["seed"]) == (2, 5, 6, 7)
    for m in ("a", "b"):
        stats = measures["modalities"][m]
        expected = loop_cosines(GENERATED[m], data.item_features[m])
        assert stats["edges"] == 10
        assert stats["new_edges"] == 10 - sum(i in TRAIN[u] for u, items in GENERATED[m].items() for i in items)
        assert stats["mean_cos"]["generated"] == pytest.approx(expected["mean"][0], abs=1e-12)
        assert stats["mean_cos_sem"]["generated"] == pytest.approx(expected["mean"][1], abs=1e-12)
        assert stats["max_cos"]["generated"] == pytest.approx(expected["max"][0], abs=1e-12)
        assert stats["max_cos_sem"]["generated"] == pytest.approx(expected["max"][1], abs=1e-12)
        new = {u: [i for i in items if i not in TRAIN[u]] for u, items in GENERATED[m].items()}
        assert stats["mean_cos"]["generated_new"] == pytest.approx(
            loop_cosines(new, data.item_features[m])["mean"][0], abs=1e-12)
        seen = [sum(i in TRAIN[u] for i in items) / len(items) for u, items in GENERATED[m].items()]
        hits = [sum(i in TEST[u] for i in items) / len(items) for u, items in GENERATED[m].items()]
        assert stats["seen_share"]["generated"] == pytest.approx(mean_and_sem(seen)[0], abs=1e-12)
        assert stats["seen_share_sem"]["generated"] == pytest.approx(mean_and_sem(seen)[1], abs=1e-12)
        assert stats["hit_share"]["generated"] == pytest.approx(mean_and_sem(hits)[0], abs=1e-12)
        assert stats["hit_share_sem"]["generated"] == pytest.approx(mean_and_sem(hits)[1], abs=1e-12)
    # hand-counted: 'a' has seen items 0 (user 0), 3 (user 1), 5 (user 4) and hits 4, 5, 2 (users 0, 1, 3)
    a = measures["modalities"]["a"]
    assert a["seen_share"]["generated"] == pytest.approx(0.3) and a["hit_share"]["generated"] == pytest.approx(0.3)
    assert a["users_scored"] == 4  # user 2 has no history; user 1 only its own generated item 3 plus item 5
    assert a["new_edges"] == 7 and a["users_scored_new"] == 4  # users 0, 1, 3, 4 have a new, scored edge
    assert measures["modalities"]["b"]["users_scored"] == 4


def test_reference_shares_are_exact_expectations(tiny):
    data, model = tiny
    stats = generation_measures(model, data)["modalities"]["a"]
    popularity = np.bincount(data.train.indices, minlength=N_ITEMS) / data.train.nnz  # [2, 2, 1, 1, 1, 1] / 8
    for name, rows in (("seen_share", TRAIN), ("hit_share", TEST)):
        assert stats[name]["random"] == pytest.approx(np.mean([len(rows[u]) / N_ITEMS for u in range(N_USERS)]))
        assert stats[name]["popular"] == pytest.approx(np.mean([popularity[rows[u]].sum() for u in range(N_USERS)]))
        assert stats[f"{name}_sem"]["random"] == stats[f"{name}_sem"]["popular"] == 0.0
    assert stats["seen_share"]["popular"] == pytest.approx((5 / 8 + 1 / 8 + 0 + 3 / 8 + 3 / 8) / 5)


def test_reference_cosines_follow_the_seeded_draws(tiny):
    """The references are drawn with default_rng(seed): per modality, uniform then popularity-weighted items,
    one per generated edge (edges in user order)."""
    data, model = tiny
    measures = generation_measures(model, data, seed=3)
    rng = np.random.default_rng(3)
    popularity = np.bincount(data.train.indices, minlength=N_ITEMS) / data.train.nnz
    users = np.repeat(np.arange(N_USERS), 2)
    for m in ("a", "b"):
        draws = {"random": rng.integers(0, N_ITEMS, 10), "popular": rng.choice(N_ITEMS, 10, p=popularity)}
        for source, items in draws.items():
            edges = {u: items[users == u].tolist() for u in range(N_USERS)}
            expected = loop_cosines(edges, data.item_features[m])
            stats = measures["modalities"][m]
            assert stats["mean_cos"][source] == pytest.approx(expected["mean"][0], abs=1e-12)
            assert stats["max_cos"][source] == pytest.approx(expected["max"][0], abs=1e-12)
            assert stats["max_cos_sem"][source] == pytest.approx(expected["max"][1], abs=1e-12)
    again = generation_measures(model, data, seed=3)
    other = generation_measures(model, data, seed=4)
    assert again == measures
    assert other["modalities"]["a"]["mean_cos"]["generated"] == measures["modalities"]["a"]["mean_cos"]["generated"]
    assert other["modalities"]["a"]["mean_cos"]["random"] != measures["modalities"]["a"]["mean_cos"]["random"]


def test_history_similarity_is_the_same_in_small_chunks(tiny, monkeypatch):
    data, model = tiny
    users, items = casestudy.edge_list(model.generated["a"])
    unit = unit_rows(data.item_features["a"])
    whole = history_similarity(users, items, data.train, unit)
    monkeypatch.setattr(casestudy, "CHUNK_ELEMENTS", 1)  # one user per chunk
    for a, b in zip(whole, history_similarity(users, items, data.train, unit)):
        np.testing.assert_array_equal(a, b)
    mean, best, seen = whole
    assert seen.tolist() == [True, False, True, False, False, False, False, False, False, True]
    assert np.isnan(mean[[2, 4, 5]]).all()  # user 1's item 3 (its only training item), user 2 (no history)
    assert best[0] == pytest.approx(1 / math.sqrt(2))  # item 0 vs items 1, 2: max(1/sqrt2, 0)
    assert mean[9] == best[9] == pytest.approx(-1 / math.sqrt(2))  # user 4: item 5 vs its other item, 0


def test_errors_name_the_problem(tiny):
    data, model = tiny
    with pytest.raises(ValueError, match="has no generated graphs"):
        generation_measures(SimpleNamespace(), data)
    with pytest.raises(ValueError, match="generated\\['a'\\] has no edges: train the model"):
        generation_measures(SimpleNamespace(generated={"a": sp.csr_matrix((N_USERS, N_ITEMS))}), data)
    with pytest.raises(ValueError, match="modality 'audio' but dataset 'tiny' has features for \\['a', 'b'\\]"):
        generation_measures(SimpleNamespace(generated={"audio": model.generated["a"]}), data)
    with pytest.raises(ValueError, match="has shape \\(5, 5\\)"):
        generation_measures(SimpleNamespace(generated={"a": model.generated["a"][:, :5]}), data)


def test_large_sparse_input_is_never_densified():
    """1,000 users x 200,000 items: a dense users x items float64 matrix would take 1.6 GB."""
    rng = np.random.default_rng(0)
    n_users, n_items, k = 1000, 200_000, 5
    def random_rows(per_user):
        cols = rng.integers(0, n_items, (n_users, per_user)).ravel()
        return sp.csr_matrix((np.ones(len(cols)), (np.repeat(np.arange(n_users), per_user), cols)),
                             shape=(n_users, n_items))
    train, test = random_rows(20), random_rows(2)
    test = test - test.multiply(train)
    data = RecDataset(train, sp.csr_matrix((n_users, n_items)), test,
                      {"x": rng.normal(size=(n_items, 4)).astype(np.float32)})
    model = SimpleNamespace(generated={"x": random_rows(k)})
    tracemalloc.start()
    measures = generation_measures(model, data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 150e6, f"peak {peak / 1e6:.0f} MB"
    assert measures["users"] == n_users and measures["modalities"]["x"]["edges"] == model.generated["x"].nnz


# ------------------------------------------------------------ a trained model
@pytest.fixture(scope="module")
def trained():
    from diffmm import datasets
    from diffmm.experiments import build_run_config, run

    data = datasets.load("synthetic", n_users=150, n_items=90, seed=1)
    config = build_run_config("diffmm", None, {"dim": 8, "denoiser_hidden": (16,), "rebuild_k": 4, "epochs": 1,
                                               "batch_size": 1024, "progress": False})
    _, model = run(data, config)
    return data, model


def test_measures_of_a_trained_model(trained):
    data, model = trained
    measures = generation_measures(model, data)
    assert json.loads(json.dumps(measures, allow_nan=False)) == measures  # storable in a run record as is
    assert measures["k"] == 4 and measures["users"] == data.n_users
    assert set(measures["modalities"]) == set(data.modalities)
    for m, stats in measures["modalities"].items():
        assert stats["edges"] == 4 * data.n_users
        assert 0 < stats["users_scored"] <= data.n_users
        for measure in MEASURES:
            for source, value in stats[measure].items():
                low = -1.0 if measure.endswith("cos") else 0.0
                assert value is None or low <= value <= 1.0, (m, measure, source)
                assert stats[f"{measure}_sem"][source] >= 0.0
        assert stats["max_cos"]["generated"] >= stats["mean_cos"]["generated"]
        hit_rate = model.generated[m].multiply(data.test).sum() / model.generated[m].nnz
        assert stats["hit_share"]["generated"] == pytest.approx(hit_rate)  # k per user: user mean = edge share
    numbers = [v for stats in measures["modalities"].values() for x in stats.values()
               for v in (x.values() if isinstance(x, dict) else [x])]
    assert len(numbers) <= 40 * len(data.modalities)  # compact enough for every run's record


def test_frame_and_figure(trained):
    data, model = trained
    measures = generation_measures(model, data)
    frame = generation_measures_frame(measures)
    assert list(frame.columns) == ["modality", "measure", "source", "value", "sem"]
    assert len(frame) == len(data.modalities) * (4 + 4 + 3 + 3)
    row = frame[(frame["modality"] == "text") & (frame["measure"] == "hit_share") & (frame["source"] == "popular")]
    assert row["value"].item() == measures["modalities"]["text"]["hit_share"]["popular"]
    fig = generation_measures_figure(measures, note="brief training: 1 epoch")
    assert fig.layout.width is None and "brief training: 1 epoch" in fig.layout.title.text  # follows the page
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == ["generated (A^m)", "generated, not in training", "uniformly random items",
                      "popularity-sampled items"]
    generated_hits = [t for t in fig.data if t.legendgroup == "generated"][3]
    assert list(generated_hits.x) == list(data.modalities)
    np.testing.assert_allclose(generated_hits.y, [measures["modalities"][m]["hit_share"]["generated"]
                                                  for m in data.modalities])
    np.testing.assert_allclose(generated_hits.error_y.array, [
        1.96 * measures["modalities"][m]["hit_share_sem"]["generated"] for m in data.modalities])
