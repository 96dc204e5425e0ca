"""Matryoshka representation learning: any loss, applied again to the first d dimensions of the embeddings.

The wrapper acts on embeddings only (principle 1: losses never hold the model), so inside `CachedLoss` it works
on the cached full-batch embedding leaves: the encoder still runs once per mini-batch, and each extra
dimension costs one more evaluation of the wrapped loss on [N, d] tensors.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from nlp_contrastive.losses._common import LossModule

logger = logging.getLogger(__name__)

KUSUPATI_2022 = """@inproceedings{kusupati2022matryoshka,
  title={Matryoshka Representation Learning},
  author={Kusupati, Aditya and Bhatt, Gantavya and Rege, Aniket and Wallingford, Matthew and Sinha, Aditya and Ramanujan, Vivek and Howard-Snyder, William and Chen, Kaifeng and Kakade, Sham and Jain, Prateek and Farhadi, Ali},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022},
  url={https://arxiv.org/abs/2205.13147}
}"""

# Inputs holding student embeddings: truncated to d and (by default) re-normalised, as sentence-transformers does.
EMBEDDING_ROLES = ("anchor", "positive", "negative", "negatives")
# Targets in the same space (teacher embeddings for MSE distillation): truncated when they have the model's size,
# not normalised (sentence-transformers truncates embedding-shaped labels the same way).
TARGET_EMBEDDING_ROLES = ("teacher_embedding",)

DEFAULT_DIMS = (384, 256, 128, 64, 32)


def matryoshka_dims(dims: Sequence[int], weights: Sequence[float] | None = None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Dimensions sorted largest first (deduplicated) with their weights (default 1 each); ValueError if bad."""
    if isinstance(dims, (int, str)) or not dims:
        raise ValueError(f"dims must be a non-empty list of embedding sizes, e.g. [384, 256, 128, 64], got {dims!r}")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"dims must be positive integers, got {list(dims)}")
    if weights is None:
        distinct = sorted(set(dims), reverse=True)
        return tuple(distinct), (1.0,) * len(distinct)
    if isinstance(weights, (int, float, str)) or len(weights) != len(dims):
        raise ValueError(f"weights must hold one number per dimension ({len(dims)} for dims {list(dims)}), "
                         f"got {weights!r}")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"weights must be finite numbers > 0 (drop a dimension instead of weighting it 0), "
                         f"got {list(weights)}")
    repeated = sorted({d for d in dims if list(dims).count(d) > 1})
    if repeated:
        raise ValueError(f"dims lists {repeated} more than once while weights are given: list each dimension once")
    pairs = sorted(zip(dims, weights, strict=True), key=lambda p: p[0], reverse=True)
    return tuple(int(d) for d, _ in pairs), tuple(float(w) for _, w in pairs)


def matryoshka(loss_fn, inputs: dict[str, Any], dims: Sequence[int], weights: Sequence[float] | None = None, *,
               normalize: bool = True, self_distill: float = 0.0, gather_across_devices: bool = False) -> Tensor:
    """Weighted sum of a loss over truncated embeddings:  L = sum_d w_d * loss(e[..., :d] for every embedding e).

    Inputs: loss_fn, any callable taking the keyword arguments in `inputs` (e.g. a loss module, or
    `functools.partial(info_nce, temperature=0.05)`); inputs: role -> tensor, where the roles anchor, positive,
    negative [B, D] and negatives [B, K, D] are truncated to their first d dimensions (and L2-normalised when
    `normalize`, as sentence-transformers' MatryoshkaLoss does, so dot-product losses see unit vectors at every
    d), `teacher_embedding` is truncated (not normalised) when it has the model's size D, and every other input
    (scores, labels, masks, ids) is passed unchanged. dims: any order, each <= D; weights: one per dimension
    (default 1); the dimension order does not matter; self_distill > 0 adds
    self_distill * `prefix_similarity_loss` (each prefix's pairwise similarities pulled toward the full size's;
    across processes with gather_across_devices).
    When to use: to train embeddings that can be cut to a prefix (cheaper storage and search) with little loss.
    Same as sentence-transformers' MatryoshkaLoss (n_dims_per_step=-1) on the same embeddings.
    Reference: Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022.
    """
    dims, weights = matryoshka_dims(dims, weights)
    self_distill = check_self_distill(self_distill)
    full = embedding_size(inputs)
    if dims[0] > full:
        raise ValueError(f"Matryoshka dims {list(dims)} exceed the model's embedding dimension {full}: use dims "
                         f"<= {full}")
    total = None
    for dim, weight in zip(dims, weights, strict=True):
        truncated = {name: _truncate(name, value, dim, full, normalize) for name, value in inputs.items()}
        term = weight * loss_fn(**truncated)
        total = term if total is None else total + term
    if self_distill:
        total = total + self_distill * prefix_similarity_loss(inputs, dims, weights,
                                                              gather_across_devices=gather_across_devices)
    return total


