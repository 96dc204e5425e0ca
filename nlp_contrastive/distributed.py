"""Cross-process negatives: the one place that gathers across ranks, offsets labels and decides loss scaling.

**Gather (with gradient).** `gather_rows` concatenates every rank's rows in rank order (ranks may hold different
numbers of rows: they are padded to the largest for the collective and trimmed after). Its backward all-reduces
(sums) the gradient that every rank computed for the gathered tensor and hands each rank the slice of its own
rows. So rank r's encoder receives d(sum over ranks q of L_q)/dx_r: its rows' effect on every rank's loss (as
candidates there), not only on its own. Ids and masks gather the same way without gradient.

**Label offsets.** Rank r's rows sit at `offset = n_0 + ... + n_{r-1}` in the gathered tensor, so the target of
its local row i is `offset + i` (`Gathered.offset`).

**Loss scaling (decided here, once).** `reduce_across_ranks` makes rank r return

    mean: (W / N) * sum_{i on rank r} l_i        sum: W * sum_{i on rank r} l_i

with W the world size and N the global number of rows. DDP (and accelerate's FSDP/DeepSpeed) *average*
parameter gradients over ranks, i.e. multiply their sum by 1/W. For "mean" the averaged gradient is therefore
(1/W) * sum_r (W/N) * d(sum_all l)/dtheta |through x_r = (1/N) * d(sum_all l)/dtheta: exactly the gradient of
one process on the whole global batch (and likewise for "sum"). With equal batches per rank, (W/N) * sum_local
is just the local mean: no visible factor, and the average of the ranks' loss values is the global loss.
This is the only place where a loss is scaled by the world size.

**The rule: every rank makes the same collective calls, in the same order, in every step, whatever its batch
holds.** A collective one rank skips (or makes twice) leaves the others waiting until the timeout: a hang, not an
error. So a call is decided only by the settings (identical on every rank) or by numbers every rank has agreed on
first, never by one rank's own data. Enforced here, in the helpers every caller goes through:
  - what each rank holds is exchanged first (`exchange`, one all_gather of a few integers), so a rank without hard
    negatives still takes part in their gather, with a [0, D] tensor (`info_nce`); and `gather_rows` takes the
    gradient path (one all_reduce in backward) whenever grad is enabled, not when the local tensor needs it;
  - how many forward calls a step makes is agreed (`agree_max`, one all_reduce): per-role forwards run the union
    of the ranks' roles, a missing role as a one-token placeholder forward whose output counts zero
    (`batch.Batch.forward_plan` / `Batch.embed`), because under FSDP / ZeRO-3 every forward gathers parameters
    and DDP with broadcast_buffers broadcasts at every forward; GradCache pads each rank to the largest
    mini-batch count the same way (`losses.cached`).
Unequal ranks (one without negatives, different lengths, a tiny last batch) are tested in
tests/test_collective_rule.py.

Rank and world size come from torch.distributed when it is initialised, or from arguments (world_size=1 is
always allowed), so the functions run in unit tests without a process group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Gathered", "agree_max", "average_gradients_across_ranks", "exchange", "gather_rows", "label_offset",
           "rank_and_world_size", "reduce_across_ranks"]


def rank_and_world_size(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def label_offset(sizes: tuple[int, ...] | list[int], rank: int) -> int:
    """Row index of rank `rank`'s first row in the rank-ordered concatenation."""
    if not 0 <= rank < len(sizes):
        raise ValueError(f"rank {rank} is outside the world of {len(sizes)} process(es)")
    return int(sum(sizes[:rank]))


@dataclass(frozen=True)
class Gathered:
    """Rows of all ranks concatenated in rank order, with where this rank's rows are."""

    tensor: Tensor
    sizes: tuple[int, ...]
    rank: int

    @property
    def world_size(self) -> int:
        return len(self.sizes)

    @property
    def offset(self) -> int:
        return label_offset(self.sizes, self.rank)

    @property
    def local(self) -> slice:
        return slice(self.offset, self.offset + self.sizes[self.rank])


