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


# ----------------------------------------------------------------- log loss, AnglE, distillation (row loops)
def naive_log_loss(a, b, label, inverse_temperature, bias, similarity="cosine"):
    """mean_i -[y log sigma(z) + (1 - y) log(1 - sigma(z))], z = s/t + b, one pair at a time.

    -log sigma(z) = softplus(-z) and -log(1 - sigma(z)) = softplus(z): the same formula without log(0) in float32.
    """
    terms = []
    for i in range(a.shape[0]):
        z = sim(a[i], b[i], similarity) * inverse_temperature + bias
        y = label[i]
        terms.append(y * softplus(-z) + (1 - y) * softplus(z))
    return mean(terms)


def angle_sim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|Re + Im| of the complex reading (first half real, second half imaginary) of unit vectors x, y."""
    if x.shape[0] % 2:
        x, y = torch.cat([x, x.new_zeros(1)]), torch.cat([y, y.new_zeros(1)])
    x, y = x / torch.sqrt((x * x).sum()), y / torch.sqrt((y * y).sum())
    half = x.shape[0] // 2
    real = sum(x[k] * y[k] + x[half + k] * y[half + k] for k in range(half))
    imaginary = sum(x[half + k] * y[k] - x[k] * y[half + k] for k in range(half))
    return (real + imaginary).abs()


def naive_angle(a, b, score, inverse_temperature):
    s = [angle_sim(a[i], b[i]) * inverse_temperature for i in range(a.shape[0])]
    terms = [a.new_zeros(())] + [s[j] - s[i] for i in range(len(s)) for j in range(len(s)) if score[i] > score[j]]
    return log_sum_exp(terms)


def naive_mse_distillation(columns, teachers):
    """Mean over columns of mean over all entries of (student - teacher)^2."""
    per_column = []
    for student, teacher in zip(columns, teachers, strict=True):
        cells = [(student[i, k] - teacher[i, k]) ** 2 for i in range(student.shape[0]) for k in range(student.shape[1])]
        per_column.append(mean(cells))
    return mean(per_column)


def naive_margin_mse(q, p, negatives, teacher_margins, mask=None, similarity="dot"):
    """Mean over real (i, k) of ((s(q_i, p_i) - s(q_i, n_ik)) - m_ik)^2."""
    terms = []
    for i in range(q.shape[0]):
        for k in range(negatives.shape[1]):
            if mask is None or bool(mask[i, k]):
                margin = sim(q[i], p[i], similarity) - sim(q[i], negatives[i, k], similarity)
                terms.append((margin - teacher_margins[i, k]) ** 2)
    return mean(terms)
