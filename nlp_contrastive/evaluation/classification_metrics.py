"""Binary-decision metrics on similarity scores, with the exact conventions MTEB uses.

- `average_precision`: scikit-learn's `average_precision_score` (step-wise, no interpolation; tied scores
  form one threshold), used by MTEB's PairClassification and (v1) Reranking evaluators.
- `best_accuracy` / `best_f1`: MTEB's / sentence-transformers' threshold search — sort pairs by similarity
  (stable, most similar first), try a cut after each of the first n-1 pairs, keep the first best; the
  threshold is the midpoint between the two scores around the cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _sorted(labels: Sequence, scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    return np.asarray(labels, dtype=bool)[order], scores[order]


def average_precision(labels: Sequence, scores: Sequence[float]) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first."""
    y, s = _sorted(labels, scores)
    if not y.any():
        raise ValueError("average precision needs at least one positive label")
    true_positives = np.cumsum(y)
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = true_positives[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_accuracy(labels: Sequence, scores: Sequence[float]) -> tuple[float, float]:
    """(accuracy, threshold) of the best cut: pairs above the threshold are predicted positive."""
    y, s = _sorted(labels, scores)
    if len(y) < 2:
        return 0.0, -1.0
    positives_seen = np.cumsum(y)[:-1]
    negatives_left = (~y).sum() - (np.arange(1, len(y)) - positives_seen)
    accuracy = (positives_seen + negatives_left) / len(y)
    best = int(np.argmax(accuracy))
    if accuracy[best] <= 0:
        return 0.0, -1.0
    return float(accuracy[best]), float((s[best] + s[best + 1]) / 2)


def best_f1(labels: Sequence, scores: Sequence[float]) -> tuple[float, float, float, float]:
    """(f1, precision, recall, threshold) of the cut with the best F1 for the positive class."""
    y, s = _sorted(labels, scores)
    if len(y) < 2 or not y.any():
        return 0.0, 0.0, 0.0, 0.0
    correct = np.cumsum(y)[:-1].astype(np.float64)
    extracted = np.arange(1, len(y), dtype=np.float64)
    precision = correct / extracted
    recall = correct / y.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(correct > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    if f1[best] <= 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(f1[best]), float(precision[best]), float(recall[best]), float((s[best] + s[best + 1]) / 2)
