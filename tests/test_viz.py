"""diffmm.viz: figures from hand-made tables, the generated subgraph, similarity, the explorer, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from diffmm.data import make_synthetic
from diffmm.models import build_model
from diffmm.viz import (case_study_figure, case_users, denoising_figure, denoising_frame, fusion_ratio_figure,
                        hyperparameter_figure, hyperparameter_heatmap, modality_similarity, modality_weights_figure,
                        save_figure, similarity_heatmap, sparsity_figure, sparsity_table, subgraph_figure,
                        training_curves, user_subgraph)

INF = float("inf")


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=60, n_items=40, mean_activity=8, seed=3)


@pytest.fixture(scope="module")
def model(data):
    """An untrained tiny DiffMM whose generated graphs were built once (no training needed for structure)."""
    torch.manual_seed(0)
    model = build_model("diffmm", data, {"dim": 8, "denoiser_hidden": (16,), "rebuild_k": 3})
    model.generated = model.generate_graphs()
    return model


@pytest.fixture
def per_user():
    # n_train:       1    3    6    9    12   60
    return pd.DataFrame({"user": range(6), "n_train": [1, 3, 6, 9, 12, 60], "n_test": 1,
                         "recall@20": [0.0, 1.0, 0.5, 0.25, 0.0, 1.0], "ndcg@20": 0.5})


def history(valid):
    n = len(valid)
    return pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": np.linspace(1, 0.5, n),
                         "train_bpr": np.linspace(0.7, 0.3, n), "valid_recall@20": valid,
                         "test_recall@20": np.asarray(valid) + 0.01})


# ------------------------------------------------------------------ sparsity
def test_sparsity_table_hand_computed(per_user):
    table = sparsity_table({"a": per_user}, bins=(0, 5, 10, 20, INF))
    assert list(table["group"].astype(str)) == ["[0, 5)", "[5, 10)", "[10, 20)", "[20, inf)"]
    assert list(table["users"]) == [2, 2, 1, 1]
    np.testing.assert_allclose(table["value"], [0.5, 0.375, 0.0, 1.0])


def test_sparsity_table_empty_group_and_outside_users(per_user):
    table = sparsity_table({"a": per_user}, bins=(2, 4, 5, 10))  # n_train 1 and 12, 60 fall outside
    assert list(table["users"]) == [1, 0, 2]
    assert np.isnan(table["value"].iloc[1])
    np.testing.assert_allclose(table["value"].iloc[[0, 2]], [1.0, 0.375])


def test_sparsity_quantile_groups_share_edges(per_user):
    other = per_user.assign(**{"recall@20": 1.0})
    table = sparsity_table({"a": per_user, "b": other}, bins=2)  # median 7.5 -> edges 1, 8, inf
    assert list(table["group"].cat.categories) == ["[1, 8)", "[8, inf)"]
    assert list(table.loc[table["model"] == "a", "users"]) == [3, 3]
    np.testing.assert_allclose(table.loc[table["model"] == "b", "value"], [1.0, 1.0])


def test_sparsity_figure_bars_and_counts(per_user):
    fig = sparsity_figure({"DiffMM": per_user, "LightGCN": per_user.assign(**{"recall@20": 0.1})},
                          bins=(0, 5, 10, INF), metric="recall@20")
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [b.name for b in bars] == ["DiffMM", "LightGCN"]
    assert list(bars[0].x) == ["[0, 5)<br>n=2", "[5, 10)<br>n=2", "[10, inf)<br>n=2"]
    np.testing.assert_allclose(bars[0].y, [0.5, 0.375, 0.5])  # each group's own mean, in group order
    np.testing.assert_allclose(bars[1].y, [0.1, 0.1, 0.1])
    counts = [t for t in fig.data if t.name == "users"][0]
    assert list(counts.y) == [2, 2, 2]


def test_sparsity_errors_name_the_problem(per_user):
    with pytest.raises(ValueError, match="no column 'recall@10'"):
        sparsity_table({"a": per_user}, metric="recall@10")
    with pytest.raises(ValueError, match="increasing edges"):
        sparsity_table({"a": per_user}, bins=(5, 0))


# ---------------------------------------------------------- hyperparameters
def test_fusion_ratio_accepts_bare_and_sweep_columns():
    bare = pd.DataFrame({"rho": [1.0, 0.0, 0.5], "recall@20": [0.3, 0.1, 0.2], "ndcg@20": [0.03, 0.01, 0.02]})
    sweep_style = bare.rename(columns={"recall@20": "test_recall@20", "ndcg@20": "test_ndcg@20"})
    for table in (bare, sweep_style):
        fig = fusion_ratio_figure(table)
        assert len(fig.data) == 2
        assert list(fig.data[0].x) == ["0", "0.5", "1"]  # sorted by rho
        np.testing.assert_allclose(fig.data[0].y, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no column 'hit@20' or 'test_hit@20'"):
        fusion_ratio_figure(bare, metrics=("hit@20",))


def test_hyperparameter_figure_one_line_per_group():
    table = pd.DataFrame({"omega": [0.1, 0.5, 0.1, 0.5], "dataset": ["a", "a", "b", "b"],
                          "recall@20": [0.1, 0.2, 0.3, 0.4]})
    fig = hyperparameter_figure(table, "omega", metrics=("recall@20",), by="dataset")
    assert [t.name for t in fig.data] == ["a", "b"]
    np.testing.assert_allclose(fig.data[1].y, [0.3, 0.4])
    with pytest.raises(ValueError, match="no column 'lambda0'"):
        hyperparameter_figure(table, "lambda0")
    # groups with different values share one sorted axis (plotly would order by first appearance)
    uneven = pd.DataFrame({"omega": [0.5, 0.1, 0.01, 0.5, 0.1], "dataset": ["a", "a", "b", "b", "b"],
                           "recall@20": [0.1, 0.2, 0.3, 0.4, 0.5]})
    fig = hyperparameter_figure(uneven, "omega", metrics=("recall@20",), by="dataset")
    assert list(fig.layout.xaxis.categoryarray) == ["0.01", "0.1", "0.5"]
    assert fig.layout.xaxis.categoryorder == "array" and list(fig.data[0].x) == ["0.1", "0.5"]
    # an optional field left unset is its own value, 'none', after the numbers
    unset = pd.DataFrame({"first_beta": [1e-4, None], "recall@20": [0.1, 0.2]})
    assert list(hyperparameter_figure(unset, "first_beta", metrics=("recall@20",)).data[0].x) == ["0.0001", "none"]


def test_hyperparameter_heatmap_averages_repeats():
    table = pd.DataFrame({"temperature": [0.1, 0.1, 0.5, 0.1], "cl_weight": [0.01, 0.1, 0.01, 0.01],
                          "test_recall@20": [0.2, 0.3, 0.4, 0.4]})
    fig = hyperparameter_heatmap(table, "temperature", "cl_weight", "recall@20")
    heat = fig.data[0]
    assert list(heat.x) == ["0.01", "0.1"] and list(heat.y) == ["0.1", "0.5"]
    z = np.array(heat.z, dtype=float)
    np.testing.assert_allclose(z[0], [0.3, 0.3])  # (0.2 + 0.4) / 2 and 0.3
    assert z[1, 0] == pytest.approx(0.4) and np.isnan(z[1, 1])


# ----------------------------------------------------------- training curves
def test_training_curves_marks_best_validation_epoch():
    fig = training_curves(history([0.1, 0.4, 0.3, 0.4]))  # ties: the first best epoch, as the Trainer
    star = [t for t in fig.data if t.name and t.name.startswith("best valid epoch")]
    assert len(star) == 1 and star[0].name == "best valid epoch 2" and list(star[0].y) == [0.4]
    assert {t.name for t in fig.data} >= {"train_loss", "train_bpr", "valid recall@20", "test recall@20"}
    assert any(shape.x0 == 2.0 for shape in fig.layout.shapes)


def test_training_curves_compares_runs():
    fig = training_curves({"DiffMM": history([0.1, 0.5]), "LightGCN": history([0.3, 0.2])}, losses=["train_bpr"])
    names = {t.name for t in fig.data}
    assert {"DiffMM: best valid epoch 2", "LightGCN: best valid epoch 1", "LightGCN: train_bpr"} <= names


def test_count_axes_have_whole_ticks(per_user):
    """Epochs and users are counts: no '1.5 epochs' or '2.5 users' ticks on short axes."""
    fig = training_curves(history([0.1, 0.2]))
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis2.dtick == 1 and fig.layout.xaxis2.tickformat == "d"
    long = training_curves(history(np.linspace(0.1, 0.3, 40)))
    assert long.layout.xaxis2.dtick is None and long.layout.xaxis2.tickformat == "d"  # plotly's whole steps
    fig = sparsity_figure({"a": per_user}, bins=(0, 5, 10, INF))
    users_axis = fig.layout.yaxis2
    assert users_axis.title.text == "users" and users_axis.dtick == 1 and users_axis.tickformat == "d"


def test_modality_weights_flat_and_nested():
    flat = modality_weights_figure({"image": 0.7, "text": 0.3})
    assert list(flat.data[0].x) == ["image", "text"] and list(flat.data[0].y) == [0.7, 0.3]
    nested = modality_weights_figure({"run a": {"image": 0.5, "audio": 0.5}, "run b": {"image": 0.9, "audio": 0.1}})
    assert [t.name for t in nested.data] == ["run a", "run b"]


def test_save_figure_html_always(tmp_path):
    fig = modality_weights_figure({"image": 0.5, "text": 0.5})
    written = save_figure(fig, tmp_path / "sub" / "weights.png", png=False)
    assert written == [tmp_path / "sub" / "weights.html"]
    assert "plotly" in written[0].read_text()[:5000].lower()
    assert (tmp_path / "sub" / "plotly.min.js").exists()  # one shared bundle: the folder opens offline


def test_save_figure_png_when_asked(tmp_path):
    fig = modality_weights_figure({"image": 0.5, "text": 0.5})
    try:
        written = save_figure(fig, tmp_path / "w", png=True)
    except RuntimeError as error:  # no kaleido / Chrome here: the error says how to get it
        assert "kaleido" in str(error) and not (tmp_path / "w.png").exists()
    else:
        assert written[1] == tmp_path / "w.png" and written[1].stat().st_size > 0


# ------------------------------------------------------------------ subgraph
def test_user_subgraph_holds_train_test_and_exactly_the_generated_edges(model, data):
    user = int(np.argmax(data.user_activity()))
    G = user_subgraph(model, data, user, max_items=None)
    by_source = {}
    for a, b, key, attrs in G.edges(keys=True, data=True):
        assert key == attrs["source"] and ("user", user) in (a, b)
        item = b[1] if a[0] == "user" else a[1]
        by_source.setdefault(key, set()).add(item)
    assert by_source["train"] == set(data.train[user].indices)
    assert by_source.get("test", set()) == set(data.test[user].indices)
    for m in model.modalities:
        assert by_source[f"generated:{m}"] == set(model.generated[m][user].indices)
        assert len(by_source[f"generated:{m}"]) == 3  # rebuild_k
    assert set(by_source) == {"train", "test", *(f"generated:{m}" for m in model.modalities)} - (
        set() if data.test[user].nnz else {"test"})
    for node, attrs in G.nodes(data=True):  # roles on the nodes agree with the edges
        if attrs["kind"] == "item":
            assert attrs["roles"] == sorted(s for s, items in by_source.items() if node[1] in items)


def test_user_subgraph_one_modality_and_max_items(model, data):
    user = int(np.argmax(data.user_activity()))
    m = model.modalities[1]
    G = user_subgraph(model, data, user, modality=m, max_items=2)
    sources = [k for *_, k in G.edges(keys=True)]
    assert sources.count("train") == 2 and G.graph["dropped_train_items"] == data.train[user].nnz - 2
    assert {s for s in sources if s.startswith("generated")} == {f"generated:{m}"}
    assert sources.count(f"generated:{m}") == 3
    # the kept training items are the 2 most cosine-similar (max over the generated items) in that modality
    x = data.item_features[m].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    train, added = data.train[user].indices, model.generated[m][user].indices
    closeness = (x[train] @ x[added].T).max(1)
    kept = {b[1] for _, b, key in G.edges(keys=True) if key == "train"}
    assert kept == set(train[np.argsort(-closeness)[:2]].tolist())
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        user_subgraph(model, data, user, modality="audio")


def test_user_subgraph_caps_test_items_but_keeps_generated_hits(model, data):
    user = int(np.argmax(np.diff(data.test.indptr)))
    G = user_subgraph(model, data, user, max_items=1)
    test = {b[1] for _, b, key in G.edges(keys=True) if key == "test"}
    generated = set(np.concatenate([model.generated[m][user].indices for m in model.modalities]).tolist())
    hits = set(data.test[user].indices) & generated
    assert test - hits and len(test - hits) == 1 and hits <= test
    assert G.graph["dropped_test_items"] == data.test[user].nnz - len(test)


def test_subgraph_figure_draws_every_source(model, data):
    G = user_subgraph(model, data, 0)
    fig = subgraph_figure(G, item_names=[f"movie {i}" for i in range(data.n_items)])
    lines = {t.legendgroup: t.name for t in fig.data if t.mode == "lines"}
    assert set(lines) == {attrs["source"] for *_, attrs in G.edges(keys=True, data=True)}
    assert lines["train"] == "training item" and lines["generated:image"] == "generated (image)"
    items = [t for t in fig.data if t.name == "items"][0]
    assert len(items.x) == G.number_of_nodes() - 1 and all(s.startswith("movie ") for s in items.text)
    assert fig.layout.width is None and fig.layout.legend.orientation == "h"  # follows the page width


# ---------------------------------------------------------------- similarity
@pytest.mark.parametrize("source", ["dataset", "model"])
def test_modality_similarity_is_cosine(model, data, source):
    items = [3, 0, 17, 3, 25]
    sim = modality_similarity(data if source == "dataset" else model, items, "image")
    assert sim.shape == (5, 5)
    np.testing.assert_array_equal(sim, sim.T)
    np.testing.assert_array_equal(np.diag(sim), 1.0)
    # independent float64 computation: raw features, or the model's Trans(f^m) (Eq. 15) of these items
    x = (data.item_features["image"] if source == "dataset" else model.modal_features()["image"].detach().numpy())
    x = x[items].astype(np.float64)
    expected = (x @ x.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(sim, expected, atol=1e-12)
    assert sim[0, 3] == pytest.approx(1.0)  # the same item twice


def test_similarity_of_a_zero_row_keeps_unit_diagonal(data):
    import dataclasses

    feats = data.item_features["text"].copy()
    feats[5] = 0.0
    zeroed = dataclasses.replace(data, item_features={"text": feats})
    sim = modality_similarity(zeroed, [5, 6], "text")
    np.testing.assert_array_equal(sim, [[1.0, 0.0], [0.0, 1.0]])


def test_similarity_heatmap_checks_labels():
    fig = similarity_heatmap(np.eye(2), ["Toy Story (1995)", "Toy Story (1995)"])
    assert list(fig.data[0].x) == ["Toy Story (1995)", "Toy Story (1995) (2)"]  # duplicates stay distinct
    with pytest.raises(ValueError, match="3 labels for a \\(2, 2\\) matrix"):
        similarity_heatmap(np.eye(2), ["a", "b", "c"])


def test_case_study_figure(model, data):
    user = int(case_users(model, data, 1)[0])
    fig = case_study_figure(model, data, user, "text", max_items=4)
    heat = [t for t in fig.data if isinstance(t, go.Heatmap)][0]
    items = [t for t in fig.data if t.name == "items"][0]
    assert np.array(heat.z).shape == (len(items.x), len(items.x))
    assert "generated:text" in {t.legendgroup for t in fig.data}
    # item k of the subgraph sits on heatmap row k (y = k); rows are named 'k. <label>', columns 'k'
    order = np.argsort(items.y)
    assert list(np.array(items.y)[order]) == list(range(len(items.y)))
    ids = [int(items.customdata[i][0]) for i in order]
    assert list(heat.y) == [f"{k}. item {i}" for k, i in enumerate(ids, start=1)]
    assert list(heat.x) == [str(k) for k in range(1, len(ids) + 1)]
    assert [row[0][0] for row in heat.customdata] == [f"item {i}" for i in ids]  # hover: full names
    G = user_subgraph(model, data, user, modality="text", max_items=4)
    roles = [G.nodes[("item", i)]["roles"] for i in ids]
    rank = [0 if any(r.startswith("generated") for r in rs) else 1 if "train" in rs else 2 for rs in roles]
    assert rank == sorted(rank) and {0, 1} <= set(rank)
    np.testing.assert_allclose(heat.z, modality_similarity(data, ids, "text"))
    # fits a narrow page: autosize width, nothing placed outside it, the user label above its marker
    assert fig.layout.width is None and fig.layout.height <= 1000
    assert heat.colorbar.x == 1.0 and heat.colorbar.xanchor == "left" and fig.layout.margin.r >= 60
    user_marker = [t for t in fig.data if t.name == "user"][0]
    assert user_marker.textposition == "middle left" and user_marker.text == (f"user {user}",)
    assert all(len(a.text) <= 40 for a in fig.layout.annotations)  # subplot titles short enough not to collide


def test_case_study_figure_with_titles_and_a_note(model, data):
    import dataclasses

    named = dataclasses.replace(data, item_names=[f"A rather long movie title number {i} (1995)"
                                                  for i in range(data.n_items)])
    fig = case_study_figure(model, named, 0, "image", max_items=3, note="brief training: 2 epochs")
    heat = [t for t in fig.data if isinstance(t, go.Heatmap)][0]
    assert all(len(label) <= len("99. ") + 24 for label in heat.y)  # truncated row labels
    assert all(row[0][0].startswith("A rather long movie title number") for row in heat.customdata)
    assert "brief training: 2 epochs" in fig.layout.title.text and "<br>" in fig.layout.title.text


def test_case_users_rank_hits_first(model, data):
    hits = sum(model.generated[m].multiply(data.test).tocsr().getnnz(axis=1) for m in model.modalities)
    users = case_users(model, data, 5)
    assert hits[users[0]] == hits.max()
    assert list(hits[users]) == sorted(hits[users], reverse=True)


def test_generated_graph_rows_are_each_users_own_top_k(model, data):
    """Row u of A^m holds user u's top-k items of the reverse process of modality m (Sec. 2.2.3)."""
    users = np.arange(data.n_users)
    for m in model.modalities:
        final = model.denoising_trajectory(users, m)[-1]  # (n_users, n_items) alpha_hat_0
        top = final.topk(model.config.rebuild_k, dim=1).indices.numpy()
        rows = [set(model.generated[m][u].indices.tolist()) for u in users]
        assert len({frozenset(r) for r in rows}) > 1  # users differ, so a user mix-up shows
        assert rows == [set(t.tolist()) for t in top], m


