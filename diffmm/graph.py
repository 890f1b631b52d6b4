"""Graphs: the normalised bipartite adjacency, sparse products with autograd, top-k graphs, edge dropout.

Every adjacency is a (n_users + n_items)^2 sparse matrix in CSR layout, the layout torch
multiplies fastest on CPU. :class:`Adjacency` keeps the matrix and its transpose so the
backward pass of ``A @ X`` (which is ``A^T @ grad``) is another CSR product.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled")


def bipartite(interactions: sp.spmatrix, self_loops: bool = False) -> sp.csr_matrix:
    """[[0, R], [R^T, 0]] (+ I), binary, shape (U + I, U + I)."""
    r = sp.csr_matrix(interactions, dtype=np.float32)
    r.data[:] = 1.0
    n_users, n_items = r.shape
    full = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    full.resize(n_users + n_items, n_users + n_items)  # bmat drops empty blocks' shape info
    if self_loops:
        full = (full + sp.identity(n_users + n_items, dtype=np.float32, format="csr")).tocsr()
    return full


def sym_normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """D^{-1/2} A D^{-1/2}; rows with zero degree stay zero (Eq. 16's 1/sqrt(|N_u||N_i|))."""
    adjacency = sp.csr_matrix(adjacency)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree, dtype=np.float64)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    d = sp.diags(inv_sqrt)
    out = (d @ adjacency @ d).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def row_normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """D^{-1} A: each row sums to one; rows with zero degree stay zero."""
    adjacency = sp.csr_matrix(adjacency)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv = np.zeros_like(degree, dtype=np.float64)
    inv[degree > 0] = 1 / degree[degree > 0]
    out = (sp.diags(inv) @ adjacency).tocsr().astype(np.float32)
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
        self.scipy = matrix
        self.matrix = _torch_csr(matrix, device)
        self.transposed = self.matrix if symmetric else _torch_csr(matrix.T.tocsr(), device)

    def __matmul__(self, dense: torch.Tensor) -> torch.Tensor:
        if dense.requires_grad:
            return _SparseMatmul.apply(self.matrix, self.transposed, dense)
        return sparse_mm(self.matrix, dense)

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