def prefix_similarity_loss(inputs: dict[str, Any], dims: Sequence[int], weights: Sequence[float] | None = None, *,
                           gather_across_devices: bool = False) -> Tensor:
    """How far each prefix's pairwise cosine similarities are from the full embedding's:
        L = sum_{d < D} w_d * mean_{i != j} (cos(e_i[:d], e_j[:d]) - sg[cos(e_i, e_j)])^2,
    over every embedding of the batch (anchor, positive, negative and the real negatives rows; padding under
    `negatives_mask` is left out), sg = stop-gradient.

    Inputs: role -> tensor as for `matryoshka`; dims/weights as there (the full size D itself adds nothing).
    With `gather_across_devices` every process's rows are the j's (`distributed.gather_rows`), so 2 processes on
    half batches give the loss and gradients of 1 process on the whole batch; otherwise each compares its own.
    When to use: as Matryoshka's `self_distill` term, when labelled pairs are few: a batch of N texts gives
    N(N-1) similarity targets instead of N/2 labels, and the target is the model's own full-size geometry, so the
    prefixes learn to rank like the full vector. Costs O(N^2 d) per dimension (no encoding).
    Reference: the pairwise similarity loss of Yoon et al., "Matryoshka-Adaptor: Unsupervised and Supervised
    Tuning for Smaller Embedding Dimensions", EMNLP 2024 (there against a frozen model; here against the model
    being trained, detached).
    """
    import torch

    from nlp_contrastive import distributed

    dims, weights = matryoshka_dims(dims, weights)
    full = embedding_size(inputs)
    local = _embedding_rows(inputs, full)
    gathered = distributed.gather_rows(local, world_size=None if gather_across_devices else 1)
    everyone = gathered.tensor
    if len(everyone) < 2:  # no pair to compare
        return local.new_zeros(())
    others = torch.ones(len(local), len(everyone), dtype=torch.bool, device=local.device)
    rows = torch.arange(len(local), device=local.device)
    others[rows, rows + gathered.offset] = False
    target = (F.normalize(local, dim=-1) @ F.normalize(everyone, dim=-1).T).detach()
    per_row = local.new_zeros(len(local))
    for dim, weight in zip(dims, weights, strict=True):
        if dim < full:
            similarity = F.normalize(local[:, :dim], dim=-1) @ F.normalize(everyone[:, :dim], dim=-1).T
            per_row = per_row + weight * ((similarity - target).pow(2) * others).sum(dim=1) / (len(everyone) - 1)
    return distributed.reduce_across_ranks(per_row, "mean", global_rows=len(everyone),
                                           world_size=len(gathered.sizes))


def _embedding_rows(inputs: dict[str, Any], full: int) -> Tensor:
    """Every embedding of the batch as rows [N, D]: anchor, positive, negative, and the unmasked negatives."""
    import torch

    parts = []
    for name in EMBEDDING_ROLES:
        value = inputs.get(name)
        if not isinstance(value, Tensor):
            continue
        mask = inputs.get("negatives_mask") if name == "negatives" else None
        parts.append(value[mask.bool()] if isinstance(mask, Tensor) else value.reshape(-1, full))
    return torch.cat(parts)


