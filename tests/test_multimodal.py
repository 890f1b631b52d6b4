"""The multi-modal baselines (VBPR, LightGCN-M, LATTICE, BM3) against float64 formulas on a hand-made graph,
the chunked kNN graph against a dense top-k, end-to-end training, and no dense users x items / items x items."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from diffmm.config import BM3Config, LATTICEConfig, LightGCNMConfig, TrainConfig, VBPRConfig
from diffmm.data.dataset import RecDataset
from diffmm.data.synthetic import make_synthetic
from diffmm.models import MODELS, build_model
from diffmm.graph import knn_graph, normalize_knn
from diffmm.models.multimodal import BM3, LATTICE, VBPR, LightGCNM
from diffmm.train import Trainer
from test_memory import LargestTensor, sparse_dataset

NAMES = ("vbpr", "lightgcn-m", "lattice", "bm3")
D = torch.float64


@pytest.fixture(autouse=True)
def restore_threads():
    """Training runs here use one thread (TrainConfig.threads sets it process-wide): put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ a tiny hand-made graph
@pytest.fixture
def tiny() -> RecDataset:
    """4 users x 5 items, two modalities with 3-d features."""
    train = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 1]], dtype=np.float32)
    valid = np.array([[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=np.float32)
    test = np.array([[0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=np.float32)
    rng = np.random.default_rng(3)
    feats = {"first": rng.normal(size=(5, 3)).astype(np.float32), "second": rng.normal(size=(5, 3)).astype(np.float32)}
    return RecDataset(train, valid, test, item_features=feats, name="tiny")


USERS, POS, NEG = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([1, 2, 4, 0, 3]), torch.tensor([3, 0, 1, 2, 4])


def set_weights(model: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Overwrite every parameter with seeded N(0, scale^2) values; return them in float64."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return {name: p.detach().to(D).clone() for name, p in model.named_parameters()}


def raw(data: RecDataset) -> dict[str, torch.Tensor]:
    return {m: torch.from_numpy(f).to(D) for m, f in data.item_features.items()}


def dense_lightgcn(train: sp.spmatrix, users: torch.Tensor, items: torch.Tensor, layers: int, graph: str = "sym"):
    """LightGCN written densely: mean_{l=0..L} A_hat^l E_0, A_hat = D^-1/2 A D^-1/2 (``graph='sym'``) or
    D^-1 (A + I) (``'row+self'``: LATTICE's code)."""
    r = torch.from_numpy(train.toarray()).to(D)
    n_users, n_items = r.shape
    a = torch.zeros(n_users + n_items, n_users + n_items, dtype=D)
    a[:n_users, n_users:], a[n_users:, :n_users] = r, r.T
    if graph == "row+self":
        a = a + torch.eye(len(a), dtype=D)
        a_hat = a / a.sum(1, keepdim=True)
    else:
        deg = a.sum(1)
        inv = torch.where(deg > 0, deg.clamp_min(1e-300) ** -0.5, torch.zeros_like(deg))
        a_hat = inv[:, None] * a * inv[None, :]
    layer = torch.cat([users, items])
    total = layer.clone()
    for _ in range(layers):
        layer = a_hat @ layer
        total = total + layer
    total = total / (layers + 1)
    return total[:n_users], total[n_users:]


def dense_knn(features: torch.Tensor, k: int, normalise: bool = True) -> torch.Tensor:
    """Cosine similarities, kept where in the row's top-k (LATTICE's kNN sparsification), then D^-1/2 S D^-1/2."""
    unit = features / features.norm(dim=1, keepdim=True)
    sim = unit @ unit.T
    keep = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, sim.detach().topk(k, dim=1).indices, True)
    s = sim * keep
    return sym_normalised(s) if normalise else s


def sym_normalised(s: torch.Tensor) -> torch.Tensor:
    deg = s.sum(1)
    return deg.rsqrt()[:, None] * s * deg.rsqrt()[None, :]


def bpr(pos, neg):
    return -torch.log(torch.sigmoid(pos - neg)).mean()


def scores_of(model, n_users: int) -> torch.Tensor:
    return model.scorer()(torch.arange(n_users)).to(D)


def assert_close(actual, expected, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual).to(D), torch.as_tensor(expected).to(D), rtol=tol, atol=tol)


# ------------------------------------------------------------------ kNN graphs
@pytest.mark.parametrize("chunk_rows", [1, 7, 30, 64])
def test_chunked_knn_graph_equals_dense_topk_and_is_symmetric_normalised(chunk_rows):
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(30, 6, generator=gen)
    k = 4
    neighbours, sim = knn_graph(feats, k, chunk_rows=chunk_rows)
    assert neighbours.shape == sim.shape == (30, k)
    unit = feats.to(D) / feats.to(D).norm(dim=1, keepdim=True)
    dense = unit @ unit.T
    top = dense.topk(k, dim=1)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(neighbours, top.indices))
    assert (neighbours[:, 0] == torch.arange(30)).all()  # an item is its own nearest neighbour
    assert_close(sim, dense.gather(1, neighbours))
    # D^-1/2 S D^-1/2 with D_ii = sum_j S_ij: the sparse weights equal the dense formula's entries
    weights = normalize_knn(neighbours, sim)
    expected = dense_knn(feats.to(D), k)
    assert_close(weights, expected.gather(1, neighbours))
    rebuilt = torch.zeros(30, 30, dtype=D).scatter_(1, neighbours, weights.to(D))
    assert_close(rebuilt, expected)
    deg = (dense * (expected != 0)).sum(1)
    assert_close(rebuilt * deg.sqrt()[:, None] * deg.sqrt()[None, :], dense * (expected != 0))


def test_knn_values_carry_the_gradient_of_the_kept_similarities():
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(12, 5, generator=gen)
    weights = torch.randn(12, 3, generator=gen)
    x = feats.clone().requires_grad_(True)
    neighbours, sim = knn_graph(x, 3, chunk_rows=5)
    (normalize_knn(neighbours, sim) * weights).sum().backward()
    ref = feats.to(D).clone().requires_grad_(True)
    dense = dense_knn(ref, 3)
    (dense.gather(1, neighbours) * weights.to(D)).sum().backward()
    assert_close(x.grad, ref.grad)
    with pytest.raises(ValueError, match="k must be in"):
        knn_graph(feats, 13)


# ------------------------------------------------------------------ one model each, against its formulas
def test_vbpr_score_and_loss_match_the_paper(tiny):
    model = VBPR(tiny, VBPRConfig(dim=4, feature_dim=2, l2=0.3, projection_l2=0.2))
    w, f = set_weights(model), raw(tiny)
    theta_i = sum(f[m] @ w[f"projections.{m}.weight"].T for m in f)  # sum_m E^m f^m_i
    bias = w["item_bias"] + sum((f[m] @ w[f"feature_bias.{m}.weight"].T).squeeze(1) for m in f)
    expected = w["user_factors"] @ w["item_factors"].T + w["user_feature_factors"] @ theta_i.T + bias
    assert_close(scores_of(model, 4), expected)
    rec = bpr(expected[USERS, POS], expected[USERS, NEG])
    items = torch.cat([POS, NEG])
    reg = 0.5 * (w["user_factors"][USERS].square().sum() + w["user_feature_factors"][USERS].square().sum()
                 + w["item_factors"][items].square().sum() + w["item_bias"][items].square().sum()) / len(USERS)
    lam_e = 0.5 * sum(v.square().sum() for k, v in w.items() if k.startswith(("projections", "feature_bias")))
    out = model.loss(USERS, POS, NEG)
    assert_close(out["bpr"], rec)
    assert_close(out["loss"], rec + 0.3 * reg + 0.2 * lam_e)


def test_lightgcn_m_score_and_loss_match_the_formulas(tiny):
    model = LightGCNM(tiny, LightGCNMConfig(dim=4, layers=2, l2=0.1))
    w, f = set_weights(model), raw(tiny)
    ego = w["item_embedding"] + sum(f[m] @ w[f"projections.{m}.weight"].T + w[f"projections.{m}.bias"] for m in f)
    users, items = dense_lightgcn(tiny.train, w["user_embedding"], ego, layers=2)
    expected = users @ items.T
    assert_close(scores_of(model, 4), expected)
    rec = bpr(expected[USERS, POS], expected[USERS, NEG])
    reg = 0.5 * (w["user_embedding"][USERS].square().sum() + w["item_embedding"][POS].square().sum()
                 + w["item_embedding"][NEG].square().sum()) / len(USERS)
    assert_close(model.loss(USERS, POS, NEG)["loss"], rec + 0.1 * reg)


def lattice_reference(data, w, cfg):
    """LATTICE in dense float64, from the paper's formulas; differentiable in ``w``. The initial graph is
    of the dataset's features; the learned one of the model's (fine-tuned: its parameters)."""
    initial = raw(data)
    f = {m: w[f"raw_{m}"] for m in initial} if cfg.fine_tune_features else initial
    alpha, lam = torch.softmax(w["modality_logits"], 0), cfg.skip_weight
    paper = cfg.graphs == "paper"  # each learned graph normalised, or (the authors' code) their alpha-mix once
    learned = {m: dense_knn(f[m] @ w[f"projections.{m}.weight"].T + w[f"projections.{m}.bias"], cfg.knn_k, paper)
               for m in f}
    mixed = sum(alpha[k] * learned[m] for k, m in enumerate(f))
    graph = sum(alpha[k] * lam * dense_knn(initial[m], cfg.knn_k) for k, m in enumerate(f)) \
        + (1 - lam) * (mixed if paper else sym_normalised(mixed))
    h = w["item_embedding"]
    for _ in range(cfg.item_layers):
        h = graph @ h
    users, items = dense_lightgcn(data.train, w["user_embedding"], w["item_embedding"], cfg.layers,
                                  "sym" if paper else "row+self")
    return users, items + h / h.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("fine_tune, graphs", [(True, "code"), (False, "code"), (True, "paper"), (False, "paper")])
def test_lattice_score_loss_and_graph_gradient_match_the_paper(tiny, fine_tune, graphs):
    cfg = LATTICEConfig(dim=4, feature_dim=3, layers=2, item_layers=2, knn_k=2, skip_weight=0.6, l2=0.2,
                        knn_chunk_rows=2, fine_tune_features=fine_tune, graphs=graphs)
    before = raw(tiny)
    model = LATTICE(tiny, cfg)
    w = set_weights(model)  # fine-tuned features are parameters: overwritten, unlike the initial graph's
    assert ("raw_first" in w) == fine_tune
    w = {k: v.requires_grad_(True) for k, v in w.items()}
    users, items = lattice_reference(tiny, w, cfg)
    expected = users @ items.T
    assert_close(scores_of(model, 4), expected)
    u, i, j = users[USERS], items[POS], items[NEG]
    ref_loss = bpr((u * i).sum(1), (u * j).sum(1)) + 0.2 * 0.5 * (u.square().sum() + i.square().sum()
                                                                   + j.square().sum()) / len(USERS)
    out = model.loss(USERS, POS, NEG)  # the first step of an epoch: learned graphs rebuilt, with gradient
    assert_close(out["loss"], ref_loss)
    out["loss"].backward()
    ref_loss.backward()
    for name, p in model.named_parameters():  # through the kept kNN similarities, normalisation and alpha
        assert_close(p.grad, w[name].grad, tol=1e-4)
    # the epoch's other steps reuse the graph, fixed: the same loss, no gradient to projections or alpha
    model.zero_grad(set_to_none=True)
    again = model.loss(USERS, POS, NEG)["loss"]
    assert_close(again, out["loss"])
    again.backward()
    assert model.projections["first"].weight.grad is None and model.modality_logits.grad is None
    assert model.item_embedding.grad is not None
    model.before_epoch(2, {})
    model.loss(USERS, POS, NEG)["loss"].backward()
    assert model.modality_logits.grad is not None
    assert (model.raw_first.grad is not None) == fine_tune
    for m, f in raw(tiny).items():  # training never writes into the dataset's arrays
        assert torch.equal(f, before[m])


@pytest.mark.parametrize("fine_tune", [True, False])
def test_bm3_score_and_loss_match_the_paper(tiny, fine_tune):
    cfg = BM3Config(dim=4, layers=1, dropout=0.0, l2=0.05, alignment_weight=1.5, fine_tune_features=fine_tune)
    before = raw(tiny)
    model = BM3(tiny, cfg)
    w = set_weights(model)
    w = {k: v.requires_grad_(True) for k, v in w.items()}
    # fine-tuned features are parameters (set_weights overwrote them), fixed ones the dataset's arrays
    f = {m: w[f"raw_{m}"] for m in tiny.item_features} if fine_tune else raw(tiny)
    assert {f"raw_{m}" for m in tiny.item_features} <= set(w) if fine_tune else not any("raw_" in k for k in w)

    def predictor(x):
        return x @ w["predictor.weight"].T + w["predictor.bias"]

    def c(a, b):  # 1 - cosine, averaged
        return 1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()

    users, items = dense_lightgcn(tiny.train, w["user_embedding"], w["item_embedding"], 1)
    items = items + w["item_embedding"]  # readout plus the item's own id embedding
    assert_close(scores_of(model, 4), predictor(users) @ predictor(items).T)
    h_u, h_i = users[USERS], items[POS]
    rec = c(predictor(h_u), h_i.detach()) + c(h_u.detach(), predictor(h_i))
    align = mask = 0
    for m in f:
        h_m = f[m][POS] @ w[f"projections.{m}.weight"].T + w[f"projections.{m}.bias"]
        align = align + c(predictor(h_m), h_i.detach())
        mask = mask + c(predictor(h_m), h_m.detach())
    ref = rec + 1.5 * (align + mask) + 0.05 * (users.norm() + items.norm()) / len(items)  # the authors' form
    out = model.loss(USERS, POS, NEG)
    assert_close(out["loss"], ref)
    out["loss"].backward()
    ref.backward()
    for name, p in model.named_parameters():  # stop-gradient on the target views
        assert_close(p.grad, w[name].grad, tol=1e-4)
    # the negatives play no part; dropout makes the target views random
    assert_close(model.loss(USERS, POS, torch.zeros_like(NEG))["loss"], out["loss"])
    model.config = cfg.replace(dropout=0.5)
    assert torch.isfinite(model.loss(USERS, POS, NEG)["loss"])
    for m, feats in raw(tiny).items():  # the model trains a copy, never the dataset's arrays
        assert torch.equal(feats, before[m])


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("n_modalities", [1, 2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_trains_end_to_end_with_any_number_of_modalities(name, n_modalities):
    modalities = dict(list({"a": (16, 1.0), "b": (8, 0.5), "c": (5, 0.0)}.items())[:n_modalities])
    data = make_synthetic(n_users=200, n_items=120, modalities=modalities, seed=1)
    torch.manual_seed(0)
    config = TrainConfig(epochs=2, progress=False, batch_size=256, threads=1)
    result = Trainer(build_model(name, data), data, config).fit()
    losses = result.history.filter(like="train_")
    assert losses.shape == (2, losses.shape[1]) and np.isfinite(losses.to_numpy()).all()
    assert all(0 <= v <= 1 for v in {**result.valid, **result.test}.values())


@pytest.mark.parametrize("name", NAMES)
def test_one_epoch_on_ml100k(ml100k, name):
    config = TrainConfig(epochs=1, progress=False, batch_size=2048, threads=1)
    result = Trainer(build_model(name, ml100k), ml100k, config).fit()
    assert np.isfinite(result.history.filter(like="train_").to_numpy()).all()
    assert all(0 <= v <= 1 for v in result.test.values())


def test_registry_configs_and_errors(tiny):
    for name in NAMES:
        assert name in MODELS and MODELS[name][0]().to_dict()  # defaults construct and serialise
    assert LATTICEConfig().knn_k == 10 and LATTICEConfig().skip_weight == 0.9
    with pytest.raises(ValueError, match="skip_weight"):
        LATTICEConfig(skip_weight=1.5)
    with pytest.raises(ValueError, match="dropout"):
        BM3Config(dropout=1.0)
    with pytest.raises(ValueError, match="knn_k = 10 exceeds the 5 items"):
        LATTICE(tiny)
    bare = RecDataset(tiny.train, tiny.valid, tiny.test, name="bare")
    for name in NAMES:
        with pytest.raises(ValueError, match="needs item features"):
            build_model(name, bare)
    assert "modalities=['first', 'second']" in repr(VBPR(tiny))


# ------------------------------------------------------------------ memory
SMALL = {"vbpr": dict(dim=8, feature_dim=8), "lightgcn-m": dict(dim=8),
         "lattice": dict(dim=8, feature_dim=8, knn_chunk_rows=64), "bm3": dict(dim=8)}


@pytest.mark.parametrize("name", NAMES)
def test_no_dense_users_by_items_or_items_by_items_tensor(name, monkeypatch):
    n_users, n_items = 300, 1500
    data = sparse_dataset(n_users, n_items, per_user=5)
    dense_arrays = []
    for cls in (sp.csr_matrix, sp.coo_matrix, sp.csc_matrix):
        for method in ("toarray", "todense"):
            original = getattr(cls, method)

            def spy(self, *args, _original=original, **kwargs):
                out = _original(self, *args, **kwargs)
                dense_arrays.append(out.size)
                return out

            monkeypatch.setattr(cls, method, spy)
    torch.manual_seed(0)
    users = torch.randint(0, n_users, (128,))
    guard = LargestTensor()
    with guard:
        model = build_model(name, data, SMALL[name])  # graphs are built here or on first use below
        model.loss(users, torch.randint(0, n_items, (128,)), torch.randint(0, n_items, (128,)))["loss"].backward()
        scores = model.scorer()(users[:64])
    assert scores.shape == (64, n_items) and torch.isfinite(scores).all()
    limit = min(n_users * n_items, n_items * n_items)
    assert 0 < guard.largest < limit, f"{guard.largest} elements from {guard.op} (limit {limit})"
    assert max(dense_arrays, default=0) < limit
