"""Similarity of embedding pairs (row i of `a` with row i of `b`), every function "higher means closer".

The similarity table is the losses' own (`nlp_contrastive.losses.similarity`): distances enter negated (as
sentence-transformers and MTEB do for correlation and ranking) so one sort direction fits all four functions.
Computed in float64 so results do not depend on BLAS summation order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nlp_contrastive.evaluation.embedding import encode_unique
from nlp_contrastive.losses.similarity import get_similarity

SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")


def paired_similarities(a: np.ndarray, b: np.ndarray,
                        functions: Sequence[str] = SIMILARITY_FUNCTIONS) -> dict[str, np.ndarray]:
    """{function: [n] scores} for the pairs (a[i], b[i]); euclidean/manhattan are negative distances."""
    unknown = [f for f in functions if f not in SIMILARITY_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown similarity function(s) {unknown}: choose from {', '.join(SIMILARITY_FUNCTIONS)}")
    left, right = torch.from_numpy(np.asarray(a, dtype=np.float64)), torch.from_numpy(np.asarray(b, dtype=np.float64))
    return {name: get_similarity(name).pairwise(left, right).numpy() for name in functions}


def encode_pairs(encoder, sentences1: Sequence[str], sentences2: Sequence[str], batch_size: int,
                 functions: Sequence[str] = SIMILARITY_FUNCTIONS, *, evaluator=None) -> dict[str, np.ndarray]:
    """Encode both sides (each distinct sentence once; with `evaluator`, its prompts and truncate_dim) and
    score every pair with each function."""
    if evaluator is not None:
        left, right = evaluator.encode_roles(encoder, [("sentence1", sentences1), ("sentence2", sentences2)])
    else:
        left, right = encode_unique(encoder, [sentences1, sentences2], batch_size)
    return paired_similarities(left, right, functions)
