"""Log (sigmoid BCE) loss: the formula, learnable scale/bias as real parameters, GradCache, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from nlp_contrastive.losses import LOSSES, LogLoss, log_loss
from nlp_contrastive.losses.cached import CachedLoss
from tests.conftest import make_tiny_encoder
from tests.losses.naive_losses import assert_value_and_grad, naive_log_loss

B, D = 7, 5


def _pairs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(B, D, generator=g, dtype=dtype), torch.randn(B, D, generator=g, dtype=dtype)
    label = torch.tensor([1.0, 0, 1, 1, 0, 0, 1], dtype=dtype)
    return a, b, label


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("similarity, temperature, bias", [("cosine", 0.1, -5.0), ("cosine", 0.05, 3.0),
                                                           ("dot", 1.0, 0.5), ("euclidean", 0.5, 2.0)])
def test_matches_naive_formula(dtype, similarity, temperature, bias):
    a, b, label = _pairs()
    assert_value_and_grad(
        lambda a, b, label: log_loss(a, b, label, temperature=temperature, bias=bias, similarity=similarity),
        lambda a, b, label: naive_log_loss(a, b, label, 1 / temperature, bias, similarity),
        {"a": a, "b": b, "label": label}, dtype)


def test_soft_labels_sum_and_none_reductions():
    a, b, label = _pairs()
    soft = torch.linspace(0, 1, B, dtype=torch.float64)
    per_pair = log_loss(a, b, soft, reduction="none")
    assert per_pair.shape == (B,)
    torch.testing.assert_close(per_pair.sum(), log_loss(a, b, soft, reduction="sum"))
    torch.testing.assert_close(per_pair.mean(), naive_log_loss(a, b, soft, 10.0, -5.0))


def test_scale_alias_and_tensor_scale_and_bias_keep_their_gradient():
    a, b, label = _pairs()
    torch.testing.assert_close(log_loss(a, b, label, scale=20.0), log_loss(a, b, label, temperature=0.05))
    scale = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, c, x, y: log_loss(x, y, label, scale=s, bias=c),
                                    (scale, bias, a.requires_grad_(), b.requires_grad_()))


def test_learnable_module_has_parameters_that_get_gradients_and_round_trips():
    a, b, label = _pairs(dtype=torch.float32)
    fixed, learnable = LogLoss(temperature=0.05, bias=-3.0), LogLoss(temperature=0.05, bias=-3.0, learnable=True)
    assert list(fixed.parameters()) == []
    assert {n for n, _ in learnable.named_parameters()} == {"log_scale", "bias"}
    torch.testing.assert_close(learnable(a, b, label), fixed(a, b, label))  # same at initialisation
    learnable(a, b, label).backward()
    assert learnable.log_scale.grad is not None and learnable.bias.grad.abs() > 0
    with torch.no_grad():
        learnable.bias += 1.0
    config = learnable.get_config_dict()
    assert config["bias"] == pytest.approx(-2.0) and config["temperature"] == pytest.approx(0.05)
    torch.testing.assert_close(LogLoss(**config)(a, b, label), learnable(a, b, label))
    assert LOSSES["log_loss"] is LogLoss and LogLoss.roles == ("anchor", "positive", "label")


def test_learnable_parameters_get_gradients_through_grad_cache():
    torch.manual_seed(0)
    encoder = make_tiny_encoder().eval()
    texts = encoder.tokenizer(["a cat", "a dog runs", "the sky", "blue water", "red car", "a tree"],
                              padding=True, return_tensors="pt")
    other = encoder.tokenizer(["one cat", "dogs run", "the sky is blue", "water", "a car", "green trees"],
                              padding=True, return_tensors="pt")
    features = {"anchor": dict(texts), "positive": dict(other)}
    label = torch.tensor([1.0, 1, 0, 0, 1, 0])
    reference = LogLoss(learnable=True)
    loss_value = reference(encoder(**features["anchor"]), encoder(**features["positive"]), label)
    loss_value.backward()
    expected = (reference.log_scale.grad.clone(), reference.bias.grad.clone())
    cached_loss = LogLoss(learnable=True)
    CachedLoss(cached_loss, mini_batch_size=2)(encoder, features, label=label).backward()
    torch.testing.assert_close(cached_loss.log_scale.grad, expected[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cached_loss.bias.grad, expected[1], rtol=1e-5, atol=1e-7)


def test_bf16_inputs_are_computed_in_float32():
    a, b, label = _pairs(dtype=torch.float32)
    value = log_loss(a.bfloat16(), b.bfloat16(), label)
    assert value.dtype == torch.float32
    assert math.isclose(value.item(), log_loss(a, b, label).item(), rel_tol=2e-2)


@pytest.mark.parametrize("kwargs, message", [
    ({"label": torch.tensor([2.0, 0, 1, 1, 0, 0, 1])}, r"label must lie in \[0.0, 1.0\]"),
    ({"temperature": 0.1, "scale": 10.0}, "both temperature"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"scale": torch.tensor(-2.0)}, "positive"),
    ({"similarity": "jaccard"}, "unknown similarity"),
    ({"reduction": "max"}, "unknown reduction"),
])
def test_bad_inputs_fail_with_the_problem_named(kwargs, message):
    a, b, label = _pairs()
    kwargs = {"label": label, **kwargs}
    with pytest.raises(ValueError, match=message):
        log_loss(a, b, **kwargs)


def test_module_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="bias must be a finite"):
        LogLoss(bias=float("nan"))
    with pytest.raises(ValueError, match="both temperature"):
        LogLoss(temperature=0.1, scale=10)
