"""The one similarity/distance family shared by every loss, with an explicit "higher is closer" property.

Similarities (`cosine`, `dot`, `euclidean`, `manhattan`) are *higher = closer*: the distances enter negated, so
a similarity margin (pairwise hinge) or a softmax over similarities (InfoNCE) means the same for every name.
Distances (`euclidean`, `cosine` = 1 - cos, `manhattan`) are *lower = closer*; triplet and contrastive losses,
whose margins are defined on distances in their papers, use those.

Each measure comes in two shapes: `pairwise_*(a, b)` for row-aligned pairs ([B, D], [B, D] -> [B]) and
`*_matrix(a, b)` for all pairs ([N, D], [M, D] -> [N, M]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Measure:
    """A named closeness measure; `higher_is_closer` says which way margins and softmaxes must read it."""

    name: str
    pairwise: Callable[[Tensor, Tensor], Tensor]
    matrix: Callable[[Tensor, Tensor], Tensor]
    higher_is_closer: bool


def _normalize(x: Tensor) -> Tensor:
    return F.normalize(x, p=2, dim=-1)


def _exact(x: Tensor) -> Tensor:
    # cdist has no half-precision CPU kernel, and distances of half vectors lose the most digits: use float32.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _euclidean_pairwise(a: Tensor, b: Tensor) -> Tensor:
    # vector_norm's backward is 0 (not NaN) where a == b.
    return torch.linalg.vector_norm(_exact(a) - _exact(b), ord=2, dim=-1)


def _euclidean_matrix(a: Tensor, b: Tensor) -> Tensor:
    # Direct differences, not |a|^2 + |b|^2 - 2ab: exact for near-identical rows, 0 gradient at 0 distance.
    return torch.cdist(_exact(a), _exact(b), p=2.0, compute_mode="donot_use_mm_for_euclid_dist")


def _manhattan_pairwise(a: Tensor, b: Tensor) -> Tensor:
    return (_exact(a) - _exact(b)).abs().sum(dim=-1)


def _manhattan_matrix(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(_exact(a), _exact(b), p=1.0)


def _cosine_pairwise(a: Tensor, b: Tensor) -> Tensor:
    return (_normalize(a) * _normalize(b)).sum(dim=-1)


def _cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    return _normalize(a) @ _normalize(b).transpose(0, 1)


SIMILARITIES: dict[str, Measure] = {
    "cosine": Measure("cosine", _cosine_pairwise, _cosine_matrix, True),
    "dot": Measure("dot", lambda a, b: (a * b).sum(dim=-1), lambda a, b: a @ b.transpose(0, 1), True),
    "euclidean": Measure("euclidean", lambda a, b: -_euclidean_pairwise(a, b),
                         lambda a, b: -_euclidean_matrix(a, b), True),
    "manhattan": Measure("manhattan", lambda a, b: -_manhattan_pairwise(a, b),
                         lambda a, b: -_manhattan_matrix(a, b), True),
}

DISTANCES: dict[str, Measure] = {
    "euclidean": Measure("euclidean", _euclidean_pairwise, _euclidean_matrix, False),
    "cosine": Measure("cosine", lambda a, b: 1 - _cosine_pairwise(a, b), lambda a, b: 1 - _cosine_matrix(a, b), False),
    "manhattan": Measure("manhattan", _manhattan_pairwise, _manhattan_matrix, False),
}


def get_similarity(name: str) -> Measure:
    """The similarity called `name` (higher = closer); ValueError listing the choices otherwise."""
    if name not in SIMILARITIES:
        raise ValueError(f"unknown similarity '{name}': choose one of {', '.join(SIMILARITIES)}")
    return SIMILARITIES[name]


def get_distance(name: str) -> Measure:
    """The distance called `name` (lower = closer); ValueError listing the choices otherwise."""
    if name not in DISTANCES:
        raise ValueError(f"unknown distance '{name}': choose one of {', '.join(DISTANCES)}")
    return DISTANCES[name]


def pairwise_similarity(a: Tensor, b: Tensor, name: str = "cosine") -> Tensor:
    """s(a_i, b_i) for row-aligned [B, D] inputs -> [B]; higher is closer for every name."""
    return get_similarity(name).pairwise(a, b)


def similarity_matrix(a: Tensor, b: Tensor, name: str = "cosine") -> Tensor:
    """s(a_i, b_j) for [N, D] x [M, D] -> [N, M]; higher is closer for every name."""
    return get_similarity(name).matrix(a, b)


def pairwise_distance(a: Tensor, b: Tensor, name: str = "euclidean") -> Tensor:
    """d(a_i, b_i) for row-aligned [B, D] inputs -> [B]; lower is closer."""
    return get_distance(name).pairwise(a, b)


def distance_matrix(a: Tensor, b: Tensor, name: str = "euclidean") -> Tensor:
    """d(a_i, b_j) for [N, D] x [M, D] -> [N, M]; lower is closer."""
    return get_distance(name).matrix(a, b)
