"""Graphs: the normalised bipartite adjacency, sparse products with autograd, top-k graphs, edge dropout,
and the item-item kNN graphs LATTICE learns.

Every adjacency is a (n_users + n_items)^2 sparse matrix in CSR layout, the layout torch
multiplies fastest on CPU. :class:`Adjacency` keeps the matrix and its transpose so the
backward pass of ``A @ X`` (which is ``A^T @ grad``) is another CSR product.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn import functional as F

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled")


def bipartite(interactions: sp.spmatrix, self_loops: bool = False) -> sp.csr_matrix:
    """[[0, R], [R^T, 0]] (+ I), binary, shape (U + I, U + I)."""
    r = sp.csr_matrix(interactions, dtype=np.float32, copy=True)  # the caller's matrix is left as it is
    r.data[:] = 1.0
    n_users, n_items = r.shape
    full = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    full.resize(n_users + n_items, n_users + n_items)  # bmat drops empty blocks' shape info
    if self_loops:
        full = (full + sp.identity(n_users + n_items, dtype=np.float32, format="csr")).tocsr()
    return full


def _degree_power(adjacency: sp.csr_matrix, power: float) -> sp.dia_matrix:
    """diag(D_ii^power) of the row sums; rows with zero degree get 0."""
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    scale = np.zeros_like(degree, dtype=np.float64)
    scale[degree > 0] = degree[degree > 0] ** power
    return sp.diags(scale)


def sym_normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """D^{-1/2} A D^{-1/2}; rows with zero degree stay zero (Eq. 16's 1/sqrt(|N_u||N_i|))."""
    adjacency = sp.csr_matrix(adjacency)
    d = _degree_power(adjacency, -0.5)
    out = (d @ adjacency @ d).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def row_normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """D^{-1} A: each row sums to one; rows with zero degree stay zero."""
    adjacency = sp.csr_matrix(adjacency)
    out = (_degree_power(adjacency, -1.0) @ adjacency).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def csr_to_tensors(matrix: sp.spmatrix) -> dict[str, torch.Tensor]:
    """A scipy CSR matrix as plain tensors (what a checkpoint loaded with ``weights_only=True`` may hold)."""
    matrix = sp.csr_matrix(matrix)
    return {"indptr": torch.from_numpy(matrix.indptr.astype(np.int64)),
            "indices": torch.from_numpy(matrix.indices.astype(np.int64)),
            "data": torch.from_numpy(matrix.data.copy()), "shape": torch.tensor(matrix.shape)}


def csr_from_tensors(state: dict[str, torch.Tensor]) -> sp.csr_matrix:
    """The inverse of :func:`csr_to_tensors`."""
    shape = tuple(int(x) for x in state["shape"])
    return sp.csr_matrix((state["data"].numpy(), state["indices"].numpy(), state["indptr"].numpy()), shape=shape)


def _torch_csr(matrix: sp.csr_matrix, device) -> torch.Tensor:
    matrix = sp.csr_matrix(matrix)
    return torch.sparse_csr_tensor(
        torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64)),
        torch.from_numpy(matrix.data.astype(np.float32)), size=matrix.shape, device=device)


