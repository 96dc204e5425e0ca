"""InfoNCE with in-batch negatives: hard negatives, symmetric form, duplicate masking, cross-device candidates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nlp_contrastive import distributed
from nlp_contrastive.losses._common import (
    DEFAULT_TEMPERATURE,
    LossModule,
    at_least_float32,
    autocast_off,
    check_embeddings,
    check_reduction,
    per_negative,
    pick_negatives,
    resolve_temperature,
    softmax_cross_entropy,
)
from nlp_contrastive.losses.similarity import get_similarity

OORD_2018 = """@article{oord2018representation,
  title={Representation Learning with Contrastive Predictive Coding},
  author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  journal={arXiv preprint arXiv:1807.03748},
  year={2018}
}"""


def info_nce(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    scale: float | None = None,
    similarity: str = "cosine",
    symmetric: bool = False,
    gather_across_devices: bool = False,
    negatives_mask: Tensor | None = None,
    anchor_ids: Tensor | None = None,
    positive_ids: Tensor | None = None,
    negative_ids: Tensor | None = None,
    known_positive_ids: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """InfoNCE / multiple-negatives ranking loss: each anchor must pick its own positive among all candidates.

    Formula, for anchor i with target positive p_i and candidates C = {all positives of the batch} + {all hard
    negatives of the batch}:

        l_i = -log( exp(s(a_i, p_i) / t) / sum_{c in C, c not masked} exp(s(a_i, c) / t) )

    `symmetric=True` averages l_i with the positive->anchor direction (p_i must pick a_i among all anchors):
    (l_i + l'_i) / 2. With `gather_across_devices=True` the batch is the global one (every rank's positives,
    negatives and, if symmetric, anchors are candidates; gradients flow back across ranks, see
    `nlp_contrastive.distributed`).

    Inputs (roles):
        anchor [B, D], positive [B, D]: aligned pairs (role "anchor", "positive").
        negatives: None, [B, D] (one hard negative per row, role "negative") or [B, K, D] (role "negatives").
        negatives_mask [B, K] bool: True = real negative; padded slots are dropped from every row's candidates.
        anchor_ids [B], positive_ids [B], negative_ids [B, K] (or [B]) int64: ids of the texts (e.g. hashes of
            their token ids), for duplicate masking. Other than row i's target, a candidate is masked when
            (a) it is a false negative: its text is row i's positive or anchor, or it is the positive of another
            pair with row i's anchor text (symmetric direction: the anchor of a pair with row i's positive text);
            (b) it repeats the text of an earlier candidate, so each distinct text counts once.
            Without ids nothing is masked (sentence-transformers' behaviour).
        known_positive_ids [B, P] int64 (-1 = padding): ids of every text known to be relevant to row i's anchor
            (e.g. all qrels positives of its query, its own positive included). Any candidate — another row's
            positive (on any rank) or a hard negative — whose id is among them is masked for row i, except row
            i's target: a query with several positives never sees its other positives as negatives. Needs
            positive_ids (and negative_ids when negatives are given), hashed the same way.
        temperature t > 0 (default 0.05), or `scale` = 1/t (sentence-transformers' convention); not both.
        similarity: "cosine" | "dot" | "euclidean" | "manhattan" (distances enter negated).
        reduction: "mean" | "sum" | "none" (per local row, [B]).

    When to use: (anchor, positive) pairs with no labels — retrieval, paraphrase, NLI entailment pairs; add hard
    negatives when you have them. Larger batches give more negatives (see GradCache and gather_across_devices).
    Similarities, logits and softmax are computed in float32 (autocast off), so fp16/bf16 embeddings are safe
    at low temperature.

    Equals sentence-transformers' MultipleNegativesRankingLoss (scale = 1/t), and with `symmetric=True` its
    directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction" (MultipleNegativesSymmetric-
    RankingLoss); ST has no duplicate masking (ours only acts when ids are given).

    Reference: van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018;
    in-batch negatives for sentence embeddings: Henderson et al. 2017, Gao et al. (SimCSE) 2021.
    """
    tau = resolve_temperature(temperature, scale)
    check_reduction(reduction)
    measure = get_similarity(similarity)
    check_embeddings(anchor=anchor, positive=positive)
    batch = anchor.shape[0]
    _check_ids(anchor_ids, "anchor_ids", (batch,))
    _check_ids(positive_ids, "positive_ids", (batch,))
    _check_known_positive_ids(known_positive_ids, batch, positive_ids, negative_ids, negatives)
    negs, neg_ids = _real_negatives(anchor, negatives, negatives_mask, negative_ids)

    world = None if gather_across_devices else 1
    gathered = _gather_candidates(anchor, positive, negs, anchor_ids, positive_ids, neg_ids, symmetric, world)
    positives, anchors, all_anchor_ids, all_positive_ids, all_negs, all_neg_ids = gathered

    global_rows = positives.tensor.shape[0]
    n_candidates = global_rows + (0 if all_negs is None else all_negs.shape[0])
    if n_candidates < 2:
        raise ValueError("info_nce has no negatives: a batch of 1 pair with no hard negatives; raise the batch "
                         "size (>= 2) or pass negatives")
    if symmetric and global_rows < 2:
        raise ValueError("info_nce(symmetric=True) needs >= 2 pairs in the batch: the positive->anchor direction "
                         "has only in-batch candidates; raise the batch size or set symmetric=False")

    targets = torch.arange(batch, device=anchor.device) + positives.offset
    candidates = positives.tensor if all_negs is None else torch.cat([positives.tensor, all_negs])
    with autocast_off(anchor.device):
        logits = measure.matrix(at_least_float32(anchor), at_least_float32(candidates)) / tau
    n_negs = 0 if all_negs is None else all_negs.shape[0]
    masked = _any(
        _cat_masks(
            (batch, global_rows),  # positive j: i's positive or anchor text, or j's anchor is i's anchor text
            _any(_equal(all_positive_ids, positive_ids), _equal(all_positive_ids, anchor_ids),
                 _equal(all_anchor_ids, anchor_ids)),
            (batch, n_negs),  # hard negative: i's positive or anchor text
            _any(_equal(all_neg_ids, positive_ids), _equal(all_neg_ids, anchor_ids)),
        ),
        _repeats(all_positive_ids, all_neg_ids, global_rows, n_negs),
        _known_positive(known_positive_ids, all_positive_ids, all_neg_ids),
    )
    losses = _cross_entropy(logits, targets, masked)

    if symmetric:
        with autocast_off(anchor.device):
            back_logits = measure.matrix(at_least_float32(positive), at_least_float32(anchors.tensor)) / tau
        back_masked = _any(_equal(all_anchor_ids, anchor_ids), _equal(all_anchor_ids, positive_ids),
                           _equal(all_positive_ids, positive_ids), _repeats(all_anchor_ids, None, global_rows, 0))
        losses = (losses + _cross_entropy(back_logits, targets, back_masked)) / 2

    return distributed.reduce_across_ranks(losses, reduction, global_rows=global_rows,
                                           world_size=positives.world_size)


def _check_ids(ids: Tensor | None, name: str, shape: tuple[int, ...]) -> None:
    if ids is None:
        return
    if tuple(ids.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} (one id per text), got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point:
        raise ValueError(f"{name} must be an integer tensor (e.g. int64 hashes of the texts), got {ids.dtype}")


def _check_known_positive_ids(known: Tensor | None, batch: int, positive_ids: Tensor | None,
                              negative_ids: Tensor | None, negatives: Tensor | None) -> None:
    if known is None:
        return
    if known.dim() != 2 or known.shape[0] != batch:
        raise ValueError(f"known_positive_ids must have shape [{batch}, P] (P ids per row, -1 = padding), got "
                         f"{tuple(known.shape)}")
    if known.dtype.is_floating_point:
        raise ValueError(f"known_positive_ids must be an integer tensor (hashes of the texts), got {known.dtype}")
    if positive_ids is None or (negatives is not None and negative_ids is None):
        raise ValueError("known_positive_ids needs positive_ids (and negative_ids when negatives are given), "
                         "hashed the same way, to find the candidates to mask")


def _known_positive(known: Tensor | None, positive_ids: Tensor | None, negative_ids: Tensor | None) -> Tensor | None:
    """[B, C] True where candidate j's id is one of row i's known positives (padding -1 never matches)."""
    if known is None:
        return None
    candidates = positive_ids if negative_ids is None else torch.cat([positive_ids, negative_ids])
    hits = known.unsqueeze(2) == candidates.view(1, 1, -1)
    return (hits & (known != -1).unsqueeze(2)).any(dim=1)


def _real_negatives(anchor: Tensor, negatives: Tensor | None, negatives_mask: Tensor | None,
                    negative_ids: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """Flatten hard negatives to [N, D] (padded slots dropped) with their ids [N]."""
    if negatives is None:
        if negatives_mask is not None or negative_ids is not None:
            raise ValueError("negatives_mask/negative_ids given without negatives: pass the negatives embeddings")
        return None, None
    negatives, negatives_mask = per_negative(anchor, negatives, negatives_mask, name="negatives")
    if negative_ids is not None:
        if negative_ids.dim() == 1 and negatives.shape[1] == 1:
            negative_ids = negative_ids.unsqueeze(1)  # one negative per row: ids [B]
        _check_ids(negative_ids, "negative_ids", tuple(negatives.shape[:2]))
    if negatives_mask is None:
        flat_ids = None if negative_ids is None else negative_ids.reshape(-1)
        return negatives.reshape(-1, negatives.shape[-1]), flat_ids
    return negatives[negatives_mask], None if negative_ids is None else negative_ids[negatives_mask]


def _gather_candidates(anchor: Tensor, positive: Tensor, negs: Tensor | None, anchor_ids: Tensor | None,
                       positive_ids: Tensor | None, neg_ids: Tensor | None, symmetric: bool, world: int | None):
    """Every rank's positives (+ anchors if symmetric), hard negatives and ids, in rank order.

    Ranks first exchange what they hold (rows, negatives, which ids), so all make the same gathers whatever their
    batch holds (`nlp_contrastive.distributed`): a rank without hard negatives sends a [0, D] tensor while others
    send theirs. Returns (positives: Gathered, anchors: Gathered | None, anchor ids, positive ids, negatives,
    negative ids), the last four tensors or None.
    """
    n_negs = 0 if negs is None else negs.shape[0]
    table = distributed.exchange([anchor.shape[0], n_negs, anchor_ids is not None, positive_ids is not None,
                                  neg_ids is not None or n_negs == 0], device=anchor.device, world_size=world)
    sizes, neg_sizes = tuple(row[0] for row in table), tuple(row[1] for row in table)
    gather_anchor_ids, gather_positive_ids = (_all_or_none(table, column, name) for column, name in
                                              ((2, "anchor_ids"), (3, "positive_ids")))
    positives = distributed.gather_rows(positive, sizes=sizes, world_size=world)
    anchors = distributed.gather_rows(anchor, sizes=sizes, world_size=world) if symmetric else None
    all_anchor_ids = _gather(anchor_ids, sizes, world) if gather_anchor_ids else None
    all_positive_ids = _gather(positive_ids, sizes, world) if gather_positive_ids else None
    if not sum(neg_sizes):
        return positives, anchors, all_anchor_ids, all_positive_ids, None, None
    all_negs = _gather(anchor[:0] if negs is None else negs, neg_sizes, world)
    with_negatives = [row for row in table if row[1]]
    if not _all_or_none(with_negatives, 4, "negative_ids"):
        return positives, anchors, all_anchor_ids, all_positive_ids, all_negs, None
    mine = neg_ids if neg_ids is not None else torch.zeros(0, dtype=torch.long, device=anchor.device)
    return positives, anchors, all_anchor_ids, all_positive_ids, all_negs, _gather(mine, neg_sizes, world)


def _all_or_none(table: list[tuple[int, ...]], column: int, name: str) -> bool:
    """Whether every rank has an optional input (then it is gathered); an error on every rank when only some do."""
    flags = {row[column] for row in table}
    if len(flags) > 1:
        raise ValueError(f"{name} given on some processes only: pass it on every process or on none")
    return bool(flags.pop())


def _gather(tensor: Tensor, sizes: tuple[int, ...], world: int | None) -> Tensor:
    return distributed.gather_rows(tensor, sizes=sizes, world_size=world).tensor


def _equal(candidate_ids: Tensor | None, row_ids: Tensor | None) -> Tensor | None:
    """[B, C] where candidate j's id equals row i's id; None when either side has no ids."""
    if candidate_ids is None or row_ids is None:
        return None
    return row_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)


def _any(*masks: Tensor | None) -> Tensor | None:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out | m
    return out


def _cat_masks(left_shape: tuple[int, int], left: Tensor | None, right_shape: tuple[int, int],
               right: Tensor | None) -> Tensor | None:
    """Side-by-side [B, C_left + C_right] mask; a missing side is all False."""
    if left is None and right is None:
        return None
    device = (left if left is not None else right).device
    left = torch.zeros(left_shape, dtype=torch.bool, device=device) if left is None else left
    right = torch.zeros(right_shape, dtype=torch.bool, device=device) if right is None else right
    return torch.cat([left, right], dim=1)


def _first_occurrence_repeats(ids: Tensor) -> Tensor:
    """[N] True where the id already occurred at a lower index."""
    index = torch.arange(len(ids), device=ids.device)
    if len(ids) == 0:
        return index.bool()
    distinct, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(distinct),), len(ids), dtype=index.dtype, device=ids.device)
    first = first.scatter_reduce(0, inverse, index, reduce="amin")
    return first[inverse] != index


def _repeats(left_ids: Tensor | None, right_ids: Tensor | None, n_left: int, n_right: int) -> Tensor | None:
    """[1, C] True for candidates repeating an earlier candidate's text, so each distinct text counts once."""
    if left_ids is None and right_ids is None:
        return None
    if left_ids is not None and right_ids is not None:
        return _first_occurrence_repeats(torch.cat([left_ids, right_ids])).unsqueeze(0)
    device = (left_ids if left_ids is not None else right_ids).device
    left = torch.zeros(n_left, dtype=torch.bool, device=device) if left_ids is None else _first_occurrence_repeats(left_ids)
    right = (torch.zeros(n_right, dtype=torch.bool, device=device) if right_ids is None
             else _first_occurrence_repeats(right_ids))
    return torch.cat([left, right]).unsqueeze(0)


def _cross_entropy(logits: Tensor, targets: Tensor, masked: Tensor | None) -> Tensor:
    """Per-row cross-entropy; masked candidates (never the target) get the dtype's minimum."""
    if masked is not None:
        masked = masked & ~F.one_hot(targets, logits.shape[1]).bool()
        logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
    return softmax_cross_entropy(logits, targets)


class InfoNCELoss(LossModule):
    """InfoNCE with in-batch (and hard) negatives; see `info_nce` for formula, inputs and reference."""

    roles = ("anchor", "positive")
    optional_roles = ("negative", "negatives")
    requires_in_batch_negatives = True
    citation = OORD_2018

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, scale: float | None = None, similarity: str = "cosine",
                 symmetric: bool = False, gather_across_devices: bool = False, reduction: str = "mean") -> None:
        temperature = resolve_temperature(temperature, scale)
        get_similarity(similarity)
        check_reduction(reduction)
        super().__init__(temperature=temperature, similarity=similarity, symmetric=bool(symmetric),
                         gather_across_devices=bool(gather_across_devices), reduction=reduction)

    def forward(self, anchor: Tensor, positive: Tensor, negatives: Tensor | None = None, *,
                negative: Tensor | None = None, negatives_mask: Tensor | None = None,
                anchor_ids: Tensor | None = None, positive_ids: Tensor | None = None,
                negative_ids: Tensor | None = None, known_positive_ids: Tensor | None = None) -> Tensor:
        if negative is not None or negatives is not None:
            negatives = pick_negatives(negative, negatives, "InfoNCELoss")
        return info_nce(anchor, positive, negatives,
                        negatives_mask=negatives_mask, anchor_ids=anchor_ids, positive_ids=positive_ids,
                        negative_ids=negative_ids, known_positive_ids=known_positive_ids, **self._config)
