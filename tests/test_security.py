"""Files a user is handed are data: a crafted dataset pickle or checkpoint runs nothing and is refused by name."""

import os
import pickle

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


def test_honest_pickles_of_every_sparse_layout_load(small, tmp_path):
    write_diffmm_dir(small, tmp_path)
    for layout in ("csr", "csc", "coo"):
        matrix = small.train.asformat(layout)
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
