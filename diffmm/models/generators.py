"""Modality-aware graph generators: the diffusion model of Sec. 2.2 and the VGAE of the 'w/o DM' ablation.

A generator learns, for one modality, to reconstruct users' interaction vectors; its scores
pick each user's top-k items, which become that modality's graph A^m (Sec. 2.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from diffmm import dense
from diffmm.config import DiffMMConfig
from diffmm.contrastive import l2_normalize
from diffmm.denoiser import Denoiser
from diffmm.diffusion import GaussianDiffusion, linear_schedule
from diffmm.graph import Adjacency, sparse_mm


@dataclass
class GeneratorContext:
    """The recommender's current state that a generator may read (all detached)."""

    user_embedding: torch.Tensor  # (U, d) id embeddings E^u
    item_embedding: torch.Tensor  # (I, d) id embeddings e^i
    features: torch.Tensor  # (I, d) Trans(f^m) of this modality (Eq. 15 before Norm)
    adjacency: Adjacency  # normalised interaction graph
    workspace: dense.Workspace | None = None  # buffers the chunks of a training pass reuse (None: fresh ones)


class DiffusionGenerator(nn.Module):
    """Denoiser + Gaussian diffusion, trained with L_elbo + lambda0 * L_msi (Eq. 24)."""

    def __init__(self, n_items: int, config: DiffMMConfig):
        super().__init__()
        self.config = config
        self.diffusion = GaussianDiffusion(linear_schedule(config.steps, config.noise_scale, config.noise_min,
                                                           config.noise_max, config.first_beta))
        self.denoiser = Denoiser(n_items, config.denoiser_hidden, config.time_dim, config.denoiser_dropout)

    def loss(self, rows: torch.Tensor, users: torch.Tensor, ctx: GeneratorContext) -> dict[str, torch.Tensor]:
        """rows: (B, I) observed vectors alpha_0 of ``users``, sparse CSR. Returns the batch losses (Eq. 24).

        With the MLP denoiser the output layer, Eq. 13 and Eq. 14 run as one pass with a fused backward
        (:class:`_ReconstructionLosses`), and every (B, I) block is a buffer of ``ctx.workspace``; any other
        x0-predictor takes the plain form, :meth:`GaussianDiffusion.elbo_terms` and Eq. 14 as written below.
        The same random draws, losses and gradients (to float rounding; tests/test_diffmm.py).
        """
        if not isinstance(self.denoiser, Denoiser):
            return self._plain_loss(rows, ctx)
        diffusion, denoiser, msi = self.diffusion, self.denoiser, bool(self.config.msi_weight)
        workspace = ctx.workspace or dense.Workspace()
        (batch, items), like = rows.shape, ctx.item_embedding
        x0 = _dense_rows(rows, workspace.take("x0", (batch, items), like))  # alpha_0
        t = diffusion.sample_steps(batch, x0.device)
        x_t = diffusion.q_sample(x0, t, out=workspace.take("x_t", (batch, items), like))  # Eq. 2
        x_in = denoiser.drop(x_t, workspace)  # in place on x_t
        hidden = denoiser.hidden(denoiser.input_product(x_in), t)
        observed = None
        if msi:
            with torch.autocast(rows.device.type, enabled=False):  # CUDA has no bf16 sparse product
                observed = sparse_mm(rows, ctx.item_embedding.float())  # alpha_0 . e^i of Eq. 14
        last = denoiser.layers[-1]
        elbo, msi_loss = _ReconstructionLosses.apply(*dense.autocast_inputs(hidden, last.weight, last.bias), x0,
                                                     diffusion.loss_weight[t], ctx.features if msi else None, observed,
                                                     workspace.take("x0_hat", (batch, items), like, aligned=True))
        losses = {"elbo": elbo, "msi": msi_loss} if msi else {"elbo": elbo}
        losses["loss"] = elbo + self.config.msi_weight * msi_loss if msi else elbo  # Eq. 24
        return losses

    def _plain_loss(self, rows: torch.Tensor, ctx: GeneratorContext) -> dict[str, torch.Tensor]:
        elbo, x0_hat = self.diffusion.elbo_terms(self.denoiser, rows.to_dense())  # Eq. 11-13
        losses = {"elbo": elbo.mean()}
        if self.config.msi_weight:
            # Eq. 14: || alpha_hat_0 . e_m^i - alpha_0 . e^i ||^2 (mean over d, as the authors' code).
            # e_m^i here is Trans(f_m^i) without Eq. 15's Norm: the authors' code (getImageFeats) does not
            # normalise it for MSI either.
            with torch.autocast(rows.device.type, enabled=False):  # CUDA has no bf16 sparse product
                observed = sparse_mm(rows, ctx.item_embedding.float())
            msi = (x0_hat @ ctx.features - observed).square().mean(-1)
            losses["msi"] = msi.mean()
        losses["loss"] = losses["elbo"] + self.config.msi_weight * losses.get("msi", 0.0)  # Eq. 24
        return losses

    @torch.no_grad()
    def scores(self, rows: torch.Tensor, users: torch.Tensor, ctx: GeneratorContext,
               return_trajectory: bool = False):
        """Denoised interaction scores alpha_hat_0 (B, I) by the inference of Sec. 2.2.3; rows sparse CSR."""
        return self.diffusion.reverse(self.denoiser, rows, self.config.forward_steps, return_trajectory,
                                      workspace=ctx.workspace)


