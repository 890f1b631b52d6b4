"""Gaussian diffusion (Sec. 2.2, Eq. 1-13) and the denoiser, against independent float64 computations.

Every expected value here is recomputed from the paper's formulas with numpy / math in float64;
the code's own schedule arrays are only ever the thing under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffmm.dense import Workspace
from diffmm.denoiser import Denoiser, frozen_weights, keep_mask, timestep_embedding
from diffmm.diffusion import GaussianDiffusion, linear_schedule

# A strong, non-uniform schedule, written by hand, so that every coefficient matters.
BETAS = np.array([0.05, 0.1, 0.2, 0.3, 0.4])


def cumulative(betas) -> list[float]:
    """[gamma_bar_0 = 1, gamma_bar_1, ..., gamma_bar_T] by a plain product loop."""
    bars = [1.0]
    for beta in betas:
        bars.append(bars[-1] * (1.0 - float(beta)))
    return bars


def snr(bar: float) -> float:
    return bar / (1.0 - bar)


def posterior_coefficients(betas, t: int) -> tuple[float, float]:
    """DDPM posterior mean coefficients (of alpha_t, of alpha_0) at step t, float64."""
    bars = cumulative(betas)
    beta, gamma = float(betas[t - 1]), 1.0 - float(betas[t - 1])
    return (math.sqrt(gamma) * (1 - bars[t - 1]) / (1 - bars[t]),
            math.sqrt(bars[t - 1]) * beta / (1 - bars[t]))


class Half(nn.Module):
    """A deterministic stub denoiser: x0_hat = 0.5 * x."""

    def forward(self, x, t):
        return 0.5 * x


class TimeAffine(nn.Module):
    """A deterministic stub that depends on t, so the order of steps matters: 0.5 x + 0.1 t."""

    def forward(self, x, t):
        return 0.5 * x + 0.1 * t.to(x.dtype)[:, None]


# ------------------------------------------------------------------------------------------ Eq. 3
@pytest.mark.parametrize("steps, scale, gmin, gmax", [(5, 0.1, 1e-4, 0.02), (7, 1.0, 0.05, 0.6), (2, 0.5, 0.1, 0.3)])
def test_linear_schedule_matches_eq3(steps, scale, gmin, gmax):
    betas = linear_schedule(steps, scale, gmin, gmax, first_beta=None)
    assert betas.dtype == np.float64 and betas.shape == (steps,)
    bars = cumulative(betas)[1:]
    for t in range(1, steps + 1):
        expected = scale * (gmin + (t - 1) / (steps - 1) * (gmax - gmin))  # Eq. 3
        assert 1.0 - bars[t - 1] == pytest.approx(expected, rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("values", [{"noise_scale": 0}, {"noise_min": 0.02, "noise_max": 0.02}, {"noise_max": 1.0}])
def test_a_schedule_without_noise_at_some_step_is_refused_by_the_config(values):
    from diffmm.config import DiffMMConfig

    with pytest.raises(ValueError, match="Eq. 3"):
        DiffMMConfig(**values)


def test_linear_schedule_first_beta_only_changes_beta_1():
    exact = linear_schedule(5, 0.1, 1e-4, 0.02, first_beta=None)
    fixed = linear_schedule(5, 0.1, 1e-4, 0.02, first_beta=1e-4)
    assert fixed[0] == 1e-4
    assert exact[0] == pytest.approx(0.1 * 1e-4)  # Eq. 3 at t = 1: s * gamma_min
    np.testing.assert_array_equal(fixed[1:], exact[1:])


def test_linear_schedule_single_step():
    betas = linear_schedule(1, 0.5, 0.1, 0.2)
    np.testing.assert_allclose(betas, [0.05])


@pytest.mark.parametrize("kwargs", [
    dict(steps=0, noise_scale=0.1, noise_min=1e-4, noise_max=0.02),
    dict(steps=5, noise_scale=1.5, noise_min=1e-4, noise_max=0.02),
    dict(steps=5, noise_scale=-0.1, noise_min=1e-4, noise_max=0.02),
    dict(steps=5, noise_scale=0.1, noise_min=0.0, noise_max=0.02),
    dict(steps=5, noise_scale=0.1, noise_min=0.03, noise_max=0.02),
    dict(steps=5, noise_scale=0.1, noise_min=1e-4, noise_max=1.0),
])
def test_linear_schedule_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        linear_schedule(**kwargs)


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.1, 1.0], [[0.1, 0.2]], [0.1, -0.2]])
def test_gaussian_diffusion_rejects_bad_betas(betas):
    with pytest.raises(ValueError):
        GaussianDiffusion(np.array(betas))


def test_zero_noise_scale_is_rejected_downstream():
    # s = 0 gives beta_t = 0 for all t: no diffusion at all, which the model cannot divide by.
    with pytest.raises(ValueError):
        GaussianDiffusion(linear_schedule(5, 0.0, 1e-4, 0.02))


# ------------------------------------------------------------------------------------------ Eq. 2
def test_q_sample_with_given_noise_is_eq2():
    diffusion = GaussianDiffusion(BETAS)
    bars = cumulative(BETAS)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 2, (6, 9), generator=gen).float()
    noise = torch.randn(6, 9, generator=gen)
    t = torch.tensor([1, 2, 3, 4, 5, 3])
    got = diffusion.q_sample(x0, t, noise).double().numpy()
    for row, step in enumerate(t.tolist()):
        expected = (math.sqrt(bars[step]) * x0[row].double().numpy()
                    + math.sqrt(1 - bars[step]) * noise[row].double().numpy())
        np.testing.assert_allclose(got[row], expected, rtol=1e-6, atol=1e-6)


def test_q_sample_statistics_match_eq2_and_composed_eq1():
    """Monte Carlo: q_sample's mean/var match Eq. 2 AND t one-step transitions of Eq. 1 composed."""
    diffusion = GaussianDiffusion(BETAS)
    bars = cumulative(BETAS)
    n = 100_000
    x0_values = np.array([0.0, 1.0, -0.5])
    x0 = torch.tensor(x0_values, dtype=torch.float32).expand(n, 3)
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    for step in range(1, len(BETAS) + 1):
        mean_eq2 = math.sqrt(bars[step]) * x0_values
        var_eq2 = 1.0 - bars[step]
        sample = diffusion.q_sample(x0, torch.full((n,), step)).double().numpy()  # (n, 3)
        # Eq. 1 composed step by step: alpha_s = sqrt(1 - beta_s) alpha_{s-1} + sqrt(beta_s) eps
        chain = np.broadcast_to(x0_values, (n, 3)).copy()
        for s in range(1, step + 1):
            beta = BETAS[s - 1]
            chain = math.sqrt(1 - beta) * chain + math.sqrt(beta) * rng.standard_normal((n, 3))
        se_mean = 5 * math.sqrt(var_eq2 / n)  # 5 standard errors
        se_var = 5 * var_eq2 * math.sqrt(2 / n)
        for values in (sample, chain):
            np.testing.assert_allclose(values.mean(0), mean_eq2, atol=se_mean)
            np.testing.assert_allclose(values.var(0), var_eq2, atol=se_var)
        np.testing.assert_allclose(sample.mean(0), chain.mean(0), atol=2 * se_mean)
        np.testing.assert_allclose(sample.var(0), chain.var(0), atol=2 * se_var)


