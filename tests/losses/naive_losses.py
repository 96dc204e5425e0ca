"""Naive, loop-level re-computations from the formulas, and a value+gradient comparison helper.

Everything here works on single 1-D vectors with plain arithmetic, so it shares no code with the library.
"""

from __future__ import annotations

import math

import torch

# Relative to each tensor's largest entry: float32 round-off grows with 1/temperature and with the batch.
SCALED_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, msg=None) -> None:
    tol = SCALED_TOLERANCE[expected.dtype]
    scale = max(expected.detach().abs().max().item(), 1e-3) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=msg)


def sim(x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    """Higher is closer."""
    if name == "dot":
        return (x * y).sum()
    if name == "cosine":
        return (x * y).sum() / (torch.sqrt((x * x).sum()) * torch.sqrt((y * y).sum()))
    return -dist(x, y, name)


def dist(x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    """Lower is closer."""
    if name == "euclidean":
        return torch.sqrt(((x - y) ** 2).sum())
    if name == "manhattan":
        return (x - y).abs().sum()
    if name == "cosine":
        return 1 - sim(x, y, "cosine")
    raise ValueError(name)


def log_sum_exp(values: list[torch.Tensor]) -> torch.Tensor:
    top = max(v.item() for v in values)
    return top + torch.log(sum(torch.exp(v - top) for v in values))


def relu(x: torch.Tensor) -> torch.Tensor:
    return x if x.item() > 0 else x * 0


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log(1 + torch.exp(x)) if x.item() < 30 else x


def mean(values: list[torch.Tensor]) -> torch.Tensor:
    return sum(values) / len(values)


def assert_value_and_grad(fn, naive, inputs: dict, dtype: torch.dtype) -> None:
    """fn(**inputs) == naive(**inputs) in value and in gradient w.r.t. every floating-point input."""
    leaves = {k: (v.detach().to(dtype).requires_grad_(True) if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in inputs.items()}
    grads_for = [k for k, v in leaves.items() if torch.is_tensor(v) and v.requires_grad]
    ours = fn(**leaves)
    ref = naive(**leaves)
    assert_close_scaled(ours, ref.to(ours.dtype))
    ours_grads = torch.autograd.grad(ours.sum(), [leaves[k] for k in grads_for], allow_unused=True)
    ref_grads = torch.autograd.grad(ref.sum(), [leaves[k] for k in grads_for], allow_unused=True)
    for name, g_ours, g_ref in zip(grads_for, ours_grads, ref_grads, strict=True):
        g_ours = torch.zeros_like(leaves[name]) if g_ours is None else g_ours
        g_ref = torch.zeros_like(leaves[name]) if g_ref is None else g_ref
        assert_close_scaled(g_ours, g_ref, msg=lambda m, n=name: f"gradient of {n}: {m}")


def isclose(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
