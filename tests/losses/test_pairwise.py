"""cosine-similarity, CoSENT, contrastive and online contrastive against loops, on paper, and on bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from naive_losses import assert_value_and_grad, dist, log_sum_exp, mean, relu, sim

from nlp_contrastive.losses import (
    ContrastiveLoss,
    CoSENTLoss,
    CosineSimilarityLoss,
    OnlineContrastiveLoss,
    contrastive,
    cosent,
    cosine_similarity_loss,
    online_contrastive,
)

DTYPES = [torch.float32, torch.float64]


def _pairs(seed=0, batch=6, dim=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


# ------------------------------------------------------------------------------------------ naive formulas
def naive_cosine_similarity(a, b, score):
    return torch.stack([(sim(a[i], b[i], "cosine") - score[i]) ** 2 for i in range(len(a))])


def naive_cosent(a, b, score, tau):
    terms = [torch.zeros((), dtype=a.dtype)]
    for i in range(len(a)):
        for j in range(len(a)):
            if score[i] > score[j]:
                terms.append((sim(a[j], b[j], "cosine") - sim(a[i], b[i], "cosine")) / tau)
    return log_sum_exp(terms)


def naive_contrastive(a, b, label, margin, distance):
    rows = []
    for i in range(len(a)):
        d = dist(a[i], b[i], distance)
        rows.append(0.5 * (label[i] * d**2 + (1 - label[i]) * relu(margin - d) ** 2))
    return torch.stack(rows)


def naive_online_contrastive(a, b, label, margin, distance):
    """From the definition, pair by pair: a similar pair is hard if SOME dissimilar pair is closer than it, a
    dissimilar pair is hard if SOME similar pair is farther than it. A batch without the other kind compares
    each pair with the mean distance of its own kind instead."""
    d = [dist(a[i], b[i], distance) for i in range(len(a))]
    similar = [i for i in range(len(a)) if label[i] == 1]
    dissimilar = [i for i in range(len(a)) if label[i] == 0]

    def mean_distance(rows):
        return sum(d[j].item() for j in rows) / len(rows)

    rows = []
    for i in range(len(a)):
        if label[i] == 1:
            hard = (any(d[j].item() < d[i].item() for j in dissimilar) if dissimilar
                    else d[i].item() > mean_distance(similar))
            rows.append(0.5 * d[i] ** 2 if hard else d[i] * 0)
        else:
            hard = (any(d[j].item() > d[i].item() for j in similar) if similar
                    else d[i].item() < mean_distance(dissimilar))
            rows.append(0.5 * relu(margin - d[i]) ** 2 if hard else d[i] * 0)
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------ vs loops
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_similarity_matches_loop(dtype):
    a, b = _pairs()
    score = torch.rand(6, generator=torch.Generator().manual_seed(1))
    assert_value_and_grad(lambda **x: cosine_similarity_loss(**x, reduction="none"), naive_cosine_similarity,
                          {"a": a, "b": b, "score": score}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_cosent_matches_loop(dtype, tau):
    a, b = _pairs()
    score = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.0, 3.0])  # ties and any scale: only the order matters
    assert_value_and_grad(lambda **x: cosent(**x, temperature=tau), lambda **x: naive_cosent(**x, tau=tau),
                          {"a": a, "b": b, "score": score}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distance, margin", [("euclidean", 3.0), ("cosine", 0.5), ("manhattan", 6.0)])
def test_contrastive_matches_loop(dtype, distance, margin):
    a, b = _pairs()
    label = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.0])  # a soft label weights both terms
    assert_value_and_grad(lambda **x: contrastive(**x, margin=margin, distance=distance, reduction="none"),
                          lambda **x: naive_contrastive(**x, margin=margin, distance=distance),
                          {"a": a, "b": b, "label": label}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distance, margin, label", [
    ("euclidean", 4.0, [1, 0, 0, 1, 1, 0]),
    ("cosine", 1.0, [1, 0, 1, 0, 1, 0]),
    ("euclidean", 4.0, [1, 1, 1, 1, 1, 1]),  # no negatives: threshold = mean positive distance
    ("manhattan", 8.0, [0, 0, 0, 0, 0, 0]),  # no positives: threshold = mean negative distance
    ("euclidean", 4.0, [0, 0, 1, 0, 0, 0]),  # one positive: it alone is the negatives' threshold
    ("euclidean", 4.0, [1, 1, 1, 0, 1, 1]),  # one negative: it alone is the positives' threshold
])
def test_online_contrastive_matches_loop(dtype, distance, margin, label):
    a, b = _pairs(seed=2)
    inputs = {"a": a, "b": b, "label": torch.tensor(label, dtype=torch.float32)}
    assert_value_and_grad(lambda **x: online_contrastive(**x, margin=margin, distance=distance, reduction="none"),
                          lambda **x: naive_online_contrastive(**x, margin=margin, distance=distance), inputs, dtype)
    rows = naive_online_contrastive(**inputs, margin=margin, distance=distance)
    assert 0 < int((rows > 0).sum()) < 6  # some pairs are easy, some hard: the mining is exercised
    torch.testing.assert_close(online_contrastive(**inputs, margin=margin, distance=distance), mean(list(rows)))


def test_reductions():
    a, b = _pairs()
    score, label = torch.rand(6), torch.tensor([1.0, 0, 1, 0, 1, 0])
    for fn, target in ((cosine_similarity_loss, score), (contrastive, label), (online_contrastive, label)):
        rows = fn(a, b, target, reduction="none")
        assert rows.shape == (6,)
        torch.testing.assert_close(fn(a, b, target), rows.mean())
        torch.testing.assert_close(fn(a, b, target, reduction="sum"), rows.sum())


def test_gradcheck_float64():
    a, b = (t.double().requires_grad_(True) for t in _pairs(batch=4, dim=3))
    score = torch.tensor([0.2, 0.9, 0.4, 0.6], dtype=torch.float64)
    label = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, y: cosine_similarity_loss(x, y, score), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: cosent(x, y, score, temperature=0.5), (a, b))
    for distance in ("euclidean", "cosine", "manhattan"):
        assert torch.autograd.gradcheck(lambda x, y, d=distance: contrastive(x, y, label, margin=5.0, distance=d),
                                        (a, b))
        assert torch.autograd.gradcheck(
            lambda x, y, d=distance: online_contrastive(x, y, label, margin=5.0, distance=d), (a, b))


# ------------------------------------------------------------------------------------------ on paper
def test_analytic_cosine_similarity():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # cos = 0 vs 0.5 -> 0.25; cos = 1/sqrt(2) vs 1 -> (1/sqrt(2) - 1)^2
    rows = cosine_similarity_loss(a, b, torch.tensor([0.5, 1.0]), reduction="none")
    torch.testing.assert_close(rows, torch.tensor([0.25, (1 / math.sqrt(2) - 1) ** 2]))


def test_analytic_cosent():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cos = 1 and 0
    # score order agrees with cos: one pair (0, 1) with exp((cos_1 - cos_0)/t) = e^{-1} at t = 1.
    assert math.isclose(cosent(a, b, torch.tensor([1.0, 0.0]), temperature=1.0).item(), math.log1p(math.exp(-1)),
                        rel_tol=1e-6)
    # Reversed scores: the pair is mis-ranked, exp(+1).
    assert math.isclose(cosent(a, b, torch.tensor([0.0, 1.0]), temperature=1.0).item(), math.log1p(math.e),
                        rel_tol=1e-6)
    # Equal scores: no ordered pair, log(1) = 0.
    assert cosent(a, b, torch.tensor([0.5, 0.5])).item() == 0.0


def test_analytic_contrastive():
    a = torch.zeros(3, 2)
    b = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.0, 0.5]])  # distances 5, 5, 0.5
    rows = contrastive(a, b, torch.tensor([1.0, 0.0, 0.0]), margin=1.0, reduction="none")
    # similar at d=5: 25/2; dissimilar beyond the margin: 0; dissimilar at 0.5: (1 - 0.5)^2 / 2
    torch.testing.assert_close(rows, torch.tensor([12.5, 0.0, 0.125]))


def test_analytic_online_contrastive():
    a = torch.zeros(4, 2)
    b = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [5.0, 0.0]])
    label = torch.tensor([1.0, 1.0, 0.0, 0.0])  # positives at 1 and 3, negatives at 2 and 5
    # Closest negative 2 -> hard positive: d=3 (9/2). Farthest positive 3 -> hard negative: d=2 ((4-2)^2/2 = 2).
    rows = online_contrastive(a, b, label, margin=4.0, reduction="none")
    torch.testing.assert_close(rows, torch.tensor([0.0, 4.5, 2.0, 0.0]))
    assert math.isclose(online_contrastive(a, b, label, margin=4.0).item(), 6.5 / 4)


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("call, message", [
    (lambda a, b: cosine_similarity_loss(a, b, torch.tensor([0.1, 0.5, 1.2, 0.0])), r"score must lie in \[0.0, 1.0\]"),
    (lambda a, b: cosine_similarity_loss(a, b, torch.tensor([0.1, float("nan"), 0.2, 0.0])), "score contains NaN"),
    (lambda a, b: cosine_similarity_loss(a, b, torch.rand(3)), "one value per pair"),
    (lambda a, b: cosine_similarity_loss(a, b[:3], torch.rand(4)), "mismatched shapes"),
    (lambda a, b: cosent(a, b, torch.tensor([0.1, float("nan"), 0.2, 0.0])), "score contains NaN"),
    (lambda a, b: cosent(a, b, torch.rand(4), temperature=0), "temperature must be > 0"),
    (lambda a, b: cosent(a, b, torch.rand(4), temperature=0.1, scale=10), "both temperature"),
    (lambda a, b: contrastive(a, b, torch.tensor([1.0, 0, 2, 0])), r"label must lie in \[0.0, 1.0\]"),
    (lambda a, b: contrastive(a, b, torch.ones(4), distance="cos"), "unknown distance 'cos'"),
    (lambda a, b: online_contrastive(a, b, torch.tensor([1.0, 0, 0.5, 0])), "binary labels"),
    (lambda a, b: online_contrastive(a, b, torch.ones(4), reduction="avg"), "unknown reduction"),
])
def test_bad_inputs_raise_one_line_value_errors(call, message):
    a, b = _pairs(batch=4)
    with pytest.raises(ValueError, match=message) as info:
        call(a, b)
    assert "\n" not in str(info.value)


def test_modules_call_their_functions():
    a, b = _pairs()
    score, label = torch.rand(6), torch.tensor([1.0, 0, 1, 0, 1, 0])
    torch.testing.assert_close(CosineSimilarityLoss()(anchor=a, positive=b, score=score),
                               cosine_similarity_loss(a, b, score))
    torch.testing.assert_close(CoSENTLoss(scale=20)(anchor=a, positive=b, score=score), cosent(a, b, score))
    torch.testing.assert_close(ContrastiveLoss(margin=2.0, distance="cosine")(anchor=a, positive=b, label=label),
                               contrastive(a, b, label, margin=2.0, distance="cosine"))
    torch.testing.assert_close(OnlineContrastiveLoss(margin=4.0)(anchor=a, positive=b, label=label),
                               online_contrastive(a, b, label, margin=4.0))
    assert CoSENTLoss(scale=20).get_config_dict() == {"temperature": 0.05}
