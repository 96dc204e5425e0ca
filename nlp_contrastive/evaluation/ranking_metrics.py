"""Ranking metrics with trec_eval / pytrec_eval definitions — what MTEB and BEIR report for retrieval.

Given a run {query_id: {doc_id: score}} and qrels {query_id: {doc_id: relevance (int)}}:

- Ranking: score descending; ties broken by document id descending (trec_eval's order).
- A document is relevant when its relevance is >= 1; R = number of relevant documents in the qrels.
- nDCG@k   (trec_eval ndcg_cut.k): sum_{i<=k} rel_i / log2(i+1), divided by the same sum over the ideal
           order of the judged relevances; gain is the relevance value itself (not 2^rel - 1).
- MAP@k    (map_cut.k): sum of precision@i over relevant documents at ranks i <= k, divided by R.
- Recall@k (recall.k): relevant documents in the top k / R.
- P@k      (P.k): relevant documents in the top k / k.
- MRR@k    (MTEB's mrr_at_k): 1 / rank of the first relevant document within the top k, else 0.
- Averages are over the queries that appear in both the run and the qrels (pytrec_eval's behaviour);
  a judged query with no relevant document scores 0 on every metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

DEFAULT_CUTOFFS: dict[str, tuple[int, ...]] = {"ndcg": (10,), "mrr": (10,), "map": (100,), "recall": (1, 10, 100)}


def rank(doc_scores: Mapping[str, float]) -> list[str]:
    """Document ids best first: score descending, then id descending (trec_eval tie-break)."""
    return [doc for doc, _ in sorted(doc_scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def query_metrics(ranking: Sequence[str], judgments: Mapping[str, int],
                  cutoffs: Mapping[str, Iterable[int]] = DEFAULT_CUTOFFS) -> dict[str, float]:
    """Metrics of one ranked list against one query's relevance judgments."""
    gains = [max(int(judgments.get(doc, 0)), 0) for doc in ranking]
    num_relevant = sum(1 for rel in judgments.values() if rel >= 1)
    hits_at: list[int] = []  # hits_at[i] = relevant documents in the top i+1
    for gain in gains:
        hits_at.append((hits_at[-1] if hits_at else 0) + (gain >= 1))
    out: dict[str, float] = {}
    for metric, ks in cutoffs.items():
        for k in ks:
            hits = hits_at[min(k, len(hits_at)) - 1] if hits_at else 0
            if metric == "ndcg":
                dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]) if g > 0)
                ideal = sorted((int(r) for r in judgments.values() if r > 0), reverse=True)[:k]
                idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
                value = dcg / idcg if idcg > 0 else 0.0
            elif metric == "map":
                precision_sum = sum(hits_at[i] / (i + 1) for i, g in enumerate(gains[:k]) if g >= 1)
                value = precision_sum / num_relevant if num_relevant else 0.0
            elif metric == "recall":
                value = hits / num_relevant if num_relevant else 0.0
            elif metric == "precision":
                value = hits / k
            elif metric == "mrr":
                value = next((1.0 / (i + 1) for i, g in enumerate(gains[:k]) if g >= 1), 0.0)
            else:
                raise ValueError(f"unknown ranking metric '{metric}': choose from ndcg, map, recall, precision, mrr")
            out[f"{metric}_at_{k}"] = value
    return out


def ranking_metrics(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                    cutoffs: Mapping[str, Iterable[int]] = DEFAULT_CUTOFFS) -> dict[str, float]:
    """Mean per-query metrics over queries present in both run and qrels; keys like `ndcg_at_10`."""
    cutoffs = {metric: tuple(int(k) for k in ks) for metric, ks in cutoffs.items()}
    for metric, ks in cutoffs.items():
        if any(k < 1 for k in ks):
            raise ValueError(f"cutoffs for {metric} must be positive integers, got {list(ks)}")
    check_qrels(qrels)
    check_run(run)
    queries = [q for q in run if q in qrels]
    if not queries:
        raise ValueError(f"no query id of the run appears in the qrels (run has {list(run)[:3]}..., qrels has "
                         f"{list(qrels)[:3]}...): use the same query ids in both")
    totals: dict[str, float] = {}
    for query in queries:
        for key, value in query_metrics(rank(run[query]), qrels[query], cutoffs).items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: total / len(queries) for key, total in totals.items()}


def check_qrels(qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Relevance values must be integers (as trec_eval requires); an empty qrels is an error."""
    if not qrels:
        raise ValueError("qrels are empty: give at least one (query id, document id, relevance) judgment")
    for query, judgments in qrels.items():
        for doc, rel in judgments.items():
            if isinstance(rel, bool) or rel is None or not float(rel).is_integer():
                raise ValueError(f"qrels: relevance {rel!r} of document '{doc}' for query '{query}' is not an "
                                 "integer: use 0 (not relevant), 1, 2, ... as in trec_eval")


def check_run(run: Mapping[str, Mapping[str, float]]) -> None:
    for query, doc_scores in run.items():
        for doc, score in doc_scores.items():
            if score is None or math.isnan(score):
                raise ValueError(f"run: score of document '{doc}' for query '{query}' is {score}: every retrieved "
                                 "document needs a numeric score (drop it from the run instead)")
