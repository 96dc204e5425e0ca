"""Distillation from a teacher: MSE to its embeddings, and MarginMSE to its score margins (positive vs negatives).

The teacher's outputs are inputs here (computed once, stored with the dataset): the losses see only tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nlp_contrastive.losses._common import (
    LossModule,
    at_least_float32,
    autocast_off,
    check_embeddings,
    check_reduction,
    per_negative,
    pick_negatives,
    reduce,
)
from nlp_contrastive.losses.similarity import get_similarity

REIMERS_2020 = """@inproceedings{reimers2020multilingual,
  title={Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation},
  author={Reimers, Nils and Gurevych, Iryna},
  booktitle={Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing},
  year={2020},
  url={https://arxiv.org/abs/2004.09813}
}"""

HOFSTATTER_2020 = """@article{hofstatter2020improving,
  title={Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation},
  author={Hofst{\\"a}tter, Sebastian and Althammer, Sophia and Schr{\\"o}der, Michael and Sertkan, Mete and Hanbury, Allan},
  journal={arXiv preprint arXiv:2010.02666},
  year={2020}
}"""


def mse_distillation(anchor: Tensor, teacher_embedding: Tensor, positive: Tensor | None = None, *,
                     reduction: str = "mean") -> Tensor:
    """Regress student embeddings onto the teacher's:  l_i = mean_c mean_k (e_c[i, k] - t_c[i, k])^2.

    Inputs: anchor [B, D] (role "anchor") and optionally positive [B, D] (role "positive", e.g. the translation
    in multilingual distillation): the student's embeddings, columns c. teacher_embedding [B, D] (role
    "teacher_embedding": the teacher's embedding of the anchor text, every column's target) or [B, C, D] (one
    target per column, C = number of columns given). The teacher side gets no gradient. reduction "mean"
    (= sentence-transformers' MSELoss: per-column mean squared error, averaged over columns), "sum" or "none"
    ([B]). The teacher must have the student's size D (no projection layer).
    When to use: compressing a teacher into a smaller student, or extending a model to new languages (student
    embeds source and translation, both onto the teacher's source embedding).
    Reference: Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
    Distillation", EMNLP 2020.
    """
    check_reduction(reduction)
    check_embeddings(anchor=anchor, positive=positive)
    columns = [anchor] if positive is None else [anchor, positive]
    targets = _teacher_targets(teacher_embedding, anchor.shape, len(columns))
    with autocast_off(anchor.device):
        per_column = [((at_least_float32(e) - at_least_float32(t).to(e.device)) ** 2).mean(dim=-1)
                      for e, t in zip(columns, targets, strict=True)]
    return reduce(torch.stack(per_column).mean(dim=0), reduction)


def _teacher_targets(teacher: Tensor, shape: torch.Size, n_columns: int) -> list[Tensor]:
    batch, dim = shape
    if not isinstance(teacher, Tensor) or not teacher.is_floating_point():
        raise ValueError("teacher_embedding must be a float tensor of the teacher's embeddings, [batch, dim]")
    teacher = teacher.detach()
    if teacher.dim() == 2 and teacher.shape[0] == batch:
        targets = [teacher] * n_columns
    elif teacher.dim() == 3 and teacher.shape[:2] == (batch, n_columns):
        targets = list(teacher.unbind(dim=1))
    else:
        raise ValueError(f"teacher_embedding must be [batch, dim] = [{batch}, {dim}] or [batch, columns, dim] = "
                         f"[{batch}, {n_columns}, {dim}], got shape {tuple(teacher.shape)}")
    if teacher.shape[-1] != dim:
        raise ValueError(f"teacher_embedding has dimension {teacher.shape[-1]} but the student's embeddings have "
                         f"{dim}: distil from a teacher of the student's size")
    if not torch.isfinite(teacher).all():
        raise ValueError("teacher_embedding contains NaN or inf: recompute the teacher embeddings of those rows")
    return targets


def margin_mse(anchor: Tensor, positive: Tensor, negatives: Tensor, *, teacher_scores: Tensor | None = None,
               teacher_margin: Tensor | None = None, negatives_mask: Tensor | None = None,
               similarity: str = "dot", reduction: str = "mean") -> Tensor:
    """Match the student's score margins to the teacher's:  l_ik = ((s(q_i, p_i) - s(q_i, n_ik)) - m_ik)^2.

    Inputs: anchor [B, D] (role "anchor", the query), positive [B, D] ("positive"), negatives [B, D] (one per
    row, role "negative") or [B, K, D] ("negatives"), with negatives_mask [B, K] (True = real negative; padded
    slots are left out). The teacher's view, exactly one of: teacher_scores [B, 1 + K] (role
    "teacher_scores": the teacher's s_T(q_i, p_i), s_T(q_i, n_i1), ..., s_T(q_i, n_iK)), giving
    m_ik = s_T(q_i, p_i) - s_T(q_i, n_ik); or teacher_margin [B] (K = 1) / [B, K] = m directly. No gradient flows
    to the teacher side. similarity: "dot" (default, as sentence-transformers) | "cosine" | "euclidean" |
    "manhattan" — use the scale the teacher's scores live on. reduction "mean" over the real (i, k) entries
    (= sentence-transformers' MarginMSELoss), "sum", or "none" ([B, K], padded slots 0).
    When to use: distilling a cross-encoder (or any teacher's scores, e.g. those written by hard-negative
    mining) into a bi-encoder; positive and negatives need not be truly relevant/irrelevant, only the teacher's
    margins matter.
    Reference: Hofstaetter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
    Distillation", arXiv 2010.02666, 2020.
    """
    check_reduction(reduction)
    measure = get_similarity(similarity)
    check_embeddings(anchor=anchor, positive=positive)
    negatives, negatives_mask = per_negative(anchor, negatives, negatives_mask, name="negatives")
    target = _teacher_margins(teacher_scores, teacher_margin, tuple(negatives.shape[:2]), negatives_mask)
    with autocast_off(anchor.device):
        query = at_least_float32(anchor)
        positive_score = measure.pairwise(query, at_least_float32(positive))  # [B]
        negative_scores = measure.pairwise(query.unsqueeze(1), at_least_float32(negatives))  # [B, K]
        margins = positive_score.unsqueeze(1) - negative_scores
        errors = (margins - target.to(margins)) ** 2
    return reduce(errors, reduction, mask=negatives_mask)


def _teacher_margins(scores: Tensor | None, margin: Tensor | None, shape: tuple[int, int],
                     mask: Tensor | None) -> Tensor:
    """The teacher's margins [B, K] (detached; padded slots 0) from its scores [B, 1 + K] or margins [B, K]."""
    batch, k = shape
    if (scores is None) == (margin is None):
        raise ValueError("margin_mse needs exactly one of teacher_scores [B, 1 + K] (teacher's positive and negative "
                         "scores) or teacher_margin [B, K]")
    if scores is not None:
        scores = torch.as_tensor(scores).detach()
        if tuple(scores.shape) != (batch, 1 + k):
            raise ValueError(f"teacher_scores must be [batch, 1 + negatives] = [{batch}, {1 + k}] (positive's score "
                             f"first), got shape {tuple(scores.shape)}")
        target = scores[:, :1] - scores[:, 1:]
    else:
        target = torch.as_tensor(margin).detach()
        target = target.unsqueeze(1) if target.dim() == 1 and k == 1 else target
        if tuple(target.shape) != (batch, k):
            raise ValueError(f"teacher_margin must be [batch, negatives] = [{batch}, {k}], got shape "
                             f"{tuple(torch.as_tensor(margin).shape)}")
    if not target.is_floating_point():
        target = target.float()
    real = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.to(target.device)
    if not torch.isfinite(target[real]).all():
        raise ValueError("teacher scores contain NaN or inf for real (unpadded) negatives: recompute them")
    return torch.where(real, target, torch.zeros_like(target))


class MSEDistillationLoss(LossModule):
    """MSE between student and teacher embeddings; see `mse_distillation`."""

    roles = ("anchor", "teacher_embedding")
    optional_roles = ("positive",)
    citation = REIMERS_2020

    def __init__(self, reduction: str = "mean") -> None:
        check_reduction(reduction)
        super().__init__(reduction=reduction)

    def forward(self, anchor: Tensor, teacher_embedding: Tensor, positive: Tensor | None = None) -> Tensor:
        return mse_distillation(anchor, teacher_embedding, positive, **self._config)


class MarginMSELoss(LossModule):
    """MSE between student and teacher score margins (positive vs each negative); see `margin_mse`."""

    roles = ("anchor", "positive", "negative", "teacher_scores")
    optional_roles = ("negatives",)
    citation = HOFSTATTER_2020

    def __init__(self, similarity: str = "dot", reduction: str = "mean") -> None:
        get_similarity(similarity)
        check_reduction(reduction)
        super().__init__(similarity=similarity, reduction=reduction)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor | None = None,
                teacher_scores: Tensor | None = None, *, negatives: Tensor | None = None,
                negatives_mask: Tensor | None = None, teacher_margin: Tensor | None = None) -> Tensor:
        return margin_mse(anchor, positive, pick_negatives(negative, negatives, "MarginMSELoss"),
                          teacher_scores=teacher_scores, teacher_margin=teacher_margin,
                          negatives_mask=negatives_mask, **self._config)
