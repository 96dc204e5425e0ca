"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

An in-batch loss needs every embedding of the batch at once, but the encoder's activations only need to exist
for one mini-batch at a time. `CachedLoss` therefore:

1. embeds every role in mini-batches without a graph, saving the random state before each mini-batch;
2. computes the wrapped loss on the full batch of embeddings (detached leaves that require grad);
3. on `.backward()`: backprops the loss to those leaves, then re-runs each mini-batch with grad under its saved
   random state and the autocast state of step 1, and pushes the cached embedding gradients through the encoder.

Peak memory is one mini-batch's forward + backward plus the [N, D] embeddings, and the gradients are those of
one uncached step: the re-run reproduces step 1 exactly (same dropout masks, same dtype).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nlp_contrastive import distributed
from nlp_contrastive.data.batch import Batch, placeholder_forward
from nlp_contrastive.engines import accumulate_locally

Features = dict[str, torch.Tensor]


class RandomStateSnapshot:
    """The CPU and every initialised CUDA device's RNG state, taken at construction; `restore()` puts it back.

    The second (with-grad) pass of a mini-batch must draw the same dropout masks as the first (no-grad) pass,
    otherwise the cached embedding gradients belong to different activations and the parameter gradients are
    silently wrong.
    """

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda = torch.cuda.get_rng_state_all() if cuda_ready else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass
class _MiniBatch:
    role: str | None  # None: a placeholder pass (one token, gradient zero) that keeps the ranks' pass counts equal
    rows: slice
    inputs: Features
    random_state: RandomStateSnapshot | None = None


def _agreed_plan(plan: list[_MiniBatch]) -> list[_MiniBatch]:
    """The plan, led by placeholder passes up to the largest mini-batch count over ranks (one all_reduce).

    FSDP / DeepSpeed wrappers are called for every pass (each gathers parameters), so ranks whose rows or token
    budget give fewer mini-batches must still make as many calls (`nlp_contrastive.distributed`). Placeholders go
    first, so the final (gradient-syncing) pass is a real mini-batch on every rank.
    """
    device = plan[0].inputs["input_ids"].device
    (count,) = distributed.agree_max([len(plan)], device=device)
    filler = [_MiniBatch(None, slice(0, 0), plan[0].inputs) for _ in range(count - len(plan))]
    return filler + plan


