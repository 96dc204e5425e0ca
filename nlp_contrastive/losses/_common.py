"""What every loss shares: argument checks, temperature/scale, reduction, the per-negative layout, the Module base.

Kept here once so each loss file holds only its own formula.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")


class DefaultFloat(float):
    """A default value that can be told apart from the same number passed explicitly (`x is DEFAULT`)."""

    def __repr__(self) -> str:
        return float.__repr__(self)


DEFAULT_TEMPERATURE = DefaultFloat(0.05)


def resolve_temperature(temperature: float, scale: float | None) -> float:
    """Temperature from `temperature` or its alias `scale` (= 1/temperature); never both."""
    explicit_temperature = not isinstance(temperature, DefaultFloat)
    if scale is not None:
        if explicit_temperature:
            raise ValueError(f"both temperature={temperature} and scale={scale} given: pass one "
                             "(scale is 1/temperature)")
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0 (it is 1/temperature), got {scale}")
        return 1.0 / float(scale)
    temperature = float(temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}: use e.g. 0.05 (or scale=20)")
    return temperature


def at_least_float32(x: Tensor) -> Tensor:
    """fp16/bf16 -> float32 (logits and softmax must not overflow at low temperature); float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@contextmanager
def autocast_off(device: torch.device) -> Iterator[None]:
    """Run the enclosed ops in their inputs' dtype even inside a Trainer's fp16/bf16 autocast.

    Similarities divided by a small temperature need float32: a bf16 cosine is only good to ~4e-3, i.e.
    +-0.4 in a logit at t = 0.01 (sentence-transformers upcasts for the same reason).
    """
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def softmax_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row -log softmax(logits)[target], [B, C] -> [B] (what F.cross_entropy computes).

    Written out because F.cross_entropy's log_softmax pays a thread-pool round trip per call on small CPU
    batches (~10 ms on a busy machine); shifting by the row max keeps it exact and overflow-free.
    """
    shifted = logits - logits.detach().amax(dim=1, keepdim=True)
    return torch.log(torch.exp(shifted).sum(dim=1)) - shifted.gather(1, targets.unsqueeze(1)).squeeze(1)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction '{reduction}': choose one of {', '.join(REDUCTIONS)}")


def reduce(losses: Tensor, reduction: str, mask: Tensor | None = None) -> Tensor:
    """Mean/sum over the entries `mask` keeps (all by default); 'none' returns them with masked ones zeroed."""
    check_reduction(reduction)
    if mask is not None:
        losses = losses * mask.to(losses.dtype)
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    count = losses.numel() if mask is None else int(mask.sum())
    return total / max(count, 1)


def check_embeddings(**tensors: Tensor | None) -> None:
    """All given tensors are [B, D] with the same shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"{name} must be a 2-D [batch, dim] tensor of embeddings, got shape {shape}")
        if shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {shape}): pass at least one row")
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"mismatched shapes: {listed}; every input must be [batch, dim] with one row per example")


def check_values(name: str, values: Tensor, batch: int, low: float | None = None, high: float | None = None) -> Tensor:
    """A [B] tensor of per-pair scores/labels, finite and within [low, high]; returned flattened."""
    if not isinstance(values, Tensor):
        values = torch.as_tensor(values)
    values = values.reshape(-1) if values.numel() == batch else values
    if values.shape != (batch,):
        raise ValueError(f"{name} must hold one value per pair ({batch}), got shape {tuple(values.shape)}")
    if torch.isnan(values).any():
        raise ValueError(f"{name} contains NaN: drop or fix those rows before training")
    if (low is not None and (values < low).any()) or (high is not None and (values > high).any()):
        raise ValueError(f"{name} must lie in [{low}, {high}], got values in [{values.min().item()}, "
                         f"{values.max().item()}]: rescale the column (e.g. score_range in the data config)")
    return values


def per_negative(anchor: Tensor, negative: Tensor, negatives_mask: Tensor | None, name: str = "negative"
                 ) -> tuple[Tensor, Tensor | None]:
    """Bring one negative per row [B, D] or K per row [B, K, D] to [B, K, D], with a checked [B, K] mask."""
    batch, dim = anchor.shape
    if negative.dim() == 2:
        negative = negative.unsqueeze(1)
    if negative.dim() != 3 or negative.shape[0] != batch or negative.shape[2] != dim:
        raise ValueError(f"{name} must be [batch, dim] or [batch, K, dim] = [{batch}, K, {dim}], got shape "
                         f"{tuple(negative.shape)}")
    if negative.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(negative.shape)}): pass None instead of a tensor with K=0")
    if negatives_mask is not None:
        if tuple(negatives_mask.shape) != tuple(negative.shape[:2]):
            raise ValueError(f"negatives_mask must be [batch, K] = {list(negative.shape[:2])}, got shape "
                             f"{tuple(negatives_mask.shape)}")
        negatives_mask = negatives_mask.to(dtype=torch.bool, device=negative.device)
    return negative, negatives_mask


def pick_negatives(negative: Tensor | None, negatives: Tensor | None, loss: str) -> Tensor:
    """The one negatives input a module got: role "negative" [B, D] or role "negatives" [B, K, D]."""
    if negative is not None and negatives is not None:
        raise ValueError(f"{loss} got both negative and negatives: pass one of them")
    if negative is None and negatives is None:
        raise ValueError(f"{loss} needs negatives: pass negative [B, D] or negatives [B, K, D]")
    return negative if negative is not None else negatives


class LossModule(nn.Module):
    """Base of the loss modules: holds hyperparameters only; forward takes embeddings by role name.

    `roles` are the inputs a batch must provide, `optional_roles` those it may add; a trainer calls
    `loss(**embeddings_by_role)`. `get_config_dict()` and `citation` feed model cards.
    """

    roles: ClassVar[tuple[str, ...]] = ()
    optional_roles: ClassVar[tuple[str, ...]] = ()
    requires_in_batch_negatives: ClassVar[bool] = False
    citation: ClassVar[str] = ""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self._config = config

    def get_config_dict(self) -> dict[str, Any]:
        return dict(self._config)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items())