# ------------------------------------------------------------- denoising
def test_denoising_frame_top_items_are_the_generated_edges(model, data):
    user, m = 4, "image"
    frame = denoising_frame(model, data, user, m, top=5)
    T = model.config.steps
    assert sorted(frame["step"].unique()) == list(range(T + 1)) and (frame["t"] == T - frame["step"]).all()
    final = frame[frame["step"] == T].sort_values("rank")
    assert final["score"].is_monotonic_decreasing
    # A^m holds each user's top-k denoised items, so the first k ranks are exactly its edges
    assert set(final["item"].iloc[:3]) == set(model.generated[m][user].indices)
    assert final["role"].iloc[:3].str.contains("generated").all()
    start = frame[frame["step"] == 0]  # the observed vector: 1 on training items, 0 elsewhere
    expected = np.isin(start["item"], data.train[user].indices).astype(float)
    np.testing.assert_allclose(start["score"], expected)
    fig = denoising_figure(frame, 0)
    assert "reverse step 0/" in fig.layout.title.text and sum(len(t.y) for t in fig.data) == 5
    assert "step 0 is the input" in fig.layout.title.text  # step 0 explains itself
    bars = {x: (t.name, y, text) for t in fig.data for x, y, text in zip(t.x, t.y, t.text)}
    assert list(fig.layout.xaxis.categoryarray) == [
        x for x in fig.layout.xaxis.categoryarray if x in bars] and len(bars) == 5  # rank order kept
    assert all(text == f"{y:.2f}" for _, y, text in bars.values())  # a 0 score still shows its value
    # one legend entry per role; the generated top-k items carry 'generated'
    legend = [t.name for t in fig.data]
    assert len(legend) == len(set(legend)) and all(t.showlegend is not False for t in fig.data)
    assert set(legend) == {r.replace("+", " + ") for r in final["role"]}
    last = denoising_figure(frame)
    assert "generated edges" in last.layout.title.text and last.layout.width is None
    with pytest.raises(ValueError, match="step must be in"):
        denoising_figure(frame, T + 1)


