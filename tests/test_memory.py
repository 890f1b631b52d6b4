"""Sparse stays sparse: no dense users x items (or items x items) matrix is ever allocated by an epoch + evaluation.

Two checks:
- default (fast): every strided torch tensor created during one epoch and one evaluation is
  recorded by a ``TorchDispatchMode``, and so is every dense array scipy hands out; none may
  hold n_users * n_items elements. Only one batch of rows is ever dense.
- slow (~5 min on 2 shared cores: one epoch is O(users x items) denoiser work, in batches):
  DiffMM on 20000 users x 20000 items (dense float32: 1.6 GB), LATTICE (kNN item graphs built in row
  chunks) and BM3 on Amazon-Sports' 18,357 items, each in a fresh subprocess; the peak RSS increase
  over building the model, an epoch and an evaluation must stay under a quarter of the dense size. The
  BPR batch is the authors' 1024 (DiffMM's InfoNCE similarities are computed in cache-sized row chunks,
  never (batch, n_users)). The multi-modal baselines' fast check is in test_multimodal.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from diffmm.config import DiffMMConfig, TrainConfig
from diffmm.data.dataset import RecDataset
from diffmm.models.diffmm import DiffMM
from diffmm.train import Trainer


def sparse_dataset(n_users: int, n_items: int, per_user: int, seed: int = 0) -> RecDataset:
    """Each user gets ``per_user`` distinct random items (built sparse, never dense)."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = (rng.integers(0, n_items, size=n_users)[:, None] + np.arange(per_user) * 7919).ravel() % n_items
    split = rng.random(len(users))
    mats = [sp.csr_matrix((np.ones(int(mask.sum()), np.float32), (users[mask], items[mask])), shape=(n_users, n_items))
            for mask in (split < 0.7, (split >= 0.7) & (split < 0.85), split >= 0.85)]
    feats = {"image": rng.normal(size=(n_items, 4)).astype(np.float32),
             "text": rng.normal(size=(n_items, 3)).astype(np.float32)}
    return RecDataset(*mats, item_features=feats, name="sparse")


class LargestTensor(TorchDispatchMode):
    """Records the largest strided (dense) tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


def test_no_dense_users_by_items_tensor(monkeypatch):
    n_users, n_items = 400, 300
    data = sparse_dataset(n_users, n_items, per_user=5)
    cells = n_users * n_items
    dense_arrays = []
    for cls in (sp.csr_matrix, sp.coo_matrix, sp.csc_matrix):
        for name in ("toarray", "todense"):
            original = getattr(cls, name)

            def spy(self, *args, _original=original, **kwargs):
                out = _original(self, *args, **kwargs)
                dense_arrays.append(out.size)
                return out

            monkeypatch.setattr(cls, name, spy)
    torch.manual_seed(0)
    cfg = DiffMMConfig(dim=8, denoiser_hidden=(16,), time_dim=4, generator_batch_size=64)
    model = DiffMM(data, cfg)
    # batches below min(n_users, n_items), so legitimate (batch, n_users) / (batch, n_items) blocks
    # (InfoNCE logits, denoiser rows, evaluation scores) stay smaller than users x items
    trainer = Trainer(model, data, TrainConfig(epochs=1, batch_size=128, eval_batch_size=64, progress=False,
                                               device="cpu", ks=(10,), metric="recall@10"))
    guard = LargestTensor()
    with guard:
        trainer.train_epoch()
        metrics = trainer.evaluate("test").metrics
    assert np.isfinite(metrics["recall@10"])
    assert guard.largest > 0  # the mode really saw the ops
    # a (batch, n_items) block is fine; n_users * n_items is not
    assert guard.largest < cells, f"{guard.largest} elements from {guard.op} (users x items = {cells})"
    assert max(dense_arrays, default=0) < cells


SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, {tests!r})
    import torch
    from test_memory import sparse_dataset
    from diffmm.config import TrainConfig
    from diffmm.models import build_model
    from diffmm.train import Trainer

    data = sparse_dataset({n_users}, {n_items}, per_user=5)
    torch.manual_seed(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, before the model's graphs
    t0 = time.perf_counter()
    model = build_model({model!r}, data, {config!r})
    trainer = Trainer(model, data, TrainConfig(epochs=1, batch_size=1024, eval_batch_size=256, progress=False,
                                               device="cpu", ks=(20,), metric="recall@20"))
    trainer.train_epoch()
    recall = trainer.evaluate("test").metrics["recall@20"]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(before_kib=before, after_kib=after, recall=recall, seconds=time.perf_counter() - t0)))
""")
# small widths: the test is about the (users x items) and (items x items) structures, not the embeddings
SLOW_CONFIGS = {"diffmm": dict(dim=16, denoiser_hidden=(16,), time_dim=4, generator_batch_size=256),
                "lattice": dict(dim=16, feature_dim=16), "bm3": dict(dim=16)}


def peak_rss_increase(model: str, n_users: int, n_items: int) -> dict:
    from pathlib import Path

    script = SCRIPT.format(tests=str(Path(__file__).parent), n_users=n_users, n_items=n_items, model=model,
                           config=SLOW_CONFIGS[model])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("model, n_users, n_items", [("diffmm", 20_000, 20_000),  # users x items: 1.6 GB dense
                                                     ("lattice", 20_000, 18_357),  # Amazon-Sports' items
                                                     ("bm3", 20_000, 18_357)])
