"""Semantic textual similarity: correlation between gold scores and embedding similarity.

MTEB convention (and sentence-transformers' EmbeddingSimilarityEvaluator): Pearson and Spearman from
`scipy.stats` over all pairs pooled — not averaged per genre/file — for cosine, dot, euclidean and
manhattan similarity (distances negated). Gold scores are used as given: correlations do not change under
MTEB's rescaling to [0, 1], so `score_range` only validates the values and scales the plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr

from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE, Evaluator
from nlp_contrastive.evaluation.inputs import check_lengths, check_numbers, check_score_range, check_texts
from nlp_contrastive.evaluation.pairs import SIMILARITY_FUNCTIONS, encode_pairs


def correlation_metrics(gold: Sequence[float], similarities: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """{spearman_<fn>, pearson_<fn>} for each similarity function, all pairs pooled."""
    gold = np.asarray(gold, dtype=np.float64)
    metrics: dict[str, float] = {}
    for name, predicted in similarities.items():
        predicted = np.asarray(predicted, dtype=np.float64)
        metrics[f"spearman_{name}"] = float(spearmanr(gold, predicted).statistic)
        metrics[f"pearson_{name}"] = float(pearsonr(gold, predicted).statistic)
    return metrics


class STSEvaluator(Evaluator):
    """Pooled Spearman/Pearson of gold score vs similarity; primary `spearman_cosine`."""

    def __init__(
        self,
        sentences1: Sequence[str],
        sentences2: Sequence[str],
        scores: Sequence[float],
        *,
        name: str = "sts",
        batch_size: int = DEFAULT_BATCH_SIZE,
        similarity_functions: Sequence[str] = SIMILARITY_FUNCTIONS,
        score_range: Sequence[float] | None = None,
    ) -> None:
        check_lengths(name, sentence1=sentences1, sentence2=sentences2, score=scores)
        check_texts(name, "sentence1", sentences1)
        check_texts(name, "sentence2", sentences2)
        check_numbers(name, "score", scores)
        check_score_range(name, scores, score_range)
        if len(set(scores)) < 2:
            raise ValueError(f"{name}: every gold score is {scores[0]}, so correlation is undefined: map the "
                             "column holding the graded similarity to 'score'")
        functions = list(similarity_functions)
        unknown = [f for f in functions if f not in SIMILARITY_FUNCTIONS]
        if not functions or unknown:
            raise ValueError(f"{name}: similarity functions {functions} must be a non-empty subset of "
                             f"{list(SIMILARITY_FUNCTIONS)}")
        self.sentences1 = list(sentences1)
        self.sentences2 = list(sentences2)
        self.scores = np.asarray(scores, dtype=np.float64)
        self.name = name
        self.batch_size = batch_size
        self.similarity_functions = sorted(functions, key=lambda f: f != "cosine")  # primary first
        self.score_range = tuple(float(x) for x in score_range) if score_range is not None else None
        self.primary_metric = f"spearman_{self.similarity_functions[0]}"

    def predict(self, encoder) -> dict[str, np.ndarray]:
        """{function: [n_pairs] similarity}, each distinct sentence encoded once."""
        return encode_pairs(encoder, self.sentences1, self.sentences2, self.batch_size, self.similarity_functions,
                            evaluator=self)

    def score(self, predictions: Mapping[str, np.ndarray]) -> dict[str, float]:
        return correlation_metrics(self.scores, predictions)
