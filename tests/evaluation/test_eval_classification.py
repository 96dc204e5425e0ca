"""Pair classification: MTEB's threshold search and sklearn's AP, reproduced exactly."""

from __future__ import annotations

import numpy as np
import pytest

from nlp_contrastive.evaluation import PairClassificationEvaluator, build_evaluator
from nlp_contrastive.evaluation.classification_metrics import average_precision, best_accuracy, best_f1


def _mteb_loops(scores, labels):
    """MTEB's find_best_acc_and_threshold / find_best_f1_and_threshold, written as its plain loops."""
    rows = sorted(zip(scores, labels, strict=True), key=lambda x: x[0], reverse=True)
    best_acc, positives, negatives_left = 0.0, 0, sum(1 for y in labels if y == 0)
    best_f1_value = best_p = best_r = 0.0
    extracted = correct = 0
    for i in range(len(rows) - 1):
        label = rows[i][1]
        positives += label == 1
        negatives_left -= label == 0
        best_acc = max(best_acc, (positives + negatives_left) / len(labels))
        extracted += 1
        correct += label == 1
        if correct:
            p, r = correct / extracted, correct / sum(labels)
            if 2 * p * r / (p + r) > best_f1_value:
                best_f1_value, best_p, best_r = 2 * p * r / (p + r), p, r
    return best_acc, (best_f1_value, best_p, best_r)


def test_mteb_unit_test_values():
    scores = [6.12, 5.39, 5.28, 5.94, 6.34, 6.47, 7.88, 6.62, 8.04, 5.9]
    labels = [0, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    accuracy, threshold = best_accuracy(labels, scores)
    assert accuracy == pytest.approx(0.9) and threshold == pytest.approx(7.96)
    f1, precision, recall, f1_threshold = best_f1(labels, scores)
    assert (f1, precision, recall, f1_threshold) == pytest.approx((2 / 3, 1.0, 0.5, 7.96))


def test_random_cases_with_ties_match_reference_loops_and_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(2, 60))
        labels = rng.integers(0, 2, n)
        if labels.sum() == 0:
            labels[0] = 1
        scores = np.round(rng.random(n), 1)  # many ties
        accuracy, f1_triple = _mteb_loops(scores.tolist(), labels.tolist())
        assert best_accuracy(labels, scores)[0] == pytest.approx(accuracy)
        assert best_f1(labels, scores)[:3] == pytest.approx(f1_triple)
        assert average_precision(labels, scores) == pytest.approx(metrics.average_precision_score(labels, scores))


def test_evaluator_on_paper(table_encoder):
    vectors = {"a": [1, 0], "b": [1, 0.2], "c": [0, 1], "d": [1, 1], "e": [-1, 0.1]}
    encoder = table_encoder(vectors)
    evaluator = PairClassificationEvaluator(["a", "a", "c", "e"], ["b", "c", "d", "a"], [1, 0, 1, 0])
    results = evaluator(encoder)
    assert list(results)[0] == evaluator.primary_metric == "max_ap"
    # cosine: a-b 0.98 (+), c-d 0.71 (+), a-c 0 (-), e-a -0.995 (-): perfectly separable.
    assert results["cosine_ap"] == results["cosine_accuracy"] == results["cosine_f1"] == 1.0
    assert results["max_ap"] == max(results[f"{f}_ap"] for f in ("cosine", "dot", "euclidean", "manhattan"))
    assert len(encoder.calls) == 1 and sorted(encoder.calls[0]) == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("labels, message", [
    ([1, 2, 0], "label in row 1 is 2; labels must be 0 or 1"),
    ([1, 1, 1], "every label is 1"),
    ([1, None, 0], "label in row 1 is missing"),
])
def test_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        PairClassificationEvaluator(["a", "b", "c"], ["d", "e", "f"], labels)


def test_msrp_task_builds_from_the_suite_file(data_dir):
    from nlp_contrastive.evaluation import load_suite

    (evaluator,) = load_suite("eval/pair_classification.yaml").evaluators()
    assert isinstance(evaluator, PairClassificationEvaluator) and len(evaluator.labels) == 1725
    assert build_evaluator({"type": "pair_classification", "dataset": "msrp", "split": "validation"}).labels.sum() > 0
