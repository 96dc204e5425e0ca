"""AnglE: the CoSENT ranking objective on an angle-difference similarity instead of the cosine (Li & Li 2023)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nlp_contrastive.losses._common import (
    DEFAULT_TEMPERATURE,
    LossModule,
    at_least_float32,
    autocast_off,
    check_embeddings,
    check_values,
    resolve_temperature,
)
from nlp_contrastive.losses.pairwise import ranked_pairs_loss

LI_2024 = """@inproceedings{li2024aoe,
  title={AoE: Angle-optimized Embeddings for Semantic Textual Similarity},
  author={Li, Xianming and Li, Jing},
  booktitle={Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics},
  year={2024},
  doi={10.18653/v1/2024.acl-long.101},
  url={https://arxiv.org/abs/2309.12871}
}"""


def angle_similarity(a: Tensor, b: Tensor) -> Tensor:
    """|cos(a_i, b_i) + sin-term| of row-aligned [B, D] pairs -> [B], the AnglE score (higher = closer).

    Each vector is read as D/2 complex numbers (first half real parts, second half imaginary parts; an odd D is
    zero-padded). After L2 normalisation the score is |sum(a * b) + sum(a_im * b_re - a_re * b_im)|, i.e. the
    cosine plus the imaginary part of sum(b * conj(a)), in absolute value, as in the authors' reference code and
    sentence-transformers' `pairwise_angle_sim` (not a geometric angle, but what "AnglE" trains).
    """
    if a.shape[-1] % 2:
        a, b = F.pad(a, (0, 1)), F.pad(b, (0, 1))
    a, b = F.normalize(a, p=2, dim=-1), F.normalize(b, p=2, dim=-1)
    a_re, a_im = a.chunk(2, dim=-1)
    b_re, b_im = b.chunk(2, dim=-1)
    cosines = (a * b).sum(dim=-1)
    sines = (a_im * b_re - a_re * b_im).sum(dim=-1)
    return (cosines + sines).abs()


def angle(a: Tensor, b: Tensor, score: Tensor, *, temperature: float = DEFAULT_TEMPERATURE,
          scale: float | None = None) -> Tensor:
    """AnglE loss: rank the pairs' angle similarities in the order of their gold scores.

        loss = log(1 + sum_{(i, j): score_i > score_j} exp((s_j - s_i) / t)),   s_i = angle_similarity(a_i, b_i)

    Inputs: a [B, D] ("anchor"), b [B, D] ("positive"), score [B] ("score", any real scale: only the order
    matters). temperature t > 0 (default 0.05) or scale = 1/t. Returns a scalar (the loss couples all pairs).
    When to use: graded-similarity pairs, as CoSENT; the angle term keeps a gradient where the cosine
    saturates (near +-1). The paper combines it with cosine and in-batch objectives; this is the angle term.
    Same as sentence-transformers' AnglELoss with scale = 1/t (computed in float32, autocast off).
    Reference: Li & Li, "AoE: Angle-optimized Embeddings for Semantic Textual Similarity", ACL 2024
    (arXiv 2309.12871, 2023).
    """
    tau = resolve_temperature(temperature, scale)
    check_embeddings(a=a, b=b)
    score = check_values("score", score, a.shape[0])
    with autocast_off(a.device):
        similarities = angle_similarity(at_least_float32(a), at_least_float32(b)) / tau
    return ranked_pairs_loss(similarities, score.to(similarities.device))


class AnglELoss(LossModule):
    """CoSENT ranking on AnglE similarities of scored pairs; see `angle`."""

    roles = ("anchor", "positive", "score")
    citation = LI_2024

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, scale: float | None = None) -> None:
        super().__init__(temperature=resolve_temperature(temperature, scale))

    def forward(self, anchor: Tensor, positive: Tensor, score: Tensor) -> Tensor:
        return angle(anchor, positive, score, **self._config)
