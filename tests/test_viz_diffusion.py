"""diffmm.viz.diffusion: the schedule, forward noising, reverse steps and MSI panels, against independent numbers."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import scipy.sparse as sp

from diffmm.config import DiffMMConfig
from diffmm.data import make_synthetic
from diffmm.data.dataset import RecDataset
from diffmm.experiments import build_run_config, run
from diffmm.viz.diffusion import (forward_noising_figure, forward_noising_frame, generated_graph_stats,
                                  generated_side_by_side, msi_comparison, msi_figure, noising_summary, reverse_figure,
                                  reverse_frame, schedule_figure, schedule_frame)

K = 3
EPOCHS = 2


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=60, n_items=40, mean_activity=8, seed=3)


@pytest.fixture(scope="module")
def models(data):
    """Two briefly trained DiffMMs, MSI off and on, same seed: what the notebook compares."""
    out = {}
    for label, msi in (("MSI off", 0.0), ("MSI on", 0.5)):
        config = build_run_config("diffmm", None, {"dim": 8, "denoiser_hidden": (16,), "rebuild_k": K,
                                                   "generator_batch_size": 16, "msi_weight": msi, "epochs": EPOCHS,
                                                   "batch_size": 256, "progress": False, "threads": 1})
        _, out[label] = run(data, config)
    return out


def eq3_gamma_bar(config: DiffMMConfig) -> np.ndarray:
    """gamma_bar_1..T in float64, written from the paper: Eq. 3, then beta_1 replaced by ``first_beta``."""
    T, s = config.steps, config.noise_scale
    t = np.arange(1, T + 1, dtype=np.float64)
    bar = 1.0 - s * (config.noise_min + (t - 1) / (T - 1) * (config.noise_max - config.noise_min))  # Eq. 3
    if config.first_beta is not None:  # gamma_t = bar_t / bar_{t-1} for t >= 2 is unchanged; gamma_1 = 1 - beta_1
        bar = (1.0 - config.first_beta) * bar / bar[0]
    return bar


# ------------------------------------------------------------------ 1. schedule
@pytest.mark.parametrize("first_beta", [None, 1e-4])
def test_schedule_frame_matches_eq3_in_float64(first_beta):
    config = DiffMMConfig(steps=5, noise_scale=0.1, noise_min=1e-4, noise_max=0.02, first_beta=first_beta)
    frame = schedule_frame(config)
    bar = eq3_gamma_bar(config)
    assert frame["t"].tolist() == list(range(6))
    np.testing.assert_allclose(frame["gamma_bar"].iloc[1:], bar, rtol=1e-12)
    np.testing.assert_allclose(frame["one_minus_gamma_bar"].iloc[1:], 1 - bar, rtol=1e-9)
    np.testing.assert_allclose(frame["eq3"].iloc[1:], 0.1 * np.linspace(1e-4, 0.02, 5), rtol=1e-9)  # never overridden
    np.testing.assert_allclose(frame["beta"].iloc[1:], 1 - bar / np.concatenate([[1.0], bar[:-1]]), rtol=1e-9)
    np.testing.assert_allclose(frame["signal"] ** 2 + frame["noise"] ** 2, 1.0, rtol=1e-12)
    snr = bar / (1 - bar)
    np.testing.assert_allclose(frame["snr"].iloc[1:], snr, rtol=1e-9)
    weight = np.concatenate([[1.0], snr[:-1] - snr[1:]])  # Eq. 11 (t >= 2), Eq. 12 (t = 1)
    np.testing.assert_allclose(frame["loss_weight"].iloc[1:], weight, rtol=1e-6)
    row0 = frame.iloc[0]
    assert (row0["gamma_bar"], row0["beta"], row0["snr"]) == (1.0, 0.0, np.inf) and np.isnan(row0["eq3"])
    if first_beta is None:
        np.testing.assert_allclose(frame["one_minus_gamma_bar"].iloc[1:], frame["eq3"].iloc[1:], rtol=1e-9)
    else:
        assert frame["beta"].iloc[1] == pytest.approx(1e-4, rel=1e-12)


def test_schedule_figure_has_integer_steps_and_every_curve():
    fig = schedule_figure(schedule_frame(DiffMMConfig()))
    assert [t.name for t in fig.data][:3] == ["1 - gamma_bar_t (configured)",
                                              "1 - gamma_bar_t (Eq. 3, no beta_1 override)", "beta_t"]
    assert all(list(t.x) == [1, 2, 3, 4, 5] for t in fig.data)  # t = 0 (clean) is not drawn on a log axis
    assert all(fig.layout[f"xaxis{n}"].dtick == 1 for n in ("", "2", "3"))
    assert fig.layout.width is None  # fills the notebook cell


# ---------------------------------------------------------------- 2. forward noising
def test_forward_noising_is_eq2_with_the_frames_noise(models, data):
    model = models["MSI on"]
    diffusion = model.generators["image"].diffusion
    frame = forward_noising_frame(diffusion, data.train[4], seed=7)
    T, I = diffusion.steps, data.n_items
    assert len(frame) == (T + 1) * I
    x0 = data.train[4].toarray().ravel().astype(np.float64)
    noise = frame["noise"].to_numpy(np.float64).reshape(T + 1, I)
    np.testing.assert_array_equal(noise, np.broadcast_to(noise[0], noise.shape))  # one eps shared by every t
    bar = np.concatenate([[1.0], eq3_gamma_bar(model.config)])[:, None]  # (T+1, 1)
    expected = np.sqrt(bar) * x0 + np.sqrt(1 - bar) * noise  # Eq. 2 in float64
    np.testing.assert_allclose(frame["value"].to_numpy().reshape(T + 1, I), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(frame.loc[frame["t"] == 0, "value"], x0)  # t = 0 is alpha_0 itself
    same = forward_noising_frame(diffusion, x0, seed=7)  # a dense vector gives the same frame
    pd.testing.assert_frame_equal(same, frame)
    assert not np.allclose(forward_noising_frame(diffusion, x0, seed=8)["noise"], frame["noise"])


def hand_frame(values: list[list[float]], observed: list[float]) -> pd.DataFrame:
    values = np.asarray(values)
    T1, I = values.shape
    assert T1 == 2, "a clean row and one noised row (signal 0.8, noise 0.6)"
    return pd.DataFrame({"t": np.repeat(np.arange(T1), I), "item": np.tile(np.arange(I), T1),
                         "observed": np.tile(observed, T1), "noise": 0.0, "value": values.ravel(),
                         "signal": np.repeat([1.0, 0.8], I), "noise_std": np.repeat([0.0, 0.6], I)})


def test_noising_summary_hand_computed():
    # t = 1: watched 0.9, 0.2; others 0.3, -0.1 -> pairs in order: (0.9, 0.3), (0.9, -0.1), (0.2, -0.1) = 3 of 4
    summary = noising_summary(hand_frame([[1, 1, 0, 0], [0.9, 0.2, 0.3, -0.1]], [1, 1, 0, 0]))
    np.testing.assert_allclose(summary["auc"], [1.0, 0.75])
    np.testing.assert_allclose(summary["margin"], [1.0, -0.1])
    np.testing.assert_allclose(summary["watched_mean"], [1.0, 0.55])
    np.testing.assert_allclose(summary["other_max"], [0.0, 0.3])
    np.testing.assert_allclose(summary["snr_db"].iloc[1], 10 * np.log10(0.64 / 0.36))
    assert summary["snr_db"].iloc[0] == np.inf
    tied = noising_summary(hand_frame([[1, 0], [0.5, 0.5]], [1, 0]))
    assert tied["auc"].tolist() == [1.0, 0.5]  # a tie counts half
    with pytest.raises(ValueError, match="watched and other items"):
        noising_summary(hand_frame([[0, 0], [0.1, 0.2]], [0, 0]))


def test_forward_noising_figure_puts_watched_items_first(models, data):
    frame = forward_noising_frame(models["MSI on"].generators["text"].diffusion, data.train[4])
    fig = forward_noising_figure(frame, others=10)
    heat = fig.data[0]
    watched = data.train[4].indices
    shown = np.asarray(heat.customdata)[0]
    assert sorted(shown[: len(watched)]) == sorted(watched) and len(shown) == len(watched) + 10
    assert np.asarray(heat.z).shape == (6, len(shown))
    assert fig.layout.yaxis.dtick == 1 and [t.name for t in fig.data[1:]] == [
        "watched items: mean, bar to the lowest", "other items: mean, bar to the highest"]


# ------------------------------------------------------------------ 3. reverse steps
@pytest.mark.parametrize("user, modality", [(0, "image"), (7, "text"), (33, "image")])
def test_reverse_last_step_top_k_are_the_generated_edges(models, data, user, modality):
    model = models["MSI on"]
    frame = reverse_frame(model, data, user, modality, top=8)
    T = model.config.steps
    assert frame["step"].max() == T and len(frame) == (T + 1) * 8
    last = frame[frame["step"] == T]
    generated = model.generated[modality][user].indices
    assert sorted(last.loc[last["in_top_k"], "item"]) == sorted(generated)
    assert last["generated"].sum() == K and last["rank"].tolist() == list(range(1, 9))
    assert (last["score"].diff().dropna() <= 0).all()  # the final ranking orders the items
    start = frame[frame["step"] == 0]
    np.testing.assert_array_equal(start["score"], start["watched"].astype(float))  # forward_steps = 0
    fig = reverse_figure(frame, K, epochs=EPOCHS)
    assert len(fig.layout.sliders[0].steps) == T + 1 and fig.layout.sliders[0].active == T
    final = fig.layout.sliders[0].steps[-1].args[0]["y"][0]  # the coloured bars at t = 0
    names = dict(zip(last["name"], last["item"]))
    assert sorted(names[x] for x, y in zip(fig.data[0].x, final) if y is not None) == sorted(generated)
    assert list(fig.data[0].y) == final  # the figure opens on t = 0
    assert f"after {EPOCHS} training epochs" in fig.layout.title.text


def test_reverse_frame_ties_share_a_rank_and_rejects_top_below_k(models, data):
    user = int(np.flatnonzero(data.user_activity() > K)[0])
    frame = reverse_frame(models["MSI off"], data, user, "image", top=10)
    start = frame[frame["step"] == 0]  # the observed vector: every watched item scores 1, tied
    assert (start.loc[start["watched"], "rank"] == 1).all()
    assert (start.loc[~start["watched"], "rank"] == data.train[user].nnz + 1).all()
    assert start["kth_score"].iloc[0] == 1.0
    assert start["in_top_k"].tolist() == start["watched"].tolist()  # every tied watched item reaches the k-th score
    with pytest.raises(ValueError, match="at least rebuild_k"):
        reverse_frame(models["MSI off"], data, 5, "image", top=K - 1)
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        reverse_frame(models["MSI off"], data, 5, "audio")


# -------------------------------------------------------------------------- 4. MSI
@pytest.fixture
def tiny():
    """4 users x 5 items, hand-made: generated edges, history and features whose cosines are easy to check."""
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0]], float))
    test = sp.csr_matrix(np.array([[0, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]], float))
    feats = np.array([[1, 0], [0, 2], [3, 3], [1, -1], [-2, 0]], float)
    dataset = RecDataset(train, sp.csr_matrix(train.shape), test, {"m": feats}, item_names=list("abcde"))
    generated = sp.csr_matrix(np.array([[1, 0, 1, 0, 0], [0, 0, 1, 0, 1], [0, 0, 1, 0, 1], [0, 0, 1, 0, 1]], float))
    return SimpleNamespace(generated={"m": generated}, config=SimpleNamespace(msi_weight=0.3)), dataset


def brute_force_stats(generated: np.ndarray, train: np.ndarray, test: np.ndarray, feats: np.ndarray) -> dict:
    unit = feats.astype(np.float64) / np.linalg.norm(feats.astype(np.float64), axis=1, keepdims=True)
    users = range(len(generated))
    sets = [set(np.flatnonzero(row)) for row in generated]
    k = generated.sum() / len(generated)
    overlap = np.mean([len(sets[u] & sets[v]) / k for u, v in itertools.permutations(users, 2)])
    new = [(u, i) for u in users for i in sets[u] if not train[u, i]]
    history = [np.flatnonzero(train[u]) for u in users]
    sim = [np.mean([unit[i] @ unit[j] for j in history[u]]) for u, i in new]
    base = [np.mean([np.mean([unit[o] @ unit[j] for j in history[u]]) for o in np.flatnonzero(train[u] == 0)])
            for u, _ in new]
    return {"distinct_items": len(set().union(*sets)), "overlap": overlap, "new_share": len(new) / generated.sum(),
            "test_share": np.mean([test[u, i] > 0 for u, i in new]), "history_similarity": np.mean(sim),
            "baseline_similarity": np.mean(base)}


def test_generated_graph_stats_match_a_brute_force_count(tiny):
    model, dataset = tiny
    stats = generated_graph_stats(model, dataset)
    expected = brute_force_stats(model.generated["m"].toarray(), dataset.train.toarray(), dataset.test.toarray(),
                                 dataset.item_features["m"])
    row = stats.iloc[0]
    assert row["modality"] == "m" and row["edges"] == 8 and row["distinct_items"] == 3
    # pairs: users 1, 2, 3 share {2, 4} (2 of 2 items, 6 ordered pairs), user 0 shares {2} with each (1 of 2, 6 pairs)
    assert row["overlap"] == pytest.approx((6 * 1.0 + 6 * 0.5) / 12)
    assert row["new_share"] == pytest.approx(6 / 8)  # (0, 0) and (1, 2) are training items
    assert row["test_share"] == pytest.approx(3 / 6)  # (0, 2), (1, 4), (3, 4)
    for column, value in expected.items():
        assert row[column] == pytest.approx(value), column


def test_msi_comparison_and_figure_are_consistent(models, data):
    table = msi_comparison(models, data)
    assert table["model"].tolist() == ["MSI off", "MSI off", "MSI on", "MSI on"]
    assert table["msi_weight"].tolist() == [0.0, 0.0, 0.5, 0.5]
    for label, model in models.items():
        part = table[table["model"] == label].set_index("modality")
        for m, graph in model.generated.items():
            assert part.loc[m, "edges"] == graph.nnz == data.n_users * K
            assert part.loc[m, "distinct_items"] == len(np.unique(graph.indices))
            new = graph.nnz - graph.multiply(data.train).nnz
            assert part.loc[m, "new_share"] == pytest.approx(new / graph.nnz)
    assert ((table["overlap"] >= 0) & (table["overlap"] <= 1)).all()
    fig = msi_figure(table, epochs=EPOCHS)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert len(bars) == 4 * 2  # four panels, two models
    assert list(bars[0].y) == table.loc[table["model"] == "MSI off", "distinct_items"].tolist()
    lift = table["history_similarity"] - table["baseline_similarity"]
    np.testing.assert_allclose(list(bars[4].y) + list(bars[5].y), lift)
    assert f"after {EPOCHS} training epochs" in fig.layout.title.text and "lambda0 = 0.5" in fig.layout.title.text


def test_generated_side_by_side_lists_each_models_items(models, data):
    user = 3
    table = generated_side_by_side(models, data, user, "text")
    for label, model in models.items():
        assert sorted(table.loc[table[label], "item"]) == sorted(model.generated["text"][user].indices)
    assert (table[list(models)].any(axis=1)).all()
    assert table["watched"].tolist() == [i in set(data.train[user].indices) for i in table["item"]]
    both = table[list(models)].all(axis=1).tolist()
    assert both == sorted(both, reverse=True)  # items every model generated come first