# ------------------------------------------------------------------ widget
def test_explorer_redraws_on_value_change(model, data):
    pytest.importorskip("ipywidgets")
    from diffmm.viz.widgets import explore_users

    explorer = explore_users(model, data, users=[1, 2, 3])
    first_case, first_steps = explorer.case_figure, explorer.denoising_figure
    assert len(explorer.case_output.outputs) == 1 and explorer.step.value == model.config.steps
    explorer.user.value = 3
    assert explorer.case_figure is not first_case and "user 3" in explorer.case_figure.layout.title.text
    assert set(explorer.frame["item"]) >= set(model.generated[explorer.modality.value][3].indices)
    explorer.step.value = 0
    assert explorer.denoising_figure is not first_steps
    assert "reverse step 0/" in explorer.denoising_figure.layout.title.text
    other = next(m for m in model.modalities if m != explorer.modality.value)
    explorer.modality.value = other  # the trajectory is recomputed for that modality's generator
    final = explorer.frame[explorer.frame["step"] == model.config.steps].sort_values("rank")
    assert set(final["item"].iloc[:3]) == set(model.generated[other][3].indices)
    explorer.modality.value = "text"
    assert "'text'" in explorer.case_figure.layout.title.text
    assert len(explorer.case_output.outputs) == 1 and len(explorer.denoising_output.outputs) == 1
    shown = explorer.denoising_output.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert shown["layout"]["title"]["text"] == explorer.denoising_figure.layout.title.text


