"""`python tests/fsdp_shards.py OUT` under a 2-process launcher: our save / load / resume on FSDP2 shards (gloo, CPU).

accelerate runs FSDP only on GPUs, so the trainer cannot take this path on a CPU; torch's FSDP2 (`fully_shard`)
does run on gloo. The tiny encoder's layers and root are sharded over 2 processes, and each step embeds different
texts on each rank (6 pairs on rank 0, 4 shorter ones on rank 1) with gathered InfoNCE, plus a LogLoss with a
learnable scale and bias whose plain (unsharded) parameters have their own optimizer, as under the trainer.

- straight: 3 SGD steps; after step 2 the full weights are gathered and written by rank 0 with
  `Encoder.save_pretrained(state_dict=...)` (OUT/checkpoint, what the trainer's `_save` does with the state dict
  accelerate gathers), with `loss_parameters.safetensors`.
- resumed: a freshly initialised sharded encoder (another seed) loads OUT/checkpoint through the trainer's loader
  (`checkpointing.load_encoder_weights`: full tensors scattered to the shards) and the loss parameters, then runs
  step 3.
- old: the previous loader, `encoder.model.load_state_dict(full tensors)`, on the same kind of sharded model.
Rank 0 writes OUT/straight.safetensors, OUT/resumed.safetensors (full weights after step 3, gathered), the loss
parameters of both and OUT/report.json (what the resumed model held right after loading, and what the old loader
did).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import safetensors.torch
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from nlp_contrastive.checkpointing import LOSS_PARAMETERS_NAME, load_encoder_weights
from nlp_contrastive.distributed import average_gradients_across_ranks
from nlp_contrastive.losses.info_nce import InfoNCELoss
from nlp_contrastive.losses.log_loss import LogLoss
from tests.conftest import make_tiny_encoder

PAIRS = [  # (anchor, positive) per rank and step: different counts and lengths on the two ranks
    [[(f"query {s} {i} about the weather in town today", f"answer {s} {i} it is sunny and warm outside")
      for i in range(6)] for s in range(3)],
    [[(f"short {s} {i}", f"reply {s} {i}") for i in range(4)] for s in range(3)],
]


def sharded(seed: int, mesh):
    encoder = make_tiny_encoder(seed=seed)
    for layer in encoder.model.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(encoder, mesh=mesh)
    return encoder


def full_weights(encoder) -> dict[str, torch.Tensor]:
    """The encoder's full weights on rank 0 (a collective: every rank calls it), keys "model.<name>"."""
    return get_model_state_dict(encoder, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def step(encoder, log_loss, optimizers, rank: int, s: int) -> None:
    anchors, positives = zip(*PAIRS[rank][s], strict=True)
    a = encoder(**encoder.tokenize(list(anchors)))
    p = encoder(**encoder.tokenize(list(positives)))
    labels = torch.ones(len(anchors))
    loss = InfoNCELoss(gather_across_devices=True)(anchor=a, positive=p) + log_loss(anchor=a, positive=p, label=labels)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad()


def trainable(seed: int, mesh):
    encoder = sharded(seed, mesh)
    log_loss = LogLoss(temperature=0.05, bias=-15.0, learnable=True)
    average_gradients_across_ranks(list(log_loss.parameters()))
    optimizers = [torch.optim.SGD(encoder.parameters(), lr=0.1), torch.optim.SGD(log_loss.parameters(), lr=0.1)]
    return encoder, log_loss, optimizers


def main() -> int:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    checkpoint = out / "checkpoint"
    report: dict = {}

    encoder, log_loss, optimizers = trainable(0, mesh)
    for s in range(2):
        step(encoder, log_loss, optimizers, rank, s)
    state = full_weights(encoder)
    if rank == 0:
        encoder.save_pretrained(checkpoint, state_dict=state)
        loss_state = {k: v.detach().clone() for k, v in log_loss.named_parameters()}
        safetensors.torch.save_file(loss_state, checkpoint / LOSS_PARAMETERS_NAME)
    dist.barrier()
    step(encoder, log_loss, optimizers, rank, 2)
    straight = full_weights(encoder)

    resumed, resumed_loss, resumed_optimizers = trainable(1, mesh)
    load_encoder_weights(resumed, str(checkpoint))
    with torch.no_grad():
        for name, value in safetensors.torch.load_file(checkpoint / LOSS_PARAMETERS_NAME).items():
            resumed_loss.get_parameter(name).copy_(value)
    loaded = full_weights(resumed)
    step(resumed, resumed_loss, resumed_optimizers, rank, 2)
    resumed_state = full_weights(resumed)

    old = sharded(1, mesh)
    try:
        old.model.load_state_dict(safetensors.torch.load_file(checkpoint / "model.safetensors"), strict=False)
        old_loaded = full_weights(old)
        report["old_loader"] = "loaded"
    except Exception as exc:  # noqa: BLE001 - the report says what the old loader did
        report["old_loader"] = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        old_loaded = None
    if rank == 0:
        saved = safetensors.torch.load_file(checkpoint / "model.safetensors")
        report["loaded_equals_checkpoint"] = all(torch.equal(loaded[f"model.{k}"], v) for k, v in saved.items())
        if old_loaded is not None:
            report["old_loaded_equals_checkpoint"] = all(torch.equal(old_loaded[f"model.{k}"], v)
                                                         for k, v in saved.items())
        safetensors.torch.save_file(straight, out / "straight.safetensors")
        safetensors.torch.save_file(resumed_state, out / "resumed.safetensors")
        report["loss"] = {"straight": {k: v.item() for k, v in log_loss.named_parameters()},
                          "resumed": {k: v.item() for k, v in resumed_loss.named_parameters()}}
        (out / "report.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
