"""Pair classification (paraphrase / duplicate detection, e.g. MSRP): is this pair positive?

Same as MTEB's PairClassificationEvaluator: for cosine, dot, euclidean and manhattan similarity, the best
accuracy and best F1 over all thresholds (see classification_metrics) and the average precision of the
ranking by similarity. Keys `<fn>_accuracy`, `<fn>_f1`, `<fn>_precision`, `<fn>_recall`, `<fn>_ap`, plus
`max_<metric>` over the functions; primary `max_ap`, MTEB's main score for this task type. Thresholds are
fitted on the evaluated pairs themselves, so accuracy/F1 are optimistic by design (as in MTEB).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE, Evaluator
from nlp_contrastive.evaluation.classification_metrics import average_precision, best_accuracy, best_f1
from nlp_contrastive.evaluation.inputs import check_binary, check_lengths, check_texts
from nlp_contrastive.evaluation.pairs import SIMILARITY_FUNCTIONS, encode_pairs

_METRICS = ("ap", "accuracy", "f1", "precision", "recall")


def pair_classification_metrics(labels: Sequence[int], similarities: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """MTEB's pair-classification metrics for each similarity function ("higher means closer")."""
    per_function: dict[str, float] = {}
    for name, scores in similarities.items():
        accuracy, _ = best_accuracy(labels, scores)
        f1, precision, recall, _ = best_f1(labels, scores)
        values = {"ap": average_precision(labels, scores), "accuracy": accuracy, "f1": f1,
                  "precision": precision, "recall": recall}
        per_function.update({f"{name}_{metric}": value for metric, value in values.items()})
    maxima = {f"max_{metric}": max(per_function[f"{name}_{metric}"] for name in similarities) for metric in _METRICS}
    return {**maxima, **per_function}


class PairClassificationEvaluator(Evaluator):
    """Best-threshold accuracy/F1 and AP of similarity on labelled pairs (1 = positive); primary `max_ap`."""

    primary_metric = "max_ap"

    def __init__(
        self,
        sentences1: Sequence[str],
        sentences2: Sequence[str],
        labels: Sequence[int],
        *,
        name: str = "pair_classification",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        check_lengths(name, sentence1=sentences1, sentence2=sentences2, label=labels)
        check_texts(name, "sentence1", sentences1)
        check_texts(name, "sentence2", sentences2)
        check_binary(name, "label", labels)
        if len({int(v) for v in labels}) < 2:
            raise ValueError(f"{name}: every label is {int(labels[0])}; pair classification needs both positive (1) "
                             "and negative (0) pairs")
        self.sentences1 = list(sentences1)
        self.sentences2 = list(sentences2)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.name = name
        self.batch_size = batch_size

    def predict(self, encoder) -> dict[str, np.ndarray]:
        return encode_pairs(encoder, self.sentences1, self.sentences2, self.batch_size, SIMILARITY_FUNCTIONS,
                            evaluator=self)

    def score(self, predictions: Mapping[str, np.ndarray]) -> dict[str, float]:
        return pair_classification_metrics(self.labels, predictions)
