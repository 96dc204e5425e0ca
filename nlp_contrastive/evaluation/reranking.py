"""Reranking: order each query's own candidate list (e.g. TrecQA answer selection) by similarity.

MTEB's RerankingEvaluator convention (the one behind its MAP/MRR reranking numbers for AskUbuntu,
SciDocs-RR, StackOverflowDupQuestions, ...):
- each query's candidates are its positives followed by its negatives, scored by cosine similarity;
- AP per query is scikit-learn's average_precision_score over that list, MAP is the mean over queries;
- MRR@10 is 1 / rank of the first positive within the top 10 (0 otherwise), rank by similarity
  descending (stable: equal scores keep candidate order);
- queries with no positive or no negative candidate are skipped (their AP/MRR say nothing about ranking).
Keys `map` (primary) and `mrr_at_10`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE, Evaluator
from nlp_contrastive.evaluation.classification_metrics import average_precision
from nlp_contrastive.evaluation.inputs import check_binary, check_lengths, check_texts
from nlp_contrastive.evaluation.pairs import paired_similarities


@dataclass(frozen=True)
class RerankingSample:
    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]


def group_candidates(queries: Sequence[str], documents: Sequence[str], labels: Sequence[int],
                     *, task: str = "reranking") -> list[RerankingSample]:
    """Rows of (query, candidate, label 0/1) -> one sample per query, in first-appearance order."""
    check_lengths(task, query=queries, document=documents, label=labels)
    check_texts(task, "query", queries)
    check_texts(task, "document", documents)
    check_binary(task, "label", labels)
    grouped: dict[str, tuple[list[str], list[str]]] = {}
    for query, document, label in zip(queries, documents, labels, strict=True):
        grouped.setdefault(query, ([], []))[0 if label == 1 else 1].append(document)
    return [RerankingSample(q, tuple(pos), tuple(neg)) for q, (pos, neg) in grouped.items()]


def mrr_at_k(is_relevant: Sequence[bool], scores: Sequence[float], k: int = 10) -> float:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    hits = np.flatnonzero(np.asarray(is_relevant, dtype=bool)[order])
    return 1.0 / (hits[0] + 1) if len(hits) else 0.0


class RerankingEvaluator(Evaluator):
    """MAP and MRR@10 of each query's candidates ranked by cosine similarity; primary `map`."""

    primary_metric = "map"

    def __init__(self, samples: Sequence[RerankingSample], *, name: str = "reranking",
                 batch_size: int = DEFAULT_BATCH_SIZE, mrr_at: int = 10) -> None:
        for i, sample in enumerate(samples):
            check_texts(name, f"query of sample {i}", [sample.query])
            check_texts(name, f"positives of sample {i}", sample.positives)
            check_texts(name, f"negatives of sample {i}", sample.negatives)
        self.samples = [s for s in samples if s.positives and s.negatives]
        self.skipped = len(samples) - len(self.samples)
        if not self.samples:
            raise ValueError(f"{name}: no query has both a positive and a negative candidate ({len(samples)} "
                             "queries given): check the label column (1 = relevant, 0 = not)")
        self.name = name
        self.batch_size = batch_size
        self.mrr_at = mrr_at

    def predict(self, encoder) -> list[np.ndarray]:
        """Cosine similarity of each query to its candidates (positives first), one array per sample."""
        queries = [s.query for s in self.samples]
        candidates = [doc for s in self.samples for doc in (*s.positives, *s.negatives)]
        query_emb, doc_emb = self.encode_roles(encoder, [("query", queries), ("document", candidates)])
        sizes = [len(s.positives) + len(s.negatives) for s in self.samples]
        owner = np.repeat(np.arange(len(self.samples)), sizes)
        cosine = paired_similarities(query_emb[owner], doc_emb, ("cosine",))["cosine"]
        return np.split(cosine, np.cumsum(sizes)[:-1])

    def score(self, predictions: Sequence[np.ndarray]) -> dict[str, float]:
        aps, mrrs = [], []
        for sample, scores in zip(self.samples, predictions, strict=True):
            is_relevant = [True] * len(sample.positives) + [False] * len(sample.negatives)
            aps.append(average_precision(is_relevant, scores))
            mrrs.append(mrr_at_k(is_relevant, scores, self.mrr_at))
        return {"map": float(np.mean(aps)), f"mrr_at_{self.mrr_at}": float(np.mean(mrrs))}
