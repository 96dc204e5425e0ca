"""Triplet losses (plain, batch-hard, batch-all) and the ranking pair losses pairwise hinge and BPR.

The plain triplet, hinge and BPR losses take one negative per row [B, D] or several [B, K, D] (with an optional
[B, K] mask): every (anchor, positive, negative_k) is then one triplet, and "mean" averages the real ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nlp_contrastive.losses._common import (
    LossModule,
    check_embeddings,
    check_reduction,
    per_negative,
    pick_negatives,
    reduce,
)
from nlp_contrastive.losses.similarity import get_distance, get_similarity

SCHROFF_2015 = """@inproceedings{schroff2015facenet,
  title={FaceNet: A Unified Embedding for Face Recognition and Clustering},
  author={Schroff, Florian and Kalenichenko, Dmitry and Philbin, James},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={815--823},
  year={2015}
}"""

HERMANS_2017 = """@article{hermans2017defense,
  title={In Defense of the Triplet Loss for Person Re-Identification},
  author={Hermans, Alexander and Beyer, Lucas and Leibe, Bastian},
  journal={arXiv preprint arXiv:1703.07737},
  year={2017}
}"""

JOACHIMS_2002 = """@inproceedings{joachims2002optimizing,
  title={Optimizing Search Engines using Clickthrough Data},
  author={Joachims, Thorsten},
  booktitle={Proceedings of the Eighth ACM SIGKDD International Conference on Knowledge Discovery and Data Mining},
  pages={133--142},
  year={2002}
}"""

RENDLE_2009 = """@inproceedings{rendle2009bpr,
  title={BPR: Bayesian Personalized Ranking from Implicit Feedback},
  author={Rendle, Steffen and Freudenthaler, Christoph and Gantner, Zeno and Schmidt-Thieme, Lars},
  booktitle={Proceedings of the Twenty-Fifth Conference on Uncertainty in Artificial Intelligence (UAI)},
  pages={452--461},
  year={2009}
}"""


def default_margin(distance: str) -> float:
    """1.0 for euclidean/manhattan distances; 0.5 for cosine distance, which lives in [0, 2]."""
    return 0.5 if distance == "cosine" else 1.0


def _triples(anchor: Tensor, positive: Tensor, negative: Tensor, negatives_mask: Tensor | None, name: str
             ) -> tuple[Tensor, Tensor | None, bool]:
    check_embeddings(anchor=anchor, positive=positive)
    single = negative.dim() == 2
    negative, negatives_mask = per_negative(anchor, negative, negatives_mask, name=name)
    return negative, negatives_mask, single


def _finish(losses: Tensor, mask: Tensor | None, single: bool, reduction: str) -> Tensor:
    out = reduce(losses, reduction, mask=mask)
    return out.squeeze(1) if reduction == "none" and single else out


def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, *, margin: float | None = None,
            distance: str = "euclidean", negatives_mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Triplet margin loss: the positive must be closer to the anchor than the negative, by a margin.

        l_i = max(0, d(a_i, p_i) - d(a_i, n_i) + margin)

    Inputs: anchor [B, D] ("anchor"), positive [B, D] ("positive"), negative [B, D] ("negative") or
    [B, K, D] ("negatives", each k one triplet; `negatives_mask` [B, K] marks real ones).
    distance: "euclidean" (default margin 1.0) | "cosine" = 1 - cos (default margin 0.5) | "manhattan" (1.0).
    When to use: (anchor, positive, negative) triplets when you want a margin rather than a softmax.
    Same as sentence-transformers' TripletLoss (whose default margin is 5 with euclidean distance).
    Reference: Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015.
    """
    check_reduction(reduction)
    margin = default_margin(distance) if margin is None else float(margin)
    measure = get_distance(distance)
    negative, negatives_mask, single = _triples(anchor, positive, negative, negatives_mask, "negative")
    d_pos = measure.pairwise(anchor, positive).unsqueeze(1)
    d_neg = measure.pairwise(anchor.unsqueeze(1).expand_as(negative), negative)
    return _finish(F.relu(d_pos - d_neg + margin), negatives_mask, single, reduction)


