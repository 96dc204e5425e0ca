"""The `evaluate` modules under eval/metrics load offline from a path and give numbers computed independently."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

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
    # On paper. Query 0 ranks d3, d1, d7 (d1 relevant, gain 1); query 1 ranks d5, d2 by score (d2 gain 2, d9 gain 1
    # never retrieved). Linear gains (trec_eval / pytrec_eval), log2(rank + 1) discounts.
    ndcg_0 = (1 / math.log2(3)) / 1
    ndcg_1 = (2 / math.log2(3)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert result == pytest.approx({
        "ndcg_at_10": (ndcg_0 + ndcg_1) / 2,
        "mrr_at_10": (1 / 2 + 1 / 2) / 2,  # first relevant document at rank 2 in both
        "map_at_100": ((1 / 2) / 1 + (1 / 2) / 2) / 2,  # precision at each relevant hit / number relevant
        "recall_at_1": 0.0,
        "recall_at_10": (1 + 1 / 2) / 2,
        "recall_at_100": (1 + 1 / 2) / 2,
    })
    custom = metric.compute(predictions=predictions, references=references, cutoffs={"precision": [1]})
    assert custom == {"precision_at_1": 0.0}
    with pytest.raises(ValueError, match="score of document 'd1' for query '0' is nan"):
        metric.compute(predictions=[{"doc_ids": ["d1"], "scores": [float("nan")]}], references=references[:1])