def test_schedule_buffers_are_float32_and_follow_the_module():
    diffusion = GaussianDiffusion(BETAS)
    assert diffusion.gamma_bar.dtype == torch.float32
    np.testing.assert_allclose(diffusion.gamma_bar.double().numpy(), cumulative(BETAS), rtol=1e-6)
    assert diffusion.state_dict() == {}  # derived from betas, not saved
    assert "steps=5" in repr(diffusion)


# ---------------------------------------------------------------------------------------- Eq. 7-8
@pytest.mark.parametrize("betas", [BETAS, linear_schedule(5, 0.1, 1e-4, 0.02, first_beta=None),
                                   linear_schedule(5, 0.1, 1e-4, 0.02, first_beta=1e-4)])
def test_posterior_matches_bayes_rule(betas):
    """q(a_{t-1} | a_t, a_0) by Bayes, in float64: the product of two Gaussians in a_{t-1}.

    q(a_t | a_{t-1}) = N(a_t; sqrt(gamma_t) a_{t-1}, beta_t), as a function of a_{t-1}, is
    N(a_{t-1}; a_t / sqrt(gamma_t), beta_t / gamma_t); q(a_{t-1} | a_0) = N(sqrt(gbar_{t-1}) a_0,
    1 - gbar_{t-1}) (Eq. 2). Their product has precision p = gamma_t / beta_t + 1 / (1 - gbar_{t-1})
    and mean (sqrt(gamma_t) a_t / beta_t + sqrt(gbar_{t-1}) a_0 / (1 - gbar_{t-1})) / p.

    Note: the paper's printed Eq. 8 has sqrt(gamma_bar_t) as the coefficient of alpha_t where the
    correct DDPM form has sqrt(gamma_t); the code implements the correct form, and this Bayes
    computation (not the printed equation) is the judge. The last assertion shows the printed
    coefficient would be caught.
    """
    diffusion = GaussianDiffusion(betas)
    bars = cumulative(betas)
    rng = np.random.default_rng(2)
    xt = rng.normal(size=(1, 7))
    x0 = rng.integers(0, 2, size=(1, 7)).astype(np.float64)
    for t in range(2, len(betas) + 1):
        beta, gamma = float(betas[t - 1]), 1.0 - float(betas[t - 1])
        precision = gamma / beta + 1.0 / (1.0 - bars[t - 1])
        mean = (math.sqrt(gamma) * xt / beta + math.sqrt(bars[t - 1]) * x0 / (1.0 - bars[t - 1])) / precision
        got_mean = diffusion.posterior_mean(torch.tensor(xt, dtype=torch.float32),
                                            torch.tensor(x0, dtype=torch.float32), torch.tensor([t]))
        np.testing.assert_allclose(got_mean.double().numpy(), mean, rtol=1e-5, atol=1e-6)
        assert float(diffusion.posterior_variance[t]) == pytest.approx(1.0 / precision, rel=1e-5)
        # the printed Eq. 8 (sqrt(gbar_t) instead of sqrt(gamma_t)) is not the posterior:
        printed = math.sqrt(bars[t]) * (1 - bars[t - 1]) / (1 - bars[t])
        true_coef = math.sqrt(gamma) / beta / precision
        assert abs(printed - true_coef) > 1e-6 * true_coef
    # t = 1: gbar_0 = 1, q(a_0 | a_1, a_0) is a point mass at a_0
    got = diffusion.posterior_mean(torch.tensor(xt, dtype=torch.float32), torch.tensor(x0, dtype=torch.float32),
                                   torch.tensor([1]))
    np.testing.assert_allclose(got.double().numpy(), x0, atol=1e-6)
    assert float(diffusion.posterior_variance[1]) == 0.0


