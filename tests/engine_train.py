"""`python -m tests.engine_train PLAN.json` under `accelerate launch`: several training runs in one launch.

Starting 2 processes with torch, transformers and DeepSpeed costs more than a tiny run, so an engine's tests share
one launch: PLAN.json is a list of runs, each {"recipe": path, "args": [...]} (the recipe's CLI overrides), run in
order by `nlp_contrastive.train.train` in the same process group. After each run every rank writes
`<output_dir>/loss-rank{R}.json`: the loss's learnable parameters as that rank holds them at the end (empty list
when there are none), so a test can check the ranks agree and a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState
from transformers import TrainerCallback

from nlp_contrastive import train


class RecordLoss(TrainerCallback):
    def __init__(self) -> None:
        self.trainer = None

    def on_train_end(self, args, state, control, **kwargs):
        values = {name: p.detach().tolist() for name, p in self.trainer.loss.named_parameters()}
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / f"loss-rank{args.process_index}.json").write_text(json.dumps(values))


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    leave = train._leave_process_group
    # The process group serves every run of the plan: between runs the ranks only wait for each other.
    train._leave_process_group = lambda trainer: trainer.accelerator.wait_for_everyone()
    from nlp_contrastive.trainer import ContrastiveTrainer

    record = RecordLoss()
    init = ContrastiveTrainer.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        record.trainer = self

    ContrastiveTrainer.__init__ = remember
    status = 0
    for i, run in enumerate(plan):
        if i:  # a fresh Accelerator per Trainer, as in separate launches (the process group stays)
            AcceleratorState._reset_state()
            GradientState._reset_state()
        status = train.train(run["recipe"], run["args"], callbacks=[record]) or status
    trainer = record.trainer
    if trainer is not None:
        leave(trainer)
    return status


if __name__ == "__main__":
    sys.exit(main())
