import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from diffmm.config import LightGCNConfig, TrainConfig
from diffmm.experiments.runs import RunConfig
from diffmm.data import write_diffmm_dir
from diffmm.data.synthetic import make_synthetic
from diffmm.experiments import build_run_config, run
from diffmm.models import build_model
from diffmm.train import Callback, Trainer
from diffmm.utils import seed_everything


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=400, n_items=200, seed=0)


def fit(data, model="lightgcn", **train):
    cfg = TrainConfig(**{"epochs": 2, "progress": False, "batch_size": 256, "seed": 7, "device": "cpu", **train})
    seed_everything(cfg.seed)  # before the model's random initialisation
    return Trainer(build_model(model, data), data, cfg).fit()


def test_seeded_two_epoch_run_is_reproducible(data):
    a, b = fit(data), fit(data)
    cols = ["train_loss", "valid_recall@20", "test_ndcg@20"]
    assert np.array_equal(a.history[cols].to_numpy(), b.history[cols].to_numpy())
    c = fit(data, seed=8)
    assert not np.array_equal(a.history["train_loss"].to_numpy(), c.history["train_loss"].to_numpy())


def test_learned_models_beat_popularity_on_planted_structure(data):
    pop = fit(data, "popularity")
    for model in ("mf", "lightgcn"):
        res = fit(data, model, epochs=15, lr=5e-3)
        assert res.test["recall@20"] > pop.test["recall@20"], model


def test_reported_test_is_from_best_validation_epoch(data):
    res = fit(data, epochs=4)
    hist = res.history.set_index("epoch")
    best = int(hist["valid_recall@20"].idxmax())
    assert res.best_epoch == best
    assert res.test["recall@20"] == hist.loc[best, "test_recall@20"]
    assert res.optimistic_test["recall@20"] == hist["test_recall@20"].max()


def test_early_stopping_and_callbacks(data):
    class StopAtTwo(Callback):
        def on_epoch_end(self, trainer, record):
            return record["epoch"] >= 2

    cfg = TrainConfig(epochs=50, progress=False, seed=1, device="cpu")
    res = Trainer(build_model("mf", data), data, cfg, callbacks=[StopAtTwo()]).fit()
    assert res.epochs_run == 2
    res = fit(data, "mf", epochs=200, patience=2, lr=0.05)
    assert res.epochs_run < 200
    assert res.epochs_run - res.best_epoch == 2


def test_a_run_resumed_after_it_stopped_early_trains_no_further_epoch(data, tmp_path):
    cfg = TrainConfig(epochs=200, patience=2, lr=0.05, progress=False, batch_size=256, seed=7, device="cpu")
    seed_everything(7)
    first = Trainer(build_model("mf", data), data, cfg, out_dir=tmp_path).fit()
    assert first.epochs_run < 200
    again = Trainer(build_model("mf", data), data, cfg, out_dir=tmp_path, resume=True).fit()
    assert again.epochs_run == first.epochs_run and again.best_epoch == first.best_epoch
    assert again.test == first.test


def test_resume_continues_exactly(data, tmp_path):
    cfg = TrainConfig(epochs=4, progress=False, batch_size=256, seed=3, device="cpu")
    seed_everything(3)
    full = Trainer(build_model("lightgcn", data), data, cfg).fit()
    seed_everything(3)
    Trainer(build_model("lightgcn", data), data, cfg.replace(epochs=2), out_dir=tmp_path).fit()
    resumed = Trainer(build_model("lightgcn", data), data, cfg, out_dir=tmp_path, resume=True).fit()
    assert resumed.epochs_run == 4
    np.testing.assert_allclose(resumed.history["train_loss"], full.history["train_loss"], rtol=1e-5)
    # wall and CPU time add up over the two starts
    assert resumed.history["cpu_s"].is_monotonic_increasing and resumed.cpu_s >= resumed.history["cpu_s"].iloc[-1] > 0
    assert resumed.history["elapsed_s"].is_monotonic_increasing
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_refuses_other_data_of_the_same_size_and_reads_older_checkpoints(data, tmp_path):
    import dataclasses

    cfg = TrainConfig(epochs=1, progress=False, batch_size=256, seed=3, device="cpu")
    Trainer(build_model("mf", data), data, cfg, out_dir=tmp_path).fit()
    swapped = dataclasses.replace(data, valid=data.test, test=data.valid)  # re-split: same sizes, same train
    with pytest.raises(ValueError, match="other settings .*data.fingerprint"):
        Trainer(build_model("mf", swapped), swapped, cfg.replace(epochs=2), out_dir=tmp_path, resume=True)
    # a checkpoint written before fingerprints: its sizes are compared, and it resumes
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    del state["signature"]["data"]["fingerprint"]
    torch.save(state, tmp_path / "last.pt")
    assert Trainer(build_model("mf", data), data, cfg.replace(epochs=2), out_dir=tmp_path,
                   resume=True).fit().epochs_run == 2