# -------------------------------------------------------------------------------------- Eq. 9-12
@pytest.mark.parametrize("betas", [BETAS, linear_schedule(5, 0.1, 1e-4, 0.02, first_beta=1e-4)])
def test_loss_weight_is_snr_difference(betas):
    diffusion = GaussianDiffusion(betas)
    bars = cumulative(betas)
    weight = diffusion.loss_weight.double().numpy()
    assert weight.shape == (len(betas) + 1,)
    assert weight[1] == 1.0  # Eq. 12, the unweighted reconstruction term
    for t in range(2, len(betas) + 1):
        assert weight[t] == pytest.approx(snr(bars[t - 1]) - snr(bars[t]), rel=1e-6)


def test_eq9_with_eq8_and_eq10_means_equals_eq11():
    """(1 / 2 sigma^2) ||mu_theta - mu_tilde||^2 == 1/2 (SNR(t-1) - SNR(t)) ||x0_hat - x0||^2.

    So the code's weight (SNR(t-1) - SNR(t)) is exactly twice Eq. 11's factor: it drops the
    constant 1/2, as the authors' code does.
    """
    diffusion = GaussianDiffusion(BETAS)
    bars = cumulative(BETAS)
    rng = np.random.default_rng(3)
    xt, x0_hat = rng.normal(size=(2, 11))
    x0 = rng.integers(0, 2, size=11).astype(np.float64)
    for t in range(2, len(BETAS) + 1):
        beta = BETAS[t - 1]
        c_xt, c_x0 = posterior_coefficients(BETAS, t)
        sigma2 = beta * (1 - bars[t - 1]) / (1 - bars[t])  # Eq. 8
        mu_theta = c_xt * xt + c_x0 * x0_hat  # Eq. 10
        mu_tilde = c_xt * xt + c_x0 * x0  # Eq. 8
        eq9 = np.sum((mu_theta - mu_tilde) ** 2) / (2 * sigma2)
        eq11 = 0.5 * (snr(bars[t - 1]) - snr(bars[t])) * np.sum((x0_hat - x0) ** 2)
        assert eq9 == pytest.approx(eq11, rel=1e-10)
        # the code's own pieces agree: its posterior mean / variance give Eq. 9 = 1/2 * its weight
        tt = torch.tensor([t])
        code_theta = diffusion.posterior_mean(torch.tensor(xt[None]).float(), torch.tensor(x0_hat[None]).float(), tt)
        code_tilde = diffusion.posterior_mean(torch.tensor(xt[None]).float(), torch.tensor(x0[None]).float(), tt)
        code_eq9 = float((code_theta - code_tilde).double().square().sum()) / (2 * float(diffusion.posterior_variance[t]))
        assert code_eq9 == pytest.approx(eq11, rel=1e-4)
        assert float(diffusion.loss_weight[t]) * np.sum((x0_hat - x0) ** 2) == pytest.approx(2 * eq11, rel=1e-6)