class CachedLoss(nn.Module):
    """Wrap any in-batch loss so the batch can be far larger than what fits in memory, with exact gradients.

    Call: `cached(encoder, batch)` with a `nlp_contrastive.data.batch.Batch`, or
    `cached(encoder, features, *, negatives_index=None, **loss_kwargs) -> scalar loss`
      - `encoder`: callable mapping tokenized inputs (input_ids, attention_mask, ...) [n, T] to embeddings [n, D]
        (an `Encoder`, possibly DDP-wrapped).
      - `features`: role -> tokenized inputs of that role, e.g. {"anchor": {...}, "positive": {...}}. Role
        "negatives" holds every row's hard negatives flattened to [M, T]; then `negatives_index` [B, K] is
        required: entry (b, k) is the row of that flattened tensor holding row b's k-th negative, -1 = padding.
        The wrapped loss then receives `negatives=[B, K, D]` and `negatives_mask=[B, K]` (index >= 0).
      - `loss_kwargs`: everything else the loss takes (temperature overrides, ids for duplicate masking, ...).
    The wrapped loss is called with `batch.loss_kwargs(embeddings, loss)` — the same arguments as the uncached
    path (`nlp_contrastive.data.batch`); its value is returned
    as a tensor whose `.backward()` (any scaling applied to it is honoured) runs the cached backward.

    Mini-batches are contiguous rows of each role, at most `mini_batch_size` rows (None = no row limit) and, if
    `max_tokens_per_mini_batch` is set, at most that many padded tokens (rows x width); both limits apply when
    both are given, and a single row longer than the token budget forms a mini-batch of its own. Trailing
    columns that are padding for every row of a mini-batch are cut off (right padding only, so positions and
    embeddings are unchanged).

    Gradient sync (data parallel): DDP sees exactly one forward and one backward per step, as in an uncached
    step: every pass except the last mini-batch's re-run calls the unwrapped `encoder.module`, so gradients
    accumulate locally and are all-reduced once, with the last mini-batch. Other wrappers (FSDP, DeepSpeed) are
    called for every pass, so ranks agree on the number of passes: a rank with fewer mini-batches (fewer rows, or
    shorter ones under the token budget) first makes one-token placeholder passes with a zero gradient
    (`nlp_contrastive.distributed`'s rule). Which re-run passes may sync is decided by
    `gradient_sync(final_pass) -> context manager`, called once per re-run pass: the trainer passes
    `accelerator_sync(accelerator, model)` (accelerate's own `no_sync`, which knows each backend, and its
    `sync_gradients` flag for gradient accumulation); without it, `wrapper_sync(encoder)` runs every re-run but
    the final one inside the wrapper's own `no_sync()` if it has one (DDP's unwrapped passes need none).

    Under `torch.no_grad()` (evaluation) the loss is computed from mini-batch embeddings and nothing is cached.
    """

    def __init__(self, loss: nn.Module, mini_batch_size: int | None = 32,
                 max_tokens_per_mini_batch: int | None = None) -> None:
        super().__init__()
        if mini_batch_size is None and max_tokens_per_mini_batch is None:
            raise ValueError("CachedLoss needs mini_batch_size or max_tokens_per_mini_batch (or both)")
        for name, value in (("mini_batch_size", mini_batch_size), ("max_tokens_per_mini_batch", max_tokens_per_mini_batch)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.loss = loss
        self.mini_batch_size = mini_batch_size
        self.max_tokens_per_mini_batch = max_tokens_per_mini_batch

    def extra_repr(self) -> str:
        return f"mini_batch_size={self.mini_batch_size}, max_tokens_per_mini_batch={self.max_tokens_per_mini_batch}"

    def forward(self, encoder: Callable[..., torch.Tensor], features: dict[str, Features] | Batch, *,
                negatives_index: torch.Tensor | None = None, gradient_sync: SyncContext | None = None,
                **loss_kwargs) -> torch.Tensor:
        batch = features if isinstance(features, Batch) else Batch(
            features=features, negatives_index=negatives_index, extras=loss_kwargs)
        batch.check()
        local = encoder.module if isinstance(encoder, DistributedDataParallel) else encoder
        plan = _agreed_plan([_MiniBatch(role, rows, inputs) for role, role_inputs in batch.features.items()
                             for rows, inputs in self._split(role_inputs)])
        autocast = _AutocastState.capture(plan[0].inputs, local)
        chunks: dict[str, list[torch.Tensor]] = {role: [] for role in batch.features}
        with torch.no_grad(), warnings.catch_warnings():
            # Reentrant checkpointing warns that nothing requires grad: true, and intended, in this pass.
            warnings.filterwarnings("ignore", message="None of the inputs have requires_grad")
            for mini_batch in plan:
                mini_batch.random_state = RandomStateSnapshot()
                if mini_batch.role is None:
                    placeholder_forward(local, mini_batch.inputs)
                else:
                    chunks[mini_batch.role].append(local(**mini_batch.inputs))
        embeddings = {role: torch.cat(parts) for role, parts in chunks.items()}
        del chunks
        if not torch.is_grad_enabled():
            return self.loss(**batch.loss_kwargs(embeddings, self.loss))
        leaves = {role: e.detach().requires_grad_() for role, e in embeddings.items()}
        loss = self.loss(**batch.loss_kwargs(leaves, self.loss))
        replay = _Replay(encoder, local, plan, autocast, loss, leaves, gradient_sync or wrapper_sync(encoder))
        return _CachedBackward.apply(replay, loss.detach(), *leaves.values())

    def _split(self, inputs: Features) -> list[tuple[slice, Features]]:
        """Contiguous row ranges within the row and token limits, each cut to its own padded width."""
        mask = inputs.get("attention_mask")
        n, width = inputs["input_ids"].shape[:2]
        if mask is None:
            widths = [width] * n
        else:  # last non-padding column + 1 per row (= width for left padding, so nothing is cut)
            positions = torch.arange(1, width + 1, device=mask.device)
            widths = ((mask != 0) * positions).amax(dim=1).clamp(min=1).tolist()
        bounds, start, current = [], 0, 0
        for i, w in enumerate(widths):
            rows, grown = i - start + 1, max(current, w)
            too_many = self.mini_batch_size is not None and rows > self.mini_batch_size
            too_long = self.max_tokens_per_mini_batch is not None and rows * grown > self.max_tokens_per_mini_batch
            if rows > 1 and (too_many or too_long):
                bounds.append((start, i, current))
                start, grown = i, w
            current = grown
        if n:
            bounds.append((start, n, current))
        return [(slice(s, e), {k: _rows(v, s, e, w, width) for k, v in inputs.items()}) for s, e, w in bounds]


def _rows(value, start: int, end: int, keep: int, width: int):
    if not isinstance(value, torch.Tensor):
        return value
    value = value[start:end]
    return value[:, :keep] if value.dim() >= 2 and value.shape[1] == width else value


@dataclass
class _AutocastState:
    """Autocast settings of the no-grad pass, re-entered for the re-run (else bf16 grads meet fp32 activations)."""

    settings: list[tuple[str, bool, torch.dtype]]
    cache_enabled: bool

    @classmethod
    def capture(cls, inputs: Features, module) -> _AutocastState:
        device_types = {v.device.type for v in inputs.values() if isinstance(v, torch.Tensor)}
        parameter = next(module.parameters(), None) if isinstance(module, nn.Module) else None
        if parameter is not None:
            device_types.add(parameter.device.type)
        settings = [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in sorted(device_types)]
        return cls(settings, torch.is_autocast_cache_enabled())

    def __call__(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for device_type, enabled, dtype in self.settings:
            stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled,
                                               cache_enabled=self.cache_enabled))
        return stack


