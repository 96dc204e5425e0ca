"""Same embeddings, same loss value and gradients as sentence-transformers where it has the same loss.

sentence-transformers' losses hold a model; their `compute_loss_from_embeddings` takes precomputed embeddings
(one [B, D] tensor per column), so we build them with model=None and call that. Convention differences are
asserted explicitly here and documented in our docstrings.
"""

from __future__ import annotations

import warnings

import pytest
import torch

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
from sentence_transformers import __version__ as st_version  # noqa: E402
from sentence_transformers.sentence_transformer.losses.batch_hard_triplet import (  # noqa: E402
    BatchHardTripletLossDistanceFunction,
)
from sentence_transformers.sentence_transformer.losses.contrastive import SiameseDistanceMetric  # noqa: E402
from sentence_transformers.sentence_transformer.losses.triplet import TripletDistanceMetric  # noqa: E402
from sentence_transformers.util import dot_score  # noqa: E402

from nlp_contrastive.losses import (  # noqa: E402
    batch_all_triplet,
    batch_hard_triplet,
    contrastive,
    cosent,
    cosine_similarity_loss,
    info_nce,
    online_contrastive,
    triplet,
)

B, D = 8, 6


def _columns(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, D, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(n)]


def _same(ours_fn, theirs_fn, columns, atol=1e-10):
    """Equal values and equal gradients w.r.t. every embedding column."""
    ours, theirs = ours_fn(columns), theirs_fn(columns)
    rtol = max(atol, 1e-8)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=rtol, atol=atol)
    g_ours = torch.autograd.grad(ours, columns, allow_unused=True)
    g_theirs = torch.autograd.grad(theirs, columns, allow_unused=True)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _no_labels():
    return torch.zeros(B)


@pytest.mark.parametrize("n_negatives", [0, 1, 2])
def test_mnrl_equals_info_nce_with_scale_20(n_negatives):
    mnrl = st_losses.MultipleNegativesRankingLoss(model=None, scale=20.0)
    _same(lambda c: info_nce(c[0], c[1], torch.stack(c[2:], dim=1) if n_negatives else None, temperature=0.05),
          lambda c: mnrl.compute_loss_from_embeddings(c, _no_labels()), _columns(2 + n_negatives))


def test_mnrl_dot_product_equals_info_nce_dot():
    mnrl = st_losses.MultipleNegativesRankingLoss(model=None, scale=1.0, similarity_fct=dot_score)
    _same(lambda c: info_nce(c[0], c[1], c[2], similarity="dot", scale=1.0),
          lambda c: mnrl.compute_loss_from_embeddings(c, _no_labels()), _columns(3))


@pytest.mark.parametrize("n_negatives", [0, 2])
def test_symmetric_mnrl_equals_symmetric_info_nce(n_negatives):
    symmetric = st_losses.MultipleNegativesRankingLoss(model=None, scale=20.0,
                                                       directions=("query_to_doc", "doc_to_query"),
                                                       partition_mode="per_direction")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mnsrl = st_losses.MultipleNegativesSymmetricRankingLoss(model=None, scale=20.0)
    for theirs in (symmetric, mnsrl):
        _same(lambda c: info_nce(c[0], c[1], torch.stack(c[2:], dim=1) if n_negatives else None, scale=20.0,
                                 symmetric=True),
              lambda c, t=theirs: t.compute_loss_from_embeddings(c, _no_labels()), _columns(2 + n_negatives))


def test_cosent_equals_with_scale():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.0, 0.7, 0.2, 1.0], dtype=torch.float64)
    theirs = st_losses.CoSENTLoss(model=None, scale=20.0)
    _same(lambda c: cosent(c[0], c[1], scores, temperature=0.05),
          lambda c: theirs.compute_loss_from_embeddings(c, scores), _columns(2))


def test_cosine_similarity_loss_equals():
    scores = torch.rand(B, generator=torch.Generator().manual_seed(3))  # ST casts labels to float32
    theirs = st_losses.CosineSimilarityLoss(model=None)
    _same(lambda c: cosine_similarity_loss(c[0], c[1], scores),
          lambda c: theirs.compute_loss_from_embeddings(c, scores), _columns(2))


@pytest.mark.parametrize("distance, metric, margin", [
    ("euclidean", TripletDistanceMetric.EUCLIDEAN, 5.0),  # ST's default margin 5 (ours: 1)
    ("cosine", TripletDistanceMetric.COSINE, 0.5),
    ("manhattan", TripletDistanceMetric.MANHATTAN, 8.0),
])
def test_triplet_equals(distance, metric, margin):
    theirs = st_losses.TripletLoss(model=None, distance_metric=metric, triplet_margin=margin)
    _same(lambda c: triplet(c[0], c[1], c[2], margin=margin, distance=distance),
          lambda c: theirs.compute_loss_from_embeddings(c, _no_labels()), _columns(3))


