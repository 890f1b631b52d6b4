"""Multi-modal baselines of the DiffMM paper's Table 2: VBPR, LightGCN-M, LATTICE and BM3.

Read top to bottom: the shared pieces (item features as buffers, LightGCN's layer mean, kNN
item-item graphs), then the four models. Modalities are the dataset's dict: each model loops over
it and never names one. Nothing of size users x items or items x items is ever dense: a kNN graph
is kept as (n_items, k) neighbour indices and weights, and built a block of rows at a time.

Formulas are cited by the paper's section and symbols.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from diffmm.config import BM3Config, LATTICEConfig, LightGCNMConfig, VBPRConfig
from diffmm.data.dataset import RecDataset
from diffmm.graph import (Adjacency, bipartite, knn_csr, knn_graph, knn_propagate, normalize_knn,
                          normalized_adjacency, row_normalize)
from diffmm.models.base import Recommender, bpr
from diffmm.models.baselines import LightGCN


# ------------------------------------------------------------------ shared pieces
def register_features(model: nn.Module, dataset: RecDataset, trainable: bool = False) -> list[str]:
    """Store each modality's (n_items, d_m) features as ``raw_<name>``; returns the names.

    Fixed features are a buffer, rebuilt from the dataset and not checkpointed; ``trainable`` ones a
    parameter initialised from them (``nn.Embedding.from_pretrained(f, freeze=False)`` in MMRec-style code).
    """
    if not dataset.item_features:
        raise ValueError(f"{type(model).__name__} needs item features; dataset '{dataset.name}' has no modality")
    for m, feats in dataset.item_features.items():
        tensor = torch.from_numpy(np.asarray(feats, dtype=np.float32))
        if trainable:  # a copy: training never writes into the dataset's arrays
            model.register_parameter(f"raw_{m}", nn.Parameter(tensor.clone()))
        else:
            model.register_buffer(f"raw_{m}", tensor, persistent=False)
    return list(dataset.item_features)


def layer_mean(adjacency: Adjacency, ego: torch.Tensor, layers: int) -> torch.Tensor:
    """LightGCN's readout: mean over l = 0..L of A_hat^l E_0, for (U + I, d) ego embeddings."""
    return adjacency.power_sum(ego, layers) / (layers + 1)


