"""Modality-aware graph generators: the diffusion model of Sec. 2.2 and the VGAE of the 'w/o DM' ablation.

A generator learns, for one modality, to reconstruct users' interaction vectors; its scores
pick each user's top-k items, which become that modality's graph A^m (Sec. 2.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

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


class DiffusionGenerator(nn.Module):
    """Denoiser + Gaussian diffusion, trained with L_elbo + lambda0 * L_msi (Eq. 24)."""

    def __init__(self, n_items: int, config: DiffMMConfig):
        super().__init__()
        self.config = config
        self.diffusion = GaussianDiffusion(linear_schedule(config.steps, config.noise_scale, config.noise_min,
                                                           config.noise_max, config.first_beta))
        self.denoiser = Denoiser(n_items, config.denoiser_hidden, config.time_dim, config.denoiser_dropout)

    def loss(self, rows: torch.Tensor, users: torch.Tensor, ctx: GeneratorContext) -> dict[str, torch.Tensor]:
        """rows: (B, I) observed vectors alpha_0 of ``users``, sparse CSR. Returns the batch losses."""
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
        return self.diffusion.reverse(self.denoiser, rows, self.config.forward_steps, return_trajectory)


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
