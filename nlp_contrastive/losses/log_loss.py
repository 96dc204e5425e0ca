"""Log loss (sigmoid / binary cross-entropy) on the scaled similarity of labelled pairs, fixed or learnable scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlp_contrastive.losses._common import (
    DefaultFloat,
    LossModule,
    at_least_float32,
    autocast_off,
    check_embeddings,
    check_reduction,
    check_values,
    reduce,
    resolve_temperature,
)
from nlp_contrastive.losses.similarity import get_similarity

ZHAI_2023 = """@inproceedings{zhai2023sigmoid,
  title={Sigmoid Loss for Language Image Pre-Training},
  author={Zhai, Xiaohua and Mustafa, Basil and Kolesnikov, Alexander and Beyer, Lucas},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages={11975--11986},
  year={2023},
  url={https://arxiv.org/abs/2303.15343}
}"""

DEFAULT_LOG_LOSS_TEMPERATURE = DefaultFloat(0.1)
DEFAULT_LOG_LOSS_BIAS = -5.0  # with t = 0.1: decision threshold at cosine 0.5


def _inverse_temperature(temperature: float | Tensor, scale: float | Tensor | None) -> float | Tensor:
    """1/t from `temperature` or its alias `scale`; 0-dim tensors (learnable parameters) keep their graph."""
    if not (isinstance(temperature, Tensor) or isinstance(scale, Tensor)):
        return 1.0 / resolve_temperature(temperature, scale)
    if scale is not None and not isinstance(temperature, DefaultFloat):
        raise ValueError("both temperature and scale given: pass one (scale is 1/temperature)")
    value = torch.as_tensor(scale) if scale is not None else 1.0 / torch.as_tensor(temperature)
    if value.numel() != 1 or not bool(value.detach() > 0):
        raise ValueError(f"scale/temperature must be one positive number, got {value.detach().tolist()}")
    return value.reshape(())


def log_loss(a: Tensor, b: Tensor, label: Tensor, *, temperature: float | Tensor = DEFAULT_LOG_LOSS_TEMPERATURE,
             scale: float | Tensor | None = None, bias: float | Tensor = DEFAULT_LOG_LOSS_BIAS,
             similarity: str = "cosine", reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of each labelled pair on its scaled similarity (sigmoid loss).

        z_i = s(a_i, b_i) / t + bias,    l_i = -[ y_i * log sigma(z_i) + (1 - y_i) * log(1 - sigma(z_i)) ]

    Inputs: a [B, D] ("anchor"), b [B, D] ("positive"), label [B] ("label"): 1 = similar pair, 0 = dissimilar
    (values in between are soft targets). temperature t > 0 (default 0.1) or scale = 1/t (not both), and bias;
    either may be a 0-dim tensor, e.g. learnable parameters (see `LogLoss(learnable=True)`).
    similarity: "cosine" | "dot" | "euclidean" | "manhattan" (higher is closer). The pair is predicted similar
    when s > -bias * t, so the defaults (t = 0.1, bias = -5) put the threshold at cosine 0.5.
    reduction: "mean" | "sum" | "none" ([B]). Computed in float32 with autocast off (logits at 1/t).
    When to use: binary-labelled pairs (paraphrase yes/no, duplicate questions) when a calibrated probability
    of "same meaning" is wanted; unlike the margin contrastive loss every pair always contributes a gradient.
    Reference: Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP), ICCV 2023 — here on the
    labelled pairs of the batch rather than on every in-batch pair.
    """
    check_reduction(reduction)
    check_embeddings(a=a, b=b)
    measure = get_similarity(similarity)
    inverse_t = _inverse_temperature(temperature, scale)
    label = check_values("label", label, a.shape[0], 0.0, 1.0)
    with autocast_off(a.device):
        s = measure.pairwise(at_least_float32(a), at_least_float32(b))
        logits = s * inverse_t + bias
        losses = F.binary_cross_entropy_with_logits(logits, label.to(logits.dtype), reduction="none")
    return reduce(losses, reduction)


class LogLoss(LossModule):
    """Sigmoid / binary cross-entropy on s(a, b)/t + bias for labelled pairs; see `log_loss`.

    With `learnable=True`, log(1/t) and the bias are `nn.Parameter`s initialised from `temperature`/`bias`
    (SigLIP's parameterisation), trained with the encoder only if the optimizer is given the loss's parameters.
    `get_config_dict()` reports the current values, so the config re-creates the module in its present state.
    """

    roles = ("anchor", "positive", "label")
    citation = ZHAI_2023

    def __init__(self, temperature: float = DEFAULT_LOG_LOSS_TEMPERATURE, scale: float | None = None,
                 bias: float = DEFAULT_LOG_LOSS_BIAS, learnable: bool = False, similarity: str = "cosine",
                 reduction: str = "mean") -> None:
        inverse_t = float(_inverse_temperature(temperature, scale))
        get_similarity(similarity)
        check_reduction(reduction)
        if not math.isfinite(float(bias)):
            raise ValueError(f"bias must be a finite number, got {bias}")
        super().__init__(similarity=similarity, reduction=reduction)
        self.learnable = bool(learnable)
        if self.learnable:
            self.log_scale = nn.Parameter(torch.tensor(math.log(inverse_t)))
            self.bias = nn.Parameter(torch.tensor(float(bias)))
        else:
            self.inverse_temperature, self.bias = inverse_t, float(bias)

    def current_scale(self) -> float | Tensor:
        return self.log_scale.exp() if self.learnable else self.inverse_temperature

    def get_config_dict(self) -> dict:
        scale, bias = float(torch.as_tensor(self.current_scale()).detach()), float(torch.as_tensor(self.bias).detach())
        return {"temperature": 1.0 / scale, "bias": bias, "learnable": self.learnable, **self._config}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_config_dict().items())

    def forward(self, anchor: Tensor, positive: Tensor, label: Tensor) -> Tensor:
        return log_loss(anchor, positive, label, scale=self.current_scale(), bias=self.bias, **self._config)