# F.pairwise_distance (ST's euclidean/manhattan) adds eps=1e-6 to the difference: equal up to ~1e-6.
@pytest.mark.parametrize("distance, metric, margin, atol", [
    ("cosine", SiameseDistanceMetric.COSINE_DISTANCE, 0.5, 1e-10),  # ST's default
    ("euclidean", SiameseDistanceMetric.EUCLIDEAN, 3.0, 1e-5),
    ("manhattan", SiameseDistanceMetric.MANHATTAN, 6.0, 1e-5),
])
def test_contrastive_and_online_contrastive_equal(distance, metric, margin, atol):
    labels = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0], dtype=torch.float64)
    theirs = st_losses.ContrastiveLoss(model=None, distance_metric=metric, margin=margin)
    _same(lambda c: contrastive(c[0], c[1], labels, margin=margin, distance=distance),
          lambda c: theirs.compute_loss_from_embeddings(c, labels), _columns(2), atol=atol)
    # ST's OnlineContrastiveLoss sums over hard pairs without the 1/2: 2 * our "sum".
    online = st_losses.OnlineContrastiveLoss(model=None, distance_metric=metric, margin=margin)
    _same(lambda c: 2 * online_contrastive(c[0], c[1], labels, margin=margin, distance=distance, reduction="sum"),
          lambda c: online.compute_loss_from_embeddings(c, labels), _columns(2, seed=4), atol=atol)


# sentence-transformers < 6.2 mined against the mean distance of a pair's own kind when the batch had exactly ONE
# pair of the other kind (its rule was `len(...) > 1`); 6.2 and we use that one pair, as the definition says.
ST_MINES_SINGLE_PAIR = tuple(int(x) for x in st_version.split(".")[:2]) >= (6, 2)


@pytest.mark.parametrize("labels", [
    [1, 0, 0, 0, 0, 0, 0, 0],  # exactly one positive
    [1, 1, 0, 1, 1, 1, 1, 1],  # exactly one negative
    [1, 1, 1, 1, 1, 1, 1, 1],  # no negative
    [0, 0, 0, 0, 0, 0, 0, 0],  # no positive
])
def test_online_contrastive_with_one_or_no_pair_of_a_kind(labels):
    labels = torch.tensor(labels, dtype=torch.float64)
    # margin 2 (the largest cosine distance): every mined negative adds to the loss, so the mining shows.
    online = st_losses.OnlineContrastiveLoss(model=None, distance_metric=SiameseDistanceMetric.COSINE_DISTANCE,
                                             margin=2.0)
    ours = lambda c: 2 * online_contrastive(c[0], c[1], labels, margin=2.0, distance="cosine", reduction="sum")  # noqa: E731
    theirs = lambda c: online.compute_loss_from_embeddings(c, labels)  # noqa: E731
    columns = _columns(2, seed=3)
    if ST_MINES_SINGLE_PAIR or labels.sum() in (0, len(labels)):
        _same(ours, theirs, columns)
    else:  # the documented difference: it must show, or the note in the README is stale
        assert not torch.isclose(ours(columns), theirs(columns).to(torch.float64))


@pytest.mark.parametrize("distance, metric", [
    ("euclidean", BatchHardTripletLossDistanceFunction.euclidean_distance),
    ("cosine", BatchHardTripletLossDistanceFunction.cosine_distance),
])
def test_batch_hard_and_batch_all_equal(distance, metric):
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])  # every anchor has a positive and a negative
    hard = st_losses.BatchHardTripletLoss(model=None, distance_metric=metric, margin=5.0)
    _same(lambda c: batch_hard_triplet(c[0], labels, margin=5.0, distance=distance),
          lambda c: hard.compute_loss_from_embeddings(c, labels), _columns(1), atol=1e-7)
    every = st_losses.BatchAllTripletLoss(model=None, distance_metric=metric, margin=1.0)
    _same(lambda c: batch_all_triplet(c[0], labels, margin=1.0, distance=distance),
          lambda c: every.compute_loss_from_embeddings(c, labels), _columns(1), atol=1e-7)


# --------------------------------------------------------------------- AnglE, distillation, Matryoshka
from sentence_transformers.base.losses import column_merging_disabled  # noqa: E402

from nlp_contrastive.losses import (  # noqa: E402
    InfoNCELoss,
    MatryoshkaLoss,
    MSEDistillationLoss,
    angle,
    margin_mse,
    mse_distillation,
)


def test_angle_equals_angle_loss():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.0, 0.7, 0.2, 1.0], dtype=torch.float64)
    for scale in (20.0, 1.0):
        theirs = st_losses.AnglELoss(model=None, scale=scale)
        _same(lambda c, s=scale: angle(c[0], c[1], scores, scale=s),
              lambda c, t=theirs: t.compute_loss_from_embeddings(c, scores), _columns(2))