class _AllGatherSum(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for the gathered rows and keeps the local slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        # all_reduce instead of reduce_scatter: gloo has no reduce_scatter, and embeddings are small.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank], None


def _world(world_size: int | None, group: dist.ProcessGroup | None) -> int:
    return rank_and_world_size(group)[1] if world_size is None else world_size


def exchange(values: list[int] | tuple[int, ...], *, device: torch.device | str = "cpu", world_size: int | None = None,
             group: dist.ProcessGroup | None = None) -> list[tuple[int, ...]]:
    """Every rank's few integers (e.g. its row counts and which optional inputs it has), in rank order, the same
    on every rank: one all_gather. What a rank holds is known to all before anything of it is gathered.
    `world_size=1` (or no process group) returns `[values]` without a collective."""
    mine = tuple(int(v) for v in values)
    world = _world(world_size, group)
    if world == 1:
        return [mine]
    local = torch.tensor(mine, dtype=torch.long, device=device)
    table = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(table, local, group=group)
    return [tuple(int(v) for v in row.tolist()) for row in table]


def agree_max(values: list[int] | tuple[int, ...], *, device: torch.device | str = "cpu",
              world_size: int | None = None, group: dist.ProcessGroup | None = None) -> tuple[int, ...]:
    """The element-wise maximum of a few integers over ranks (one all_reduce), e.g. forward calls or mini-batch
    counts every rank then makes; a minimum is `-max(-v)`, "all ranks" is a max of `1 - flag` == 0."""
    world = _world(world_size, group)
    if world == 1:
        return tuple(int(v) for v in values)
    agreed = torch.tensor([int(v) for v in values], dtype=torch.long, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=group)
    return tuple(int(v) for v in agreed.tolist())


def gather_rows(
    tensor: Tensor,
    *,
    sizes: tuple[int, ...] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    group: dist.ProcessGroup | None = None,
) -> Gathered:
    """Concatenate `tensor`'s rows (dim 0) from every rank; gradient flows back to each rank's own rows.

    `sizes` (rows per rank) skips the size exchange when already known, e.g. for ids aligned with embeddings.
    A rank may hold 0 rows. Floating-point tensors take the gradient path whenever grad is enabled (the same
    choice on every rank, so every rank joins the backward all_reduce), even where the local tensor needs no
    gradient (e.g. a [0, D] stand-in for negatives this rank lacks).
    `world_size=1` returns the tensor itself, so single-process code paths need no process group.
    """
    if world_size is None or rank is None:
        group_rank, group_world = rank_and_world_size(group)
        rank = group_rank if rank is None else rank
        world_size = group_world if world_size is None else world_size
    if world_size == 1:
        return Gathered(tensor, (tensor.shape[0],), 0)
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"gathering over world_size={world_size} needs an initialised torch.distributed process "
                         "group: launch with accelerate/torchrun, or pass world_size=1")
    if sizes is None:
        sizes = tuple(row[0] for row in exchange([tensor.shape[0]], device=tensor.device, world_size=world_size,
                                                 group=group))
    if len(sizes) != world_size or sizes[rank] != tensor.shape[0]:
        raise ValueError(f"sizes {tuple(sizes)} do not match world_size={world_size} and this rank's "
                         f"{tensor.shape[0]} rows")
    is_bool = tensor.dtype == torch.bool
    padded = tensor.to(torch.uint8) if is_bool else tensor  # not every backend reduces/gathers bool
    width = max(sizes)
    if padded.shape[0] < width:
        filler = padded.new_zeros((width - padded.shape[0], *padded.shape[1:]))
        padded = torch.cat([padded, filler])
    if torch.is_grad_enabled() and padded.is_floating_point():
        if not padded.requires_grad:
            padded = padded.detach().requires_grad_()
        stacked = _AllGatherSum.apply(padded, group)
    else:
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        parts[rank] = padded  # keep the local rows' identity (and any autograd history) untouched
        stacked = torch.stack(parts)
    rows = torch.cat([stacked[r, : sizes[r]] for r in range(world_size)])
    return Gathered(rows.bool() if is_bool else rows, tuple(sizes), rank)


def reduce_across_ranks(per_row: Tensor, reduction: str, *, global_rows: int, world_size: int) -> Tensor:
    """This rank's share of the global mean/sum, scaled so DDP's gradient averaging yields the full-batch gradient.

    See the module docstring. 'none' returns the local per-row losses unscaled.
    """
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum() * world_size
    if reduction == "mean":
        return per_row.sum() * (world_size / global_rows)
    raise ValueError(f"unknown reduction '{reduction}': choose one of mean, sum, none")


def average_gradients_across_ranks(parameters: list[nn.Parameter]) -> None:
    """Average these parameters' gradients over ranks during backward, as DDP does for the model's own.

    For parameters outside the DDP-wrapped model (a loss's learnable scale and bias): without it every rank would
    step its copy with its local gradient and the copies would drift apart. No-op without a process group.
    """
    _, world = rank_and_world_size()
    if world == 1:
        return

    def average(grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad / world

    for parameter in parameters:
        parameter.register_hook(average)