def _dense_rows(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``rows.to_dense()`` (rows: sparse CSR or dense) written into ``out``."""
    if rows.layout == torch.strided:
        return out.copy_(rows)
    counts = rows.crow_indices().diff()
    batch_row = torch.repeat_interleave(torch.arange(len(counts), device=out.device), counts)
    out.zero_()[batch_row, rows.col_indices()] = rows.values().to(out.dtype)
    return out


class _ReconstructionLosses(torch.autograd.Function):
    """Eq. 13's weighted MSE and Eq. 14's MSI from the denoiser's last hidden layer a: (elbo, msi), two scalars.

    alpha_hat_0 = a W_L^T + b_L is written into ``out`` (a (B, I) float32 buffer), read once by MSI's product,
    and turned into alpha_hat_0 - alpha_0 in place; the backward turns that into dL / d alpha_hat_0 in place
    and returns the gradients of a, W_L (:func:`dense.accumulate_grad`) and b_L. Autograd over the plain
    expressions would allocate five more (B, I) blocks a chunk (the squared errors, their mean's and the MSE's
    gradients, MSI's gradient and its sum). ``step_weight``: Eq. 11's weight per row (B,); ``features`` (I, d) and ``observed`` (B, d): e_m^i
    and alpha_0 . e^i of Eq. 14, or None without MSI. The products run in the inputs' dtype (bf16 under
    autocast), the errors and sums in float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, x0, step_weight, features, observed, out):
        with torch.autocast(out.device.type, enabled=False):
            if hidden.dtype == out.dtype:
                torch.addmm(bias, hidden, weight.T, out=out)  # alpha_hat_0
            else:
                out.copy_(torch.addmm(bias, hidden, weight.T))
            residual = out @ features - observed if features is not None else None  # Eq. 14 before the square
            error = out.sub_(x0)  # alpha_hat_0 - alpha_0
            rows, items = error.shape
            elbo = (step_weight * torch.linalg.vector_norm(error, dim=1).square()).sum() / (rows * items)  # Eq. 13
            msi = residual.square().mean() if residual is not None else error.new_zeros(())
        ctx.save_for_backward(hidden, weight, step_weight, features, residual, error)
        ctx.bias_dtype = bias.dtype
        return elbo, msi

    @staticmethod
    def backward(ctx, grad_elbo, grad_msi):
        hidden, weight, step_weight, features, residual, grad = ctx.saved_tensors
        rows, items = grad.shape
        with torch.autocast(grad.device.type, enabled=False):
            grad.mul_((step_weight * (2 * grad_elbo / (rows * items)))[:, None])  # d elbo / d alpha_hat_0
            if residual is not None:
                grad.addmm_(residual * (2 * grad_msi / residual.numel()), features.T)  # + d msi / d alpha_hat_0
            low = grad.to(weight.dtype)
            return (low @ weight, dense.accumulate_grad(weight, low.T, hidden), grad.sum(0).to(ctx.bias_dtype),
                    None, None, None, None, None)


class VGAEGenerator(nn.Module):
    """Variational graph auto-encoder (Kipf & Welling 2016) over [E^u; Norm(Trans(f^m))].

    Encoder: one propagation over the interaction graph, then linear heads for mu and log sigma;
    decoder: inner products z_u . z_i; loss: class-balanced BCE over the batch users' rows + KL.
    """

    def __init__(self, n_users: int, config: DiffMMConfig):
        super().__init__()
        self.n_users = n_users
        self.mu = nn.Linear(config.dim, config.dim)
        self.log_sigma = nn.Linear(config.dim, config.dim)

    def encode(self, ctx: GeneratorContext) -> tuple[torch.Tensor, torch.Tensor]:
        h = ctx.adjacency @ torch.cat([ctx.user_embedding, l2_normalize(ctx.features)])  # (U + I, d)
        return self.mu(h), self.log_sigma(h).clamp(-10, 10)

    def loss(self, rows: torch.Tensor, users: torch.Tensor, ctx: GeneratorContext) -> dict[str, torch.Tensor]:
        rows = rows.to_dense()
        mu, log_sigma = self.encode(ctx)
        z = mu + torch.randn_like(mu) * log_sigma.exp()
        logits = z[users] @ z[self.n_users:].T  # (B, I)
        positives = rows.sum().clamp(min=1.0)
        pos_weight = (rows.numel() - positives) / positives
        recon = F.binary_cross_entropy_with_logits(logits, rows, pos_weight=pos_weight)
        kl = -0.5 * (1 + 2 * log_sigma - mu.square() - (2 * log_sigma).exp()).sum(-1).mean() / mu.shape[0]
        return {"recon": recon, "kl": kl, "loss": recon + kl}

    @torch.no_grad()
    def scores(self, rows: torch.Tensor, users: torch.Tensor, ctx: GeneratorContext,
               return_trajectory: bool = False):
        mu, _ = self.encode(ctx)
        out = mu[users] @ mu[self.n_users:].T
        return (out, [out]) if return_trajectory else out
