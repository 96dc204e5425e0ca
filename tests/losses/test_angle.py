"""AnglE: angle similarity and the CoSENT ranking on it, against loop-level formulas; gradcheck; module."""

from __future__ import annotations

import pytest
import torch

from nlp_contrastive.losses import LOSSES, AnglELoss, angle, angle_similarity, cosent
from tests.losses.naive_losses import angle_sim, assert_value_and_grad, naive_angle


def _batch(dim: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(6, dim, generator=g, dtype=dtype), torch.randn(6, dim, generator=g, dtype=dtype)
    return a, b, torch.tensor([0.1, 0.9, 0.5, 0.5, 0.0, 0.7], dtype=dtype)  # includes a tie


@pytest.mark.parametrize("dim", [4, 7])  # odd dims are zero-padded
def test_angle_similarity_matches_the_complex_reading(dim):
    a, b, _ = _batch(dim)
    expected = torch.stack([angle_sim(a[i], b[i]) for i in range(6)])
    torch.testing.assert_close(angle_similarity(a, b), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim, temperature", [(6, 0.05), (5, 1.0)])
def test_angle_loss_matches_naive_formula(dtype, dim, temperature):
    a, b, score = _batch(dim)
    assert_value_and_grad(lambda a, b, score: angle(a, b, score, temperature=temperature),
                          lambda a, b, score: naive_angle(a, b, score, 1 / temperature),
                          {"a": a, "b": b, "score": score}, dtype)


def test_gradcheck_and_differs_from_cosent():
    a, b, score = _batch(6)
    a.requires_grad_(), b.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: angle(x, y, score, temperature=0.5), (a, b))
    assert not torch.isclose(angle(a, b, score), cosent(a, b, score))


def test_module_registry_and_scale_alias():
    a, b, score = _batch(6)
    assert LOSSES["angle"] is AnglELoss and AnglELoss.roles == ("anchor", "positive", "score")
    module = AnglELoss(scale=20.0)
    assert module.get_config_dict() == {"temperature": 0.05}
    torch.testing.assert_close(module(anchor=a, positive=b, score=score), angle(a, b, score))
    with pytest.raises(ValueError, match="both temperature"):
        AnglELoss(temperature=0.1, scale=20.0)
    with pytest.raises(ValueError, match="one value per pair"):
        angle(a, b, score[:3])