def test_elbo_terms_recomputed_independently():
    diffusion = GaussianDiffusion(BETAS)
    bars = cumulative(BETAS)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, 2, (64, 10), generator=gen).float()
    torch.manual_seed(123)
    loss, x0_hat = diffusion.elbo_terms(Half(), x0)
    # replay the same random draws: t ~ U{1..T} first (Eq. 13), then the noise of Eq. 2
    torch.manual_seed(123)
    t = torch.randint(1, len(BETAS) + 1, (64,)).numpy()
    noise = torch.randn(64, 10).double().numpy()
    assert set(t) == {1, 2, 3, 4, 5}  # both the Eq. 12 and the Eq. 11 cases are exercised
    x0_np = x0.double().numpy()
    sb = np.sqrt([bars[s] for s in t])[:, None]
    xt = sb * x0_np + np.sqrt(1 - sb ** 2) * noise
    expected_hat = 0.5 * xt
    weight = np.array([1.0 if s == 1 else snr(bars[s - 1]) - snr(bars[s]) for s in t])
    expected = weight * np.mean((expected_hat - x0_np) ** 2, axis=1)
    assert loss.shape == (64,) and x0_hat.shape == (64, 10)
    np.testing.assert_allclose(x0_hat.double().numpy(), expected_hat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss.double().numpy(), expected, rtol=1e-4, atol=1e-7)


def test_elbo_terms_backpropagates_into_the_denoiser():
    torch.manual_seed(0)
    denoiser = Denoiser(8, hidden=(6,), time_dim=4)
    loss, _ = GaussianDiffusion(BETAS).elbo_terms(denoiser, torch.randint(0, 2, (5, 8)).float())
    loss.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in denoiser.parameters())


def test_sample_steps_range():
    torch.manual_seed(0)
    t = GaussianDiffusion(BETAS).sample_steps(2000, "cpu")
    assert t.dtype == torch.long and int(t.min()) == 1 and int(t.max()) == len(BETAS)


