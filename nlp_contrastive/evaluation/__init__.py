"""Evaluation: pure evaluators (`evaluator(encoder) -> {metric: value}`) whose numbers match MTEB's.

STS (pooled Spearman/Pearson), pair classification (best-threshold accuracy/F1, AP), reranking (MAP,
MRR@10) and retrieval (nDCG@10, MRR@10, MAP@100, Recall@k with exact, memory-bounded top-k), plus
YAML suites that bundle them (`load_suite`) and the `nlp-contrastive eval` command.
"""

from nlp_contrastive.evaluation.base import Evaluator
from nlp_contrastive.evaluation.pair_classification import PairClassificationEvaluator
from nlp_contrastive.evaluation.reranking import RerankingEvaluator, RerankingSample, group_candidates
from nlp_contrastive.evaluation.retrieval import RetrievalEvaluator, exact_top_k
from nlp_contrastive.evaluation.sts import STSEvaluator
from nlp_contrastive.evaluation.suite import (
    Suite,
    TaskSpec,
    TaskUnavailable,
    build_evaluator,
    default_suite,
    format_table,
    load_suite,
)

__all__ = [
    "Evaluator", "PairClassificationEvaluator", "RerankingEvaluator", "RerankingSample", "RetrievalEvaluator",
    "STSEvaluator", "Suite", "TaskSpec", "TaskUnavailable", "build_evaluator", "default_suite", "exact_top_k",
    "format_table", "group_candidates", "load_suite",
]
