"""Build a loss module from its recipe name and keyword arguments, and check it against the data's roles.

Both run when a recipe is loaded, before any model or data is loaded: a misspelt kwarg or a loss that needs a
role the data does not map fails at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from nlp_contrastive.data.sources import check_known_keys
from nlp_contrastive.losses.cached import CachedLoss

# A list of hard negatives serves wherever one negative is expected, and the other way round.
_ROLE_ALTERNATIVES = {"negative": {"negative", "negatives"}, "negatives": {"negative", "negatives"}}
# How to give a loss the role it misses, where that is not a column mapping.
_ROLE_FIXES = {
    "score": "add score: <column> to columns (a loss for unscored pairs such as info_nce fits this data)",
    "teacher_scores": "add teacher_scores: [positive_score, negative_scores] to the source (the score columns "
                      "`nlp-contrastive mine` writes; positive's first), or map teacher_scores: <list column>",
    "teacher_embedding": "set the loss's teacher: <model folder or hub id> (its embeddings of the anchor texts are "
                         "computed once and cached), or map teacher_embedding: <column of vectors>",
}


def build_loss(name: str, loss_kwargs: Mapping | None = None, *, cached: bool = False,
               cache_mini_batch_size: int | None = 32, cache_max_tokens: int | None = None) -> nn.Module:
    """The loss registered as `name` in `nlp_contrastive.losses.LOSSES`, wrapped in GradCache when `cached`."""
    from nlp_contrastive.losses import LOSSES

    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}': choose one of {', '.join(sorted(LOSSES))}")
    parameters = inspect.signature(LOSSES[name].__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        check_known_keys(loss_kwargs or {}, [p for p in parameters if p != "self"], f"loss_kwargs for '{name}'")
    try:
        loss = LOSSES[name](**dict(loss_kwargs or {}))
    except TypeError as exc:
        raise ValueError(f"bad loss_kwargs for '{name}': {exc}") from None
    if cached:
        loss = CachedLoss(loss, mini_batch_size=cache_mini_batch_size, max_tokens_per_mini_batch=cache_max_tokens)
    return loss


class SourceLosses(nn.Module):
    """One loss per `train_data` source (a source's own `loss:` or the recipe's), for multi_dataset_sampling runs
    where every batch comes from one source: the trainer calls `for_batch(inputs["source"])`.

    Sources with the same loss settings share one module (so its learnable parameters are shared too); every
    learnable parameter is under this module, so the optimizer and checkpoints see them as for a single loss.
    """

    def __init__(self, losses: Sequence[nn.Module], of_source: Sequence[int], names: Sequence[str]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.of_source = list(of_source)  # source i -> index into self.losses
        self.names = list(names)  # source i's loss name, for messages and the run record

    def for_source(self, source: int) -> nn.Module:
        return self.losses[self.of_source[source]]

    def for_batch(self, sources: torch.Tensor | None) -> nn.Module:
        """The loss of the batch's source (`sources`: the collated `source` column, one value per batch)."""
        if sources is None or sources.numel() == 0:
            raise ValueError("per-source losses need each batch's source: the batches lack the `source` column "
                             "(set multi_dataset_sampling, e.g. proportional)")
        first = int(sources.reshape(-1)[0])
        if bool((sources != first).any()):
            raise ValueError(f"a batch mixes sources {sorted(set(sources.tolist()))}, but per-source losses need "
                             "every batch from one source: use the multi-dataset batch sampler "
                             "(multi_dataset_sampling)")
        return self.for_source(first)

    def forward(self, *args, **kwargs):
        raise TypeError("SourceLosses holds one loss per source: call for_batch(inputs['source']) or "
                        "for_source(i) and then that loss")


def build_recipe_loss(recipe) -> nn.Module:
    """The loss a recipe (`config.Recipe`) trains with: one module, or `SourceLosses` when a train_data source has
    its own `loss` / `loss_kwargs` (each distinct setting built once)."""
    loss_config = recipe.loss
    options = {"cached": loss_config.cached, "cache_mini_batch_size": loss_config.cache_mini_batch_size,
               "cache_max_tokens": loss_config.cache_max_tokens}
    if not recipe.has_source_losses():
        return build_loss(loss_config.loss, loss_config.loss_kwargs, **options)
    settings = [recipe.source_loss(i) for i in range(len(recipe.data.train_data))]
    unique: list[tuple[str, dict]] = []
    for setting in settings:
        if setting not in unique:
            unique.append(setting)
    return SourceLosses([build_loss(name, kwargs, **options) for name, kwargs in unique],
                        [unique.index(s) for s in settings], [name for name, _ in settings])


def base_loss(loss: nn.Module) -> nn.Module:
    """The loss itself, without the GradCache wrapper."""
    return loss.loss if isinstance(loss, CachedLoss) else loss


def check_loss_roles(loss: nn.Module, name: str, roles: Iterable[str], *, batch_size: int,
                     where: str = "train_data") -> None:
    """Fail when the data (`where`: which source) lacks a role the loss needs, or a batch of `batch_size` rows
    gives no negatives."""
    inner = base_loss(loss)
    roles = set(roles)
    available = roles | ({"negative"} if "negatives" in roles else set())
    for role in getattr(inner, "roles", ()):
        if not _ROLE_ALTERNATIVES.get(role, {role}) & available:
            fix = _ROLE_FIXES.get(role, f"add {role}: <column> to columns")
            raise ValueError(f"loss '{name}' needs a '{role}' column but {where} maps only {sorted(roles)}: {fix}")
    if getattr(inner, "requires_in_batch_negatives", False) and batch_size < 2 and "negative" not in available:
        raise ValueError(f"loss '{name}' uses in-batch negatives, so per_device_train_batch_size must be >= 2 "
                         f"(got {batch_size}): raise it, or add hard negatives")
