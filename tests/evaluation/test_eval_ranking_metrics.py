"""trec_eval-definition ranking metrics: hand-computed cases, sklearn cross-checks, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nlp_contrastive.evaluation.ranking_metrics import query_metrics, rank, ranking_metrics


def test_rank_breaks_ties_by_doc_id_descending_like_trec_eval():
    assert rank({"a": 0.5, "c": 0.5, "b": 0.9, "d": 0.1}) == ["b", "c", "a", "d"]


def test_graded_query_on_paper():
    # ranking: d1 (rel 0), d2 (rel 2), d3 (unjudged), d4 (rel 1); a relevant d9 is never retrieved.
    judgments = {"d1": 0, "d2": 2, "d4": 1, "d9": 1}
    m = query_metrics(["d1", "d2", "d3", "d4"], judgments,
                      {"ndcg": (3, 10), "map": (3, 100), "recall": (1, 2, 10), "precision": (2,), "mrr": (1, 10)})
    idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_3"] == pytest.approx((2 / math.log2(3)) / idcg)
    assert m["ndcg_at_10"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(5)) / idcg)
    assert m["map_at_3"] == pytest.approx((1 / 2) / 3)  # divided by all 3 relevant documents
    assert m["map_at_100"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert (m["recall_at_1"], m["recall_at_2"], m["recall_at_10"]) == pytest.approx((0, 1 / 3, 2 / 3))
    assert m["precision_at_2"] == pytest.approx(1 / 2)
    assert (m["mrr_at_1"], m["mrr_at_10"]) == (0.0, 0.5)


def test_agrees_with_sklearn_when_every_document_is_ranked():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 30
        relevance = rng.integers(0, 3, n) * (rng.random(n) < 0.4)
        if relevance.sum() == 0:
            continue
        scores = rng.random(n)
        docs = [f"d{i:02d}" for i in range(n)]
        got = query_metrics(rank(dict(zip(docs, scores, strict=True))), dict(zip(docs, relevance.tolist(), strict=True)),
                            {"ndcg": (10, n), "map": (n,)})
        assert got["ndcg_at_10"] == pytest.approx(metrics.ndcg_score([relevance], [scores], k=10))
        assert got[f"ndcg_at_{n}"] == pytest.approx(metrics.ndcg_score([relevance], [scores]))
        assert got[f"map_at_{n}"] == pytest.approx(metrics.average_precision_score(relevance > 0, scores))


def test_mean_over_queries_in_both_run_and_qrels():
    run = {"q1": {"a": 0.9, "b": 0.1}, "q2": {"a": 0.5}, "unjudged": {"a": 1.0}}
    qrels = {"q1": {"b": 1}, "q2": {"a": 0}, "not-run": {"a": 1}}
    results = ranking_metrics(run, qrels, {"mrr": (10,), "recall": (10,)})
    # q1: first relevant at rank 2; q2 is judged but has no relevant document -> 0; others not scored.
    assert results == {"mrr_at_10": pytest.approx(0.25), "recall_at_10": pytest.approx(0.5)}


@pytest.mark.parametrize("run, qrels, message", [
    ({"q": {"a": float("nan")}}, {"q": {"a": 1}}, "score of document 'a' for query 'q' is nan"),
    ({"q": {"a": 1.0}}, {"q": {"a": 1.5}}, "relevance 1.5 of document 'a' for query 'q' is not an integer"),
    ({"q": {"a": 1.0}}, {}, "qrels are empty"),
    ({"q": {"a": 1.0}}, {"other": {"a": 1}}, "no query id of the run appears in the qrels"),
])
def test_bad_input(run, qrels, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(run, qrels)