# --------------------------------------------------------------------- CLI
def test_figures_cli(tmp_path, per_user, capsys):
    from diffmm.cli import main

    runs = []
    for name, valid in (("diffmm", [0.1, 0.3]), ("lightgcn", [0.2, 0.1])):
        run = tmp_path / name
        run.mkdir()
        history(valid).to_csv(run / "history.csv", index=False)
        per_user.to_csv(run / "per_user_test.csv", index=False)
        (run / "metrics.json").write_text(json.dumps({"model": name, "best_epoch": 1}))
        runs += ["--run", str(run)]
    out = tmp_path / "figures"
    assert main(["figures", *runs, "--out", str(out), "--no-png", "--bins", "0,5,inf"]) == 0
    assert {p.name for p in out.glob("*.html")} == {"training_curves.html", "sparsity.html"}
    assert str(out / "sparsity.html") in capsys.readouterr().out
    (tmp_path / "lightgcn" / "per_user_test.csv").unlink()
    assert main(["figures", *runs, "--out", str(out)]) == 2
    assert "per_user_test.csv is missing" in capsys.readouterr().err


def test_figures_cli_by_config_field(tmp_path, capsys):
    from diffmm.cli import main
    from diffmm.viz.cli import runs_by_field

    runs = []
    for name, rho, seed, recall in (("a", 0.0, 1, 0.10), ("b", 0.0, 2, 0.12), ("c", 0.5, 1, 0.08)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"model": "diffmm", "model_config": {
            "fusion_ratio": rho, "denoiser_hidden": [16], "first_beta": 1e-4 if name == "a" else None},
                                                     "train": {"seed": seed}}))
        (run / "metrics.json").write_text(json.dumps({"test": {"recall@20": recall, "ndcg@20": recall / 2}}))
        runs.append(run)
    table = runs_by_field(runs, "fusion_ratio")
    assert table["fusion_ratio"].tolist() == [0.0, 0.5] and table["runs"].tolist() == [2, 1]
    assert table["recall@20"].tolist() == pytest.approx([0.11, 0.08])
    assert table["recall@20_std"].iloc[0] == pytest.approx(np.std([0.10, 0.12], ddof=1))
    assert np.isnan(table["recall@20_std"].iloc[1])  # one run: no spread
    assert runs_by_field(runs, "seed")["runs"].tolist() == [2, 1]  # train fields work too
    assert runs_by_field(runs, "first_beta")["runs"].tolist() == [1, 2]  # unset (None) runs are kept
    assert runs_by_field(runs, "denoiser_hidden")["runs"].tolist() == [3]  # list-valued fields group too
    out = tmp_path / "figures"
    args = [a for run in runs for a in ("--run", str(run))]
    assert main(["figures", *args, "--by", "fusion_ratio", "--out", str(out), "--no-png"]) == 0
    assert [p.name for p in out.glob("*.html")] == ["fusion_ratio.html"]
    assert (out / "plotly.min.js").exists()  # the default: opens offline
    cdn = tmp_path / "cdn"
    assert main(["figures", *args, "--by", "fusion_ratio", "--out", str(cdn), "--no-png", "--plotlyjs", "cdn",
                 "--title", "TikTok: rho"]) == 0
    html = (cdn / "fusion_ratio.html").read_text()
    assert "cdn.plot.ly" in html and "TikTok: rho; runs per value: 0.0: 2, 0.5: 1" in html
    assert not (cdn / "plotly.min.js").exists()
    fig = hyperparameter_figure(table, "fusion_ratio")
    assert list(fig.data[0].error_y.array) == pytest.approx([np.std([0.10, 0.12], ddof=1), 0.0])
    assert main(["figures", *args, "--by", "omega", "--out", str(out)]) == 2
    assert "no field 'omega'" in capsys.readouterr().err


