"""Reranking (MTEB convention): MAP via sklearn-style AP, MRR@10, queries without pos or neg skipped."""

from __future__ import annotations

import pytest

from nlp_contrastive.evaluation import RerankingEvaluator, RerankingSample, group_candidates, load_suite


def test_group_candidates_keeps_order_and_splits_by_label():
    samples = group_candidates(["q1", "q2", "q1", "q1"], ["a", "b", "c", "d"], [1, 0, 0, 1])
    assert samples == [RerankingSample("q1", ("a", "d"), ("c",)), RerankingSample("q2", (), ("b",))]


def test_map_and_mrr_on_paper(table_encoder):
    encoder = table_encoder({"q": [1, 0], "r": [0, 1], "p1": [0.2, 1], "p2": [1, 0.1], "n1": [1, 0.5],
                             "n2": [-1, 0], "only": [1, 1]})
    samples = [RerankingSample("q", ("p1", "p2"), ("n1", "n2")),  # by cosine: p2, n1, p1, n2
               RerankingSample("r", ("p1",), ("n1",)),            # by cosine: p1, n1
               RerankingSample("q", ("only",), ())]               # no negative: skipped
    evaluator = RerankingEvaluator(samples)
    results = evaluator(encoder)
    assert evaluator.skipped == 1
    assert list(results) == ["map", "mrr_at_10"] and evaluator.primary_metric == "map"
    assert results["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert results["mrr_at_10"] == pytest.approx(1.0)


def test_no_usable_query_is_an_error():
    with pytest.raises(ValueError, match="no query has both a positive and a negative candidate"):
        RerankingEvaluator([RerankingSample("q", ("a",), ())])
    with pytest.raises(ValueError, match="label in row 0 is 'yes'"):
        group_candidates(["q"], ["a"], ["yes"])


def test_trecqa_suite_tasks(data_dir):
    reranking, retrieval = load_suite("eval/retrieval.yaml").evaluators()
    assert isinstance(reranking, RerankingEvaluator)
    assert len(reranking.samples) == 68 and reranking.skipped == 27  # 95 test questions
    assert len(retrieval.corpus) == 1393 and retrieval.primary_metric == "ndcg_at_10"
