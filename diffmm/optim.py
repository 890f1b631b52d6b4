"""Adam on torch's fused kernel, without ``torch.optim``.

Building any ``torch.optim`` optimiser imports ``torch._dynamo`` (with sympy and mpmath: ~800 modules),
~72 MiB of resident memory that training never uses: 8% of a TikTok run's peak (torch 2.13, measured
2026-12-01). :class:`Adam` runs the kernel ``torch.optim.Adam(fused=True)`` runs
(``torch._fused_adam_``, one pass per tensor), on the same state, so its updates are bit-identical; its
``state_dict`` has ``torch.optim.Adam``'s layout, so a checkpoint written by either loads into both.
"""

from __future__ import annotations

from typing import Iterable

import torch


class Adam:
    """Adam (Kingma & Ba, 2015) with L2 weight decay, one parameter group, no AMSGrad.

    The interface the trainer uses: :meth:`step`, :meth:`zero_grad`, :meth:`state_dict`,
    :meth:`load_state_dict`, ``param_groups`` and ``state``.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        params = list(params)
        if not params:
            raise ValueError("Adam got an empty parameter list")
        # the group's keys are torch.optim.Adam's, so state_dict() is interchangeable with it
        self.param_groups = [{"params": params, "lr": lr, "betas": tuple(betas), "eps": eps,
                              "weight_decay": weight_decay, "amsgrad": False, "maximize": False, "foreach": None,
                              "capturable": False, "differentiable": False, "fused": True,
                              "decoupled_weight_decay": False}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    @property
    def _params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (the others keep their state untouched)."""
        group = self.param_groups[0]
        batches: dict[tuple, tuple[list, ...]] = {}  # (device, dtype) -> params, grads, m, v, steps
        for p in self._params:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("Adam does not take sparse gradients")
            state = self.state.get(p)
            if state is None:  # the first step that reaches p (torch.optim.Adam's fused state)
                state = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            lists = batches.setdefault((p.device, p.dtype), ([], [], [], [], []))
            grad = _laid_out_as(p, p.grad)
            tensors = (p, grad, state["exp_avg"], state["exp_avg_sq"])
            for values, tensor in zip(lists, (*map(_in_memory_order, tensors), state["step"])):
                values.append(tensor)
        beta1, beta2 = group["betas"]
        for params, grads, exp_avgs, exp_avg_sqs, steps in batches.values():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                               beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=False, grad_scale=None, found_inf=None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict:
        """``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}`` (torch's layout)."""
        index = {id(p): i for i, p in enumerate(self._params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self._params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state written by :meth:`state_dict` or by ``torch.optim.Adam`` for the same parameters."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or len(groups) != 1 or not isinstance(state_dict.get("state"), dict):
            raise ValueError("optimizer state: expected {'state': {...}, 'param_groups': [one group]} (Adam's layout)")
        saved = groups[0]
        if len(saved.get("params", ())) != len(self._params):
            raise ValueError(f"optimizer state: it holds {len(saved.get('params', ()))} parameters, this model has "
                             f"{len(self._params)}")
        if saved.get("amsgrad") or saved.get("maximize"):
            raise ValueError("optimizer state: written with amsgrad or maximize, which this Adam does not run")
        position = {i: p for i, p in zip(saved["params"], self._params)}
        state = {}
        for i, s in state_dict["state"].items():
            p = position.get(i)
            if p is None:
                raise ValueError(f"optimizer state: entry {i!r} names no parameter of this model")
            if not isinstance(s, dict) or not all(isinstance(s.get(k), torch.Tensor)
                                                  for k in ("step", "exp_avg", "exp_avg_sq")):
                raise ValueError(f"optimizer state: parameter {i} needs tensors 'step', 'exp_avg' and 'exp_avg_sq'")
            for k in ("exp_avg", "exp_avg_sq"):
                if s[k].shape != p.shape:
                    raise ValueError(f"optimizer state: parameter {i}'s {k} has shape {tuple(s[k].shape)}, "
                                     f"the parameter {tuple(p.shape)}")
            state[p] = {"step": s["step"].to(device=p.device, dtype=torch.float32).reshape(()),
                        "exp_avg": _laid_out_as(p, s["exp_avg"]), "exp_avg_sq": _laid_out_as(p, s["exp_avg_sq"])}
        self.state = state
        group = self.param_groups[0]
        group.update({k: saved[k] for k in ("lr", "eps", "weight_decay") if k in saved})
        if "betas" in saved:
            group["betas"] = tuple(saved["betas"])


def _laid_out_as(p: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with ``p``'s dtype, device and strides: the fused kernel walks the parameter, its gradient and
    its moments in memory order, so a tensor laid out otherwise (a transposed parameter's state written by
    another version, a gradient set by hand) would be read in the wrong order."""
    if tensor.stride() == p.stride() and tensor.dtype == p.dtype and tensor.device == p.device:
        return tensor
    return torch.empty_like(p).copy_(tensor)


def _in_memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with its dimensions permuted into memory order: contiguous for a dense tensor of any strides
    (a parameter stored transposed), which the fused kernel would otherwise copy to and from a contiguous
    one on every step. The parameter, its gradient and moments share strides, so they are permuted alike."""
    order = sorted(range(tensor.dim()), key=lambda d: (-tensor.stride(d), -tensor.shape[d]))
    return tensor.permute(order) if order != list(range(tensor.dim())) else tensor