# ------------------------------------------------------------------ the gallery's verdicts
def verdict_table(values: dict[str, float], field: str | None = None) -> pd.DataFrame:
    """A point table as the gallery reads it: label, coordinate, mean Recall@20."""
    return pd.DataFrame([{"label": k, "recall@20 mean": v, **({field: float(k)} if field else {})}
                         for k, v in values.items()])


def test_verdict_on_the_comparison_weighs_the_lead_against_noise_and_the_paper():
    from diffmm.experiments.analyses import ANALYSES
    from diffmm.viz.verdicts import _leads

    table2 = ANALYSES["tiktok/table2_comparison"]  # the paper: DiffMM +18% over BM3
    check = lambda values: _leads(table2, verdict_table(values), "recall@20 mean", 0.0025, None, None)[0]  # noqa: E731
    assert check({"DiffMM": 0.120, "LATTICE": 0.100}) == "Yes"  # +20%
    assert check({"DiffMM": 0.105, "LATTICE": 0.100}) == "Partly"  # a clear lead, under half the paper's
    assert check({"DiffMM": 0.101, "LATTICE": 0.100}) == "Not settled"  # within two seed std
    assert check({"DiffMM": 0.090, "LATTICE": 0.100}) == "No"


def test_a_comparison_without_diffmm_weighs_the_paper_numbers_at_the_papers_epoch():
    from diffmm.experiments.analyses import ANALYSES
    from diffmm.viz.verdicts import _leads

    baby = ANALYSES["baby/table2_comparison"]  # features missing: most popular, MF-BPR, LightGCN
    assert [p.model for p in baby.points] == ["popularity", "mf", "lightgcn"] and "without" in baby.title

    def check(mf, lightgcn):  # the paper: MF-BPR 0.0440, LightGCN 0.0698 at the best test epoch
        table = pd.DataFrame([{"label": label, "recall@20 mean": value - 0.01, "optimistic recall@20 mean": value}
                              for label, value in (("Most popular", 0.02), ("MF-BPR", mf), ("LightGCN", lightgcn))])
        return _leads(baby, table, "recall@20 mean", 0.002, None, None)

    assert check(0.0445, 0.0690)[0] == "Yes"  # both within two seed std (the validation-selected one is not used)
    status, text = check(0.0445, 0.0900)
    assert status == "Partly" and "LightGCN 0.0900 against the paper's 0.0698 (+29%)" in text
    assert check(0.0300, 0.0900)[0] == "No"


