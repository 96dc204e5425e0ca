"""`accelerate launch (2 processes) -m tests.collective_rule_worker OUT_DIR MODEL_DIR`: the workers' side of
tests/test_collective_rule.py.

Part 1 loops over many cases in one process group: random, different batches per rank (hard negatives on some
ranks only, ragged negatives lists, very different lengths, 2-row batches) x in-batch losses x gather on/off x
GradCache on/off x two engines: DDP with broadcast_buffers (a broadcast at every forward call) and a wrapper that
makes a collective at every forward call, as FSDP / ZeRO-3 gather parameters. Rank 0 then checks each case
against one process (no collectives): gather on, the loss and gradients of the whole batch; gather off, the
average of each rank's own loss. Part 2 trains with ContrastiveTrainer (ddp_broadcast_buffers: true, one
forward per role, ranks with and without negatives), plain and cached, and saves the weights for the test to
compare with one process. The gloo timeout is short, so a rank left waiting fails instead of hanging.
"""

from __future__ import annotations

import datetime
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nlp_contrastive.data.batch import Batch, BatchCollator, token_column
from nlp_contrastive.losses import BatchAllTripletLoss, CoSENTLoss, InfoNCELoss, MatryoshkaLoss
from nlp_contrastive.losses.cached import CachedLoss

TIMEOUT = datetime.timedelta(seconds=45)
LOSSES = {  # name -> (factory(gather), gathers?)
    "info_nce": (lambda gather: InfoNCELoss(gather_across_devices=gather), True),
    "info_nce_symmetric": (lambda gather: InfoNCELoss(symmetric=True, gather_across_devices=gather), True),
    "matryoshka_self_distill": (lambda gather: MatryoshkaLoss(InfoNCELoss(gather_across_devices=gather),
                                                              dims=[32, 16], self_distill=2.0), True),
    "cosent": (lambda gather: CoSENTLoss(), False),
    "batch_all_triplet": (lambda gather: BatchAllTripletLoss(), False),
}
NEGATIVES = ("rank 0 only", "rank 1 only", "ragged on both", "none")


@dataclass(frozen=True)
class Case:
    loss: str
    gather: bool
    cached: bool
    engine: str  # "ddp" | "gathering"
    seed: int

    @property
    def name(self) -> str:
        return (f"{self.loss}-{'gather' if self.gather else 'local'}-{'cached' if self.cached else 'plain'}-"
                f"{self.engine}-{self.seed}")

    @property
    def single_forward(self) -> bool | None:
        # per role (placeholders), auto (voted), one stacked forward: each with one-sided negatives on some engine
        return (False, None, True)[(self.seed + (self.engine == "gathering")) % 3]


def cases() -> list[Case]:
    out = []
    for loss, (_, gathers) in LOSSES.items():
        for gather in (True, False) if gathers else (False,):
            for cached in (False, True):
                for engine in ("ddp", "gathering"):
                    out.extend(Case(loss, gather, cached, engine, seed) for seed in range(4 if gathers else 1))
    return out


def rank_rows(seed: int, rank: int) -> list[dict]:
    """Collator rows (token columns) of one rank; ranks differ in size, length and which have negatives."""
    rng = random.Random(seed * 10 + rank)
    short = (rank + seed) % 2 == 0
    negatives = NEGATIVES[seed % len(NEGATIVES)]
    with_negatives = negatives == "ragged on both" or negatives == f"rank {rank} only"
    n = rng.choice([2, 3, 5, 7])

    def text() -> list[int]:
        length = rng.randint(2, 5) if short else rng.randint(12, 30)
        return [101] + [rng.randrange(1000, 8000) for _ in range(length)] + [102]

    rows = []
    for i in range(n):
        negs = [text() for _ in range(rng.randint(0, 3))] if with_negatives else []
        if with_negatives and i == 0 and not negs:
            negs = [text()]
        rows.append({token_column("anchor"): text(), token_column("positive"): text(),
                     token_column("negatives"): negs, "score": rng.random(), "label": rng.randint(0, 1)})
    return rows


def case_rows(rows: list[dict], loss: str) -> list[dict]:
    """The columns a loss takes: negatives only for InfoNCE, score for CoSENT, label for the batch triplet loss."""
    keep = {"info_nce": ("anchor_input_ids", "positive_input_ids", "negatives_input_ids"),
            "cosent": ("anchor_input_ids", "positive_input_ids", "score"),
            "batch_all_triplet": ("anchor_input_ids", "label")}[loss if loss in ("cosent", "batch_all_triplet")
                                                                   else "info_nce"]
    return [{k: v for k, v in row.items() if k in keep} for row in rows]


def compute(model, loss: nn.Module, rows: list[dict], single_forward: bool | None) -> torch.Tensor:
    """What ContrastiveTrainer.compute_loss does with a collated batch."""
    batch = Batch.from_inputs(BatchCollator(0)(rows))
    if isinstance(loss, CachedLoss):
        return loss(model, batch)
    return loss(**batch.loss_kwargs(batch.embed(model, *batch.forward_plan(single_forward)), loss))


