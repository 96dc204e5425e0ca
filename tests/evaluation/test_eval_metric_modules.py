"""The `evaluate` modules under eval/metrics load offline from a path and equal the library's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from nlp_contrastive.evaluation.ranking_metrics import ranking_metrics

evaluate = pytest.importorskip("evaluate")
METRICS = Path(__file__).resolve().parents[2] / "eval" / "metrics"


def test_sts_correlation_module():
    metric = evaluate.load(str(METRICS / "sts_correlation"))
    rng = np.random.default_rng(0)
    gold = rng.random(50) * 5
    predicted = gold / 5 + rng.normal(0, 0.2, 50)
    result = metric.compute(predictions=predicted.tolist(), references=gold.tolist())
    assert result["spearman"] == pytest.approx(spearmanr(gold, predicted).statistic)
    assert result["pearson"] == pytest.approx(pearsonr(gold, predicted).statistic)
    with pytest.raises(ValueError, match="prediction in row 1 is nan"):
        metric.compute(predictions=[0.1, float("nan"), 0.3], references=[1.0, 2.0, 3.0])


def test_retrieval_module_matches_the_library():
    metric = evaluate.load(str(METRICS / "retrieval"))
    predictions = [{"doc_ids": ["d3", "d1", "d7"], "scores": [0.9, 0.8, 0.1]},
                   {"doc_ids": ["d2", "d5"], "scores": [0.3, 0.7]}]
    references = [{"doc_ids": ["d1"], "relevance": [1]}, {"doc_ids": ["d2", "d9"], "relevance": [2, 1]}]
    result = metric.compute(predictions=predictions, references=references)
    run = {"0": {"d3": 0.9, "d1": 0.8, "d7": 0.1}, "1": {"d2": 0.3, "d5": 0.7}}
    qrels = {"0": {"d1": 1}, "1": {"d2": 2, "d9": 1}}
    assert result == pytest.approx(ranking_metrics(run, qrels))
    assert result["mrr_at_10"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    custom = metric.compute(predictions=predictions, references=references, cutoffs={"precision": [1]})
    assert custom == {"precision_at_1": 0.0}
    with pytest.raises(ValueError, match="score of document 'd1' for query '0' is nan"):
        metric.compute(predictions=[{"doc_ids": ["d1"], "scores": [float("nan")]}], references=references[:1])
