"""diffmm.dense: products into 64-byte-aligned rows are F.linear / addmm, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from diffmm import dense


@pytest.mark.parametrize("cols", [1, 15, 16, 17, 6710])
def test_aligned_empty_rows_start_every_64_bytes(cols):
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = dense.aligned_empty(3, cols, dtype)
        assert x.shape == (3, cols) and x.dtype == dtype
        assert (x.stride(0) * x.element_size()) % 64 == 0 and x.stride(1) == 1
        assert x.stride(0) - cols < 64 // x.element_size()  # the least padding
        assert x.is_contiguous() == (x.stride(0) == cols)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear_with_its_gradients(bias):
    torch.manual_seed(0)
    x = torch.randn(13, 21, dtype=torch.float64, requires_grad=True)
    w = torch.randn(37, 21, dtype=torch.float64, requires_grad=True)
    b = torch.randn(37, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = (x, w, b) if bias else (x, w)
    assert torch.autograd.gradcheck(dense.linear, inputs)
    out = dense.linear(*inputs)
    assert out.stride(0) == 40  # 37 float64 rounded up to 8 per 64 bytes
    torch.testing.assert_close(out, F.linear(*inputs), rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, inputs, g)
    theirs = torch.autograd.grad(F.linear(*inputs), inputs, g)
    for a, b_ in zip(ours, theirs):
        torch.testing.assert_close(a, b_, rtol=0, atol=1e-12)


def test_linear_accumulates_into_a_parameter_grad_of_its_own_layout():
    layer = torch.nn.Linear(21, 37)
    for _ in range(2):  # the first backward sets .grad, the second adds to it
        dense.linear(torch.randn(5, 21), layer.weight, layer.bias).square().sum().backward()
    assert layer.weight.grad.is_contiguous() and layer.weight.grad.shape == (37, 21)


def test_addmm_matches_the_plain_product_and_is_plain_where_autograd_records():
    torch.manual_seed(0)
    a, b, bias = (torch.randn(*shape, dtype=torch.float64) for shape in ((9, 11), (11, 23), (23,)))
    torch.testing.assert_close(dense.addmm(bias, a, b, beta=0.5, alpha=2.0), 0.5 * bias + 2.0 * a @ b)
    torch.testing.assert_close(dense.addmm(None, a, b, alpha=3.0), 3.0 * a @ b)
    assert dense.addmm(None, a, b).stride(0) == 24
    a.requires_grad_(True)
    out = dense.addmm(bias, a, b)
    out.sum().backward()
    torch.testing.assert_close(a.grad, b.sum(1).expand(9, 11))


def test_products_run_in_the_autocast_dtype():
    x, w, b = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dense.linear(x, w, b).dtype == torch.bfloat16 == F.linear(x, w, b).dtype
        assert dense.addmm(b, x, w.T).dtype == torch.bfloat16


def test_a_weight_gradient_is_added_into_an_existing_grad_in_place():
    torch.manual_seed(0)
    layer, plain = torch.nn.Linear(21, 37).double(), torch.nn.Linear(21, 37).double()
    plain.load_state_dict(layer.state_dict())
    buffer = torch.full((37, 21), 0.25, dtype=torch.float64)
    layer.weight.grad, plain.weight.grad = buffer, buffer.clone()
    for _ in range(2):  # chunk after chunk
        x = torch.randn(5, 21, dtype=torch.float64)
        dense.linear(x, layer.weight, layer.bias).square().sum().backward()
        F.linear(x, plain.weight, plain.bias).square().sum().backward()
    assert layer.weight.grad is buffer  # the same memory, no temporary copied in
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, plain.bias.grad, rtol=0, atol=1e-12)


def test_a_weight_that_is_not_a_leaf_gets_its_gradient_returned(recwarn):
    w = torch.randn(6, 8, requires_grad=True)
    scaled = w * 2.0  # not a leaf: its gradient flows on to w
    dense.linear(torch.randn(3, 8), scaled).sum().backward()
    assert w.grad is not None and not [r for r in recwarn if ".grad attribute" in str(r.message)]


def test_a_workspace_reuses_its_buffers_for_shapes_that_fit():
    workspace, like = dense.Workspace(), torch.empty(0)
    a = workspace.take("x", (8, 5), like)
    assert workspace.take("x", (8, 5), like).data_ptr() == a.data_ptr()
    assert workspace.take("x", (3, 5), like).shape == (3, 5)  # fewer rows: the same buffer's first rows
    assert workspace.take("x", (3, 5), like).data_ptr() == a.data_ptr()
    assert workspace.take("x", (9, 5), like).shape == (9, 5)  # more rows or another width: a new buffer
    assert workspace.take("x", (9, 6), like).shape == (9, 6)
    assert workspace.take("x", (9, 6), torch.empty(0, dtype=torch.float64)).dtype == torch.float64
    aligned = workspace.take("y", (4, 17), like, aligned=True)
    assert aligned.stride(0) == 32 and workspace.take("b", (7,), like).shape == (7,)