class CollectiveEveryCall(nn.Module):
    """A collective at every forward call, as FSDP / ZeRO-3 gather parameters (no gradient sync of its own)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, **inputs):
        dist.all_reduce(torch.ones(1))
        return self.module(**inputs)


def averaged_gradients(encoder: nn.Module, engine: str) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in encoder.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if engine == "gathering":  # what DDP does for its own wrapper
            grad = grad.clone()
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
        grads[name] = grad.clone()
    return grads


def relative_error(grads: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    largest = max(g.abs().max().item() for g in expected.values())
    return max((grads[k] - expected[k]).abs().max().item() for k in expected) / largest


def property_cases(out: Path) -> None:
    from tests.conftest import make_tiny_encoder

    rank = dist.get_rank()
    encoder = tiny_encoder(make_tiny_encoder)
    wrapped = {"ddp": DistributedDataParallel(encoder, broadcast_buffers=True), "gathering": CollectiveEveryCall(encoder)}
    reference_encoder = tiny_encoder(make_tiny_encoder) if rank == 0 else None
    results = {}
    for case in cases():
        make, _ = LOSSES[case.loss]
        loss = make(case.gather)
        if case.cached:
            loss = CachedLoss(loss, mini_batch_size=3, max_tokens_per_mini_batch=40)
        halves = [case_rows(rank_rows(case.seed, r), case.loss) for r in range(2)]
        encoder.zero_grad(set_to_none=True)
        value = compute(wrapped[case.engine], loss, halves[rank], case.single_forward)
        value.backward()
        grads = averaged_gradients(encoder, case.engine)
        total = value.detach().clone()
        dist.all_reduce(total)
        if rank == 0:
            expected, expected_grads = reference(reference_encoder, make(False), halves, case.gather)
            results[case.name] = {"loss": (total.item() / 2, expected),
                                  "gradient_error": relative_error(grads, expected_grads)}
    if rank == 0:
        (out / "cases.json").write_text(json.dumps(results, indent=1))


def tiny_encoder(make_tiny_encoder) -> nn.Module:
    """The tiny BERT without its (unused) pooler, so DDP needs no find_unused_parameters; float64 so that 2
    processes and 1 agree up to summation order."""
    encoder = make_tiny_encoder(seed=0)
    encoder.model.pooler = None
    return encoder.double()


def reference(encoder: nn.Module, loss: nn.Module, halves: list[list[dict]], gather: bool):
    """One process: the whole batch's loss (gather) or the ranks' losses averaged (no gather); no collectives."""
    encoder.zero_grad(set_to_none=True)
    parts = [halves[0] + halves[1]] if gather else halves
    values = []
    for rows in parts:
        batch = Batch.from_inputs(BatchCollator(0)(rows))
        values.append(loss(**batch.loss_kwargs(batch.embed(encoder, True), loss)))
    value = torch.stack(values).mean()
    value.backward()
    return value.item(), {k: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
                          for k, p in encoder.named_parameters()}


# ------------------------------------------------------------------------------------- through the trainer
TRAINER_STEPS = 3


def trainer_batches(rank: int | None) -> list[list[int]]:
    """Row indices per step: rank 0 short texts with hard negatives, rank 1 long texts without, a 2-row last
    step; rank None: both ranks' rows of each step (what one process trains on)."""
    per_rank = [[[0, 1, 2, 3], [4, 5, 6], [7, 8]], [[9, 10, 11, 12, 13, 14], [15, 16], [17, 18]]]
    if rank is None:
        return [a + b for a, b in zip(*per_rank, strict=True)]
    return per_rank[rank]


def trainer_rows() -> list[dict]:
    rng = random.Random(7)

    def text(long: bool) -> list[int]:
        return [101] + [rng.randrange(1000, 8000) for _ in range(rng.randint(15, 25) if long else 3)] + [102]

    rows = []
    for i in range(19):
        long = i >= 9
        negatives = [] if long else [text(False) for _ in range(1 + i % 2)]
        rows.append({token_column("anchor"): text(long), token_column("positive"): text(long),
                     token_column("negatives"): negatives})
    return rows


class FixedBatches:
    """A batch sampler with set rows per step (ContrastiveTrainer's batch_sampler_factory returns it)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches
        self.epoch_source = None

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        yield from (list(b) for b in self.batches)


def train_with_trainer(model_dir: str, output_dir: Path, *, rank: int | None, cached: bool) -> None:
    """ContrastiveTrainer for TRAINER_STEPS SGD steps, InfoNCE with gather, one forward per role; the model is
    saved in `output_dir`."""
    import datasets
    from transformers import TrainingArguments

    from nlp_contrastive.modeling import Encoder
    from nlp_contrastive.trainer import ContrastiveTrainer

    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=TRAINER_STEPS,
                             learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
                             use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                             ddp_broadcast_buffers=True, dataloader_num_workers=0, seed=0)
    loss: nn.Module = InfoNCELoss(gather_across_devices=True)
    if cached:
        loss = CachedLoss(loss, mini_batch_size=2, max_tokens_per_mini_batch=40)
    batches = trainer_batches(rank)
    trainer = ContrastiveTrainer(Encoder.from_pretrained(model_dir), args, loss,
                                 train_dataset=datasets.Dataset.from_list(trainer_rows()),
                                 batch_sampler_factory=lambda dataset, size, args: FixedBatches(batches),
                                 single_forward=False)
    trainer.train()
    trainer.save_model()


def main() -> int:
    out, model_dir = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=TIMEOUT)
    try:
        property_cases(out)
        rank = dist.get_rank()
        for cached in (False, True):
            train_with_trainer(model_dir, out / f"trainer-{'cached' if cached else 'plain'}", rank=rank, cached=cached)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
