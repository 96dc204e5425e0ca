"""MSE and MarginMSE distillation against loop-level formulas; teacher layouts, masking, gradcheck, errors."""

from __future__ import annotations

import pytest
import torch

from nlp_contrastive.losses import LOSSES, MarginMSELoss, MSEDistillationLoss, margin_mse, mse_distillation
from tests.losses.naive_losses import assert_value_and_grad, naive_margin_mse, naive_mse_distillation

B, K, D = 5, 3, 4


def _tensors(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=g, dtype=dtype)
            for name, shape in (("q", (B, D)), ("p", (B, D)), ("n", (B, K, D)), ("t", (B, D)), ("t3", (B, 2, D)),
                                ("scores", (B, 1 + K)))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mse_matches_naive_for_one_column_broadcast_and_per_column_teachers(dtype):
    x = _tensors()
    t, t3 = x["t"].to(dtype), x["t3"].to(dtype)  # fixed targets: the teacher side is detached by design
    assert_value_and_grad(lambda a: mse_distillation(a, t), lambda a: naive_mse_distillation([a], [t]),
                          {"a": x["q"]}, dtype)
    assert_value_and_grad(lambda a, p: mse_distillation(a, t, p), lambda a, p: naive_mse_distillation([a, p], [t, t]),
                          {"a": x["q"], "p": x["p"]}, dtype)
    assert_value_and_grad(lambda a, p: mse_distillation(a, t3, p),
                          lambda a, p: naive_mse_distillation([a, p], [t3[:, 0], t3[:, 1]]),
                          {"a": x["q"], "p": x["p"]}, dtype)


def test_mse_teacher_gets_no_gradient_and_reductions():
    x = _tensors()
    teacher = x["t"].clone().requires_grad_()
    student = x["q"].clone().requires_grad_()
    mse_distillation(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None
    per_row = mse_distillation(x["q"], x["t"], reduction="none")
    assert per_row.shape == (B,)
    torch.testing.assert_close(per_row.sum(), mse_distillation(x["q"], x["t"], reduction="sum"))
    assert torch.autograd.gradcheck(lambda a: mse_distillation(a, x["t"]), (x["q"].requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_margin_mse_matches_naive_with_scores_and_margins(dtype, similarity):
    x = _tensors()
    scores = x["scores"].to(dtype)
    margins = x["scores"][:, :1] - x["scores"][:, 1:]
    assert_value_and_grad(
        lambda q, p, n: margin_mse(q, p, n, teacher_scores=scores, similarity=similarity),
        lambda q, p, n: naive_margin_mse(q, p, n, scores[:, :1] - scores[:, 1:], similarity=similarity),
        {"q": x["q"], "p": x["p"], "n": x["n"]}, dtype)
    torch.testing.assert_close(margin_mse(x["q"], x["p"], x["n"], teacher_margin=margins, similarity=similarity),
                               margin_mse(x["q"], x["p"], x["n"], teacher_scores=x["scores"], similarity=similarity))


def test_margin_mse_one_negative_and_padded_negatives():
    x = _tensors()
    one = margin_mse(x["q"], x["p"], x["n"][:, 0], teacher_margin=x["scores"][:, 0])  # [B, D] and [B]
    torch.testing.assert_close(one, naive_margin_mse(x["q"], x["p"], x["n"][:, :1], x["scores"][:, :1]))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    scores = x["scores"].clone()
    scores[:, 1:][~mask] = float("nan")  # padded slots may hold anything
    negatives = x["n"].clone().requires_grad_()
    value = margin_mse(x["q"], x["p"], negatives, teacher_scores=scores, negatives_mask=mask)
    torch.testing.assert_close(value, naive_margin_mse(x["q"], x["p"], x["n"], x["scores"][:, :1] - x["scores"][:, 1:],
                                                       mask=mask))
    value.backward()
    assert negatives.grad[~mask].abs().max() == 0 and torch.isfinite(negatives.grad).all()
    assert torch.autograd.gradcheck(
        lambda q, n: margin_mse(q, x["p"], n, teacher_scores=x["scores"], negatives_mask=mask),
        (x["q"].requires_grad_(), x["n"].clone().requires_grad_()))


def test_modules_roles_and_registry():
    x = _tensors()
    assert LOSSES["mse_distillation"] is MSEDistillationLoss and LOSSES["margin_mse"] is MarginMSELoss
    assert MSEDistillationLoss.roles == ("anchor", "teacher_embedding")
    assert MarginMSELoss.roles == ("anchor", "positive", "negative", "teacher_scores")
    torch.testing.assert_close(MSEDistillationLoss()(anchor=x["q"], teacher_embedding=x["t"], positive=x["p"]),
                               mse_distillation(x["q"], x["t"], x["p"]))
    module = MarginMSELoss(similarity="cosine")
    assert module.get_config_dict() == {"similarity": "cosine", "reduction": "mean"}
    torch.testing.assert_close(module(anchor=x["q"], positive=x["p"], negatives=x["n"], teacher_scores=x["scores"]),
                               margin_mse(x["q"], x["p"], x["n"], teacher_scores=x["scores"], similarity="cosine"))


@pytest.mark.parametrize("call, message", [
    (lambda x: mse_distillation(x["q"], x["t"][:, :3]), "teacher_embedding has dimension 3 but the student"),
    (lambda x: mse_distillation(x["q"], x["t"][:2]), r"teacher_embedding must be \[batch, dim\]"),
    (lambda x: mse_distillation(x["q"], x["t"].masked_fill(x["t"] > 1, float("nan"))), "NaN"),
    (lambda x: margin_mse(x["q"], x["p"], x["n"]), "exactly one of teacher_scores"),
    (lambda x: margin_mse(x["q"], x["p"], x["n"], teacher_scores=x["scores"][:, :2]), r"\[5, 4\]"),
    (lambda x: margin_mse(x["q"], x["p"], x["n"], teacher_margin=x["scores"][:, 0]), "teacher_margin must be"),
    (lambda x: margin_mse(x["q"], x["p"], x["n"], teacher_scores=x["scores"] * float("nan")), "NaN"),
    (lambda x: MarginMSELoss()(anchor=x["q"], positive=x["p"], teacher_scores=x["scores"]), "needs negatives"),
    (lambda x: MarginMSELoss(similarity="l3"), "unknown similarity"),
])
def test_bad_inputs_fail_with_the_problem_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(_tensors())