def _label_masks(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(same label and not itself, different label) as [B, B] masks."""
    check_embeddings(embeddings=embeddings)
    labels = torch.as_tensor(labels, device=embeddings.device)
    if labels.reshape(-1).shape != (embeddings.shape[0],):
        raise ValueError(f"labels must hold one class label per embedding ({embeddings.shape[0]}), got shape "
                         f"{tuple(labels.shape)}")
    labels = labels.reshape(-1)
    if labels.dtype.is_floating_point and torch.isnan(labels).any():
        raise ValueError("labels contain NaN: drop or fix those rows before training")
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    itself = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~itself, ~same


def batch_hard_triplet(embeddings: Tensor, labels: Tensor, *, margin: float | None = None,
                       distance: str = "euclidean", reduction: str = "mean") -> Tensor:
    """Batch-hard triplet loss: each anchor against its farthest positive and closest negative in the batch.

        l_i = max(0, max_{p: y_p = y_i, p != i} d(x_i, x_p) - min_{n: y_n != y_i} d(x_i, x_n) + margin)

    Inputs: embeddings [B, D] (role "anchor"), labels [B] class ids (role "label"). Anchors with no positive
    or no negative in the batch are skipped ("mean" averages the others; "none" gives them 0).
    When to use: class-labelled texts (e.g. intent/topic) with several examples per class per batch.
    sentence-transformers' BatchHardTripletLoss is the same when every anchor has a positive and a negative
    (it keeps anchors without a positive, with positive distance 0; its default margin is 5).
    Reference: Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017.
    """
    check_reduction(reduction)
    margin = default_margin(distance) if margin is None else float(margin)
    positives, negatives = _label_masks(embeddings, labels)
    d = get_distance(distance).matrix(embeddings, embeddings)
    hardest_positive = d.masked_fill(~positives, float("-inf")).amax(dim=1)
    hardest_negative = d.masked_fill(~negatives, float("inf")).amin(dim=1)
    valid = positives.any(dim=1) & negatives.any(dim=1)
    gap = torch.where(valid, hardest_positive - hardest_negative, torch.zeros_like(hardest_positive))
    return reduce(F.relu(gap + margin), reduction, mask=valid)


def batch_all_triplet(embeddings: Tensor, labels: Tensor, *, margin: float | None = None,
                      distance: str = "euclidean", reduction: str = "mean") -> Tensor:
    """Batch-all triplet loss: every valid (anchor, positive, negative) triplet of the batch.

        l_apn = max(0, d(x_a, x_p) - d(x_a, x_n) + margin),  y_a = y_p, a != p, y_n != y_a

    "mean" averages over the triplets with l > 0 (Hermans et al.'s BA≠0 variant: easy triplets do not dilute
    the loss); "sum" sums all; "none" returns the 1-D vector of all valid triplets' losses.
    Inputs: embeddings [B, D] (role "anchor"), labels [B] class ids (role "label"). Memory is O(B^3).
    When to use: class-labelled texts; smoother than batch-hard, which can collapse with noisy labels.
    Same as sentence-transformers' BatchAllTripletLoss (default margin 5 there).
    Reference: Hermans, Beyer & Leibe, 2017.
    """
    check_reduction(reduction)
    margin = default_margin(distance) if margin is None else float(margin)
    positives, negatives = _label_masks(embeddings, labels)
    d = get_distance(distance).matrix(embeddings, embeddings)
    valid = positives.unsqueeze(2) & negatives.unsqueeze(1)  # [a, p, n]
    losses = F.relu(d.unsqueeze(2) - d.unsqueeze(1) + margin)[valid]
    if reduction == "mean":
        active = int((losses > 0).sum())
        return losses.sum() / max(active, 1)
    return reduce(losses, reduction)


def pairwise_hinge(query: Tensor, pos: Tensor, neg: Tensor, *, margin: float = 1.0, similarity: str = "dot",
                   negatives_mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Pairwise hinge (RankSVM) loss: the positive must outscore the negative by a margin.

        l_i = max(0, margin - s(q_i, p_i) + s(q_i, n_i))

    Inputs: query [B, D] ("anchor"), pos [B, D] ("positive"), neg [B, D] ("negative") or [B, K, D]
    ("negatives", optional `negatives_mask` [B, K]). similarity: "dot" | "cosine" | "euclidean" | "manhattan"
    (higher = closer, so the margin is in similarity units for every choice).
    When to use: retrieval/reranking triplets scored by a dot product, when a margin suits better than BPR's
    smooth log-loss.
    Reference: Joachims, "Optimizing Search Engines using Clickthrough Data", KDD 2002.
    """
    check_reduction(reduction)
    measure = get_similarity(similarity)
    neg, negatives_mask, single = _triples(query, pos, neg, negatives_mask, "neg")
    s_pos = measure.pairwise(query, pos).unsqueeze(1)
    s_neg = measure.pairwise(query.unsqueeze(1).expand_as(neg), neg)
    return _finish(F.relu(margin - s_pos + s_neg), negatives_mask, single, reduction)


def bpr(query: Tensor, pos: Tensor, neg: Tensor, *, similarity: str = "dot", negatives_mask: Tensor | None = None,
        reduction: str = "mean") -> Tensor:
    """Bayesian Personalized Ranking: -log sigmoid(s(q, p) - s(q, n)), computed as a stable softplus.

        l_i = log(1 + exp(s(q_i, n_i) - s(q_i, p_i)))

    Inputs: as `pairwise_hinge` (query "anchor", pos "positive", neg "negative"/"negatives").
    When to use: implicit-feedback ranking (clicked vs not clicked); a smooth, margin-free pairwise loss.
    Reference: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009.
    """
    check_reduction(reduction)
    measure = get_similarity(similarity)
    neg, negatives_mask, single = _triples(query, pos, neg, negatives_mask, "neg")
    s_pos = measure.pairwise(query, pos).unsqueeze(1)
    s_neg = measure.pairwise(query.unsqueeze(1).expand_as(neg), neg)
    return _finish(F.softplus(s_neg - s_pos), negatives_mask, single, reduction)


class _TripletInputs(LossModule):
    """Modules over (anchor, positive, negative | negatives[, negatives_mask])."""

    roles = ("anchor", "positive", "negative")
    optional_roles = ("negatives",)

    def _call(self, fn, anchor: Tensor, positive: Tensor, negative: Tensor | None, negatives: Tensor | None,
              negatives_mask: Tensor | None) -> Tensor:
        return fn(anchor, positive, pick_negatives(negative, negatives, type(self).__name__),
                  negatives_mask=negatives_mask, **self._config)


class TripletLoss(_TripletInputs):
    """max(0, d(a, p) - d(a, n) + margin); see `triplet`."""

    citation = SCHROFF_2015

    def __init__(self, margin: float | None = None, distance: str = "euclidean", reduction: str = "mean") -> None:
        get_distance(distance)
        check_reduction(reduction)
        super().__init__(margin=default_margin(distance) if margin is None else float(margin), distance=distance,
                         reduction=reduction)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor | None = None, *,
                negatives: Tensor | None = None, negatives_mask: Tensor | None = None) -> Tensor:
        return self._call(triplet, anchor, positive, negative, negatives, negatives_mask)


