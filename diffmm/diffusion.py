"""Gaussian diffusion over a user's interaction vector (Sec. 2.2, Eq. 1-13).

Notation follows the paper: gamma_t = 1 - beta_t, gamma_bar_t = prod_{s<=t} gamma_s, and steps
t in {1, ..., T}; index 0 of every schedule array is the clean state (gamma_bar_0 = 1).
Schedules are pure functions computed in float64 and stored as float32 buffers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffmm import dense


def linear_schedule(steps: int, noise_scale: float, noise_min: float, noise_max: float,
                    first_beta: float | None = None) -> np.ndarray:
    """beta_1..beta_T (float64, shape (T,)) of the linear schedule on 1 - gamma_bar_t.

    Eq. 3: 1 - gamma_bar_t = s * [gamma_min + (t - 1) / (T - 1) * (gamma_max - gamma_min)].
    ``first_beta`` overrides beta_1 afterwards, as the authors' code does (``beta_fixed``: 1e-4).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    # every step must add noise (beta_t > 0): gamma_bar has to fall strictly from step to step
    if not (0 < noise_scale <= 1 and 0 < noise_min < 1 and 0 < noise_max < 1
            and (noise_min < noise_max or (steps == 1 and noise_min == noise_max))):
        raise ValueError(f"Eq. 3 needs 0 < noise_scale <= 1 and 0 < noise_min < noise_max < 1 (noise at each of the "
                         f"{steps} steps), got noise_scale={noise_scale}, noise_min={noise_min}, noise_max={noise_max}")
    one_minus_bar = noise_scale * np.linspace(noise_min, noise_max, steps, dtype=np.float64)  # Eq. 3
    bar = 1.0 - one_minus_bar
    betas = np.empty(steps, dtype=np.float64)
    betas[0] = 1.0 - bar[0]
    betas[1:] = np.minimum(1.0 - bar[1:] / bar[:-1], 0.999)  # gamma_t = gamma_bar_t / gamma_bar_{t-1}
    if first_beta is not None:
        betas[0] = first_beta
    return betas


