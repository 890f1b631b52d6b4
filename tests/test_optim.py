"""diffmm.optim.Adam: torch's fused Adam step, bit for bit, with torch's state layout, and no torch._dynamo."""

import subprocess
import sys

import pytest
import torch

from diffmm.optim import Adam


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_(),
            torch.randn(3, 3, generator=g).requires_grad_()]


def _grads(step, params):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def _copy(params):
    return [p.detach().clone().requires_grad_() for p in params]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_steps_are_bit_identical_to_torch_fused_adam(weight_decay):
    ours, theirs = _params(), _params()
    a, b = Adam(ours, lr=0.05, weight_decay=weight_decay), torch.optim.Adam(theirs, lr=0.05, weight_decay=weight_decay,
                                                                            fused=True)
    for step in range(5):
        grads = _grads(step, ours)
        for i, (p, q, g) in enumerate(zip(ours, theirs, grads)):
            if step == 2 and i == 1:  # a parameter without a gradient is skipped, state and all
                continue
            p.grad, q.grad = g.clone(), g.clone()
        a.step(), b.step()
        a.zero_grad(), b.zero_grad(set_to_none=True)
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q)
    assert all(p.grad is None for p in ours)
    for p, q in zip(ours, theirs):
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a.state[p][k], b.state[q][k])


def test_state_dicts_load_across_torch_and_ours_and_continue_identically():
    ours, theirs = _params(), _params()
    a, b = Adam(ours, lr=0.02), torch.optim.Adam(theirs, lr=0.02, fused=True)
    for step in range(3):
        for p, q, g in zip(ours, theirs, _grads(step, ours)):
            p.grad, q.grad = g.clone(), g.clone()
        a.step(), b.step()
    mine, torchs = a.state_dict(), b.state_dict()
    assert mine["param_groups"] == torchs["param_groups"]
    assert mine["state"].keys() == torchs["state"].keys()
    # swap: ours continues from torch's state, torch from ours
    ours2, theirs2 = _copy(ours), _copy(theirs)
    a2, b2 = Adam(ours2, lr=0.5), torch.optim.Adam(theirs2, lr=0.5, fused=True)
    a2.load_state_dict(torchs), b2.load_state_dict(mine)
    assert a2.param_groups[0]["lr"] == 0.02
    for step in range(3, 5):
        for p, q, g in zip(ours2, theirs2, _grads(step, ours2)):
            p.grad, q.grad = g.clone(), g.clone()
        a2.step(), b2.step()
    for p, q in zip(ours2, theirs2):
        assert torch.equal(p, q)


def test_a_state_for_other_parameters_is_refused_with_what_differs():
    a = Adam(_params())
    for p, g in zip(a.param_groups[0]["params"], _grads(0, _params())):
        p.grad = g
    a.step()
    state = a.state_dict()
    with pytest.raises(ValueError, match="holds 3 parameters, this model has 2"):
        Adam(_params()[:2]).load_state_dict(state)
    other = [torch.zeros(2, 2, requires_grad=True), *_params()[1:]]
    with pytest.raises(ValueError, match=r"parameter 0's exp_avg has shape \(7, 5\), the parameter \(2, 2\)"):
        Adam(other).load_state_dict(state)
    with pytest.raises(ValueError, match="one group"):
        Adam(_params()).load_state_dict({"state": {}})


def test_training_never_imports_torch_dynamo():
    """torch.optim would: ~72 MiB of modules a run never uses."""
    code = ("import sys, torch; from diffmm.optim import Adam; p = torch.zeros(3, requires_grad=True); "
            "a = Adam([p]); p.grad = torch.ones(3); a.step(); a.zero_grad(); a.load_state_dict(a.state_dict()); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