def test_peak_rss_far_below_a_dense_matrix(model, n_users, n_items):
    dense_gb = max(n_users, n_items) * n_items * 4 / 1e9  # the larger of users x items, items x items
    out = peak_rss_increase(model, n_users, n_items)
    increase_gb = (out["after_kib"] - out["before_kib"]) * 1024 / 1e9
    assert np.isfinite(out["recall"])
    assert increase_gb < dense_gb / 4, f"peak RSS grew by {increase_gb:.2f} GB (dense matrix: {dense_gb:.1f} GB)"


def test_training_does_not_load_pandas_or_torch_dynamo(tmp_path):
    """pandas (~33 MiB of RSS) loads only when a table is asked for: not by the CLI, the data, the
    model or the epochs of a run; the run's own tables (history, per-user metrics) load it at the end.
    torch._dynamo (~72 MiB, which torch.optim's optimisers import) never loads."""
    script = textwrap.dedent(f"""
        import sys
        from diffmm import cli
        cli._command_registrars()
        from diffmm import datasets
        from diffmm.experiments.runs import build_run_config, run
        from diffmm.train import Callback

        class Check(Callback):
            def on_epoch_end(self, trainer, record):
                for module in ("pandas", "torch._dynamo"):
                    assert module not in sys.modules, f"{{module}} loaded by epoch {{record['epoch']}}"

        data = datasets.load("synthetic", n_users=120, n_items=80, seed=1)
        assert "pandas" not in sys.modules, "pandas loaded by the CLI or the data"
        config = build_run_config("diffmm", overrides={{"epochs": 2, "progress": False}})
        result, _ = run(data, config, out_dir=r"{tmp_path / 'run'}", callbacks=[Check()])
        print(len(result.history), "pandas" in sys.modules, "torch._dynamo" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "True", "False"]


@pytest.mark.parametrize("name", ["tiktok", "baby"])
def test_reading_pickled_splits_does_not_load_pandas(shared_datasets, name):
    """DiffMM's pickled-matrix datasets have integer ids: their reader needs no pandas."""
    code = (f"import sys; from diffmm.data.registry import load; ds = load({name!r}, root={str(shared_datasets)!r}); "
            "print(ds.train.nnz > 0, 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]


def test_a_run_reports_its_own_peak_rss(tmp_path):
    """FitResult.peak_rss_mib covers the run, not what the process held before it (Linux resets the
    window); the store's record carries it."""
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        from diffmm import datasets, memory
        from diffmm.experiments.runs import build_run_config, run

        if not memory.reset_peak_rss():
            print(json.dumps(None)); sys.exit()
        big = np.ones(400 * 2**20 // 8)  # 400 MiB, touched, then freed before the run
        before = memory.peak_rss_mib()
        del big
        data = datasets.load("synthetic", n_users=120, n_items=80, seed=1)
        config = build_run_config("mf", overrides={"epochs": 2, "progress": False})
        result, _ = run(data, config)
        print(json.dumps([before, result.peak_rss_mib, memory.peak_rss_mib()]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    if peaks is None:
        pytest.skip("this kernel cannot reset the peak RSS")
    before, run_peak, after = peaks
    assert before > 400 and 0 < run_peak < before - 300 and run_peak <= after


def test_the_record_carries_the_peak_rss():
    from diffmm import datasets
    from diffmm.experiments.runs import build_run_config, run
    from diffmm.experiments.store import make_record

    data = datasets.load("synthetic", n_users=60, n_items=40, seed=1)
    config = build_run_config("mf", overrides={"epochs": 1, "progress": False})
    result, _ = run(data, config)
    record = make_record(data, config, result, device="cpu", threads=1)
    assert record["peak_rss_mib"] == result.peak_rss_mib > 0 and record["peak_gpu_mib"] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the trace reads Linux's /proc/self/status")
def test_the_history_traces_memory_phase_by_phase():
    """Each epoch records the run's peak RSS after each phase (a running peak: it never falls) and the RSS
    at the epoch's end; the run's peak is the last of them."""
    from diffmm import datasets
    from diffmm.experiments.runs import build_run_config, run

    data = datasets.load("synthetic", n_users=60, n_items=40, seed=1)
    result, _ = run(data, build_run_config("mf", overrides={"epochs": 3, "progress": False}))
    columns = ["hwm_before_epoch_mib", "hwm_rec_mib", "hwm_eval_mib"]
    trace = result.history[columns].to_numpy().ravel()  # phase after phase, epoch after epoch
    assert trace.min() > 0 and (np.diff(trace) >= 0).all()
    assert (result.history["rss_mib"] <= result.history["hwm_eval_mib"]).all()
    assert result.peak_rss_mib >= trace[-1]


def test_a_resumed_run_reports_the_peak_of_all_its_processes(tmp_path):
    """A run resumed from last.pt reports the highest peak of the processes it ran in: the earlier ones
    left theirs in the history."""
    from diffmm import datasets
    from diffmm.experiments.runs import build_run_config, run
    from diffmm.train import load_checkpoint

    data = datasets.load("synthetic", n_users=60, n_items=40, seed=1)
    run(data, build_run_config("mf", overrides={"epochs": 1, "progress": False}), tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")
    state["history"][0]["hwm_eval_mib"] = 1e6  # as if the first process had peaked there
    torch.save(state, tmp_path / "last.pt")
    result, _ = run(data, build_run_config("mf", overrides={"epochs": 2, "progress": False}), tmp_path)
    assert result.epochs_run == 2 and result.peak_rss_mib == 1e6
