"""Triplet (plain, batch-hard, batch-all), pairwise hinge and BPR against loops, on paper, and on bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from naive_losses import assert_value_and_grad, dist, relu, sim, softplus

from nlp_contrastive.losses import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    BPRLoss,
    PairwiseHingeLoss,
    TripletLoss,
    batch_all_triplet,
    batch_hard_triplet,
    bpr,
    pairwise_hinge,
    triplet,
)

DTYPES = [torch.float32, torch.float64]
MASK = torch.tensor([[True, True, False], [True, False, False], [True, True, True], [False, True, True]])


def _triplets(seed=0, batch=4, dim=5, k=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g),
            torch.randn(batch, k, dim, generator=g))


def _labelled(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # class 2 has no positive: skipped by batch-hard
    return torch.randn(8, 4, generator=g), labels


# ------------------------------------------------------------------------------------------ naive formulas
def naive_per_negative(per_triplet, anchor, positive, negative, negatives_mask):
    """Mean over the real (anchor, positive, negative_k) triplets of per_triplet(a, p, n)."""
    negs = negative if negative.dim() == 3 else negative.unsqueeze(1)
    values = [per_triplet(anchor[i], positive[i], negs[i, k]) for i in range(len(anchor)) for k in range(negs.shape[1])
              if negatives_mask is None or bool(negatives_mask[i, k])]
    return sum(values) / len(values)


def naive_batch_hard(embeddings, labels, margin, distance):
    losses = []
    for i in range(len(labels)):
        pos = [dist(embeddings[i], embeddings[j], distance) for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [dist(embeddings[i], embeddings[j], distance) for j in range(len(labels)) if labels[j] != labels[i]]
        if pos and neg:
            losses.append(relu(max(pos, key=lambda d: d.item()) - min(neg, key=lambda d: d.item()) + margin))
    return sum(losses) / len(losses)


def naive_batch_all(embeddings, labels, margin, distance):
    losses = []
    n = len(labels)
    for a in range(n):
        for p in range(n):
            for q in range(n):
                if p != a and labels[p] == labels[a] and labels[q] != labels[a]:
                    losses.append(relu(dist(embeddings[a], embeddings[p], distance)
                                       - dist(embeddings[a], embeddings[q], distance) + margin))
    active = [v for v in losses if v.item() > 0]
    return sum(active) / len(active)


# ------------------------------------------------------------------------------------------ vs loops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distance, margin", [("euclidean", 1.0), ("cosine", 0.5), ("manhattan", 2.0)])
@pytest.mark.parametrize("layout", ["one", "many", "masked"])
def test_triplet_matches_loop(dtype, distance, margin, layout):
    a, p, n = _triplets()
    inputs = {"anchor": a, "positive": p, "negative": n[:, 0] if layout == "one" else n,
              "negatives_mask": MASK if layout == "masked" else None}
    per = lambda x, y, z: relu(dist(x, y, distance) - dist(x, z, distance) + margin)  # noqa: E731
    assert_value_and_grad(lambda **x: triplet(**x, margin=margin, distance=distance),
                          lambda **x: naive_per_negative(per, **x), inputs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean", "manhattan"])
@pytest.mark.parametrize("layout", ["one", "masked"])
def test_hinge_and_bpr_match_loop(dtype, similarity, layout):
    a, p, n = _triplets(seed=1)
    inputs = {"query": a, "pos": p, "neg": n[:, 0] if layout == "one" else n,
              "negatives_mask": MASK if layout == "masked" else None}
    hinge = lambda x, y, z: relu(1.0 - sim(x, y, similarity) + sim(x, z, similarity))  # noqa: E731
    smooth = lambda x, y, z: softplus(sim(x, z, similarity) - sim(x, y, similarity))  # noqa: E731

    def rename(fn):
        return lambda query, pos, neg, negatives_mask: naive_per_negative(fn, query, pos, neg, negatives_mask)

    assert_value_and_grad(lambda **x: pairwise_hinge(**x, margin=1.0, similarity=similarity), rename(hinge), inputs, dtype)
    assert_value_and_grad(lambda **x: bpr(**x, similarity=similarity), rename(smooth), inputs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("distance, margin", [("euclidean", 1.0), ("cosine", 0.5), ("manhattan", 2.0)])
def test_batch_hard_and_all_match_loop(dtype, distance, margin):
    x, labels = _labelled()
    inputs = {"embeddings": x, "labels": labels}
    assert_value_and_grad(lambda **k: batch_hard_triplet(**k, margin=margin, distance=distance),
                          lambda **k: naive_batch_hard(**k, margin=margin, distance=distance), inputs, dtype)
    assert_value_and_grad(lambda **k: batch_all_triplet(**k, margin=margin, distance=distance),
                          lambda **k: naive_batch_all(**k, margin=margin, distance=distance), inputs, dtype)


def test_reductions():
    a, p, n = _triplets()
    rows = triplet(a, p, n, negatives_mask=MASK, reduction="none")
    assert rows.shape == (4, 3) and (rows[~MASK] == 0).all()
    torch.testing.assert_close(triplet(a, p, n, negatives_mask=MASK, reduction="sum"), rows.sum())
    assert triplet(a, p, n[:, 0], reduction="none").shape == (4,)
    assert bpr(a, p, n[:, 0], reduction="none").shape == (4,)
    x, labels = _labelled()
    hard = batch_hard_triplet(x, labels, margin=2.0, reduction="none")
    assert hard.shape == (8,) and hard[5] == 0  # the lone class-2 example has no positive
    torch.testing.assert_close(batch_hard_triplet(x, labels, margin=2.0), hard.sum() / 7)
    all_rows = batch_all_triplet(x, labels, margin=2.0, reduction="none")
    assert all_rows.dim() == 1 and len(all_rows) == 2 * 6 + 6 * 5 + 2 * 6  # (a, p) pairs x negatives
    torch.testing.assert_close(batch_all_triplet(x, labels, margin=2.0, reduction="sum"), all_rows.sum())


def test_default_margins_follow_distance():
    a, p, n = _triplets()
    torch.testing.assert_close(triplet(a, p, n[:, 0]), triplet(a, p, n[:, 0], margin=1.0))
    torch.testing.assert_close(triplet(a, p, n[:, 0], distance="cosine"),
                               triplet(a, p, n[:, 0], distance="cosine", margin=0.5))
    assert TripletLoss(distance="cosine").get_config_dict()["margin"] == 0.5
    assert BatchHardTripletLoss().get_config_dict()["margin"] == 1.0


def test_gradcheck_float64():
    a, p, n = (t.double().requires_grad_(True) for t in _triplets(batch=3, dim=3, k=2))
    mask = MASK[:3, :2]
    for distance in ("euclidean", "cosine", "manhattan"):
        assert torch.autograd.gradcheck(
            lambda x, y, z, d=distance: triplet(x, y, z, negatives_mask=mask, margin=3.0, distance=d), (a, p, n))
    for similarity in ("dot", "cosine", "euclidean"):
        assert torch.autograd.gradcheck(
            lambda x, y, z, s=similarity: pairwise_hinge(x, y, z, negatives_mask=mask, margin=3.0, similarity=s),
            (a, p, n))
        assert torch.autograd.gradcheck(lambda x, y, z, s=similarity: bpr(x, y, z, similarity=s), (a, p, n))
    x, labels = _labelled()
    x = x.double().requires_grad_(True)
    for distance in ("euclidean", "cosine"):
        assert torch.autograd.gradcheck(lambda e, d=distance: batch_hard_triplet(e, labels, margin=3.0, distance=d), (x,))
        assert torch.autograd.gradcheck(lambda e, d=distance: batch_all_triplet(e, labels, margin=1.0, distance=d), (x,))


# ------------------------------------------------------------------------------------------ on paper
def test_analytic_triplet():
    a = torch.zeros(2, 2)
    p = torch.tensor([[3.0, 4.0], [3.0, 4.0]])  # d(a, p) = 5
    n = torch.tensor([[6.0, 8.0], [0.0, 1.0]])  # d(a, n) = 10 (satisfied), 1 (violated by 5 - 1 + 1)
    torch.testing.assert_close(triplet(a, p, n, margin=1.0, reduction="none"), torch.tensor([0.0, 5.0]))


def test_analytic_batch_hard_and_all():
    # Points on a line: class 0 at x = 0, 1; class 1 at x = 3, 7.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # Batch-hard: anchor 3 has farthest positive 4 (x=7), closest negative 2 (x=1): 4 - 2 + 1 = 3; others 0.
    torch.testing.assert_close(batch_hard_triplet(x, labels, margin=1.0, reduction="none"),
                               torch.tensor([0.0, 0.0, 3.0, 0.0]))
    # Batch-all: active triplets are (3, 7, 0): 4 - 3 + 1 = 2 and (3, 7, 1): 4 - 2 + 1 = 3 -> mean 2.5, sum 5.
    assert math.isclose(batch_all_triplet(x, labels, margin=1.0).item(), 2.5)
    assert math.isclose(batch_all_triplet(x, labels, margin=1.0, reduction="sum").item(), 5.0)


def test_analytic_hinge_and_bpr():
    q, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[1.5, 1.0]])  # dots 2, 1.5
    assert math.isclose(pairwise_hinge(q, p, n, margin=1.0).item(), 0.5)
    assert math.isclose(bpr(q, p, n).item(), math.log1p(math.exp(-0.5)), rel_tol=1e-6)
    # Numerically stable far from the boundary: softplus(-200) = e^{-200}, softplus(200) = 200.
    assert bpr(q, 100 * p, n).item() >= 0 and math.isfinite(bpr(q, p, 100 * n).item())


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("call, message", [
    (lambda a, p, n: triplet(a, p[:2], n), "mismatched shapes"),
    (lambda a, p, n: triplet(a, p, n[:2]), "negative must be"),
    (lambda a, p, n: triplet(a, p, n[:, :0]), "negative is empty"),
    (lambda a, p, n: triplet(a, p, n, distance="l2"), "unknown distance 'l2'"),
    (lambda a, p, n: triplet(a, p, n, negatives_mask=MASK[:, :2]), "negatives_mask must be"),
    (lambda a, p, n: pairwise_hinge(a, p, n, similarity="cos"), "unknown similarity 'cos'"),
    (lambda a, p, n: bpr(a, p, n, reduction="max"), "unknown reduction"),
    (lambda a, p, n: batch_hard_triplet(a, torch.tensor([0, 1])), "one class label per embedding"),
    (lambda a, p, n: batch_all_triplet(a, torch.tensor([0.0, float("nan"), 1.0, 1.0])), "labels contain NaN"),
])
def test_bad_inputs_raise_one_line_value_errors(call, message):
    a, p, n = _triplets()
    with pytest.raises(ValueError, match=message) as info:
        call(a, p, n)
    assert "\n" not in str(info.value)


def test_modules_accept_one_or_many_negatives():
    a, p, n = _triplets()
    torch.testing.assert_close(TripletLoss()(anchor=a, positive=p, negative=n[:, 0]), triplet(a, p, n[:, 0]))
    torch.testing.assert_close(TripletLoss()(anchor=a, positive=p, negatives=n, negatives_mask=MASK),
                               triplet(a, p, n, negatives_mask=MASK))
    torch.testing.assert_close(PairwiseHingeLoss(margin=2.0)(anchor=a, positive=p, negatives=n),
                               pairwise_hinge(a, p, n, margin=2.0))
    torch.testing.assert_close(BPRLoss(similarity="cosine")(anchor=a, positive=p, negative=n[:, 1]),
                               bpr(a, p, n[:, 1], similarity="cosine"))
    x, labels = _labelled()
    torch.testing.assert_close(BatchHardTripletLoss(margin=2.0)(anchor=x, label=labels.float()),
                               batch_hard_triplet(x, labels, margin=2.0))
    torch.testing.assert_close(BatchAllTripletLoss(distance="cosine")(anchor=x, label=labels),
                               batch_all_triplet(x, labels, distance="cosine"))
    with pytest.raises(ValueError, match="needs negatives"):
        TripletLoss()(anchor=a, positive=p)
    with pytest.raises(ValueError, match="both negative and negatives"):
        BPRLoss()(anchor=a, positive=p, negative=n[:, 0], negatives=n)
