"""The benchmark's FLOP count (against the products that run) and its report on a tiny synthetic set."""

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffmm.bench import epoch_flops, format_table, matmul_rate, onednn_rate_or_none, run_bench
from diffmm.config import DiffMMConfig, TrainConfig
from diffmm.data.sampling import NegativeSampler
from diffmm.data.synthetic import make_synthetic
from diffmm.evaluate import evaluate
from diffmm.models import DiffMM
from diffmm.models.base import adam


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=50, n_items=30, modalities={"image": (16, 1.0), "text": (8, 0.5)},
                          mean_activity=5, seed=3)


def small_config(**kw) -> DiffMMConfig:
    return DiffMMConfig(**{**dict(dim=8, denoiser_hidden=(16,), time_dim=4, generator_batch_size=16, steps=3), **kw})


class DenseMatmulFlops(TorchDispatchMode):
    """Counts the FLOPs of dense matrix products as they run (mm, addmm, in-place addmm_, mv, bmm);
    products with a sparse operand are tallied apart."""

    OPERANDS = {"mm": (0, 1), "addmm": (1, 2), "addmm_": (1, 2), "bmm": (0, 1), "mv": (0, 1), "addmv": (1, 2)}

    def __init__(self):
        super().__init__()
        self.dense = self.sparse = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in self.OPERANDS:
            a, b = (args[i] for i in self.OPERANDS[func.overloadpacket.__name__])
            flops = 2 * math.prod(a.shape) * (b.shape[-1] if b.dim() >= 2 else 1)
            if a.layout == torch.strided and b.layout == torch.strided:
                self.dense += flops
            else:
                self.sparse += flops
        return out


def test_epoch_flops_equal_the_products_that_run():
    """The bench's analytic count against the dense products counted while one epoch's phases run."""
    data = make_synthetic(n_users=300, n_items=200, modalities={"image": (32, 1.0), "text": (16, 0.5)},
                          mean_activity=8, seed=3)
    cfg = DiffMMConfig(dim=16, denoiser_hidden=(48,), time_dim=6, generator_batch_size=64, steps=4, cl_anchor="main")
    train = TrainConfig(batch_size=128)
    flops = epoch_flops(data, cfg, train)
    torch.manual_seed(0)
    model = DiffMM(data, cfg)
    optimizers = model.configure_optimizers(1e-3)
    with DenseMatmulFlops() as count:
        model.train_generators(optimizers["generator"])
    assert count.dense == pytest.approx(flops.generator_train, rel=1e-9)  # exact
    with DenseMatmulFlops() as count:
        model.generate_graphs()
    assert count.dense == pytest.approx(flops.graph_generation, rel=1e-9)  # exact
    triples = torch.from_numpy(np.stack(NegativeSampler(data.train).epoch_triples(np.random.default_rng(0))))
    with DenseMatmulFlops() as count:
        for users, positives, negatives in triples.split(train.batch_size, dim=1):
            optimizers["rec"].zero_grad()
            model.loss(users, positives, negatives)["loss"].backward()
    # the count uses the expected number of distinct anchors per batch (and their mean padding)
    assert count.dense == pytest.approx(flops.recommender, rel=0.05)
    with DenseMatmulFlops() as count:
        for split in ("valid", "test"):
            evaluate(model.scorer(), data, split, (20,))
    assert count.dense / 2 == pytest.approx(flops.evaluation, rel=1e-9)  # the bench times one pass
    # Eq. 18 (modality anchor): one unordered pair of 2 modalities, against Eq. 19's one term per modality
    pair = epoch_flops(data, cfg.replace(cl_anchor="modality"), train).recommender
    without_cl = epoch_flops(data, cfg.replace(cl_weight=0.0), train).recommender  # Trans(f^m) only
    assert 2 * pair - flops.recommender == pytest.approx(without_cl, rel=1e-9)