# ------------------------------------------------------------------------------------ Sec. 2.2.3
def manual_reverse(x: np.ndarray, betas, denoise) -> list[np.ndarray]:
    """alpha_{t-1} = coef_xt alpha_t + coef_x0 f(alpha_t, t), for t = T..1, in float64."""
    out = [x]
    for t in range(len(betas), 0, -1):
        c_xt, c_x0 = posterior_coefficients(betas, t)
        x = c_xt * x + c_x0 * denoise(x, t)
        out.append(x)
    return out


def test_reverse_one_step_and_full_loop():
    diffusion = GaussianDiffusion(BETAS)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, 2, (4, 12), generator=gen).float()
    expected = manual_reverse(x0.double().numpy(), BETAS, lambda x, t: 0.5 * x + 0.1 * t)
    # one step by hand at t = T
    t = torch.full((4,), len(BETAS))
    one = diffusion.posterior_mean(x0, TimeAffine()(x0, t), t)
    np.testing.assert_allclose(one.double().numpy(), expected[1], rtol=1e-5, atol=1e-6)
    # the whole loop
    final, trajectory = diffusion.reverse(TimeAffine(), x0, forward_steps=0, return_trajectory=True)
    assert len(trajectory) == len(BETAS) + 1
    assert torch.equal(trajectory[0], x0)  # forward_steps = 0: start from the observed vector
    assert torch.equal(trajectory[-1], final)
    for got, want in zip(trajectory, expected):
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(diffusion.reverse(TimeAffine(), x0), final)  # no trajectory: same result


def test_reverse_with_forward_steps_adds_seeded_noise():
    diffusion = GaussianDiffusion(BETAS)
    bars = cumulative(BETAS)
    x0 = torch.randint(0, 2, (4, 12), generator=torch.Generator().manual_seed(6)).float()
    clean = diffusion.reverse(Half(), x0, forward_steps=0)
    torch.manual_seed(7)
    noisy = diffusion.reverse(Half(), x0, forward_steps=2)
    torch.manual_seed(7)
    again = diffusion.reverse(Half(), x0, forward_steps=2)
    assert not torch.allclose(noisy, clean)
    assert torch.equal(noisy, again)  # reproducible under a seed
    # exactly: x_T' = sqrt(gbar_T') x0 + sqrt(1 - gbar_T') eps (Eq. 2), then the T reverse steps
    torch.manual_seed(7)
    noise = torch.randn(4, 12).double().numpy()
    start = math.sqrt(bars[2]) * x0.double().numpy() + math.sqrt(1 - bars[2]) * noise
    expected = manual_reverse(start, BETAS, lambda x, t: 0.5 * x)[-1]
    np.testing.assert_allclose(noisy.double().numpy(), expected, rtol=1e-5, atol=1e-6)


class Opaque(nn.Module):
    """Hides the Denoiser's structure: reverse() then runs the plain loop of Eq. 10 on it."""

    def __init__(self, denoiser):
        super().__init__()
        self.inner = denoiser

    def forward(self, x, t):
        return self.inner(x, t)