def test_mse_distillation_equals_mse_loss():
    teacher = torch.randn(B, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    theirs = st_losses.MSELoss(model=None)
    _same(lambda c: mse_distillation(c[0], teacher),
          lambda c: theirs.compute_loss_from_embeddings(c, [teacher]), _columns(1))
    # Two columns (source, translation) onto the teacher's source embedding, and per-column teachers.
    _same(lambda c: mse_distillation(c[0], teacher, c[1]),
          lambda c: theirs.compute_loss_from_embeddings(c, [teacher, teacher]), _columns(2))
    per_column = torch.randn(B, 2, D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    _same(lambda c: mse_distillation(c[0], per_column, c[1]),
          lambda c: theirs.compute_loss_from_embeddings(c, [per_column[:, 0], per_column[:, 1]]), _columns(2))


@pytest.mark.parametrize("n_negatives", [1, 3])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_margin_mse_equals_margin_mse_loss(n_negatives, similarity):
    from sentence_transformers.util import pairwise_cos_sim, pairwise_dot_score

    function = {"dot": pairwise_dot_score, "cosine": pairwise_cos_sim}[similarity]
    theirs = st_losses.MarginMSELoss(model=None, similarity_fct=function)
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(B, 1 + n_negatives, generator=g, dtype=torch.float64)  # [pos, neg_1..K] form
    margins = scores[:, :1] - scores[:, 1:]  # the margins form
    negatives = (lambda c: torch.stack(c[2:], dim=1)) if n_negatives > 1 else (lambda c: c[2])
    for labels in (scores, margins):
        _same(lambda c: margin_mse(c[0], c[1], negatives(c), teacher_scores=scores, similarity=similarity),
              lambda c, y=labels: theirs.compute_loss_from_embeddings(c, y), _columns(2 + n_negatives))


# Matryoshka: sentence-transformers' MatryoshkaLoss wraps a loss that holds a model and calls it on tokenized
# features (its documented input), so both sides run on a real SentenceTransformer loaded from a tiny local model:
# ours on the embeddings its public forward returns, theirs on the features. Values and gradients w.r.t. the
# model's parameters must agree. No stand-in for an ST class: only its public API.
TEXTS = ["a man plays a guitar", "a woman is slicing an onion", "the cat sits on the mat", "kids run in a park",
         "a plane is taking off", "someone is cooking rice", "two dogs fight over a toy", "the sun sets at sea"]
TINY_DIM = 32


@pytest.fixture
def st_model(tmp_path):
    from sentence_transformers import SentenceTransformer

    from tests.conftest import make_tiny_encoder

    path = tmp_path / "tiny-st"
    make_tiny_encoder(hidden=TINY_DIM).save_pretrained(path)
    return SentenceTransformer(str(path), device="cpu").double()


def _features(model, n_columns: int) -> list[dict]:
    """n_columns batches of B texts (a rotation of TEXTS per column), tokenized by the model's public preprocess."""
    return [model.preprocess(TEXTS[c:] + TEXTS[:c]) for c in range(n_columns)]


def _same_through_model(model, ours_fn, theirs_fn, features, atol=1e-10):
    """Equal loss values and equal gradients w.r.t. every parameter of the model."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    ours, theirs = ours_fn(features), theirs_fn(features)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-8, atol=atol)
    g_ours = torch.autograd.grad(ours, parameters, allow_unused=True)
    g_theirs = torch.autograd.grad(theirs, parameters, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_ours)
    for a, b in zip(g_ours, g_theirs, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-8, atol=atol)


def _embeddings(model, features: list[dict]) -> list[torch.Tensor]:
    return [model(dict(f))["sentence_embedding"] for f in features]


@pytest.mark.parametrize("n_negatives", [0, 2])
def test_matryoshka_info_nce_equals_matryoshka_mnrl(st_model, n_negatives):
    dims, weights = [32, 16, 8], [1.0, 0.5, 2.0]
    theirs = st_losses.MatryoshkaLoss(st_model, st_losses.MultipleNegativesRankingLoss(st_model, scale=20.0),
                                      matryoshka_dims=dims, matryoshka_weights=weights)
    # Our dims in another order (same pairs): the order must not matter.
    ours = MatryoshkaLoss(InfoNCELoss(temperature=0.05), dims=[8, 32, 16], weights=[2.0, 1.0, 0.5])

    def our_value(features):
        c = _embeddings(st_model, features)
        return ours(anchor=c[0], positive=c[1], negatives=torch.stack(c[2:], dim=1) if n_negatives else None)

    def st_value(features):
        with column_merging_disabled():
            return theirs([dict(f) for f in features], _no_labels())

    _same_through_model(st_model, our_value, st_value, _features(st_model, 2 + n_negatives))


def test_matryoshka_mse_distillation_equals_matryoshka_mse_loss(st_model):
    teacher = torch.randn(B, TINY_DIM, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    theirs = st_losses.MatryoshkaLoss(st_model, st_losses.MSELoss(st_model), matryoshka_dims=[32, 12])
    ours = MatryoshkaLoss(MSEDistillationLoss(), dims=[12, 32])

    def st_value(features):
        with column_merging_disabled():
            return theirs([dict(f) for f in features], teacher)

    _same_through_model(st_model, lambda f: ours(anchor=_embeddings(st_model, f)[0], teacher_embedding=teacher),
                        st_value, _features(st_model, 1))
