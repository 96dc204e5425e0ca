"""Losses on scored or labelled pairs: cosine-similarity regression, CoSENT, margin contrastive, online contrastive."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nlp_contrastive.losses._common import (
    DEFAULT_TEMPERATURE,
    LossModule,
    at_least_float32,
    autocast_off,
    check_embeddings,
    check_reduction,
    check_values,
    reduce,
    resolve_temperature,
)
from nlp_contrastive.losses.similarity import get_distance, pairwise_similarity

REIMERS_2019 = """@inproceedings{reimers2019sentencebert,
  title={Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks},
  author={Reimers, Nils and Gurevych, Iryna},
  booktitle={Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing},
  year={2019},
  url={https://arxiv.org/abs/1908.10084}
}"""

SU_2022 = """@article{huang2024cosent,
  title={CoSENT: Consistent Sentence Embedding via Similarity Ranking},
  author={Huang, Xiang and Peng, Hao and Zou, Dongcheng and Liu, Zhiwei and Li, Jianxin and Liu, Kay and Wu, Jia and Su, Jianlin and Yu, Philip S.},
  journal={IEEE/ACM Transactions on Audio, Speech, and Language Processing},
  year={2024},
  doi={10.1109/TASLP.2024.3402087}
}"""

HADSELL_2006 = """@inproceedings{hadsell2006dimensionality,
  title={Dimensionality Reduction by Learning an Invariant Mapping},
  author={Hadsell, Raia and Chopra, Sumit and LeCun, Yann},
  booktitle={2006 IEEE Computer Society Conference on Computer Vision and Pattern Recognition (CVPR'06)},
  volume={2},
  pages={1735--1742},
  year={2006},
  doi={10.1109/CVPR.2006.100}
}"""


def cosine_similarity_loss(a: Tensor, b: Tensor, score: Tensor, *, reduction: str = "mean") -> Tensor:
    """Regress the cosine of each pair onto its gold similarity: l_i = (cos(a_i, b_i) - score_i)^2.

    Inputs: a [B, D] (role "anchor"), b [B, D] (role "positive"), score [B] in [0, 1] (role "score").
    When to use: pairs with graded similarity (STS-B style); rescale e.g. 0-5 scores to [0, 1] first.
    Same as sentence-transformers' CosineSimilarityLoss (MSE of cosine vs label).
    Reference: Reimers & Gurevych, "Sentence-BERT", EMNLP 2019.
    """
    check_reduction(reduction)
    check_embeddings(a=a, b=b)
    score = check_values("score", score, a.shape[0], 0.0, 1.0)
    cos = pairwise_similarity(a, b, "cosine")
    return reduce((cos - score.to(cos.dtype)) ** 2, reduction)


def cosent(a: Tensor, b: Tensor, score: Tensor, *, temperature: float = DEFAULT_TEMPERATURE,
           scale: float | None = None) -> Tensor:
    """CoSENT: rank the pairs' cosines in the order of their gold scores, one loss for the whole batch.

        loss = log(1 + sum_{(i, j): score_i > score_j} exp((cos_j - cos_i) / t))

    Inputs: a [B, D] ("anchor"), b [B, D] ("positive"), score [B] ("score", any real scale: only the order of
    scores matters). temperature t > 0 (default 0.05) or scale = 1/t. Returns a scalar: the loss couples all
    pairs of the batch, so there is no per-example reduction.
    When to use: graded-similarity pairs; usually better than cosine-similarity regression since only the
    ranking of cosines is constrained (no target value for cos).
    Same as sentence-transformers' CoSENTLoss with scale = 1/t.
    Reference: Su, "CoSENT" (2022); Huang et al., IEEE/ACM TASLP 2024.
    """
    tau = resolve_temperature(temperature, scale)
    check_embeddings(a=a, b=b)
    score = check_values("score", score, a.shape[0])
    with autocast_off(a.device):
        cos = pairwise_similarity(at_least_float32(a), at_least_float32(b), "cosine") / tau
    return ranked_pairs_loss(cos, score)


def ranked_pairs_loss(similarities: Tensor, score: Tensor) -> Tensor:
    """log(1 + sum_{score_i > score_j} exp(s_j - s_i)) for already-scaled similarities s [B] (the CoSENT form,
    shared with AnglE)."""
    differences = similarities.unsqueeze(0) - similarities.unsqueeze(1)  # [i, j] = s_j - s_i
    ordered = score.unsqueeze(1) > score.unsqueeze(0)  # pairs where score_i > score_j
    terms = differences.masked_fill(~ordered, torch.finfo(differences.dtype).min)
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms.reshape(-1)]), dim=0)


def contrastive(a: Tensor, b: Tensor, label: Tensor, *, margin: float = 1.0, distance: str = "euclidean",
                reduction: str = "mean") -> Tensor:
    """Margin contrastive loss: pull similar pairs together, push dissimilar ones beyond the margin.

        l_i = 1/2 * [ y_i * d_i^2 + (1 - y_i) * max(0, margin - d_i)^2 ],   d_i = d(a_i, b_i)

    Inputs: a [B, D] ("anchor"), b [B, D] ("positive"), label [B] ("label"): 1 similar, 0 dissimilar (values
    in between weight both terms). distance: "euclidean" | "cosine" (1 - cos) | "manhattan".
    When to use: binary-labelled pairs (duplicate questions, paraphrase yes/no).
    Same as sentence-transformers' ContrastiveLoss (whose default is cosine distance with margin 0.5; ours
    follows the paper: euclidean, margin 1).
    Reference: Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006.
    """
    check_reduction(reduction)
    check_embeddings(a=a, b=b)
    label = check_values("label", label, a.shape[0], 0.0, 1.0)
    d = get_distance(distance).pairwise(a, b)
    y = label.to(d.dtype)
    return reduce(0.5 * (y * d.pow(2) + (1 - y) * F.relu(margin - d).pow(2)), reduction)


def online_contrastive(a: Tensor, b: Tensor, label: Tensor, *, margin: float = 1.0, distance: str = "euclidean",
                       reduction: str = "mean") -> Tensor:
    """Contrastive loss on the hard pairs of the batch only.

    Hard positives are similar pairs farther apart than the closest dissimilar pair; hard negatives are
    dissimilar pairs closer than the farthest similar pair. A batch with no dissimilar (similar) pair compares
    each similar (dissimilar) pair with the mean distance of the similar (dissimilar) pairs instead. Per pair:

        l_i = 1/2 * d_i^2 (hard positive),  1/2 * max(0, margin - d_i)^2 (hard negative),  0 otherwise

    Inputs: a [B, D] ("anchor"), b [B, D] ("positive"), label [B] in {0, 1} ("label").
    reduction "mean" divides by B (all pairs), "none" returns [B] with easy pairs at 0.
    When to use: binary-labelled pairs where most pairs are already easy; often better than `contrastive`.
    sentence-transformers' OnlineContrastiveLoss (>= 6.2) returns the *sum* without the 1/2, i.e.
    2 * online_contrastive(..., reduction="sum"). Before 6.2 it also differed when a batch held exactly one
    similar (dissimilar) pair: it then used the mean rule above instead of that one pair's distance.
    Reference: Hadsell, Chopra & LeCun, CVPR 2006 (loss); hard-pair mining as in sentence-transformers.
    """
    check_reduction(reduction)
    check_embeddings(a=a, b=b)
    label = check_values("label", label, a.shape[0], 0.0, 1.0)
    if ((label != 0) & (label != 1)).any():
        raise ValueError("online_contrastive needs binary labels (0 or 1): threshold soft labels first, or use "
                         "contrastive")
    d = get_distance(distance).pairwise(a, b)
    positive, negative = label == 1, label == 0
    with torch.no_grad():
        pos_d, neg_d = d[positive], d[negative]
        closest_negative = neg_d.min() if len(neg_d) else pos_d.mean()
        farthest_positive = pos_d.max() if len(pos_d) else neg_d.mean()
        hard = (positive & (d > closest_negative)) | (negative & (d < farthest_positive))
    losses = torch.where(positive, d.pow(2), F.relu(margin - d).pow(2)) * 0.5
    return reduce(losses * hard.to(losses.dtype), reduction)


class CosineSimilarityLoss(LossModule):
    """(cos(a, b) - score)^2; see `cosine_similarity_loss`."""

    roles = ("anchor", "positive", "score")
    citation = REIMERS_2019

    def __init__(self, reduction: str = "mean") -> None:
        check_reduction(reduction)
        super().__init__(reduction=reduction)

    def forward(self, anchor: Tensor, positive: Tensor, score: Tensor) -> Tensor:
        return cosine_similarity_loss(anchor, positive, score, **self._config)


class CoSENTLoss(LossModule):
    """log(1 + sum exp((cos_j - cos_i)/t)) over pairs ranked by score; see `cosent`."""

    roles = ("anchor", "positive", "score")
    citation = SU_2022

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, scale: float | None = None) -> None:
        super().__init__(temperature=resolve_temperature(temperature, scale))

    def forward(self, anchor: Tensor, positive: Tensor, score: Tensor) -> Tensor:
        return cosent(anchor, positive, score, **self._config)


class ContrastiveLoss(LossModule):
    """Margin contrastive loss on labelled pairs; see `contrastive`."""

    roles = ("anchor", "positive", "label")
    citation = HADSELL_2006

    def __init__(self, margin: float = 1.0, distance: str = "euclidean", reduction: str = "mean") -> None:
        get_distance(distance)
        check_reduction(reduction)
        super().__init__(margin=float(margin), distance=distance, reduction=reduction)

    def forward(self, anchor: Tensor, positive: Tensor, label: Tensor) -> Tensor:
        return contrastive(anchor, positive, label, **self._config)


class OnlineContrastiveLoss(ContrastiveLoss):
    """Contrastive loss on the batch's hard pairs only (same hyperparameters); see `online_contrastive`."""

    def forward(self, anchor: Tensor, positive: Tensor, label: Tensor) -> Tensor:
        return online_contrastive(anchor, positive, label, **self._config)