class GaussianDiffusion(nn.Module):
    """Forward noising, posterior, loss weights and deterministic reverse inference.

    Args:
        betas: (T,) float64 noise schedule, e.g. from :func:`linear_schedule`.
    """

    def __init__(self, betas: np.ndarray):
        super().__init__()
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError(f"betas must be a 1-d array in (0, 1), got {betas}")
        self.steps = len(betas)
        gamma = np.concatenate([[1.0], 1.0 - betas])  # gamma_0 := 1 (unused), gamma_1..T
        bar = np.cumprod(gamma)  # gamma_bar_0 = 1, gamma_bar_1..T
        snr = np.full_like(bar, np.inf)
        snr[1:] = bar[1:] / (1.0 - bar[1:])
        # Eq. 11 weight SNR(t-1) - SNR(t) (its constant 1/2 dropped, as in the authors' code);
        # t = 1 is the unweighted reconstruction term of Eq. 12.
        weight = np.ones_like(bar)
        weight[2:] = snr[1:-1] - snr[2:]
        weight[0] = 0.0
        # Eq. 8 / Eq. 10: posterior mean = coef_xt * alpha_t + coef_x0 * alpha_0 (standard DDPM form;
        # the paper's first coefficient prints gamma_bar_t where sqrt(gamma_t) is meant).
        prev = np.concatenate([[1.0], bar[:-1]])
        with np.errstate(divide="ignore", invalid="ignore"):
            coef_xt = np.sqrt(gamma) * (1.0 - prev) / (1.0 - bar)
            coef_x0 = np.sqrt(prev) * (1.0 - gamma) / (1.0 - bar)
            variance = (1.0 - gamma) * (1.0 - prev) / (1.0 - bar)  # sigma^2(t), Eq. 8
        for name, values in dict(betas=np.concatenate([[0.0], betas]), gamma_bar=bar,
                                 sqrt_gamma_bar=np.sqrt(bar), sqrt_one_minus_gamma_bar=np.sqrt(1.0 - bar),
                                 loss_weight=weight, posterior_coef_xt=np.nan_to_num(coef_xt),
                                 posterior_coef_x0=np.nan_to_num(coef_x0),
                                 posterior_variance=np.nan_to_num(variance)).items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)
        # the same Eq. 10 coefficients as Python floats: the hidden-space reverse reads them per step
        # without a device round trip
        self._coef_x0, self._coef_xt = np.nan_to_num(coef_x0).tolist(), np.nan_to_num(coef_xt).tolist()

    @staticmethod
    def _at(schedule: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return schedule[t].unsqueeze(-1)  # (B, 1), broadcasts over items

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 2: alpha_t = sqrt(gamma_bar_t) alpha_0 + sqrt(1 - gamma_bar_t) eps.

        eps is drawn when ``noise`` is None; ``out``: a buffer of ``x0``'s shape to write alpha_t into.
        """
        out = torch.empty_like(x0) if out is None else out
        scaled_noise = out.normal_() if noise is None else out.copy_(noise)  # normal_: randn_like's numbers
        scaled_noise.mul_(self._at(self.sqrt_one_minus_gamma_bar, t))
        return scaled_noise.addcmul_(self._at(self.sqrt_gamma_bar, t), x0)

    def posterior_mean(self, xt: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                       overwrite_x0: bool = False) -> torch.Tensor:
        """Eq. 8 (with the true x0) or Eq. 10 (with the denoiser's prediction of x0).

        ``overwrite_x0`` writes the result into ``x0``'s buffer (inference: one (B, I) buffer per step).
        """
        out = x0 if overwrite_x0 else x0.clone()
        return out.mul_(self._at(self.posterior_coef_x0, t)).addcmul_(self._at(self.posterior_coef_xt, t), xt)

    def sample_steps(self, batch: int, device) -> torch.Tensor:
        """t ~ U{1, ..., T} (Eq. 13)."""
        return torch.randint(1, self.steps + 1, (batch,), device=device)

    def elbo_terms(self, denoiser: nn.Module, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-user weighted reconstruction loss and the predicted x0 (for MSI, Eq. 14).

        Eq. 13 writes the loss unweighted; the weight is Eq. 11's SNR(t-1) - SNR(t) (1 at t = 1), as in
        the authors' code. With the default schedule it is 1 / 8,326 / 760 / 285 / 149 for t = 1..5: the
        loss is dominated by t = 2.

        Returns:
            loss: (B,) weight_t * mean_i (x0_hat - x0)^2.
            x0_hat: (B, n_items).
        """
        t = self.sample_steps(x0.shape[0], x0.device)
        x0_hat = denoiser(self.q_sample(x0, t), t)  # Eq. 2, then the denoiser (alpha_t is not kept alive)
        mse = F.mse_loss(x0_hat, x0.to(x0_hat.dtype), reduction="none").mean(dim=-1)  # Eq. 13, mean over items
        return self.loss_weight[t] * mse, x0_hat

    @torch.no_grad()
    def reverse(self, denoiser: nn.Module, x0: torch.Tensor, forward_steps: int = 0,
                return_trajectory: bool = False, workspace: dense.Workspace | None = None):
        """Sec. 2.2.3 inference: noise x0 for T' forward steps, then T deterministic reverse steps.

        alpha_hat_{t-1} = mu_theta(alpha_hat_t, t) (Eq. 10, variance ignored). ``x0``: (B, n_items), dense
        or sparse. Returns alpha_hat_0 (B, n_items), and the list [alpha_hat_T', ..., alpha_hat_0] if ``return_trajectory``.
        ``denoiser(x, t)`` may be any x0-predictor; an MLP with ``input_product``, ``hidden`` and ``output_to_input``
        (:class:`~diffmm.denoiser.Denoiser`) runs the same recursion in its hidden space, and there, given a
        ``workspace``, writes alpha_hat_0 into its buffer, which the next call with that workspace overwrites.
        """
        if not 0 <= forward_steps <= self.steps:
            raise ValueError(f"forward_steps must be in [0, {self.steps}], got {forward_steps}")
        hidden_space = all(hasattr(denoiser, f) for f in ("input_product", "hidden", "output_to_input"))
        if hidden_space and forward_steps == 0:
            # the first input product takes the observed vectors as given (sparse stays sparse)
            return self._reverse_in_hidden_space(denoiser, x0, x0, return_trajectory, workspace)
        x = x0 = x0.to_dense() if x0.layout != torch.strided else x0
        if forward_steps > 0:
            x = self.q_sample(x0, torch.full((x0.shape[0],), forward_steps, device=x0.device))
        if hidden_space:
            return self._reverse_in_hidden_space(denoiser, x, x, return_trajectory, workspace)
        trajectory = [x]
        for step in range(self.steps, 0, -1):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            x = self.posterior_mean(x, denoiser(x, t).float(), t, overwrite_x0=True)  # Eq. 10
            if return_trajectory:
                trajectory.append(x)
        return (x, trajectory) if return_trajectory else x

    def _reverse_in_hidden_space(self, denoiser: nn.Module, start: torch.Tensor, first_input: torch.Tensor,
                                 return_trajectory: bool, workspace: dense.Workspace | None = None):
        """The reverse loop for a denoiser x0_hat(x, t) = W_L a(W_0 x, t) + b_L (exact algebra, no approximation).

        Eq. 10 mixes alpha_t and x0_hat linearly, so every state is
        alpha_t = W_L A_t + beta_t b_L + g_t alpha_start, with A, beta, g updated by the Eq. 10 coefficients,
        and the next input product W_0 alpha_{t-1} = c_x0 (W_0 W_L a_t + W_0 b_L) + c_xt W_0 alpha_t.
        A step then costs one (B, H_L) x (H_L, H_0) product instead of the two (B, items) x (items, H)
        products of the plain loop; alpha_hat_0 is made once, by one output product, at the end. ``start``
        (dense or sparse) is made dense only where a state needs it: the trajectory's, not alpha_hat_0 (Eq. 10
        gives alpha_t the coefficient 0 at t = 1, gamma_bar_0 being 1).
        """
        last = denoiser.layers[-1]
        mix, mix_bias = denoiser.output_to_input()  # W_0 W_L (H_0, H_L), W_0 b_L (H_0,)
        z = denoiser.input_product(first_input)  # W_0 alpha_start (first_input: alpha_start, maybe as sparse)
        acc, beta, g = None, 0.0, 1.0  # alpha_t = W_L acc + beta b_L + g alpha_start

        def state(out: torch.Tensor | None = None) -> torch.Tensor:
            nonlocal start
            x = dense.addmm(last.bias, acc, last.weight.T, beta=beta, out=out).float()
            if g:
                start = start.to_dense() if start.layout != torch.strided else start
                x.add_(start, alpha=g)
            return x

        if return_trajectory:
            start = start.to_dense() if start.layout != torch.strided else start
        trajectory = [start]
        for step in range(self.steps, 0, -1):
            t = torch.full((start.shape[0],), step, device=start.device, dtype=torch.long)
            a = denoiser.hidden(z, t)  # x0_hat(alpha_t) = W_L a + b_L
            c_x0, c_xt = self._coef_x0[step], self._coef_xt[step]  # Eq. 10
            if step > 1:  # W_0 alpha_{t-1}, the next step's input product
                z = dense.addmm(mix_bias, a, mix.T, beta=c_x0, alpha=c_x0).add_(z, alpha=c_xt)
            acc = a * c_x0 if acc is None else (acc * c_xt).add_(a, alpha=c_x0)
            beta, g = c_x0 + c_xt * beta, c_xt * g
            if return_trajectory:
                trajectory.append(state())
        if return_trajectory:
            return trajectory[-1], trajectory
        shape = (start.shape[0], last.weight.shape[0])
        return state(None if workspace is None else workspace.take("alpha_hat_0", shape, acc, aligned=True))

    def extra_repr(self) -> str:
        return f"steps={self.steps}, gamma_bar_T={float(self.gamma_bar[-1]):.5f}"