def test_cpu_checkpoints_leave_gpus_alone(data, tmp_path, monkeypatch):
    # on a GPU host a CPU run must not query the GPUs' generators (each query starts a CUDA context)
    import torch

    def no_gpu(*args, **kwargs):
        raise AssertionError("a CPU run queried a GPU's random state")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, no_gpu)
    cfg = TrainConfig(epochs=2, progress=False, batch_size=256, seed=3, device="cpu")
    Trainer(build_model("mf", data), data, cfg.replace(epochs=1), out_dir=tmp_path).fit()
    assert Trainer(build_model("mf", data), data, cfg, out_dir=tmp_path, resume=True).fit().epochs_run == 2
    assert torch.load(tmp_path / "last.pt", weights_only=False)["rng"]["cuda"] is None


def test_resume_refuses_a_run_directory_of_other_settings(data, tmp_path):
    def config(**overrides):
        return build_run_config("mf", overrides={"epochs": "1", "seed": "5", "progress": "false", "dim": "16",
                                                 **overrides})

    run(data, config(), tmp_path)
    saved = (tmp_path / "config.json").read_text()
    for overrides, named in [({"seed": "6"}, "train.seed: 5 -> 6"), ({"dim": "8"}, "model_config.dim: 16 -> 8"),
                             ({"l2": "0.5"}, "model_config.l2")]:
        with pytest.raises(ValueError, match=f"other settings.*{named}.*--fresh"):
            run(data, config(**overrides), tmp_path)
        assert (tmp_path / "config.json").read_text() == saved  # the run directory is untouched
    other = make_synthetic(n_users=300, n_items=200, seed=0)
    with pytest.raises(ValueError, match="data.users: 400 -> 300"):
        run(other, config(), tmp_path)
    result, _ = run(data, config(epochs="2"), tmp_path)  # a longer run of the same settings resumes
    assert result.epochs_run == 2 and len(result.history) == 2

    class Interrupt(Callback):
        def on_epoch_end(self, trainer, record):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # made longer again, and killed: the 2-epoch results are not its own
        run(data, config(epochs="4"), tmp_path, callbacks=[Interrupt()])
    assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 4
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "history.csv").exists()
    result, _ = run(data, config(seed="6"), tmp_path, resume=False)  # --fresh starts over
    assert result.epochs_run == 1


def test_cli_evaluate_a_run_directory_and_refuse_other_data(tmp_path, capsys):
    from diffmm.cli import main

    out = tmp_path / "run"
    train = ["train", "--model", "mf", "--data", "synthetic", "--epochs", "1", "--progress", "false", "--out", str(out)]
    assert main(train) == 0
    assert main(["evaluate", "--run", str(out), "--data", "synthetic"]) == 0
    table = capsys.readouterr().out
    assert "recall@20" in table and "test" in table
    saved = json.loads((out / "metrics.json").read_text())["test"]["recall@20"]
    assert f"{saved:.4f}" in table  # the best epoch's weights, scored again
    assert main(["evaluate", "--run", str(out), "--data", "synthetic", "--test-mask", "train"]) == 0
    assert "test, training items masked" in capsys.readouterr().out  # the authors' protocol beside ours
    other = tmp_path / "other"
    write_diffmm_dir(make_synthetic(n_users=300, n_items=200, seed=0), other)
    assert main(["evaluate", "--run", str(out), "--data", str(other)]) == 2
    assert re.search(r"was trained on other data \(.*data\.items", capsys.readouterr().err)
    # cut-offs without 20, selected on Recall@10: the summary line reports what the run has
    at10 = ["train", "--model", "mf", "--data", "synthetic", "--epochs", "1", "--progress", "false", "--ks", "5,10",
            "--metric", "recall@10", "--out", str(tmp_path / "at10")]
    assert main(at10) == 0
    assert "selected on valid recall@10) | test recall@10" in capsys.readouterr().out


