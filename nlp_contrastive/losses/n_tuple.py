"""N-tuple (N-pair) loss: softmax over each example's own positive and negatives, no in-batch sharing."""

from __future__ import annotations

import torch
from torch import Tensor

from nlp_contrastive.losses._common import (
    DefaultFloat,
    LossModule,
    at_least_float32,
    autocast_off,
    check_embeddings,
    check_reduction,
    per_negative,
    pick_negatives,
    reduce,
    resolve_temperature,
    softmax_cross_entropy,
)
from nlp_contrastive.losses.similarity import get_similarity

SOHN_2016 = """@inproceedings{sohn2016improved,
  title={Improved Deep Metric Learning with Multi-class N-pair Loss Objective},
  author={Sohn, Kihyuk},
  booktitle={Advances in Neural Information Processing Systems},
  volume={29},
  year={2016}
}"""

DEFAULT_N_TUPLE_TEMPERATURE = DefaultFloat(1.0)


def n_tuple(anchor: Tensor, positive: Tensor, negatives: Tensor, *, temperature: float = DEFAULT_N_TUPLE_TEMPERATURE,
            scale: float | None = None, similarity: str = "dot", negatives_mask: Tensor | None = None,
            reduction: str = "mean") -> Tensor:
    """N-tuple loss: each anchor must pick its positive among its own negatives only.

        l_i = -log( exp(s(a_i, p_i)/t) / (exp(s(a_i, p_i)/t) + sum_k exp(s(a_i, n_ik)/t)) )

    Inputs: anchor [B, D] ("anchor"), positive [B, D] ("positive"), negatives [B, K, D] ("negatives") or
    [B, D] ("negative", K = 1). `negatives_mask` [B, K] (True = real) lets rows have different numbers of
    negatives; a row with none has loss 0. temperature t > 0 (default 1.0) or scale = 1/t; similarity "dot"
    by default (Sohn's formulation on unnormalised embeddings).
    When to use: tuples whose negatives are specific to their anchor (e.g. mined per query), when other rows'
    positives must not act as negatives (batches of near-duplicates, or batch size 1). Logits in float32
    (autocast off).
    With K = 1 and t = 1 it equals `bpr` (softplus(s_n - s_p)).
    Reference: Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016.
    """
    tau = resolve_temperature(temperature, scale)
    check_reduction(reduction)
    measure = get_similarity(similarity)
    check_embeddings(anchor=anchor, positive=positive)
    negatives, negatives_mask = per_negative(anchor, negatives, negatives_mask, name="negatives")
    with autocast_off(anchor.device):
        anchor, positive, negatives = (at_least_float32(t) for t in (anchor, positive, negatives))
        s_pos = measure.pairwise(anchor, positive).unsqueeze(1)
        s_neg = measure.pairwise(anchor.unsqueeze(1).expand_as(negatives), negatives)
        logits = torch.cat([s_pos, s_neg], dim=1) / tau
    if negatives_mask is not None:
        keep = torch.cat([negatives_mask.new_ones(len(anchor), 1), negatives_mask], dim=1)
        logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
    targets = torch.zeros(len(anchor), dtype=torch.long, device=anchor.device)  # the positive is column 0
    return reduce(softmax_cross_entropy(logits, targets), reduction)


class NTupleLoss(LossModule):
    """Softmax over own positive + own negatives; see `n_tuple`."""

    roles = ("anchor", "positive", "negatives")
    optional_roles = ("negative",)
    citation = SOHN_2016

    def __init__(self, temperature: float = DEFAULT_N_TUPLE_TEMPERATURE, scale: float | None = None,
                 similarity: str = "dot", reduction: str = "mean") -> None:
        temperature = resolve_temperature(temperature, scale)
        get_similarity(similarity)
        check_reduction(reduction)
        super().__init__(temperature=temperature, similarity=similarity, reduction=reduction)

    def forward(self, anchor: Tensor, positive: Tensor, negatives: Tensor | None = None, *,
                negative: Tensor | None = None, negatives_mask: Tensor | None = None) -> Tensor:
        return n_tuple(anchor, positive, pick_negatives(negative, negatives, "NTupleLoss"),
                       negatives_mask=negatives_mask, **self._config)