def sparse_mm(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a sparse CSR ``matrix`` and a row-major ``dense``, without autograd.

    ``torch.sparse.mm`` zero-fills its output and then copies it once more before the product;
    ``addmm`` with ``beta=0`` into an empty output skips both passes (2-5x faster for the TikTok
    graph times 128 columns on CPU; the result is the same, bit for bit). Elsewhere the output
    starts zeroed (cheap on a GPU), so the result never depends on whether a sparse backend reads
    its output when beta is 0.
    """
    alloc = torch.empty if dense.device.type == "cpu" else torch.zeros
    out = alloc(matrix.shape[0], dense.shape[1], dtype=dense.dtype, device=dense.device)
    return torch.addmm(out, matrix, dense, beta=0, out=out)


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix, transposed, dense):
        ctx.transposed = transposed
        return sparse_mm(matrix, dense)

    @staticmethod
    def backward(ctx, grad):
        return None, None, sparse_mm(ctx.transposed, grad.contiguous())


class Adjacency:
    """A sparse (N, N) matrix on a device, usable as ``adj @ dense`` with autograd on ``dense``.

    Args:
        matrix: scipy sparse matrix.
        device: torch device.
        symmetric: skip storing the transpose when the matrix is known symmetric.
    """

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu", symmetric: bool = False):
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.shape = matrix.shape
        self.nnz = matrix.nnz
        self.matrix = _torch_csr(matrix, device)
        self.transposed = self.matrix if symmetric else _torch_csr(matrix.T.tocsr(), device)

    @property
    def T(self) -> Adjacency:
        """The transpose, sharing this matrix's two stored layouts."""
        out = object.__new__(Adjacency)
        out.shape, out.nnz = self.shape[::-1], self.nnz
        out.matrix, out.transposed = self.transposed, self.matrix
        return out

    def __matmul__(self, dense: torch.Tensor) -> torch.Tensor:
        if dense.requires_grad:
            return _SparseMatmul.apply(self.matrix, self.transposed, dense)
        return sparse_mm(self.matrix, dense)

    def power_sum(self, dense: torch.Tensor, layers: int) -> torch.Tensor:
        """sum_{l=0..L} A^l x: the sum-pooling over L propagation layers (LightGCN's readout times L + 1)."""
        total = dense
        for _ in range(layers):
            dense = self @ dense
            total = total + dense
        return total

    def __repr__(self) -> str:
        return f"Adjacency(shape={tuple(self.shape)}, nnz={self.nnz}, device={self.matrix.device})"


def normalized_adjacency(interactions: sp.spmatrix, self_loops: bool = False, device="cpu") -> Adjacency:
    """The symmetric-normalised bipartite graph of a users x items matrix, ready for message passing."""
    return Adjacency(sym_normalize(bipartite(interactions, self_loops)), device, symmetric=True)


def topk_interactions(users: np.ndarray, top_items: np.ndarray, n_items: int, n_users: int) -> sp.csr_matrix:
    """A users x items binary matrix with an edge (u, i) for each of the user's top-k items.

    Args:
        users: (B,) user ids.
        top_items: (B, k) item ids per user (Sec. 2.2.3: the k highest denoised scores).
    """
    k = top_items.shape[1]
    rows = np.repeat(users, k)
    data = np.ones(len(rows), dtype=np.float32)
    matrix = sp.csr_matrix((data, (rows, top_items.reshape(-1))), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def edge_dropout(matrix: sp.csr_matrix, keep_rate: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Keep each stored entry with probability ``keep_rate`` and rescale kept ones by 1 / keep_rate.

    This is the authors' ``SpAdjDropEdge`` applied to a normalised adjacency.
    """
    if not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    if keep_rate == 1:
        return matrix
    coo = matrix.tocoo()
    keep = rng.random(coo.nnz) < keep_rate
    return sp.csr_matrix((coo.data[keep] / keep_rate, (coo.row[keep], coo.col[keep])), shape=matrix.shape)



class SparseRows:
    """A users x items CSR matrix kept on the device, from which row batches are gathered.

    A batch comes out as a sparse CSR tensor built by indexing (no dense scan); the users x items
    matrix is never dense, and on CUDA no host<->device copy happens per batch.
    """

    def __init__(self, matrix: sp.csr_matrix, device="cpu"):
        matrix = sp.csr_matrix(matrix)
        if not matrix.has_sorted_indices:  # a CSR tensor's columns are sorted within each row
            matrix = matrix.sorted_indices()
        self.shape = matrix.shape
        self.indptr = torch.from_numpy(matrix.indptr.astype(np.int64)).to(device)
        self.indices = torch.from_numpy(matrix.indices.astype(np.int64)).to(device)
        self.values = torch.from_numpy(matrix.data.astype(np.float32)).to(device)

    def _positions(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the stored entries of ``rows``: per-row counts, their row in the batch and their position in ``indices``."""
        rows = rows.to(self.indptr.device)
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        batch_row = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
        first = torch.cumsum(counts, 0) - counts  # where each row's entries start in the output list
        position = torch.repeat_interleave(starts - first, counts) + torch.arange(int(counts.sum()), device=rows.device)
        return counts, batch_row, position

    def coordinates(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in batch, column) index pairs of the stored entries of ``rows``."""
        _, batch_row, position = self._positions(rows)
        return batch_row, self.indices[position]

    def csr(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, n_cols) float32 sparse CSR tensor of the given rows."""
        counts, _, position = self._positions(rows)
        crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        return torch.sparse_csr_tensor(crow, self.indices[position], self.values[position], size=(len(rows), self.shape[1]))


# ------------------------------------------------------- item-item kNN graphs (LATTICE)
def knn_graph(features: torch.Tensor, k: int, chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's k most cosine-similar items (itself included) and those similarities, (n, k) each.

    LATTICE Sec. 3.1.1: S_ij = e_i.e_j / (||e_i|| ||e_j||), then kNN sparsification (keep the
    top-k of each row). Rows go ``chunk_rows`` at a time: a (chunk_rows, n) similarity block is
    made, its top-k kept and the block dropped. When ``features`` requires grad, the kept
    similarities are recomputed as row-wise dot products, so they carry the gradient (as top-k
    values do) without any (chunk, n) block in the backward pass.
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kNN graph: k must be in [1, n_items = {n}], got {k}")
    unit = F.normalize(features, dim=1)  # (n, d): e_i / ||e_i||
    with torch.no_grad():
        blocks = [(unit[start:start + chunk_rows] @ unit.T).topk(k, dim=1) for start in range(0, n, chunk_rows)]
    neighbours = torch.cat([b.indices for b in blocks])  # (n, k)
    similarity = torch.cat([b.values for b in blocks])  # (n, k)
    if unit.requires_grad:
        similarity = torch.einsum("nd,nkd->nk", unit, unit[neighbours])  # the same S_ij, differentiable
    return neighbours, similarity


def normalize_knn(neighbours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """D^-1/2 S D^-1/2 of a kNN graph, D_ii = sum_j S_ij (LATTICE Sec. 3.1.1, normalisation).

    Returns the (n, k) normalised weights; a row whose degree is not positive becomes zero.
    """
    degree = weights.sum(1)  # (n,)
    inv_sqrt = degree.clamp_min(1e-12).rsqrt() * (degree > 0)
    return weights * inv_sqrt.unsqueeze(1) * inv_sqrt[neighbours]


def knn_propagate(neighbours: torch.Tensor, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A @ x for the kNN graph A whose row i has ``weights[i]`` at columns ``neighbours[i]``.

    Differentiable in both ``weights`` and ``x``; memory O(n k d), never O(n^2).
    """
    return torch.einsum("nk,nkd->nd", weights, x[neighbours])


def knn_csr(neighbours: torch.Tensor, weights: torch.Tensor) -> sp.csr_matrix:
    """A kNN graph, fixed, as an (n, n) scipy CSR matrix (for :class:`Adjacency`: fast ``A @ X``); a
    column named twice in a row holds the sum of its weights."""
    n, k = neighbours.shape
    data, columns = (np.array(t.detach().cpu().numpy().ravel()) for t in (weights, neighbours))  # copies: sorted below
    matrix = sp.csr_matrix((data, columns, np.arange(0, n * k + 1, k)), shape=(n, n))
    matrix.sum_duplicates()
    return matrix
