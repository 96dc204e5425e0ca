"""The shared similarity/distance family: values vs loops, "higher is closer", safe gradients, bad names."""

from __future__ import annotations

import pytest
import torch
from naive_losses import dist, sim

from nlp_contrastive.losses import (
    DISTANCES,
    SIMILARITIES,
    distance_matrix,
    get_distance,
    get_similarity,
    pairwise_distance,
    pairwise_similarity,
    similarity_matrix,
)


def _vectors(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 5, generator=g, dtype=dtype), torch.randn(3, 5, generator=g, dtype=dtype)


@pytest.mark.parametrize("name", list(SIMILARITIES))
def test_similarity_matches_loop(name):
    a, b = _vectors()
    expected = torch.stack([torch.stack([sim(a[i], b[j], name) for j in range(3)]) for i in range(4)])
    torch.testing.assert_close(similarity_matrix(a, b, name), expected)
    torch.testing.assert_close(pairwise_similarity(a[:3], b, name), torch.diagonal(expected[:3]))


@pytest.mark.parametrize("name", list(DISTANCES))
def test_distance_matches_loop(name):
    a, b = _vectors()
    expected = torch.stack([torch.stack([dist(a[i], b[j], name) for j in range(3)]) for i in range(4)])
    torch.testing.assert_close(distance_matrix(a, b, name), expected)
    torch.testing.assert_close(pairwise_distance(a[:3], b, name), torch.diagonal(expected[:3]))


def test_higher_is_closer_for_every_similarity():
    anchor = torch.tensor([[1.0, 1.0]])
    near, far = torch.tensor([[1.1, 0.9]]), torch.tensor([[-3.0, 2.0]])
    for name, measure in SIMILARITIES.items():
        assert measure.higher_is_closer
        assert pairwise_similarity(anchor, near, name) > pairwise_similarity(anchor, far, name), name
    for name, measure in DISTANCES.items():
        assert not measure.higher_is_closer
        assert pairwise_distance(anchor, near, name) < pairwise_distance(anchor, far, name), name


def test_zero_distance_has_finite_gradient():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    for name in ("euclidean", "manhattan"):
        (distance_matrix(x, x, name).sum() + pairwise_distance(x, x.flip(0), name).sum()).backward()
        assert torch.isfinite(x.grad).all(), name
        x.grad = None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    a, b = _vectors(torch.float32)
    for name in SIMILARITIES:
        torch.testing.assert_close(similarity_matrix(a.to(dtype), b.to(dtype), name).float(),
                                   similarity_matrix(a, b, name), rtol=0.02, atol=0.05)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown similarity 'l2': choose one of cosine, dot, euclidean, manhattan"):
        get_similarity("l2")
    with pytest.raises(ValueError, match="unknown distance 'dot': choose one of euclidean, cosine, manhattan"):
        get_distance("dot")