def test_load_run_gives_the_trained_model_back(data, tmp_path):
    from diffmm.experiments import load_run

    config = build_run_config("diffmm", overrides={"epochs": "2", "progress": "false", "dim": "16",
                                                   "denoiser_hidden": "32", "rebuild_k": "3"})
    _, trained = run(data, config, tmp_path)
    model, loaded = load_run(tmp_path, data)
    assert loaded == config and not model.training
    assert model.generated.keys() == trained.generated.keys()
    assert all((model.generated[m] != trained.generated[m]).nnz == 0 for m in model.generated)
    users = torch.arange(data.n_users)
    assert torch.equal(model.scorer()(users), trained.eval().scorer()(users))


def test_run_directory_contents(data, tmp_path):
    config = build_run_config("mf", overrides={"epochs": "2", "seed": "5", "progress": "false", "dim": "16"})
    run(data, config, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2)
    for split in ("valid", "test"):
        assert {"recall@20", "ndcg@20", "precision@20"} <= set(metrics[split])
    for name in ("config.json", "history.csv", "best.pt", "last.pt", "topk_test.csv", "per_user_test.csv"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_config"]["dim"] == 16 and saved["train"]["seed"] == 5


def test_unknown_setting_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown setting 'epoch'"):
        build_run_config("lightgcn", overrides={"epoch": "3"})
    for key, text, expected in [("epochs", "abc", "an integer"), ("ks", "10,x", "comma-separated numbers"),
                                ("progress", "maybe", "true or false"), ("lr", "fast", "a number")]:
        with pytest.raises(ValueError, match=f"--{key}: expected {expected}.*got '{text}'"):
            build_run_config("lightgcn", overrides={key: text})
    assert build_run_config("diffmm", overrides={"first_beta": "none"}).model_config.first_beta is None
    with pytest.raises(ValueError, match="--first_beta: expected a number or none"):
        build_run_config("diffmm", overrides={"first_beta": "abc"})
    with pytest.raises(ValueError, match="metric"):
        TrainConfig(metric="auc@20")
    bad = tmp_path / "config.json"
    bad.write_text('{"model": ')
    with pytest.raises(ValueError, match=r"config.json: Expecting value"):
        RunConfig.load(bad)
    with pytest.raises(ValueError, match="layers"):
        LightGCNConfig(layers=-1)


def test_a_config_file_is_read_as_the_declared_types(tmp_path):
    """YAML reads 1e-4 as a string and a quoted "false" stays one: each value is read as its field's type."""
    pytest.importorskip("yaml")
    path = tmp_path / "config.yaml"
    path.write_text("model: diffmm\nmodel_config: {l2: 1e-4, cl_weight: 1e-2, modality_order: 'image, audio'}\n"
                    "train: {progress: 'false', ks: '10,20', epochs: 50.0}\n")
    config = RunConfig.load(path)
    assert config.model_config.l2 == 1e-4 and config.model_config.cl_weight == 0.01
    assert config.model_config.modality_order == ("image", "audio")
    assert config.train.progress is False and config.train.ks == (10, 20) and config.train.epochs == 50
    for text, message in [("train: {progress: 'maybe'}", "TrainConfig.progress: expected true or false, got 'maybe'"),
                          ("train: {ks: [20, 1.5]}", "TrainConfig.ks: expected comma-separated numbers"),
                          ("train: {ks: [20, 20]}", "distinct cut-offs"),
                          ("model_config: {l2: true}", "DiffMMConfig.l2: expected a number, got True")]:
        path.write_text(f"model: diffmm\n{text}\n")
        with pytest.raises(ValueError, match=f"config.yaml: .*{re.escape(message)}"):
            RunConfig.load(path)
    with pytest.raises(ValueError, match="give a preset .* or a base config, not both"):
        build_run_config("diffmm", "baby", base=build_run_config("diffmm"))
    # and on the command line: names for a tuple of names
    assert build_run_config("diffmm", overrides={"modality_order": "image,text"}).model_config.modality_order == (
        "image", "text")


def test_summarize_seeds_mean_and_std(data, tmp_path, capsys):
    from diffmm.cli import main
    from diffmm.experiments import summarize_runs

    dirs = []
    for seed in (1, 2, 3):
        config = build_run_config("mf", overrides={"epochs": "1", "seed": str(seed), "progress": "false", "dim": "8"})
        run(data, config, tmp_path / f"s{seed}")
        dirs.append(tmp_path / f"s{seed}")
    table = summarize_runs(dirs)
    assert list(table.index) == ["s1", "s2", "s3", "mean", "std"]
    assert list(table["seed"][:3]) == [1, 2, 3]
    recalls = np.array([json.loads((d / "metrics.json").read_text())["test"]["recall@20"] for d in dirs])
    assert table.loc["mean", "test recall@20"] == pytest.approx(recalls.mean())
    assert table.loc["std", "test recall@20"] == pytest.approx(recalls.std(ddof=1))
    assert main(["summarize", *map(str, dirs)]) == 0
    assert "mean" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        summarize_runs([tmp_path / "missing"])


def test_summarize_averages_late_epochs(data, tmp_path, capsys):
    from diffmm.cli import main
    from diffmm.experiments import summarize_runs

    config = build_run_config("mf", overrides={"epochs": "4", "seed": "1", "progress": "false", "dim": "8"})
    run(data, config, tmp_path / "r")
    history = pd.read_csv(tmp_path / "r" / "history.csv")
    table = summarize_runs([tmp_path / "r"], average_from=3)
    expected = history.loc[history["epoch"] >= 3, "test_ndcg@20"].mean()
    assert table.loc["r", "mean test ndcg@20 (epochs >= 3)"] == pytest.approx(expected)
    assert main(["summarize", str(tmp_path / "r"), "--average-from", "2"]) == 0
    assert "epochs >= 2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="history.csv.*epochs >= 9"):
        summarize_runs([tmp_path / "r"], average_from=9)


def test_a_finished_run_reads_its_best_epoch_from_best_pt_and_names_a_bad_one(data, tmp_path):
    import torch

    from diffmm.train import CheckpointError

    config = build_run_config("mf", overrides={"epochs": "2", "seed": "5", "progress": "false", "dim": "16"})
    first, _ = run(data, config, tmp_path)
    again, _ = run(data, config, tmp_path)  # trains nothing; the table is the one stored at the best epoch
    assert again.epochs_run == 2 and again.test == first.test
    pd.testing.assert_frame_equal(again.test_result.per_user, first.test_result.per_user)
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    state["test_result"] = {"metrics": {}}
    torch.save(state, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="best.pt: entry 'test_result'"):
        run(data, config, tmp_path)


def test_a_run_stopped_between_last_pt_and_best_pt_completes_best_pt_on_resume(data, tmp_path):
    from diffmm.checkpoints import CheckpointError

    cfg = TrainConfig(epochs=3, progress=False, batch_size=256, seed=3, device="cpu")
    seed_everything(3)
    full = Trainer(build_model("lightgcn", data), data, cfg).fit()
    seed_everything(3)
    first = Trainer(build_model("lightgcn", data), data, cfg.replace(epochs=1), out_dir=tmp_path).fit()
    (tmp_path / "best.pt").unlink()  # stopped after last.pt of epoch 1 (the best so far), before best.pt
    again = Trainer(build_model("lightgcn", data), data, cfg.replace(epochs=1), out_dir=tmp_path, resume=True).fit()
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1
    assert again.epochs_run == 1 and again.test == first.test
    pd.testing.assert_frame_equal(again.test_result.per_user, first.test_result.per_user)
    # the test evaluation redone on resume draws no random numbers: the run continues exactly
    (tmp_path / "best.pt").unlink()
    resumed = Trainer(build_model("lightgcn", data), data, cfg, out_dir=tmp_path, resume=True).fit()
    np.testing.assert_allclose(resumed.history["train_loss"], full.history["train_loss"], rtol=1e-5)
    assert resumed.best_epoch == full.best_epoch and resumed.test == pytest.approx(full.test)
    # a best.pt of an epoch the run no longer has (stopped between the two files by an earlier version,
    # the resumed epochs taking another course) is refused, not reported under the kept epoch's metrics
    stopped = cfg.replace(epochs=200, patience=2, lr=0.05)
    seed_everything(7)
    early = Trainer(build_model("mf", data), data, stopped, out_dir=tmp_path / "early").fit()
    assert early.best_epoch < early.epochs_run
    state = torch.load(tmp_path / "early" / "best.pt", weights_only=True)
    state["epoch"] = early.best_epoch + 1
    torch.save(state, tmp_path / "early" / "best.pt")
    with pytest.raises(CheckpointError, match=f"best.pt: holds epoch {early.best_epoch + 1}.*--fresh"):
        Trainer(build_model("mf", data), data, stopped, out_dir=tmp_path / "early", resume=True).fit()