# ------------------------------------------------------------------------ VBPR
class VBPR(Recommender):
    """VBPR (He & McAuley, AAAI 2016): MF-BPR with a preference for projected item features.

    score(u, i) = gamma_u.gamma_i + theta_u.theta_i + beta_i + sum_m beta'^m.f^m_i,
    theta_i = sum_m E^m f^m_i.

    Several modalities: one projection E^m per modality, summed. That is exactly the paper's
    single E applied to the concatenated features f_i = [f^1_i; ...; f^M_i] (what MMRec's VBPR
    does), so it stays the paper's model and theta_u keeps K' dimensions for any number of
    modalities. The paper's alpha and beta_u cancel in BPR's score differences and are left out.

    Not from the paper: dimensions 64 + 64 and Xavier-normal E (MMRec's VBPR); L2 on the batch's
    parameters per step, and N(0, 0.1^2) initial factors (this toolkit's MF).

    Args:
        dataset: interactions and ``item_features`` (any number of modalities).
        config: :class:`VBPRConfig`.
    """

    def __init__(self, dataset: RecDataset, config: VBPRConfig | None = None):
        super().__init__(dataset)
        self.config = cfg = config or VBPRConfig()
        self.modalities = register_features(self, dataset)
        dims = {m: f.shape[1] for m, f in dataset.item_features.items()}
        self.user_factors = nn.Parameter(torch.randn(self.n_users, cfg.dim) * cfg.init_std)  # gamma_u
        self.item_factors = nn.Parameter(torch.randn(self.n_items, cfg.dim) * cfg.init_std)  # gamma_i
        self.user_feature_factors = nn.Parameter(torch.randn(self.n_users, cfg.feature_dim) * cfg.init_std)  # theta_u
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))  # beta_i
        self.projections = nn.ModuleDict({m: nn.Linear(d, cfg.feature_dim, bias=False) for m, d in dims.items()})  # E^m
        for projection in self.projections.values():
            nn.init.xavier_normal_(projection.weight)
        self.feature_bias = (nn.ModuleDict({m: nn.Linear(d, 1, bias=False) for m, d in dims.items()})  # beta'^m
                             if cfg.feature_bias else None)
        for layer in (self.feature_bias or {}).values():
            nn.init.zeros_(layer.weight)

    def item_side(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """theta_i = sum_m E^m f^m_i, (B, K'), and the bias beta_i + sum_m beta'^m.f^m_i, (B,); all items if None."""
        pick = (lambda t: t) if items is None else (lambda t: t[items])
        raw = {m: pick(getattr(self, f"raw_{m}")) for m in self.modalities}
        theta = sum(self.projections[m](raw[m]) for m in self.modalities)
        bias = pick(self.item_bias)
        if self.feature_bias is not None:
            bias = bias + sum(self.feature_bias[m](raw[m]).squeeze(-1) for m in self.modalities)
        return theta, bias

    def loss(self, users, positives, negatives):
        items = torch.cat([positives, negatives])  # (2B,)
        theta_i, bias = self.item_side(items)
        u = torch.cat([self.user_factors[users], self.user_feature_factors[users]], 1).repeat(2, 1)  # (2B, K + K')
        i = torch.cat([self.item_factors[items], theta_i], 1)  # (2B, K + K')
        pos, neg = ((u * i).sum(-1) + bias).chunk(2)  # x_ui of Sec. 'Preference Predictor' (alpha, beta_u cancel)
        rec = bpr(pos, neg)  # BPR-OPT, Sec. 'Model Learning Using BPR': -ln sigma(x_ui - x_uj)
        reg = 0.5 * (self.user_factors[users].square().sum() + self.user_feature_factors[users].square().sum()
                     + self.item_factors[items].square().sum() + self.item_bias[items].square().sum()) / len(users)
        out = {"loss": rec + self.config.l2 * reg, "bpr": rec, "l2": reg}
        if self.config.projection_l2:  # lambda_E
            weights = [*self.projections.values(), *(self.feature_bias or {}).values()]
            out["loss"] = out["loss"] + self.config.projection_l2 * 0.5 * sum(w.weight.square().sum() for w in weights)
        return out

    def final_embeddings(self):
        theta_i, bias = self.item_side()
        ones = torch.ones(self.n_users, 1, device=self.device)
        return (torch.cat([self.user_factors, self.user_feature_factors, ones], 1),  # [gamma_u, theta_u, 1]
                torch.cat([self.item_factors, theta_i, bias.unsqueeze(1)], 1))  # [gamma_i, theta_i, bias_i]

    def __repr__(self):
        return (f"VBPR(users={self.n_users}, items={self.n_items}, dim={self.config.dim}+{self.config.feature_dim}, "
                f"modalities={self.modalities})")


# ------------------------------------------------------------------ LightGCN-M
class LightGCNM(LightGCN):
    """LightGCN-M (the DiffMM paper's "LGCN-M"): LightGCN with modality features in the item ego.

    Item ego e^0_i = e_i + sum_m W^m f^m_i + b^m (one linear map per modality, summed so the
    width stays d for any number of modalities); then LightGCN: E = mean_{l=0..L} A_hat^l E^0,
    A_hat = D^-1/2 A D^-1/2; BPR with L2 on the batch's id embeddings. The paper gives no more
    detail: the rest is LightGCN as in this toolkit (N(0, 0.1^2) ids, nn.Linear's default init).

    Args:
        dataset: interactions and ``item_features`` (any number of modalities).
        config: :class:`LightGCNMConfig`.
    """

    def __init__(self, dataset: RecDataset, config: LightGCNMConfig | None = None):
        super().__init__(dataset, config or LightGCNMConfig())
        self.modalities = register_features(self, dataset)
        self.projections = nn.ModuleDict({m: nn.Linear(f.shape[1], self.config.dim)
                                          for m, f in dataset.item_features.items()})  # W^m, b^m

    def final_embeddings(self):
        items = self.item_embedding + sum(self.projections[m](getattr(self, f"raw_{m}")) for m in self.modalities)
        total = layer_mean(self.adjacency, torch.cat([self.user_embedding, items]), self.config.layers)
        return total[: self.n_users], total[self.n_users:]

    def __repr__(self):
        return (f"LightGCNM(users={self.n_users}, items={self.n_items}, dim={self.config.dim}, "
                f"layers={self.config.layers}, modalities={self.modalities})")


# --------------------------------------------------------------------- LATTICE
class LATTICE(Recommender):
    """LATTICE (Zhang et al., ACM MM 2021): LightGCN plus latent item-item graphs from the modalities.

    1. Per modality m, the initial graph S~^m: cosine kNN graph of the raw features, normalised
       D^-1/2 S D^-1/2 (Sec. 3.1.1), built once. 2. The learned graph A^m_learned: the same on the
       projected features W^m f^m + b^m (Sec. 3.1.2), with gradient through the kept similarities.
    3. Skip connection A^m = lambda S~^m + (1 - lambda) A^m_learned, 4. A = sum_m alpha_m A^m with
    alpha = softmax of learned logits (Sec. 3.1.3). 5. h = A^L e_item (Sec. 3.2). 6. Items
    x~_i = x_i + h_i / ||h_i|| with x from LightGCN; score x_u.x~_i; BPR + L2 (Sec. 3.3-3.4).
    No step carries an equation number: the numbers were not checked against the paper's text.

    Where this follows the authors' code (CRIPAC-DIG/LATTICE, as MMRec's lattice.py) rather than
    the paper: the learned graph is recomputed (with gradient) at the first step of each epoch and
    reused, detached with its alpha, for the epoch's other steps, and recomputed for evaluation;
    an item is its own nearest neighbour; degrees are row sums of the (directed) kNN graph; the
    L2 is on the batch's final embeddings; Xavier-uniform ids; 2 user-item layers; projected
    size 64; the raw features are fine-tuned (``fine_tune_features``): they get a gradient through
    the learned graphs, at the step that rebuilds them, while S~^m stays the graph of the features
    the model started from. ``graphs='paper'`` (the default) builds the graphs as steps 1-5 above,
    on LightGCN's D^-1/2 A D^-1/2; ``graphs='code'`` as that code does: the modalities' learned kNN
    graphs are alpha-mixed and the mix normalised once,
    A = lambda sum_m alpha_m S~^m + (1 - lambda) Norm(sum_m alpha_m S^m_learned), and the user-item
    graph is D^-1 (A + I). Chosen on validation, the paper's form is clearly ahead on TikTok and
    ml100k (``reproduce --only search_lattice_graphs``). Left out: that code's learning-rate decay
    (x0.96 every 50 epochs).

    Args:
        dataset: interactions and ``item_features`` (any number of modalities).
        config: :class:`LATTICEConfig`.
    """

    def __init__(self, dataset: RecDataset, config: LATTICEConfig | None = None):
        super().__init__(dataset)
        self.config = cfg = config or LATTICEConfig()
        self.modalities = register_features(self, dataset, trainable=cfg.fine_tune_features)
        if cfg.knn_k > self.n_items:
            raise ValueError(f"LATTICEConfig.knn_k = {cfg.knn_k} exceeds the {self.n_items} items of "
                             f"'{dataset.name}': set --knn_k to at most {self.n_items}")
        with torch.no_grad():  # S~^m of the features as given: fine-tuning them later leaves it as it is
            self._initial = {m: knn_csr(*self._knn(getattr(self, f"raw_{m}"))) for m in self.modalities}
        self._train = dataset.train
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, cfg.dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, cfg.dim)))
        self.projections = nn.ModuleDict({m: nn.Linear(f.shape[1], cfg.feature_dim)
                                          for m, f in dataset.item_features.items()})  # W^m, b^m
        self.modality_logits = nn.Parameter(torch.zeros(len(self.modalities)))  # softmax -> alpha_m, equal at first
        self._rebuild = True  # recompute the learned graphs at the next training step
        self._epoch_graph: sp.csr_matrix | None = None  # A as last rebuilt in training, fixed for the epoch

    @property
    def adjacency(self) -> Adjacency:
        if self.config.graphs == "paper":
            return self.on_device("graph", lambda device: normalized_adjacency(self._train, device=device))
        return self.on_device("graph", lambda device: Adjacency(row_normalize(bipartite(self._train, True)), device))

    def _knn(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised kNN graph of (n_items, d) features: (neighbours, weights), (n_items, k) each."""
        neighbours, similarity = knn_graph(features, self.config.knn_k, self.config.knn_chunk_rows)
        return neighbours, normalize_knn(neighbours, similarity)

    def initial_graph(self, m: str) -> Adjacency:
        """S~^m: the normalised kNN graph of modality m's raw features as the model started (fixed)."""
        return self.on_device(f"initial/{m}", lambda device: Adjacency(self._initial[m], device))

    def learned_graph(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 - lambda) times the learned part of A: (neighbours, weights), (n_items, k M) each.

        Of the kNN graphs of the projected features W^m f^m + b^m: each normalised, then alpha-mixed
        (``graphs='paper'``), or alpha-mixed, then normalised (``'code'``). A row may name an item twice
        (once per modality): propagation sums both.
        """
        graphs = [knn_graph(self.projections[m](getattr(self, f"raw_{m}")), self.config.knn_k,
                            self.config.knn_chunk_rows) for m in self.modalities]
        neighbours = torch.cat([n for n, _ in graphs], 1)
        if self.config.graphs == "paper":
            weights = torch.cat([alpha[k] * normalize_knn(n, s) for k, (n, s) in enumerate(graphs)], 1)
        else:
            weights = normalize_knn(neighbours, torch.cat([alpha[k] * s for k, (_, s) in enumerate(graphs)], 1))
        return neighbours, (1 - self.config.skip_weight) * weights

    def before_epoch(self, epoch, optimizers, progress=False):
        self._rebuild = True
        return {}

    def item_graph_embeddings(self, rebuild: bool = True) -> torch.Tensor:
        """h = A^L e_item with A = lambda sum_m alpha_m S~^m + the learned part (:meth:`learned_graph`); (I, d).

        With ``rebuild`` False, A is the graph of the last training step that rebuilt it, as one
        fixed sparse matrix: no gradient reaches alpha or the projections (the authors' detach).
        """
        lam, h = self.config.skip_weight, self.item_embedding
        if not rebuild and self._epoch_graph is not None:
            graph = self.on_device("epoch/graph", lambda device: Adjacency(self._epoch_graph, device))
            for _ in range(self.config.item_layers):
                h = graph @ h
            return h
        alpha = torch.softmax(self.modality_logits, 0)
        learned = self.learned_graph(alpha)
        for _ in range(self.config.item_layers):  # the skip connection to S~^m, then the learned graph
            h = sum(alpha[k] * lam * (self.initial_graph(m) @ h) for k, m in enumerate(self.modalities)) \
                + knn_propagate(*learned, h)
        if torch.is_grad_enabled():  # a training step: the epoch's other steps reuse this A
            self._epoch_graph = sum(a * lam * self._initial[m] for a, m in zip(alpha.tolist(), self.modalities)) \
                + knn_csr(*learned)
            self.forget("epoch/")
        return h

    def embeddings(self, rebuild: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        total = layer_mean(self.adjacency, torch.cat([self.user_embedding, self.item_embedding]), self.config.layers)
        h = self.item_graph_embeddings(rebuild)
        return total[: self.n_users], total[self.n_users:] + F.normalize(h, dim=1)  # x~_i = x_i + h_i / ||h_i||

    def final_embeddings(self):
        return self.embeddings(rebuild=True)

    def loss(self, users, positives, negatives):
        users_emb, items_emb = self.embeddings(rebuild=self._rebuild)
        self._rebuild = False
        u, i, j = users_emb[users], items_emb[positives], items_emb[negatives]  # (B, d)
        rec = bpr((u * i).sum(-1), (u * j).sum(-1))
        reg = 0.5 * (u.square().sum() + i.square().sum() + j.square().sum()) / len(users)
        return {"loss": rec + self.config.l2 * reg, "bpr": rec, "l2": reg}

    def __repr__(self):
        cfg = self.config
        return (f"LATTICE(users={self.n_users}, items={self.n_items}, dim={cfg.dim}, layers={cfg.layers}, "
                f"k={cfg.knn_k}, lambda={cfg.skip_weight}, modalities={self.modalities})")


# ------------------------------------------------------------------------- BM3
class BM3(Recommender):
    """BM3 (Zhou et al., WWW 2023): bootstrapped latent views, no negative sampling.

    Sec. 3.1: h_m = f^m W_m + b_m per modality (Eq. 1); ids propagated on the user-item graph (Eq. 2),
    h_u = READOUT(H^0_u..H^L_u), h_i = READOUT(H^0_i..H^L_i) + H^0_i (Eq. 3), READOUT = mean.
    Sec. 3.2: online views h~ = f_p(h) by one shared linear predictor f_p; target views
    h. = dropout_p(sg(h)). With C(a, b) = 1 - cos(a, b):
    L_rec = C(h~_u, h._i) + C(h._u, h~_i) over the batch's interactions (u, i);
    L_align = sum_m C(h~_m,i, h._i) (inter-modality); L_mask = sum_m C(h~_m,i, h._m,i) (intra-modality);
    L = L_rec + L_align + L_mask + lambda * (a norm of the online embeddings). Sec. 3.3: score = h~_u . h~_i.
    The negatives passed to :meth:`loss` are ignored. Steps after Eq. 3 carry no equation number: their
    numbers were not checked against the paper's text.

    C is the paper's negative cosine plus 1 (the authors' code): the same gradients, a loss >= 0.
    From the authors' code (enoche/BM3, also MMRec's bm3.py), not the paper: Xavier-uniform ids,
    Xavier-normal projections and predictor, and Eq. 2 in LightGCN's form: Eq. 2 is a GCN layer
    sigma(A^ H^l W^l) with A^ = D^-1/2 (A + I) D^-1/2; here, as in that code, no sigma, no W^l and no
    self-loops (D^-1/2 A D^-1/2); and lambda's term, (||H_u||_F + ||H_i||_F) / n_items over the whole
    online tables (the form the published lambdas were tuned for); the raw features f^m fine-tuned with
    the rest (``fine_tune_features``) and L_align + L_mask weighted by the code's cl_weight = 2
    (``alignment_weight``; the paper's plain sum is 1).

    Args:
        dataset: interactions and ``item_features`` (any number of modalities).
        config: :class:`BM3Config`.
    """

    def __init__(self, dataset: RecDataset, config: BM3Config | None = None):
        super().__init__(dataset)
        self.config = cfg = config or BM3Config()
        self.modalities = register_features(self, dataset, trainable=cfg.fine_tune_features)
        self._train = dataset.train
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, cfg.dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, cfg.dim)))
        self.projections = nn.ModuleDict({m: nn.Linear(f.shape[1], cfg.dim)
                                          for m, f in dataset.item_features.items()})  # W_m, b_m of Eq. 1
        self.predictor = nn.Linear(cfg.dim, cfg.dim)  # f_p, shared by ids and modalities
        for layer in [*self.projections.values(), self.predictor]:
            nn.init.xavier_normal_(layer.weight)

    @property
    def adjacency(self) -> Adjacency:
        return self.on_device("graph", lambda device: normalized_adjacency(self._train, device=device))

    def online_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """h_u (U, d) and h_i (I, d): Eq. 2 (LightGCN form), then Eq. 3 (READOUT = mean, + H^0_i for items)."""
        total = layer_mean(self.adjacency, torch.cat([self.user_embedding, self.item_embedding]), self.config.layers)
        return total[: self.n_users], total[self.n_users:] + self.item_embedding  # Eq. 3

    def target(self, h: torch.Tensor) -> torch.Tensor:
        """h. = dropout_p(sg(h)): the target view (Sec. 3.2)."""
        return F.dropout(h.detach(), self.config.dropout, training=True)

    def loss(self, users, positives, negatives):
        def c(a, b):  # C(a, b) = 1 - cos(a, b), averaged over the batch
            return 1 - F.cosine_similarity(a, b, dim=-1).mean()

        users_emb, items_emb = self.online_embeddings()
        h_u, h_i = users_emb[users], items_emb[positives]  # (B, d)
        target_u, target_i = self.target(h_u), self.target(h_i)
        rec = c(self.predictor(h_u), target_i) + c(target_u, self.predictor(h_i))  # L_rec
        align = mask = 0.0
        for m in self.modalities:
            h_m = self.projections[m](getattr(self, f"raw_{m}")[positives])  # (B, d): Eq. 1 for the batch's items
            online_m = self.predictor(h_m)
            align = align + c(online_m, target_i)  # L_align: modality m vs the item's id view
            mask = mask + c(online_m, self.target(h_m))  # L_mask: modality m vs its own dropped-out view
        # lambda's term as the authors' code computes it (their published lambdas are for this form): the
        # Frobenius norms of the whole online tables over n_items (a squared batch norm with lambda = 0.1
        # shrinks the scale-free cosine views until training collapses on TikTok)
        reg = (users_emb.norm() + items_emb.norm()) / self.n_items
        loss = rec + self.config.alignment_weight * (align + mask) + self.config.l2 * reg
        return {"loss": loss, "rec": rec, "align": align, "mask": mask, "l2": reg}

    def final_embeddings(self):
        users_emb, items_emb = self.online_embeddings()
        return self.predictor(users_emb), self.predictor(items_emb)  # score = h~_u . h~_i (Sec. 3.3)

    def __repr__(self):
        cfg = self.config
        return (f"BM3(users={self.n_users}, items={self.n_items}, dim={cfg.dim}, layers={cfg.layers}, "
                f"dropout={cfg.dropout}, modalities={self.modalities})")
