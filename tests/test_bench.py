"""The benchmark's FLOP count (by hand) and its report on a tiny synthetic set."""

import numpy as np
import pytest
import torch

from diffmm.bench import epoch_flops, matmul_rate, run_bench
from diffmm.config import DiffMMConfig, TrainConfig
from diffmm.data.synthetic import make_synthetic
from diffmm.models import DiffMM
from diffmm.models.base import adam


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=50, n_items=30, modalities={"image": (16, 1.0), "text": (8, 0.5)},
                          mean_activity=5, seed=3)


def small_config(**kw) -> DiffMMConfig:
    return DiffMMConfig(**{**dict(dim=8, denoiser_hidden=(16,), time_dim=4, generator_batch_size=16, steps=3), **kw})


def test_epoch_flops_by_hand(data):
    cfg, train = small_config(cl_anchor="main"), TrainConfig(batch_size=32)
    U, I, d = data.n_users, data.n_items, 8
    forward = 2 * ((I + 4) * 16 + 16 * I)  # one denoiser pass per user: (I + t) -> 16 -> I
    msi = 2 * 2 * I * d
    steps = -(-data.train.nnz // 32)
    flops = epoch_flops(data, cfg, train)
    assert flops.generator_train == U * 2 * (3 * forward + 3 * msi)  # 2 modalities, forward + backward
    # hidden-space reverse, T = 3: W_0 W_L once per modality; per user 2 recursion products + 1 output product
    assert flops.graph_generation == 2 * (2 * 16 * I * 16 + U * (2 * 2 * 16 * 16 + 2 * 16 * I))
    # distinct users / items among 32 draws of training pairs, by simulation
    rng = np.random.default_rng(0)
    pair_users, pair_items = data.train.nonzero()
    draws = [rng.choice(data.train.nnz, 32, replace=False) for _ in range(4000)]
    b_u = np.mean([len(np.unique(pair_users[x])) for x in draws])
    b_i = np.mean([len(np.unique(pair_items[x])) for x in draws])
    main = steps * 2 * 3 * 2 * d * (b_u * U + b_i * I)  # Eq. 19: one term per modality
    assert flops.recommender == pytest.approx(main, rel=0.02)
    pairs = epoch_flops(data, small_config(cl_anchor="modality"), train).recommender
    assert pairs == pytest.approx(flops.recommender / 2, rel=1e-12)  # Eq. 18: one unordered modality pair
    assert epoch_flops(data, small_config(cl_weight=0.0), train).recommender == 0
    # the plain way: T item-wide denoiser passes per user and modality, one log-sum-exp per drawn node
    assert flops.plain_graph_generation == U * 2 * 3 * forward
    assert flops.plain_recommender == steps * 2 * 3 * 2 * 32 * d * (U + I)
    assert flops.plain_total > flops.total


def test_matmul_rate_is_positive_and_finite():
    rate = matmul_rate(torch.float32, n=128, repeats=3)
    assert 1e6 < rate < 1e15


def test_run_bench_report(data):
    result = run_bench(data, small_config(), TrainConfig(batch_size=64, device="cpu", ks=(20,)), epochs=1)
    phases = ("generator_train_s", "graph_generation_s", "recommender_s", "evaluation_s")
    assert all(result[p] > 0 for p in phases)
    assert result["epoch_s"] == pytest.approx(sum(result[p] for p in phases))
    rate = result["gflops_fp32"] * 1e9
    assert result["floor_s"] == pytest.approx(result["tflop_per_epoch"] * 1e12 / rate)
    before, after = result["gflops_before_after"]["fp32"]
    assert result["gflops_fp32"] == pytest.approx((before + after) / 2)
    assert result["epoch_over_floor"] == pytest.approx(result["epoch_s"] / result["floor_s"])
    assert result["peak_rss_mb"] > 0 and 0 <= result["valid_recall20"] <= 1


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
    assert fused.defaults["fused"]
    for p, c in zip(params, copies):
        torch.testing.assert_close(p, c, rtol=1e-5, atol=1e-6)