@pytest.mark.parametrize("hidden", [(7,), (7, 5)])
@pytest.mark.parametrize("forward_steps", [0, 2])
def test_reverse_in_hidden_space_equals_the_plain_loop(hidden, forward_steps):
    """The MLP denoiser's reverse runs in its hidden space (W_0 W_L): same states as the plain loop."""
    torch.manual_seed(0)
    denoiser = Denoiser(12, hidden=hidden, time_dim=4).eval()
    for p in denoiser.parameters():  # larger weights than the init, so a wrong coefficient shows
        p.data.normal_(0, 0.5)
    diffusion = GaussianDiffusion(BETAS)
    x0 = torch.randint(0, 2, (4, 12), generator=torch.Generator().manual_seed(5)).float()
    torch.manual_seed(3)
    fast, fast_traj = diffusion.reverse(denoiser, x0, forward_steps, return_trajectory=True)
    torch.manual_seed(3)
    plain, plain_traj = diffusion.reverse(Opaque(denoiser), x0, forward_steps, return_trajectory=True)
    assert len(fast_traj) == len(plain_traj) == len(BETAS) + 1
    for got, want in zip(fast_traj, plain_traj):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    torch.manual_seed(3)
    torch.testing.assert_close(diffusion.reverse(denoiser, x0, forward_steps), fast)  # no trajectory: same
    for sparse in (x0.to_sparse_csr(), x0.to_sparse()):  # the observed vectors handed over as sparse
        torch.manual_seed(3)
        torch.testing.assert_close(diffusion.reverse(denoiser, sparse, forward_steps), fast)
        for trajectory in (True, False):  # with and without the trajectory, which needs them dense
            torch.manual_seed(3)
            got = diffusion.reverse(denoiser, sparse, forward_steps, return_trajectory=trajectory)
            torch.testing.assert_close(got[0] if trajectory else got, fast)
    workspace = Workspace()  # alpha_hat_0 into a buffer that the next call overwrites
    torch.manual_seed(3)
    first = diffusion.reverse(denoiser, x0.to_sparse_csr(), forward_steps, workspace=workspace).clone()
    torch.manual_seed(3)
    again = diffusion.reverse(denoiser, x0.to_sparse_csr(), forward_steps, workspace=workspace)
    assert again.data_ptr() == workspace._buffers["alpha_hat_0"].data_ptr()
    torch.testing.assert_close(first, fast)
    torch.testing.assert_close(again, fast)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_hidden_space_reverse_under_bf16_autocast(device):
    torch.manual_seed(0)
    denoiser = Denoiser(64, hidden=(32,), time_dim=8).eval().to(device)
    diffusion = GaussianDiffusion(BETAS).to(device)
    x0 = (torch.rand(6, 64, device=device) < 0.1).float()
    plain = diffusion.reverse(Opaque(denoiser), x0)
    with torch.autocast(device, dtype=torch.bfloat16):
        fast = diffusion.reverse(denoiser, x0)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, plain, rtol=0.05, atol=0.03)


