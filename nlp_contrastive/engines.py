"""What differs between the training engines (DDP, DeepSpeed ZeRO 1/2/3, FSDP) that our code must know about.

accelerate hides most of it; three things it does not:
- **Local gradient accumulation inside one backward** (GradCache re-runs one mini-batch at a time): DDP and FSDP
  have `no_sync`; DeepSpeed ZeRO >= 2 reduces each parameter's gradient in a hook as soon as it is computed and
  refuses a second one in the same backward. `accumulate_locally` makes those hooks leave the gradient on the
  parameter (DeepSpeed's own `coalesce_grad_reduction` switch), so the next backward outside it adds to it and
  its hooks reduce the sum once, as after a single backward.
- **Loading full weights into a sharded model** (resume under FSDP): `load_full_state_dict`.
- **Whether the live parameters are shards** (ZeRO-3, FSDP): `weights_are_sharded`.
And one thing accelerate does silently: an FSDP config on a machine without GPUs runs plain data parallel (or
independent processes); `check_requested_engine` stops such a run instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["accumulate_locally", "check_checkpointing", "check_requested_engine", "load_full_state_dict", "stop_zero3_model_loading",
           "weights_are_sharded", "zero_stage"]


def zero_stage(accelerator) -> int | None:
    """The DeepSpeed ZeRO stage accelerate runs, or None when it does not run DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def weights_are_sharded(accelerator) -> bool:
    """True when each process holds only a shard of the parameters (DeepSpeed ZeRO-3, FSDP)."""
    return getattr(accelerator.state, "fsdp_plugin", None) is not None or zero_stage(accelerator) == 3


def check_requested_engine(args) -> None:
    """Stop when `accelerate launch` asked for FSDP but accelerate will not run it: it turns FSDP on only for
    GPU-like devices, and on a CPU the same command trains with plain data parallel (or in independent processes)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    from accelerate.utils import DistributedType

    _ = args.device  # sets up the distributed state
    if args.distributed_state.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU):
        raise ValueError("the accelerate config asks for FSDP, but accelerate runs FSDP only on GPUs and this run is "
                         "on the CPU: use recipes/accelerate/cpu.yaml (data parallel) or deepspeed-zero3.yaml "
                         "(sharded; add --mixed_precision no --use_cpu true)")


def check_checkpointing(args, accelerator) -> None:
    """Reentrant activation checkpointing cannot run under DDP with several processes: DDP marks each parameter
    ready once per backward, and reentrant checkpointing backpropagates every layer in a backward of its own (the
    run would stop at its first step with "Expected to mark a variable ready only once")."""
    enabled = getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", False)
    options = (getattr(args, "activation_checkpointing_kwargs", None)
               or getattr(args, "gradient_checkpointing_kwargs", None) or {})
    if not (enabled and options.get("use_reentrant")) or accelerator.num_processes == 1:
        return
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        raise ValueError("activation (gradient) checkpointing with use_reentrant: true cannot run under DDP with several "
                         "processes (DDP marks each parameter ready once per backward): leave use_reentrant out "
                         "(non-reentrant checkpointing, the default)")


def stop_zero3_model_loading() -> None:
    """From here on transformers loads models whole. Under ZeRO-3 its `from_pretrained` partitions a model over the
    processes as it loads (collectives), which hangs or fails a process loading alone after training (rank 0's
    final evaluation of the saved model); call it on every rank."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


@contextlib.contextmanager
def accumulate_locally(accelerator, model, *, final_pass: bool = False) -> Iterator[None]:
    """Backward passes inside add to the local gradients without reducing them across processes; the next
    backward outside reduces the sum once. accelerate's `no_sync` does this for DDP, FSDP and ZeRO-1; for ZeRO >= 2
    (where it does nothing) the engine's ZeRO optimizer is told to coalesce: its reduce hooks return at once.

    `final_pass`: the last backward of a micro-step inside a gradient-accumulation window. ZeRO >= 2 reduces it
    (DeepSpeed accumulates its micro-steps in the sharded gradients itself); the others keep it local."""
    stage = zero_stage(accelerator)
    optimizer = getattr(model, "optimizer", None)
    if stage is None or stage < 2 or not hasattr(optimizer, "_coalesce_grad_reduction"):
        with accelerator.no_sync(model):
            yield
        return
    if final_pass:
        yield
        return
    previous = optimizer._coalesce_grad_reduction
    optimizer._coalesce_grad_reduction = True
    try:
        yield
    finally:
        optimizer._coalesce_grad_reduction = previous


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor], *, strict: bool = False):
    """`module.load_state_dict(state)` for full (unsharded) tensors, also when the module's parameters are FSDP
    shards (DTensors): torch's distributed state-dict API scatters each full tensor to the shards. Returns
    (missing, unexpected) keys like `load_state_dict`."""
    if not any(_is_dtensor(p) for p in module.parameters()):
        return module.load_state_dict(state, strict=strict)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    result = set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=strict))
    return result.missing_keys, result.unexpected_keys


def _is_dtensor(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)