def check_self_distill(value: Any) -> float:
    """self_distill as a float >= 0; ValueError naming the problem otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"self_distill must be a finite number >= 0 (0 turns it off, 1 weighs it like a "
                         f"dimension of weight 1), got {value!r}")
    return float(value)


def embedding_size(inputs: dict[str, Any]) -> int:
    """D, the last dimension of the embedding roles (which must agree)."""
    sizes = {name: value.shape[-1] for name, value in inputs.items()
             if name in EMBEDDING_ROLES and isinstance(value, Tensor)}
    if not sizes:
        raise ValueError(f"Matryoshka got no embeddings among its inputs {sorted(inputs)}: pass at least one of "
                         f"{', '.join(EMBEDDING_ROLES)}")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"embeddings of different sizes {sizes}: every role must come from the same encoder")
    return next(iter(sizes.values()))


def _truncate(name: str, value: Any, dim: int, full: int, normalize: bool) -> Any:
    if not isinstance(value, Tensor):
        return value
    if name in EMBEDDING_ROLES:
        value = value[..., :dim]
        return F.normalize(value, p=2, dim=-1) if normalize else value
    if name in TARGET_EMBEDDING_ROLES and value.shape[-1] == full:
        return value[..., :dim]
    return value


class MatryoshkaLoss(LossModule):
    """Wrap any loss module so it is also applied to the first d dimensions; see `matryoshka`.

    `loss` is a loss module or a registry name (then built from `loss_kwargs`), so a recipe can say
    `loss: matryoshka` with `loss_kwargs: {loss: info_nce, loss_kwargs: {temperature: 0.05}, dims: [...]}`.
    Roles, optional roles and the in-batch-negatives flag are those of the wrapped loss. Wrap it in `CachedLoss`
    (`cached: true`) as usual: the dimensions are cut from the cached embeddings, nothing is re-encoded.
    """

    citation = KUSUPATI_2022

    def __init__(self, loss: nn.Module | str = "info_nce", dims: Sequence[int] = DEFAULT_DIMS,
                 weights: Sequence[float] | None = None, loss_kwargs: dict | None = None,
                 normalize: bool = True, self_distill: float = 0.0) -> None:
        inner = _build_inner(loss, loss_kwargs)
        dims, weights = matryoshka_dims(dims, weights)
        super().__init__()
        self.loss = inner
        self.dims, self.weights, self.normalize = dims, weights, bool(normalize)
        self.self_distill = check_self_distill(self_distill)
        # self_distill compares across processes when the wrapped loss does (info_nce's gather_across_devices).
        self._gathers = bool(_config_of(inner).get("gather_across_devices", False))
        self.roles = tuple(getattr(inner, "roles", ()))
        self.optional_roles = tuple(getattr(inner, "optional_roles", ()))
        self.requires_in_batch_negatives = bool(getattr(inner, "requires_in_batch_negatives", False))
        self._accepts_any = _accepted_names(inner) is None
        self._accepted = _accepted_names(inner) or set()
        self._warned_full_size = False

    def check_embedding_dim(self, model_dim: int) -> None:
        """Fail early (before training) when a dimension exceeds the model's embedding size."""
        if self.dims[0] > model_dim:
            raise ValueError(f"Matryoshka dims {list(self.dims)} exceed the model's embedding dimension {model_dim}: "
                             f"use dims <= {model_dim}")

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss": _registry_name(self.loss), "loss_kwargs": _config_of(self.loss), "dims": list(self.dims),
                "weights": list(self.weights), "normalize": self.normalize, "self_distill": self.self_distill}

    def extra_repr(self) -> str:
        return (f"dims={list(self.dims)}, weights={list(self.weights)}, normalize={self.normalize}, "
                f"self_distill={self.self_distill}")

    def forward(self, **inputs: Any) -> Tensor:
        if not self._accepts_any:
            inputs = {k: v for k, v in inputs.items() if k in self._accepted}
        full = embedding_size(inputs)
        self.check_embedding_dim(full)
        if full not in self.dims and not self._warned_full_size:
            logger.warning("Matryoshka dims %s leave out the model's full size %d: the untruncated embedding is "
                           "not trained directly; add %d to dims", list(self.dims), full, full)
            self._warned_full_size = True
        return matryoshka(self.loss, inputs, self.dims, self.weights, normalize=self.normalize,
                          self_distill=self.self_distill, gather_across_devices=self._gathers)


def _build_inner(loss: nn.Module | str, loss_kwargs: dict | None) -> nn.Module:
    if isinstance(loss, nn.Module):
        if loss_kwargs:
            raise ValueError("loss_kwargs are for a loss given by name: configure the loss module itself instead")
        if isinstance(loss, MatryoshkaLoss):
            raise ValueError("MatryoshkaLoss around a MatryoshkaLoss: wrap the base loss once, with all dims")
        return loss
    from nlp_contrastive.losses import LOSSES

    if not isinstance(loss, str) or loss not in LOSSES or loss == "matryoshka":
        choices = ", ".join(sorted(n for n in LOSSES if n != "matryoshka"))
        raise ValueError(f"Matryoshka wraps a loss module or one of: {choices}; got {loss!r}")
    try:
        return LOSSES[loss](**(loss_kwargs or {}))
    except TypeError as exc:
        raise ValueError(f"bad loss_kwargs for '{loss}' inside matryoshka: {exc}") from None


def _config_of(loss: nn.Module) -> dict[str, Any]:
    """The wrapped loss's settings ({} for a module without `get_config_dict`, e.g. a user's own)."""
    return loss.get_config_dict() if hasattr(loss, "get_config_dict") else {}


def _registry_name(loss: nn.Module) -> str:
    from nlp_contrastive.losses import LOSSES

    return next((name for name, cls in LOSSES.items() if type(loss) is cls), type(loss).__name__)


def _accepted_names(loss: nn.Module) -> set[str] | None:
    """The keyword arguments the wrapped loss's forward takes; None when it takes **kwargs (pass everything)."""
    parameters = inspect.signature(loss.forward).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)