def test_hidden_space_reverse_follows_weight_updates():
    """W_0 W_L is cached only inside frozen_weights(): outside it, a weight update is always seen."""
    torch.manual_seed(0)
    denoiser = Denoiser(12, hidden=(7,), time_dim=4).eval()
    diffusion = GaussianDiffusion(BETAS)
    x0 = torch.randint(0, 2, (4, 12), generator=torch.Generator().manual_seed(5)).float()
    with frozen_weights(denoiser):
        before = diffusion.reverse(denoiser, x0.to_sparse_csr())
        assert set(denoiser._derived) == {"mix"}  # computed once for the block
        torch.testing.assert_close(diffusion.reverse(denoiser, x0), before)  # dense input: the same states
    assert not denoiser._derived
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=0.1, fused=True)
    for p in denoiser.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    after = diffusion.reverse(denoiser, x0)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, diffusion.reverse(Opaque(denoiser), x0), rtol=1e-4, atol=1e-5)
    denoiser.load_state_dict(Denoiser(12, hidden=(7,), time_dim=4).state_dict())
    torch.testing.assert_close(diffusion.reverse(denoiser, x0), diffusion.reverse(Opaque(denoiser), x0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("forward_steps", [-1, 6])
def test_reverse_rejects_bad_forward_steps(forward_steps):
    with pytest.raises(ValueError, match="forward_steps"):
        GaussianDiffusion(BETAS).reverse(Half(), torch.zeros(2, 3), forward_steps=forward_steps)


# --------------------------------------------------------------------------------------- denoiser
@pytest.mark.parametrize("dim", [6, 7])
def test_timestep_embedding_hand_formula(dim):
    t = torch.tensor([0, 1, 3])
    emb = timestep_embedding(t, dim).double().numpy()
    assert emb.shape == (3, dim)
    half = dim // 2
    for row, step in enumerate([0, 1, 3]):
        freqs = [10000.0 ** (-k / half) for k in range(half)]
        expected = [math.cos(step * f) for f in freqs] + [math.sin(step * f) for f in freqs]
        if dim % 2:
            expected.append(0.0)
        np.testing.assert_allclose(emb[row], expected, rtol=1e-5, atol=1e-6)


def test_denoiser_shapes_and_eval_forward_by_hand():
    torch.manual_seed(0)
    denoiser = Denoiser(9, hidden=(7, 5), time_dim=4, dropout=0.5).eval()
    x = torch.randn(3, 9)
    t = torch.tensor([1, 2, 5])
    out = denoiser(x, t)
    assert out.shape == (3, 9)
    assert torch.allclose(denoiser(x.to_sparse(), t), out, atol=1e-6)  # sparse input: same function
    # by hand, float64: layer 0 acts on the concatenation [x, W_e emb(t) + b_e]; its weight is stored
    # as two blocks (items: layers[0], step embedding: time_in) -> tanh -> L1 -> tanh -> L2
    def lin(layer, h):
        out = h @ layer.weight.detach().double().numpy().T
        return out + layer.bias.detach().double().numpy() if layer.bias is not None else out
    half = 2
    emb = np.array([[math.cos(s * 10000.0 ** (-k / half)) for k in range(half)]
                    + [math.sin(s * 10000.0 ** (-k / half)) for k in range(half)] for s in [1, 2, 5]])
    w0 = np.concatenate([denoiser.layers[0].weight.detach().double().numpy(),
                         denoiser.time_in.weight.detach().double().numpy()], axis=1)  # (7, 9 + 4)
    h = np.concatenate([x.double().numpy(), lin(denoiser.time_proj, emb)], axis=1) @ w0.T
    h = np.tanh(h + denoiser.layers[0].bias.detach().double().numpy())
    h = np.tanh(lin(denoiser.layers[1], h))
    h = lin(denoiser.layers[2], h)
    np.testing.assert_allclose(out.detach().double().numpy(), h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_denoiser_sparse_input_under_bf16_autocast(device):
    """The sparse first product runs in float32 even under bf16 autocast (CUDA has no bf16 sparse kernel)."""
    torch.manual_seed(0)
    denoiser = Denoiser(64, hidden=(32,), time_dim=8).eval().to(device)
    x = (torch.rand(5, 64, device=device) < 0.1).float()
    t = torch.tensor([1, 2, 3, 4, 5], device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        sparse, dense = denoiser(x.to_sparse(), t), denoiser(x, t)
    torch.testing.assert_close(sparse.float(), dense.float(), rtol=0.05, atol=0.02)


def test_denoiser_dropout_only_in_train_mode():
    torch.manual_seed(0)
    denoiser = Denoiser(50, hidden=(8,), time_dim=4, dropout=0.5)
    x = torch.rand(4, 50) + 0.5
    t = torch.tensor([1, 2, 3, 4])
    denoiser.train()
    a, b = denoiser(x, t), denoiser(x, t)
    assert not torch.allclose(a, b)  # a fresh dropout mask each call
    denoiser.eval()
    c, d = denoiser(x, t), denoiser(x, t)
    assert torch.equal(c, d)
    assert not torch.allclose(a, c)
    no_dropout = Denoiser(50, hidden=(8,), time_dim=4, dropout=0.0).train()
    assert torch.equal(no_dropout(x, t), no_dropout(x, t))


def test_denoiser_dropout_is_inverted_dropout_with_rate_p():
    """The first layer sees each input zeroed with probability p and the rest scaled by 1 / (1 - p)."""
    torch.manual_seed(0)
    denoiser = Denoiser(20000, hidden=(4,), time_dim=4, dropout=0.3).train()
    seen = []
    product = denoiser.input_product
    denoiser.input_product = lambda x: seen.append(x) or product(x)  # what layer 0 sees
    x = torch.full((2, 20000), 2.0)
    denoiser(x, torch.tensor([1, 2]))
    kept = seen[0] != 0
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.01)
    torch.testing.assert_close(seen[0][kept], torch.full((int(kept.sum()),), 2.0 / 0.7))


@pytest.mark.parametrize("p", [0.5, 0.25, 0.1, 0.9])
def test_keep_mask_keeps_each_entry_with_probability_one_minus_p(p):
    """16 bits an entry: the kept fraction is 1 - p (within 4 standard errors), p = 0.5 splits the 2^16 values
    exactly in two, and neighbouring entries are independent (the bits of one 64-bit draw)."""
    torch.manual_seed(3)
    keep = keep_mask((250, 4001), p)  # an odd size: the last draw's words are partly unused
    assert keep.dtype == torch.bool and keep.shape == (250, 4001)
    n = keep.numel()
    assert abs(float(keep.float().mean()) - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)
    flat = keep.flatten()[: n // 4 * 4].view(-1, 4).float()  # the four entries of each draw
    both = float((flat[:, 0] * flat[:, 1]).mean())
    assert abs(both - (1 - p) ** 2) < 4 * math.sqrt((1 - p) ** 2 / (n // 4))
    words = torch.arange(-2**15, 2**15, dtype=torch.int16)
    assert int((words >= round(0.5 * 65536) - 32768).sum()) == 2**15


def test_layer_zero_is_stored_transposed_and_trains_as_a_contiguous_one():
    """W_0 lives as (items, hidden) rows with the authors' init scale, and an Adam step on it (the fused kernel
    walks memory order) gives what it gives on a contiguous copy, also with a gradient in the other layout."""
    from diffmm.optim import Adam

    torch.manual_seed(0)
    denoiser = Denoiser(30, hidden=(8,), time_dim=4)
    w = denoiser.layers[0].weight
    assert w.shape == (8, 30) and w.T.is_contiguous()
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2.0 / (30 + 4 + 8)), rel=0.25)
    plain = nn.Parameter(w.detach().contiguous())
    grad = torch.randn(8, 30)
    for grad_layout in (grad, grad.T.contiguous().T):
        a, b = nn.Parameter(w.detach().clone(memory_format=torch.preserve_format)), nn.Parameter(plain.detach().clone())
        opt_a, opt_b = Adam([a], lr=0.1), Adam([b], lr=0.1)
        for _ in range(3):
            a.grad, b.grad = grad_layout.clone(memory_format=torch.preserve_format), grad.clone()
            opt_a.step()
            opt_b.step()
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)
    state = Adam([plain], lr=0.1)
    plain.grad = grad.clone()
    state.step()
    moved = Adam([nn.Parameter(w.detach().clone(memory_format=torch.preserve_format))], lr=0.1)
    moved.load_state_dict(state.state_dict())  # moments written for a row-major parameter
    assert all(s["exp_avg"].stride() == w.stride() for s in moved.state.values())
    torch.testing.assert_close(next(iter(moved.state.values()))["exp_avg"], state.state[plain]["exp_avg"])
    workspace = Workspace()
    assert workspace.take_like("g", w).stride() == w.stride()


def test_drawing_into_buffers_gives_the_same_numbers():
    """q_sample(out=) and Denoiser.drop(x, workspace) draw what the allocating forms draw, from the same stream."""
    diffusion = GaussianDiffusion(BETAS)
    x0, t = torch.rand(6, 30), torch.randint(1, len(BETAS) + 1, (6,))
    torch.manual_seed(7)
    plain = diffusion.q_sample(x0, t)
    torch.manual_seed(7)
    buffer = torch.full((6, 30), float("nan"))
    assert diffusion.q_sample(x0, t, out=buffer) is buffer
    torch.testing.assert_close(buffer, plain, rtol=0, atol=0)
    denoiser = Denoiser(30, hidden=(4,), time_dim=4, dropout=0.4).train()
    torch.manual_seed(8)
    dropped = denoiser.drop(plain)
    torch.manual_seed(8)
    workspace = Workspace()
    workspace.take("dropout/words", (50,), buffer, dtype=torch.int64).fill_(-1)  # longer than the 45 words drawn
    in_place = denoiser.drop(buffer, workspace)
    assert in_place is buffer
    torch.testing.assert_close(in_place, dropped, rtol=0, atol=0)
    assert denoiser.eval().drop(plain) is plain