class PairwiseHingeLoss(_TripletInputs):
    """max(0, margin - s(q, p) + s(q, n)); see `pairwise_hinge`."""

    citation = JOACHIMS_2002

    def __init__(self, margin: float = 1.0, similarity: str = "dot", reduction: str = "mean") -> None:
        get_similarity(similarity)
        check_reduction(reduction)
        super().__init__(margin=float(margin), similarity=similarity, reduction=reduction)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor | None = None, *,
                negatives: Tensor | None = None, negatives_mask: Tensor | None = None) -> Tensor:
        return self._call(pairwise_hinge, anchor, positive, negative, negatives, negatives_mask)


class BPRLoss(_TripletInputs):
    """softplus(s(q, n) - s(q, p)); see `bpr`."""

    citation = RENDLE_2009

    def __init__(self, similarity: str = "dot", reduction: str = "mean") -> None:
        get_similarity(similarity)
        check_reduction(reduction)
        super().__init__(similarity=similarity, reduction=reduction)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor | None = None, *,
                negatives: Tensor | None = None, negatives_mask: Tensor | None = None) -> Tensor:
        return self._call(bpr, anchor, positive, negative, negatives, negatives_mask)


class _LabelledInputs(LossModule):
    roles = ("anchor", "label")

    def __init__(self, margin: float | None = None, distance: str = "euclidean", reduction: str = "mean") -> None:
        get_distance(distance)
        check_reduction(reduction)
        super().__init__(margin=default_margin(distance) if margin is None else float(margin), distance=distance,
                         reduction=reduction)


class BatchHardTripletLoss(_LabelledInputs):
    """Farthest positive vs closest negative per anchor, from class labels; see `batch_hard_triplet`."""

    citation = HERMANS_2017

    def forward(self, anchor: Tensor, label: Tensor) -> Tensor:
        return batch_hard_triplet(anchor, label, **self._config)


class BatchAllTripletLoss(_LabelledInputs):
    """All valid triplets of the batch, from class labels; see `batch_all_triplet`."""

    citation = HERMANS_2017

    def forward(self, anchor: Tensor, label: Tensor) -> Tensor:
        return batch_all_triplet(anchor, label, **self._config)