def test_the_distance_of_tuned_baselines_from_the_papers_is_computed_from_the_store():
    from diffmm.experiments.store import load_records
    from diffmm.viz.verdicts import _baselines_tuned

    records = load_records(Path(__file__).resolve().parents[1] / "figures" / "results")
    # TikTok's MF-BPR: 0.0660 against the paper's 0.0346; Baby's: 0.0698 against 0.0440
    assert _baselines_tuned("tiktok", records, "recall@20").endswith("(MF-BPR here is 1.9x the paper's)")
    assert _baselines_tuned("baby", records, "recall@20").endswith("(MF-BPR here is 1.6x the paper's)")
    assert _baselines_tuned("ml100k", records, "recall@20") == ""  # no paper numbers
    assert _baselines_tuned("tiktok", {}, "recall@20") == ""  # no runs


def test_verdicts_on_ablations_and_trends():
    from diffmm.experiments.analyses import ANALYSES
    from diffmm.viz.verdicts import _each_helps, _falls, _worse_at_both_ends

    ablation = ANALYSES["tiktok/table3_ablation"]
    run = lambda check, analysis, table: check(analysis, table, "recall@20 mean", 0.002, None, None)[0]  # noqa: E731
    full = {"DiffMM": 0.100}
    assert run(_each_helps, ablation, verdict_table({**full, "w/o CL": 0.09, "w/o DM": 0.09, "w/o MSI": 0.09})) == "Yes"
    mixed = verdict_table({**full, "w/o CL": 0.09, "w/o DM": 0.10, "w/o MSI": 0.101})
    assert run(_each_helps, ablation, mixed) == "Partly"
    assert run(_each_helps, ablation, verdict_table({**full, "w/o CL": 0.10, "w/o DM": 0.10, "w/o MSI": 0.11})) == "No"
    within = verdict_table({**full, "w/o CL": 0.099, "w/o DM": 0.1005, "w/o MSI": 0.0995})
    assert run(_each_helps, dataclasses.replace(ablation, paper=()), within) == "Not settled"
    # the paper's TikTok drops (-0.0103 / -0.0054 / -0.0043) are larger than this noise: not seeing them is a No
    status, text = _each_helps(ablation, within, "recall@20 mean", 0.002, None, None)
    assert status == "No" and "the paper's drops" in text and "w/o CL: -0.0103" in text
    rho, omega = ANALYSES["tiktok/fig4_fusion_ratio"], ANALYSES["tiktok/fig3b_omega"]
    falling = verdict_table({"0": 0.10, "0.2": 0.099, "0.6": 0.095, "1": 0.09}, "fusion_ratio")
    assert run(_falls, rho, falling) == "Yes"
    assert run(_falls, rho, verdict_table({"0": 0.100, "0.6": 0.101, "1": 0.100}, "fusion_ratio")) == "Not settled"
    assert run(_falls, rho, verdict_table({"0": 0.09, "1": 0.10}, "fusion_ratio")) == "No"
    both_ends = _worse_at_both_ends
    assert run(both_ends, omega, verdict_table({"0.1": 0.095, "0.5": 0.10, "1": 0.09}, "omega")) == "Yes"
    # omega = 0.1 far below omega = 1: the largest is not the worst, and the smallest is worse than the best
    assert run(both_ends, omega, verdict_table({"0.1": 0.08, "0.5": 0.10, "1": 0.099}, "omega")) == "Partly"
    # omega = 1 lowest, but level with omega = 0.1 within the noise: 'worst' is not settled, 'worse at 0.1' holds
    tied = verdict_table({"0.1": 0.0901, "0.25": 0.10, "0.5": 0.10, "0.75": 0.10, "1": 0.0900}, "omega")
    status, text = both_ends(omega, tied, "recall@20 mean", 0.002, None, None)
    assert status == "Partly" and "omega = 0.1: Yes; the worst at 1: Not settled" in text
    # best at the smallest value and the largest above the others: both halves contradicted or unsupported
    assert run(both_ends, omega, verdict_table({"0.1": 0.10, "0.5": 0.099, "1": 0.0995}, "omega")) == "Not settled"
    assert run(both_ends, omega, verdict_table({"0.1": 0.10, "0.5": 0.09, "1": 0.0995}, "omega")) == "No"
    # an exact tie reads +0.0000, never -0.0000
    _, text = _each_helps(ablation, verdict_table({**full, "w/o CL": 0.09, "w/o DM": 0.10, "w/o MSI": 0.11}),
                          "recall@20 mean", 0.002, None, None)
    assert "w/o DM: +0.0000" in text and "-0.0000" not in text and "clearly higher: w/o MSI" in text


