"""DiffMM (Jiang et al., ACM MM 2024): multi-modal graph diffusion for recommendation.

Read top to bottom: per-modality feature alignment (Eq. 15), the generated graphs A^m
(Sec. 2.2.3, rebuilt every epoch by :meth:`DiffMM.before_epoch`), multi-modal graph aggregation
(Eq. 20-23), cross-modal contrastive views and losses (Eq. 16-19) and the training objective
(Eq. 26). Modalities are a dict; each per-modality step is one batched operation over all of them.
"""

from __future__ import annotations

import contextlib
import functools
import time

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from diffmm.config import DiffMMConfig
from diffmm.contrastive import info_nce, l2_normalize
from diffmm.denoiser import frozen_weights
from diffmm.dense import Workspace
from diffmm.optim import Adam
from diffmm.data.dataset import RecDataset
from diffmm.graph import (Adjacency, SparseRows, bipartite, csr_from_tensors, csr_to_tensors, edge_dropout,
                          sym_normalize, topk_interactions)
from diffmm.models.base import Recommender, adam, bpr
from diffmm.models.generators import DiffusionGenerator, GeneratorContext, VGAEGenerator
from diffmm import memory


def _mix(weights: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    """sum_m w_m x_m."""
    return functools.reduce(torch.add, (w * x for w, x in zip(weights, tensors)))


class DiffMM(Recommender):
    """The DiffMM recommender.

    Args:
        dataset: interactions and ``item_features`` (any number of modalities).
        config: :class:`DiffMMConfig`; ``DiffMMConfig.preset('tiktok')`` gives the authors' settings.
    """

    def __init__(self, dataset: RecDataset, config: DiffMMConfig | None = None):
        super().__init__(dataset)
        self.config = cfg = config or DiffMMConfig()
        if not dataset.item_features:
            raise ValueError(f"DiffMM needs item features; dataset '{dataset.name}' has no modality")
        if cfg.rebuild_k > dataset.n_items:
            raise ValueError(f"DiffMMConfig.rebuild_k = {cfg.rebuild_k} exceeds the {dataset.n_items} items of "
                             f"'{dataset.name}': set --rebuild_k to at most {dataset.n_items}")
        listed = [m for m in cfg.modality_order if m in dataset.item_features]
        self.modalities = listed + [m for m in dataset.item_features if m not in listed]
        self._train = dataset.train
        d = cfg.dim
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))  # E^u
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))  # e^i
        features = {m: dataset.item_features[m] for m in self.modalities}
        for m, feats in features.items():
            self.register_buffer(f"raw_{m}", torch.from_numpy(np.asarray(feats, dtype=np.float32)), persistent=False)
        # Trans(.) of Eq. 15, one per modality
        self.projections = nn.ModuleDict({
            m: nn.Linear(f.shape[1], d) if cfg.projection == "linear" else nn.Linear(f.shape[1], d, bias=False)
            for m, f in features.items()})
        if cfg.projection == "leaky":
            for proj in self.projections.values():
                nn.init.xavier_uniform_(proj.weight)
        self.modality_logits = nn.Parameter(torch.full((len(self.modalities),), 1.0 / len(self.modalities)))  # kappa
        self.generators = nn.ModuleDict({
            m: DiffusionGenerator(self.n_items, cfg) if cfg.generator == "diffusion" else VGAEGenerator(self.n_users, cfg)
            for m in self.modalities})
        # the interaction graph A with self-loops, normalised (the authors' torchBiAdj)
        self._graph_scipy = sym_normalize(bipartite(dataset.train, self_loops=True))
        # generated graphs: binary users x items A^m, and the normalised + edge-dropped versions used
        empty = sp.csr_matrix((self.n_users, self.n_items), dtype=np.float32)
        self.generated = {m: empty for m in self.modalities}
        self._set_graphs({m: self._normalized(empty) for m in self.modalities}, None)

    # ------------------------------------------------------------------ graphs
    def _normalized(self, interactions: sp.csr_matrix) -> sp.csr_matrix:
        return sym_normalize(bipartite(interactions, self_loops=True))

    def _set_graphs(self, generated_adj: dict, view_adj: dict | None) -> None:
        self._generated_scipy, self._view_scipy = generated_adj, view_adj
        self.forget("generated/")  # device copies are made once per rebuild, not per step

    @property
    def graph(self) -> Adjacency:
        return self.on_device("graph", lambda device: Adjacency(self._graph_scipy, device, symmetric=True))

    def generated_adjacency(self, m: str) -> Adjacency:
        """The normalised A^m: edge-dropped, or undropped at evaluation when ``eval_graph`` is 'full'."""
        if not self.training and self.config.eval_graph == "full":
            return self.on_device(f"generated/full/{m}",
                                  lambda device: Adjacency(self._normalized(self.generated[m]), device))
        return self.on_device(f"generated/{m}", lambda device: Adjacency(self._generated_scipy[m], device))

    def view_adjacency(self, m: str) -> Adjacency:
        if self._view_scipy is None:
            return self.generated_adjacency(m)
        return self.on_device(f"generated/view/{m}", lambda device: Adjacency(self._view_scipy[m], device))

    def get_extra_state(self):
        """The generated graphs, as tensors: a checkpoint holds tensors and plain values only."""
        def pack(graphs):
            return None if graphs is None else {m: csr_to_tensors(g) for m, g in graphs.items()}

        return {"generated": pack(self.generated), "generated_adj": pack(self._generated_scipy),
                "view_adj": pack(self._view_scipy)}

    def set_extra_state(self, state):
        def unpack(graphs):
            return None if graphs is None else {m: csr_from_tensors(g) for m, g in graphs.items()}

        self.generated = unpack(state["generated"])
        self._set_graphs(unpack(state["generated_adj"]), unpack(state["view_adj"]))

    # ---------------------------------------------------------------- encoder
    def modal_features(self) -> dict[str, torch.Tensor]:
        """Trans(f^m) for every modality, (I, d) each (Eq. 15 before Norm)."""
        out = {}
        for m, proj in self.projections.items():
            h = proj(getattr(self, f"raw_{m}"))
            out[m] = F.leaky_relu(h, 0.2) if self.config.projection == "leaky" else h
        return out

    def normalized_features(self) -> dict[str, torch.Tensor]:
        """Norm(Trans(f^m)) per modality, (I, d) each: the item rows of Eq. 16's and Eq. 20's inputs."""
        return {m: l2_normalize(f) for m, f in self.modal_features().items()}

    def modality_weights(self) -> dict[str, float]:
        """softmax(kappa) of Eq. 21, per modality."""
        return dict(zip(self.modalities, torch.softmax(self.modality_logits, 0).tolist()))

    @property
    def graph_blocks(self) -> tuple[Adjacency, torch.Tensor, torch.Tensor]:
        """A's blocks, A = [[diag(s_u), R], [R^T, diag(s_i)]]: the normalised (U, I) interactions R and the
        self-loops' weights s_u (U,) and s_i (I,)."""
        def build(device):
            U, a = self.n_users, self._graph_scipy
            diagonal = a.diagonal()
            if a[:U, :U].nnz + a[U:, U:].nnz != np.count_nonzero(diagonal):  # Eq. 20's blocks assume it
                raise RuntimeError("the interaction graph links users with users or items with items")
            loops = torch.from_numpy(diagonal.astype(np.float32)).to(device)
            return Adjacency(a[:U, U:], device), loops[:U], loops[U:]

        return self.on_device("graph-blocks", build)

    def _propagate(self, x: torch.Tensor) -> torch.Tensor:
        """sum_{l=0..L} A^l x: Eq. 17 / Eq. 22 sum-pooling over L layers of the interaction graph."""
        return self.graph.power_sum(x, self.config.layers)

    def encode(self, features: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings H~ (Eq. 20-23) as (N, d) with N = U + I; also returns H_0.

        ``features``: :meth:`normalized_features` (computed here when not given).
        """
        features = features if features is not None else self.normalized_features()
        d, e_u, e_i = self.config.dim, self.user_embedding, self.item_embedding
        # Eq. 20 is affine in the item features, with the same E^u and e^i terms for every modality, and
        # Eq. 21's weights sum to one (a softmax): sum_m w_m z^m is Eq. 20's A-terms taken once, on the mixed
        # features n = sum_m w_m Norm(e_m^i), plus the mixed A^m terms. Per block of A = [[diag(s_u), R], [R^T,
        # diag(s_i)]]:
        #   users  A [E^u; n] + A [(A [E^u; n])_u; e^i] = (1 + s_u) (s_u E^u + R n) + R e^i
        #   items  A [E^u; n] + A [(A [E^u; n])_u; e^i] = R^T ((1 + s_u) E^u + R n) + s_i (n + e^i)
        r, loops_u, loops_i = self.graph_blocks
        weights = torch.softmax(self.modality_logits, 0)  # Eq. 21
        n = _mix(weights, [features[m] for m in self.modalities])  # (I, d)
        rn, rei = (r @ torch.cat([n, e_i], 1)).split(d, 1)  # R n and R e^i, (U, d) each
        scale = (1 + loops_u)[:, None]
        users = (loops_u[:, None] * e_u + rn) * scale + rei
        items = r.T @ (e_u * scale + rn) + loops_i[:, None] * (n + e_i)
        del rn, rei, n
        ids = torch.cat([e_u, e_i])  # (N, d)
        generated = _mix(weights, [self.generated_adjacency(m) @ ids for m in self.modalities])
        h0 = torch.cat([users, items]).add_(generated, alpha=self.config.generated_graph_weight)  # Eq. 20-21
        del users, items, generated
        h = self._propagate(h0) + self.config.omega * l2_normalize(h0)  # Eq. 22-23
        return h, h0

    def final_embeddings(self):
        h, _ = self.encode()
        return h[: self.n_users], h[self.n_users:]

    def contrastive_views(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Z~^m (N, d) per modality from :meth:`normalized_features`: Eq. 16 on the view graph, then Eq. 17 on A."""
        first = torch.cat([self.view_adjacency(m) @ torch.cat([self.user_embedding, features[m]])
                           for m in self.modalities], 1)  # Eq. 16
        z = self._propagate(first)  # Eq. 17, all modalities at once
        return dict(zip(self.modalities, z.split(self.config.dim, 1)))

    # ------------------------------------------------------------------ losses
    def loss(self, users, positives, negatives):
        """Eq. 26: L_bpr + lambda1 L_cl + lambda2 ||Theta||^2, for a batch of BPR triples."""
        cfg = self.config
        use_cl = cfg.cl_weight and (cfg.cl_anchor == "main" or len(self.modalities) > 1)
        # Norm(Trans(f^m)) once for both views; only the contrastive terms that are used are computed
        # (with one modality, Eq. 18 has no pair)
        features = self.normalized_features()
        views = self.contrastive_views(features) if use_cl else None
        h, _ = self.encode(features)
        del features  # the backward pass does not need them: freed before the losses are formed
        # one gather for the three (one full-size gradient in the backward, not three)
        u, i, j = h[torch.cat([users, self.n_users + positives, self.n_users + negatives])].split(len(users))
        rec = bpr((u * i).sum(-1), (u * j).sum(-1))  # Eq. 25
        reg = self.user_embedding.square().sum() + self.item_embedding.square().sum()
        losses = {"bpr": rec, "l2": reg}
        total = rec + cfg.l2 * reg
        if use_cl:
            if cfg.cl_anchor == "main":  # Eq. 19
                pairs = [(h, views[m]) for m in self.modalities]
            else:  # Eq. 18 over modality pairs (each unordered pair once, as the authors' code)
                pairs = [(views[a], views[b]) for k, a in enumerate(self.modalities) for b in self.modalities[k + 1:]]
            U, tau = self.n_users, cfg.temperature
            # L_cl = L_cl^user + L_cl^item: users contrast with users, items with items (one call per pair)
            groups = dict(nodes=(users, positives), sizes=(U, self.n_items), dtype=self._low_precision)
            cl = sum(info_nce(a, b, temperature=tau, **groups) for a, b in pairs)
            losses["cl"] = cl
            total = total + cfg.cl_weight * cl
        losses["loss"] = total
        return losses

    # ------------------------------------------------------ per-epoch generation
    def configure_optimizers(self, lr: float):
        rec = [p for name, p in self.named_parameters() if not name.startswith("generators.")]
        return {"rec": adam(rec, lr), "generator": adam(self.generators.parameters(), lr)}

    def generator_context(self, m: str, features: dict[str, torch.Tensor],
                          workspace: Workspace | None = None) -> GeneratorContext:
        return GeneratorContext(self.user_embedding.detach(), self.item_embedding.detach(),
                                features[m].detach(), self.graph, workspace)

    @property
    def _low_precision(self) -> torch.dtype:
        return torch.bfloat16 if self.config.precision == "bf16" else torch.float32

    def _autocast(self):
        """bfloat16 autocast for the denoiser when ``precision='bf16'`` (CPU with AVX512-BF16, or CUDA)."""
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_rows(self, users: torch.Tensor) -> torch.Tensor:
        """(B, I) training rows alpha_0 of the given users as a sparse CSR tensor, gathered on the device."""
        return self.on_device("rows", lambda device: SparseRows(self._train, device)).csr(users)

    def _user_batches(self, shuffle: bool):
        """The users of each generator batch (their rows come from :meth:`train_rows`)."""
        order = torch.randperm(self.n_users) if shuffle else torch.arange(self.n_users)
        yield from order.to(self.device).split(self.config.generator_batch_size)

    def train_generators(self, optimizer: Adam) -> dict[str, float]:
        """One pass over all users: each modality's generator minimises Eq. 24.

        A batch's loss is a mean over its users, so its gradient is accumulated over row chunks of equal
        size whose dense (rows x items) tensors stay within ``memory.GENERATOR_CHUNK_BYTES`` on CPU (TikTok:
        two 512-row chunks of a 1,024 batch; a GPU takes ``memory.chunk_bytes``, one chunk): the same step,
        with about half the activation memory. Only one modality's activations and
        gradients are alive at a time: the generators share no parameters, so one step per modality
        (Adam skips parameters without a gradient) equals the step on the summed loss.
        """
        with torch.no_grad():
            features = self.modal_features()
        workspace = Workspace()  # every chunk of every modality writes its (rows x items) blocks into the same memory
        contexts = {m: self.generator_context(m, features, workspace) for m in self.modalities}
        budget = memory.chunk_bytes(self.device.type, memory.GENERATOR_CHUNK_BYTES)
        totals, n = {}, 0
        for users in self._user_batches(shuffle=True):
            parts = users.tensor_split(memory.chunk_count(len(users), 4 * self.n_items, budget))
            chunks = [(c, self.train_rows(c)) for c in parts]
            for m, generator in self.generators.items():
                # each chunk's gradients accumulate in place into buffers that the modalities take in turn
                for i, p in enumerate(generator.parameters()):
                    p.grad = workspace.take_like(f"grad/{i}", p).zero_()
                for chunk_users, rows in chunks:
                    share = len(chunk_users) / len(users)
                    with self._autocast():
                        parts = generator.loss(rows, chunk_users, contexts[m])
                    (parts["loss"] * share).backward()
                    for name, value in parts.items():
                        totals[f"{m}_{name}"] = totals.get(f"{m}_{name}", 0.0) + share * float(value.detach())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            n += 1
        return {f"gen_{k}": v / n for k, v in totals.items()}

    @torch.no_grad()
    def generate_graphs(self) -> dict[str, sp.csr_matrix]:
        """Each user's top-k denoised items per modality, as binary users x items matrices (Sec. 2.2.3)."""
        was_training = self.training
        self.eval()
        features = self.modal_features()
        workspace = Workspace()  # each batch's scores overwrite the previous batch's
        contexts = {m: self.generator_context(m, features, workspace) for m in self.modalities}
        top = {m: [] for m in self.modalities}
        for m, generator in self.generators.items():  # one modality's cached weight maps alive at a time
            with frozen_weights(generator):
                for users in self._user_batches(shuffle=False):
                    with self._autocast():
                        scores = generator.scores(self.train_rows(users), users, contexts[m])
                    top[m].append(scores.float().topk(self.config.rebuild_k, dim=1).indices)
        self.train(was_training)
        users = np.arange(self.n_users)
        return {m: topk_interactions(users, torch.cat(t).cpu().numpy(), self.n_items, self.n_users)
                for m, t in top.items()}

    def rebuild_graphs(self) -> None:
        """Regenerate every A^m, normalise it, apply edge dropout; mix in random views if rho > 0."""
        cfg = self.config
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        self.generated = self.generate_graphs()
        generated = {m: edge_dropout(self._normalized(g), cfg.keep_rate, rng) for m, g in self.generated.items()}
        views = None
        if cfg.fusion_ratio > 0 and cfg.cl_weight:  # Sec. 3.6: rho of the view is a randomly dropped A
            views = {m: ((1 - cfg.fusion_ratio) * generated[m]
                         + cfg.fusion_ratio * edge_dropout(self._graph_scipy, cfg.view_keep_rate, rng)).tocsr()
                     for m in self.modalities}
        self._set_graphs(generated, views)

    def before_epoch(self, epoch, optimizers, progress=False):
        t0 = time.perf_counter()
        stats = self.train_generators(optimizers["generator"])
        memory.phase_end()
        t1 = time.perf_counter()
        self.rebuild_graphs()
        stats.update(generator_train_s=t1 - t0, graph_rebuild_s=time.perf_counter() - t1)
        return stats

    # ---------------------------------------------------------------- analysis
    @torch.no_grad()
    def denoising_trajectory(self, users, modality: str) -> list[torch.Tensor]:
        """[alpha_hat_T, ..., alpha_hat_0] (each (B, I)) for chosen users and one modality."""
        users = torch.as_tensor(np.asarray(users), dtype=torch.long, device=self.device)
        rows = self.train_rows(users)
        was_training = self.training
        self.eval()
        features = self.modal_features()
        _, trajectory = self.generators[modality].scores(rows, users,
                                                         self.generator_context(modality, features),
                                                         return_trajectory=True)
        self.train(was_training)
        return [x.cpu() for x in trajectory]

    def __repr__(self):
        c = self.config
        return (f"DiffMM(users={self.n_users}, items={self.n_items}, modalities={self.modalities}, dim={c.dim}, "
                f"generator={c.generator}, cl={c.cl_anchor if c.cl_weight else 'off'}, "
                f"msi={'on' if c.msi_weight else 'off'}, rho={c.fusion_ratio})")
