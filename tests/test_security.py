"""Files a user is handed are data: a crafted dataset pickle or checkpoint runs nothing and is refused by name."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from diffmm.cli import main
from diffmm.data import read_diffmm_dir, write_diffmm_dir
from diffmm.data.dataset import DataError
from diffmm.data.synthetic import make_synthetic
from diffmm.train import CheckpointError, load_checkpoint


class Payload:
    """Unpickling this calls os.system: what a crafted file does to plain ``pickle.load``."""

    def __init__(self, marker, inner=None):
        self.marker, self.inner = marker, inner

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=120, n_items=60, seed=3)


def test_a_crafted_dataset_pickle_runs_nothing(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "trnMat.pkl", "wb") as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(DataError, match=r"trnMat\.pkl.*posix\.system.*refused"):
        read_diffmm_dir(tmp_path)
    assert not marker.exists()
    # through the CLI: one line naming the file, exit 2
    assert main(["stats", "--data", str(tmp_path)]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("layout, damage, message", [
    ("coo", lambda m: setattr(m, "data", m.data[:-1]), "field 'matrix': .*row, col and data hold"),
    ("csr", lambda m: setattr(m, "indptr", m.indptr[::-1].copy()), "field 'matrix': "),
    ("coo", lambda m: setattr(m, "col", m.col * 1000), "field 'col \\(item\\)'"),  # out of range: named by axis
    ("csr", lambda m: setattr(m, "indices", m.indices * 1000), "field 'matrix': .*indices must be <"),
])
def test_a_malformed_sparse_pickle_is_refused_naming_the_file(small, tmp_path, layout, damage, message):
    write_diffmm_dir(small, tmp_path)
    matrix = small.train.asformat(layout, copy=True)  # the module's fixture stays as it is
    damage(matrix)
    (tmp_path / "trnMat.pkl").write_bytes(pickle.dumps(matrix))
    with pytest.raises(DataError, match=f"trnMat.pkl: {message}"):
        read_diffmm_dir(tmp_path)


def test_text_ids_that_are_not_finite_integers_are_refused():
    from diffmm.data.parsing import int_ids

    with pytest.raises(DataError, match="u.inter: field 'user_id': expected integer ids.*'inf'"):
        int_ids(np.array(["1", "inf"], dtype=object), "u.inter", "user_id")


def test_honest_pickles_of_every_sparse_layout_load(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    for layout in ("csr", "csc", "coo"):
        matrix = small.train.asformat(layout, copy=True)  # the module's fixture stays as it is
        with open(tmp_path / "trnMat.pkl", "wb") as f:
            pickle.dump(matrix, f, protocol=2 if layout == "coo" else pickle.HIGHEST_PROTOCOL)
        assert (read_diffmm_dir(tmp_path).train != small.train).nnz == 0


def test_a_crafted_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "extra": Payload(marker)}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match=r"best\.pt.*refused, since loading them could run code"):
        load_checkpoint(tmp_path / "best.pt")
    assert not marker.exists()


def test_a_truncated_checkpoint_is_named(tmp_path):
    torch.save({"model": {"w": torch.ones(1000)}}, tmp_path / "last.pt")
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt: not a readable diffmm checkpoint"):
        load_checkpoint(tmp_path / "last.pt")


def test_diffmm_checkpoints_hold_data_only(small, tmp_path):
    """A DiffMM run's checkpoints (generated graphs included) load with weights_only=True and resume."""
    from diffmm.experiments import build_run_config, run

    config = build_run_config("diffmm", overrides={"epochs": 1, "progress": False, "batch_size": 256})
    run(small, config, tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert "model" in state
    marker = tmp_path / "pwned"
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    state["history"] = Payload(marker)
    torch.save(state, tmp_path / "run" / "last.pt")
    resumed = build_run_config("diffmm", overrides={"epochs": 2, "progress": False, "batch_size": 256})
    with pytest.raises(CheckpointError, match="last.pt"):
        run(small, resumed, tmp_path / "run")
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", "synthetic"]) == 2
    assert not marker.exists()


# ------------------------------------------------------------------------ one writer, no stale results
def _train(out, *extra):
    return main(["train", "--model", "mf", "--data", "synthetic-small", "--epochs", "2", "--progress", "false",
                 "--out", str(out), *extra])


@pytest.mark.parametrize("text, message", [
    (None, "no finished run there"),
    ("{not json", "not readable JSON"),
    ("[" * 100_000 + "]" * 100_000, "not readable JSON"),  # deeper than the parser's recursion limit
    ("[1, 2]", "expected a JSON object, found list"),
])
def test_a_run_file_that_is_not_a_json_object_is_named(tmp_path, text, message):
    from diffmm.experiments.runs import read_json

    path = tmp_path / "metrics.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=f"metrics.json: {message}"):
        read_json(path)


def test_a_second_writer_is_refused_and_the_first_run_is_intact(tmp_path, capsys):
    from diffmm.utils import exclusive_directory

    assert _train(tmp_path / "run", "--seed", "1") == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.name != ".lock"}
    with exclusive_directory(tmp_path / "run"):  # as a live `train` process holds it
        capsys.readouterr()
        assert _train(tmp_path / "run", "--seed", "2", "--fresh") == 2
        assert "being written by another process" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.name != ".lock"} == before
    assert _train(tmp_path / "run", "--seed", "2", "--fresh") == 0  # the lock died with its holder