@pytest.mark.parametrize("margins, expected", [
    ((0.02, 0.01, 0.005), "Yes"),  # leads everywhere, most for the sparsest
    ((0.005, 0.01, 0.02), "Partly"),  # leads everywhere, least for the sparsest
    ((-0.02, 0.001, 0.0005), "No"),  # clearly behind in one group, level elsewhere
    ((0.001, -0.001, 0.0), "Not settled"),
])
def test_the_activity_verdict_checks_every_group_and_the_sparsest(monkeypatch, margins, expected):
    from diffmm.experiments.analyses import ANALYSES
    from diffmm.viz import verdicts

    groups = pd.DataFrame([{"group": g, "label": label, "recall@20 mean": 0.1 + (d if label == "DiffMM" else 0)}
                           for g, d in zip(("0-1", "2", "3+"), margins) for label in ("DiffMM", "LightGCN")])
    monkeypatch.setattr(verdicts, "group_table", lambda *args: groups)
    status, _ = verdicts._every_group(ANALYSES["tiktok/fig2_sparsity"], None, "recall@20 mean", 0.004, None, None)
    assert status == expected


@pytest.mark.parametrize("ours, theirs, expected", [
    ({"0.01": 0.100, "1": 0.090}, {"0.01": 0.300, "1": 0.320}, "Yes"),  # each best clearly ahead on its own data
    ({"0.01": 0.100, "1": 0.099}, {"0.01": 0.300, "1": 0.320}, "Partly"),  # only on the other dataset
    ({"0.01": 0.100, "1": 0.099}, {"0.01": 0.319, "1": 0.320}, "Not settled"),
    ({"0.01": 0.100, "1": 0.090}, {"0.01": 0.320, "1": 0.300}, "No"),  # one point clearly best on both
    ({"0.01": 0.100, "1": 0.099}, {"0.01": 0.320, "1": 0.319}, "Not settled"),  # the same best, within the noise
])
def test_a_dataset_specific_best_is_weighed_on_both_datasets(monkeypatch, ours, theirs, expected):
    from diffmm.experiments.analyses import ANALYSES
    from diffmm.viz import verdicts

    other = pd.DataFrame([{"label": k, "model": "diffmm", "seeds": 3, "recall@20 mean": v, "recall@20 std": 0.001}
                          for k, v in theirs.items()])
    monkeypatch.setattr(verdicts, "run_frame", lambda analysis, records: None)
    monkeypatch.setattr(verdicts, "point_table", lambda analysis, runs: other)
    status, text, own = verdicts._best_differs(ANALYSES["tiktok/fig3a_lambda0"], verdict_table(ours),
                                               "recall@20 mean", 0.002, None, None)
    assert status == expected and "ml100k" in text and own == ""  # no comparison with the paper's numbers
    # the other dataset without all its points: nothing is claimed yet
    other.loc[1, "seeds"] = 0
    assert verdicts._best_differs(ANALYSES["tiktok/fig3a_lambda0"], verdict_table(ours), "recall@20 mean", 0.002,
                                  None, None)[:2] == ("Not settled", "ml100k has runs for 1 of 2 points so far")
    # a toy variant (synthetic data) is compared with no real dataset
    from diffmm.experiments.analyses import quick_analyses
    toy = quick_analyses()["synthetic-small/fig3a_lambda0"]
    assert verdicts._best_differs(toy, verdict_table(ours), "recall@20 mean", 0.002, None, None)[:2] == ("", "")
    # Table 4 on TikTok also checks the paper's best cell: one half holding and one not is 'Partly'
    assert verdicts._all_of(("Yes", "a"), ("Not settled", "b")) == ("Partly", "a; b")
    assert verdicts._all_of(("No", "a"), ("", "")) == ("No", "a")


