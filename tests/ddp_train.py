"""`python -m tests.ddp_train [--record DIR] [--kill-after-step N] RECIPE [--key value ...]` (under accelerate).

The real train entry point with two test hooks: `--record` writes, per rank, which dataset rows each optimizer
step's collated batch held (DIR/rank{R}.jsonl: {"step": global_step, "rows": [...]}, read in compute_loss, so
through accelerate's data loader, sharding and skip-on-resume); `--kill-after-step N` raises once step N + 1 has
run (checkpoint-N, if saved, is complete), like a killed job; `--slow-save-rank R` makes rank R write its
checkpoint RNG state 1.5 s late (a slow file system), which exposes a rank 0 that renames the folder too early;
`--record-loss-parameters DIR` writes each rank's learnable loss parameters at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from nlp_contrastive import train
from nlp_contrastive.data import loading
from nlp_contrastive.data.batch import BatchCollator
from nlp_contrastive.trainer import ContrastiveTrainer


class RecordLossParameters(TrainerCallback):
    """Each rank writes its copy of the loss's learnable parameters at the end (DIR/loss-rank{R}.json)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        self.directory.mkdir(parents=True, exist_ok=True)
        values = [p.detach().tolist() for p in optimizer.param_groups[-1]["params"]]
        (self.directory / f"loss-rank{args.process_index}.json").write_text(json.dumps(values))


class KillAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step + 1:
            raise KeyboardInterrupt(f"simulated kill after step {self.step}")


def record_rows(directory: Path) -> None:
    """Tag each row with its index, carry it through the collator, and log it where the loss sees the batch."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenize, collate, compute_loss = loading.tokenize_roles, BatchCollator.__call__, ContrastiveTrainer.compute_loss

    def tokenize_with_ids(ds, *args, **kwargs):
        return tokenize(ds, *args, **kwargs).add_column("row_id", list(range(len(ds))))

    def collate_with_ids(self, rows):
        return collate(self, rows) | {"row_id": torch.tensor([row["row_id"] for row in rows])}

    def recording_compute_loss(self, model, inputs, *args, **kwargs):
        rank = self.args.process_index
        with open(directory / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": self.state.global_step, "rows": inputs["row_id"].tolist()}) + "\n")
        return compute_loss(self, model, inputs, *args, **kwargs)

    loading.tokenize_roles = tokenize_with_ids
    BatchCollator.__call__ = collate_with_ids
    ContrastiveTrainer.compute_loss = recording_compute_loss


def slow_rng_save(rank: int) -> None:
    save = ContrastiveTrainer._save_rng_state

    def late_save(self, output_dir):
        if self.args.process_index == rank:
            time.sleep(1.5)
        return save(self, output_dir)

    ContrastiveTrainer._save_rng_state = late_save


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", type=Path)
    parser.add_argument("--kill-after-step", type=int)
    parser.add_argument("--slow-save-rank", type=int)
    parser.add_argument("--record-loss-parameters", type=Path)
    hooks, rest = parser.parse_known_args()
    if hooks.slow_save_rank is not None:
        slow_rng_save(hooks.slow_save_rank)
    if hooks.record:
        record_rows(hooks.record)
    callbacks = [KillAfter(hooks.kill_after_step)] if hooks.kill_after_step is not None else []
    if hooks.record_loss_parameters:
        callbacks.append(RecordLossParameters(hooks.record_loss_parameters))
    try:
        return train.train(rest[0], rest[1:], callbacks=callbacks)
    except KeyboardInterrupt as exc:
        print(f"killed: {exc}", file=sys.stderr, flush=True)
        os._exit(3)  # like a killed job: no clean shutdown of the process group


if __name__ == "__main__":
    sys.exit(main())