def test_plain_epoch_flops_by_hand(data):
    cfg, train = small_config(cl_anchor="main"), TrainConfig(batch_size=32)
    U, I, d, t = data.n_users, data.n_items, 8, 4
    forward = 2 * ((I + t) * 16 + 16 * I + t * t)  # one item-wide denoiser pass per user
    projections = 2 * I * (16 + 8) * d
    steps = -(-data.train.nnz // 32)
    flops = epoch_flops(data, cfg, train)
    # the plain way: every denoiser product with both gradients, MSI's observed side dense (6 I d),
    # T item-wide denoiser passes per user and modality, one log-sum-exp per drawn node
    assert flops.plain_generator_train == U * 2 * (3 * forward + 3 * 2 * I * d) + projections
    assert flops.plain_graph_generation == U * 2 * 3 * forward + projections
    assert flops.plain_recommender == steps * 2 * projections + 2 * 3 * 2 * data.train.nnz * d * (U + I)
    assert flops.plain_total > flops.total


def test_matmul_rate_is_positive_and_finite():
    rate = matmul_rate(torch.float32, n=128, repeats=3)
    assert 1e6 < rate < 1e15
    onednn = onednn_rate_or_none(n=128)  # None only where torch has no oneDNN
    assert onednn is None or 1e6 < onednn < 1e15


def test_onednn_probe_multiplies_what_the_torch_probe_does():
    """The oneDNN probe's product is a @ b^T: checked against torch's, so its rate is for the same work."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    a, b = torch.randn(64, 48), torch.randn(32, 48)
    torch.testing.assert_close(torch.ops.mkldnn._linear_pointwise(a, b.to_mkldnn(), None, "none", [], ""), a @ b.T)


def test_run_bench_report(data):
    result = run_bench(data, small_config(), TrainConfig(batch_size=64, device="cpu", ks=(20,)), epochs=1)
    phases = ("generator_train_s", "graph_generation_s", "recommender_s", "evaluation_s")
    assert all(result[p] > 0 for p in phases)
    assert result["epoch_s"] == pytest.approx(sum(result[p] for p in phases))
    rate = result["gflops_fp32"] * 1e9
    assert result["floor_s"] == pytest.approx(result["tflop_per_epoch"] * 1e12 / rate)
    probes = result["gflops_probes"]["fp32"]  # before training and after its one epoch
    assert len(probes) == 2 and result["gflops_fp32"] == pytest.approx(sum(probes) / 2)
    assert result["epoch_over_floor"] == pytest.approx(result["epoch_s"] / result["floor_s"])
    if result["gflops_fp32_onednn"] is not None:  # the same work at oneDNN's rate, the mean of its two probes
        assert result["gflops_fp32_onednn"] == pytest.approx(sum(result["gflops_probes"]["fp32_onednn"]) / 2)
        assert result["onednn_floor_s"] == pytest.approx(result["tflop_per_epoch"] * 1e3 / result["gflops_fp32_onednn"])
        assert result["epoch_over_onednn_floor"] == pytest.approx(result["epoch_s"] / result["onednn_floor_s"])
        assert "floor at oneDNN's fp32 rate" in format_table(result)
    assert result["peak_rss_mb"] > 0 and 0 <= result["valid_recall20"] <= 1
    assert result["first_epoch_s"] == pytest.approx(result["epoch_s"]) and result["timed_epochs"] == 1  # one epoch
    for phase in ("generator_train", "graph_generation", "recommender", "evaluation"):  # each phase's own rate
        flops = result["flops"][phase] * 1e12
        assert result["phase_gflops"][phase] == pytest.approx(flops / result[f"{phase}_s"] / 1e9)
        assert result["phase_over_floor"][phase] == pytest.approx(result[f"{phase}_s"] * rate / flops)


def test_bench_times_the_epochs_after_the_first(data):
    """The first epoch (optimiser state allocated, buffers first touched) is reported apart from the timed ones."""
    result = run_bench(data, small_config(), TrainConfig(batch_size=64, device="cpu", ks=(20,)), epochs=3, probe=False)
    assert result["timed_epochs"] == 2 and result["epochs"] == 3
    phases = ("generator_train_s", "graph_generation_s", "recommender_s", "evaluation_s")
    assert result["epoch_s"] == pytest.approx(sum(result[p] for p in phases)) and result["first_epoch_s"] > 0


def test_fused_adam_takes_the_same_step_as_plain_adam(data):
    torch.manual_seed(0)
    model = DiffMM(data, small_config())
    params = [p for p in model.generators.parameters()]
    copies = [p.detach().clone().requires_grad_() for p in params]
    grads = [torch.randn_like(p) for p in params]
    fused, plain = adam(params, 1e-2), torch.optim.Adam(copies, lr=1e-2, foreach=False)
    for _ in range(3):
        for p, c, g in zip(params, copies, grads):
            p.grad, c.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    assert fused.param_groups[0]["fused"]
    for p, c in zip(params, copies):
        torch.testing.assert_close(p, c, rtol=1e-5, atol=1e-6)


def test_sweep_layouts_split_the_cores_evenly():
    from diffmm.bench_runs import sweep_layouts

    assert sweep_layouts(2) == [(1, 2), (2, 1)]
    assert sweep_layouts(6) == [(1, 6), (2, 3), (3, 2), (6, 1)]
    assert sweep_layouts(16, (1, 4, 8, 16, 32)) == [(1, 16), (4, 4), (8, 2), (16, 1), (32, 1)]


@pytest.mark.slow
def test_sweep_bench_reports_runs_per_hour_from_concurrent_children():
    from diffmm.bench_runs import run_sweep_bench

    rows = run_sweep_bench("synthetic-small", "tiktok", epochs=1, run_epochs=50, cores=2)
    assert [(r["jobs"], r["threads"]) for r in rows] == [(1, 2), (2, 1)]
    for r in rows:
        assert len(r["epochs_s"]) == r["jobs"] and all(s > 0 for s in r["epochs_s"])
        assert r["runs_per_hour"] == pytest.approx(3600 * r["jobs"] / (r["epoch_s"] * 50))
    assert max(r["relative"] for r in rows) == 1.0


def test_repeated_bench_reports_the_medians_of_child_benches():
    from diffmm.bench_runs import format_repeated, run_repeated_bench

    result = run_repeated_bench(["--data", "synthetic-small", "--epochs", "1", "--threads", "1"], 3, echo=False)
    benches, median = result["benches"], result["median"]
    assert result["repeat"] == len(benches) == 3
    for key in ("epoch_s", "epoch_over_floor", "recommender_s"):
        assert median[key] == sorted(b[key] for b in benches)[1]
    assert median["peak_rss_mb"] == max(b["peak_rss_mb"] for b in benches)
    assert "median of 3 benches" in format_repeated(result)


def test_gpu_session_script_measures_trains_and_packs_new_records(tmp_path):
    """benchmarks/gpu_session.sh is meant for one scarce call on a borrowed GPU: its CPU check mode runs
    every step (bench both ways, the sweep bench, reproduce --train-only) and packs only the new records."""
    import json
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    store, out = tmp_path / "store", tmp_path / "out"
    old = sorted((repo / "figures" / "results" / "ml100k").glob("mf-*.json"))[0]
    (store / "ml100k").mkdir(parents=True)
    (store / "ml100k" / old.name).write_bytes(old.read_bytes())  # already there: not packed
    env = {**os.environ, "DATA": str(tmp_path / "data"), "OUT": str(out), "DEVICE": "cpu", "RUNS": "1",
           "BENCH_DATA": "synthetic-small", "STORE": str(store), "REPRODUCE_ARGS": "--quick",
           "ONLY": "synthetic-small/search_lattice_graphs", "WORK": str(tmp_path / "work"), "BUDGET": "400",
           "BENCH_S": "300",  # a loaded machine must not cut the benches short
           "PY": sys.executable}
    subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=repo, env=env, check=True,
                   capture_output=True, timeout=600)
    for name in ("bench.json", "bench_cpu_chunks.json"):
        assert json.loads((out / name).read_text())["epoch_s"] > 0
    assert [r["jobs"] for r in json.loads((out / "sweep.json").read_text())["sweep"]] == [1]
    new = (out / "new.txt").read_text().split()
    assert len(new) == 2 and all(n.startswith("synthetic-small/lattice-") for n in new)
    with tarfile.open(out / "results.tgz") as packed:
        assert sorted(packed.getnames()) == sorted(new)


@pytest.mark.parametrize("phase", ["rec", "generator"])
def test_ab_script_alternates_the_default_and_the_changed_setting(phase):
    """benchmarks/ab.py times both arms every round and reports their medians and ratio; a bad --set is named."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "benchmarks/ab.py", "--data", "synthetic-small", "--phase", phase, "--rounds", "2",
               "--steps", "2", "--threads", "1", "--set", "diffmm.contrastive.MAX_UNSHIFTED=-1.0"]
    out = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True, timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["phase"] == phase and result["rounds"] == 2 and 0 <= result["changed_faster_rounds"] <= 2
    assert result["default_ms"] > 0 and result["changed_ms"] > 0 and result["ratio_median"] > 0
    bad = subprocess.run([*command[:-1], "diffmm.contrastive.NO_SUCH_NAME=1"], cwd=repo, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and "diffmm.contrastive has no 'NO_SUCH_NAME'" in bad.stderr
