"""Dense products written into rows that start on 64-byte boundaries.

A row-major (rows, cols) float32 result whose row length is not a multiple of 16 floats (TikTok's
6,710 items, 9,319 users) puts every row but the first at an unaligned address, and the BLAS
kernels that write it (MKL on CPU) slow down: on the 2-core machine of 2026-12-01,
(625 x 1000) @ (1000 x 6710) runs at ~120 GFLOP/s into a plain (625, 6710) tensor and at
~180 GFLOP/s into a (625, 6720) buffer's first 6,710 columns, the speed of the aligned shapes
around it (on 2026-12-03 the same products ran at the same speed either way: the machine's CPU
differs from day to day). :func:`aligned_empty` allocates such a view; :func:`linear` is ``F.linear``
whose output is written into one, and whose weight gradient is added straight into an existing
``.grad`` (:func:`accumulate_grad`). Same values (up to the float rounding of a different blocking)
and the same gradients.

:class:`Workspace` keeps such blocks for a loop over chunks of equal size (the denoisers' training
pass): each chunk writes into the memory the previous one used, instead of fresh pages that the OS
must fault in and zero for every chunk; with the weights' ``.grad`` taken from it too, the weight
gradients of all chunks accumulate in place.
"""

from __future__ import annotations

import torch


def aligned_empty(rows: int, cols: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """An uninitialised (rows, cols) tensor with row stride ``cols`` rounded up to a multiple of 64 bytes
    (a view of a padded buffer; plain contiguous when ``cols`` already is one)."""
    per_64 = max(1, 64 // torch.empty((), dtype=dtype).element_size())
    padded = -(-cols // per_64) * per_64
    buffer = torch.empty(rows, padded, dtype=dtype, device=device)
    return buffer if padded == cols else buffer[:, :cols]


class Workspace:
    """Named buffers that every chunk of a loop reuses: one allocation per name, not per chunk.

    ``take`` returns the leading rows of the named buffer (uninitialised), reallocating it only when it has
    too few rows, or another trailing shape, dtype or device. A buffer that autograd saved for a backward pass
    and that the next chunk overwrites before that backward ran makes the backward raise (autograd's
    in-place check), so a buffer is never silently read after reuse.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor, aligned: bool = False,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        """A tensor of ``shape`` with ``like``'s device and dtype (or ``dtype``); ``aligned`` (2-d): rows start
        on 64-byte boundaries. A buffer serves any shape that differs only by fewer leading rows."""
        buffer, dtype = self._buffers.get(name), dtype or like.dtype
        if (buffer is None or buffer.shape[0] < shape[0] or buffer.shape[1:] != tuple(shape[1:])
                or buffer.dtype != dtype or buffer.device != like.device):
            buffer = (aligned_empty(*shape, dtype, like.device) if aligned
                      else torch.empty(shape, dtype=dtype, device=like.device))
            self._buffers[name] = buffer
        return buffer[:shape[0]]

    def take_like(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A buffer with ``tensor``'s shape, dtype, device and strides: a parameter's ``.grad`` in the parameter's
        layout (the fused Adam kernel walks both in memory order; :class:`diffmm.optim.Adam` copies one laid out
        otherwise)."""
        buffer = self._buffers.get(name)
        if (buffer is None or buffer.shape != tensor.shape or buffer.stride() != tensor.stride()
                or buffer.dtype != tensor.dtype or buffer.device != tensor.device):
            buffer = self._buffers[name] = torch.empty_like(tensor)
        return buffer


def accumulate_grad(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """The weight gradient ``a @ b`` for a backward to return; or, where ``weight`` is a leaf whose ``.grad``
    is already there (a loop over chunks, or a caller that set it), added into that ``.grad`` by the product
    itself, and None returned. What autograd's accumulation would leave in ``.grad`` either way, without the
    (out x in) temporary and the pass that adds it."""
    grad = weight.grad if weight.is_leaf else None
    if grad is None or grad.dtype != a.dtype:
        return a @ b
    grad.addmm_(a, b)
    return None


def autocast_inputs(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The tensors in the autocast dtype where autocast is on for their device (as a product's inputs would
    be cast: ``out=`` products are not cast by autocast itself)."""
    device = next(t for t in tensors if t is not None).device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None else None for t in tensors)


def addmm(bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, beta: float = 1.0,
          alpha: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """``beta * bias + alpha * (a @ b)`` (``bias`` broadcast over rows, or None) into aligned rows: into ``out``
    where it is given with the product's dtype (after autocast), else into a new buffer.

    Not differentiable (``out=`` products are not): where autograd records, the plain product is used."""
    bias, a, b = autocast_inputs(bias, a, b)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (bias, a, b)):
        return (a @ b).mul(alpha) if bias is None else torch.addmm(bias, a, b, beta=beta, alpha=alpha)
    if out is None or out.dtype != a.dtype:
        out = aligned_empty(a.shape[0], b.shape[1], a.dtype, a.device)
    if bias is None:
        return torch.mm(a, b, out=out).mul_(alpha) if alpha != 1.0 else torch.mm(a, b, out=out)
    return torch.addmm(bias, a, b, beta=beta, alpha=alpha, out=out)


class _Linear(torch.autograd.Function):
    """x W^T + b, with the output in aligned rows; dL/dW goes through :func:`accumulate_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        ctx.has_bias, ctx.weight = bias is not None, weight
        return addmm(bias, x, weight.T)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = accumulate_grad(ctx.weight, grad.T, x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a 2-d ``x``, into aligned rows; under autocast the product runs in
    the autocast dtype, as ``F.linear``'s would."""
    x, weight, bias = autocast_inputs(x, weight, bias)
    with torch.autocast(x.device.type, enabled=False):
        return _Linear.apply(x, weight, bias)