def test_a_table_without_paper_numbers_draws_no_paper_panels():
    from diffmm.experiments.analyses import ANALYSES
    from diffmm.experiments.tables import run_frame
    from diffmm.viz.reproduction import interactive_figure, static_figure

    for name, titles in (("tiktok", ["Recall@20: this toolkit", "Recall@20: paper", "NDCG@20: this toolkit",
                                     "NDCG@20: paper"]),
                         ("ml100k", ["Recall@20: this toolkit", "NDCG@20: this toolkit"])):
        analysis = ANALYSES[f"{name}/table4_tau_lambda1"]
        runs = run_frame(analysis, {})
        fig = static_figure(analysis, runs, {})
        assert [ax.get_title() for ax in fig.axes if ax.get_title()] == titles
        assert [a.text for a in interactive_figure(analysis, runs, {}).layout.annotations] == titles
        # and the bars of a comparison without paper numbers have no 'paper' legend entry
        analysis = ANALYSES[f"{name}/table2_comparison"]
        runs = run_frame(analysis, {})
        legend = [t.get_text() for t in static_figure(analysis, runs, {}).legends[0].get_texts()]
        traces = {t.name for t in interactive_figure(analysis, runs, {}).data}
        assert ("paper (test-selected)" in legend) == ("paper (test-selected)" in traces) == (name == "tiktok")


def test_crowded_tick_labels_are_left_blank():
    from diffmm.viz.reproduction import _spaced_labels

    assert _spaced_labels(np.array([0.0, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9])) == ["0", "", "0.1", "0.3", "0.5", "0.7", "0.9"]
    assert _spaced_labels(np.array([1e-4, 1e-3, 1e-2]), log=True) == ["0.0001", "0.001", "0.01"]
    assert _spaced_labels(np.array([1.0])) == ["1"]


def test_a_search_keeps_the_setting_without_it_on_a_tie_and_its_finding_says_so():
    from pathlib import Path

    from diffmm.experiments import analyses, tables
    from diffmm.experiments.store import load_records
    from diffmm.viz.gallery import finding

    analysis = analyses.ANALYSES["tiktok/search_lattice_lr"]  # validation Recall@20 0.0980 at lr 1e-3 and 5e-3
    records = load_records(Path(__file__).resolve().parents[1] / "figures" / "results", "tiktok")
    text = finding(analysis, tables.run_frame(analysis, records), records)
    assert "highest at lr = 0.001 (0.0980; tied with 0.005, the setting without the search is kept)" in text
    analysis = analyses.ANALYSES["tiktok/search_lightgcn-m_l2"]  # 0.1000 at 1e-6 and 1e-5; the default 1e-4 lower
    text = finding(analysis, tables.run_frame(analysis, records), records)
    assert "highest at l2 = 1e-06 (0.1000; tied with 1e-05, the first in the grid is kept)" in text