def test_a_killed_fresh_run_leaves_no_stale_results(tmp_path):
    from diffmm.experiments import build_run_config, run
    from diffmm.train import Callback

    data = make_synthetic(n_users=120, n_items=60, seed=3)
    run(data, build_run_config("mf", overrides={"epochs": 2, "progress": False, "seed": 1}), tmp_path)

    class Kill(Callback):
        def on_epoch_end(self, trainer, record):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(data, build_run_config("mf", overrides={"epochs": 2, "progress": False, "seed": 2}), tmp_path,
            resume=False, callbacks=[Kill()])
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "per_user_test.csv").exists()
    assert json.loads((tmp_path / "config.json").read_text())["train"]["seed"] == 2


def test_every_file_of_a_run_carries_its_id(tmp_path):
    import pandas as pd

    assert _train(tmp_path) == 0
    run_id = json.loads((tmp_path / "metrics.json").read_text())["run_id"]
    assert json.loads((tmp_path / "config.json").read_text())["run_id"] == run_id
    for name in ("history.csv", "per_user_test.csv", "topk_test.csv"):
        assert set(pd.read_csv(tmp_path / name)["run_id"]) == {run_id}
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / name)["run_id"] == run_id
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text(json.dumps({**metrics, "run_id": "0" * 12}))
    from diffmm.experiments import summarize_runs

    with pytest.raises(ValueError, match="come from different runs"):
        summarize_runs([tmp_path])


def test_temporaries_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / ".metrics.json.abc123.tmp").write_text("half")
    assert _train(tmp_path) == 0
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- fail fast, name it
@pytest.mark.parametrize("args, message", [
    (["--lr", "inf"], "lr must be a finite number"),
    (["--ks", "0,20"], "ks must be distinct cut-offs >= 1"),
    (["--ks", "-5,20"], "ks must be distinct cut-offs >= 1"),
    (["--threads", "-1"], "threads must be >= 0"),
    (["--device", "gpu7"], "device must be 'auto', 'cpu', 'cuda'"),
    (["--model", "diffmm", "--rebuild_k", "1000"], "rebuild_k = 1000 exceeds the 250 items"),
    (["--data", "/etc/hostname"], "is a file: a dataset is a directory"),
    (["--data", "nowhere-at-all"], "neither a registered dataset"),
])
def test_bad_settings_fail_before_any_work_in_one_line(tmp_path, capsys, args, message):
    base = {"--model": "mf", "--data": "synthetic-small"}
    extra = dict(zip(args[::2], args[1::2]))
    line = [x for k, v in {**base, **extra}.items() for x in (k, v)]
    assert main(["train", *line, "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_diverging_run_stops_naming_the_term_and_keeps_the_last_good_state(tmp_path, capsys):
    from diffmm.experiments import build_run_config, run
    from diffmm.train import Callback, TrainingDivergedError

    data = make_synthetic(n_users=120, n_items=60, seed=3)

    class Explode(Callback):  # after a good first epoch, the weights become inf
        def on_epoch_end(self, trainer, record):
            if record["epoch"] == 1:
                trainer.save_state(trainer.out_dir / "last.pt")
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("inf"))

    config = build_run_config("mf", overrides={"epochs": 3, "progress": False})
    with pytest.raises(TrainingDivergedError, match=r"epoch 2: loss term\(s\) train_loss = nan.*last good state is "
                                                    r"kept in last.pt \(epoch 1\)"):
        run(data, config, tmp_path, callbacks=[Explode()])
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists()


def test_a_split_without_interactions_is_refused_before_training(tmp_path, capsys):
    data = make_synthetic(n_users=120, n_items=60, seed=3)
    data.valid = data.valid[:0].copy()
    data.valid.resize(data.train.shape)
    from diffmm.experiments import build_run_config, run

    with pytest.raises(ValueError, match="has no valid interactions"):
        run(data, build_run_config("mf", overrides={"epochs": 1, "progress": False}), tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_a_user_holding_every_item_is_left_out_of_bpr_only(tmp_path):
    import numpy as np
    import scipy.sparse as sp

    from diffmm.data.sampling import NegativeSampler

    train = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    train = train.tolil()
    train[0, :] = 1
    train = sp.csr_matrix(train)
    with pytest.warns(UserWarning, match="interacted with every item"):
        sampler = NegativeSampler(train)
    assert 0 not in set(sampler.users) and len(sampler.users) == train.nnz - 20
    users, positives, negatives = sampler.epoch_triples(np.random.default_rng(0))
    assert not sampler.is_positive(users, negatives).any()