SyncContext = Callable[[bool], contextlib.AbstractContextManager]


def wrapper_sync(encoder) -> SyncContext:
    """Plain use (no trainer): every re-run but the final one inside the wrapper's own `no_sync()`, if it has one.

    DDP is left out: its non-final passes call the unwrapped module, which DDP never sees.
    """
    no_sync = None if isinstance(encoder, DistributedDataParallel) else getattr(encoder, "no_sync", None)

    def context(final_pass: bool) -> contextlib.AbstractContextManager:
        return no_sync() if callable(no_sync) and not final_pass else contextlib.nullcontext()

    return context


def accelerator_sync(accelerator, model) -> SyncContext:
    """Under accelerate: the final re-run syncs only when accelerate will step the optimizer (`sync_gradients` is
    False inside a gradient-accumulation window); every other pass accumulates locally
    (`nlp_contrastive.engines.accumulate_locally`: accelerate's `no_sync`, or DeepSpeed ZeRO >= 2's coalescing)."""

    def context(final_pass: bool) -> contextlib.AbstractContextManager:
        if final_pass and accelerator.sync_gradients:
            return contextlib.nullcontext()
        return accumulate_locally(accelerator, model, final_pass=final_pass)

    return context


class _Replay:
    """Everything the backward needs: the loss graph over the embedding leaves and the mini-batch plan."""

    def __init__(self, encoder, local, plan: list[_MiniBatch], autocast: _AutocastState,
                 loss: torch.Tensor, leaves: dict[str, torch.Tensor], gradient_sync: SyncContext) -> None:
        self.encoder, self.local, self.plan, self.autocast = encoder, local, plan, autocast
        self.loss, self.leaves, self.gradient_sync = loss, leaves, gradient_sync

    def backward(self, grad_output: torch.Tensor) -> None:
        # Leaf gradients (and those of any parameters of the loss itself), already scaled by grad_output.
        torch.autograd.backward(self.loss, grad_output)
        grads = {role: leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                 for role, leaf in self.leaves.items()}
        outer_state = RandomStateSnapshot()
        try:
            for i, mini_batch in enumerate(self.plan):
                last = i == len(self.plan) - 1
                module = self.encoder if last else self.local
                mini_batch.random_state.restore()
                with self.gradient_sync(last):
                    with torch.enable_grad(), self.autocast():
                        embedding = (placeholder_forward(module, mini_batch.inputs) if mini_batch.role is None
                                     else module(**mini_batch.inputs))
                    grad = (torch.zeros_like(embedding) if mini_batch.role is None
                            else grads[mini_batch.role][mini_batch.rows].to(embedding.dtype))
                    torch.autograd.backward(embedding, grad)
        finally:
            outer_state.restore()  # the caller's random stream continues as if the re-run never happened


class _CachedBackward(torch.autograd.Function):
    """Identity on the loss value whose backward runs the GradCache re-run (works with any `.backward()`)."""

    @staticmethod
    def forward(ctx, replay: _Replay, loss: torch.Tensor, *leaves: torch.Tensor) -> torch.Tensor:
        ctx.replay = replay
        ctx.num_leaves = len(leaves)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        replay, ctx.replay = ctx.replay, None
        if replay is None:
            raise RuntimeError("a CachedLoss result can be backpropagated only once (the cache is freed after use)")
        replay.backward(grad_output)
        return (None, None) + (None,) * ctx.num_leaves
