"""`python -m tests.engine_train PLAN.json` under `accelerate launch`: several training runs in one launch.

Starting 2 processes with torch, transformers and DeepSpeed costs more than a tiny run, so an engine's tests share
one launch: PLAN.json is a list of runs, each {"recipe": path, "args": [...]} (the recipe's CLI overrides), run in
order by `nlp_contrastive.train.train` in the same process group. After each run every rank writes
`<output_dir>/run-rank{R}.json`: the loss's learnable parameters as that rank holds them at the end (so a test can
check the ranks agree and a resumed run ends where an uninterrupted one does) and whether activation checkpointing
was on.

The engine tests (test_deepspeed, test_gradient_checkpointing) build their plans with `common` / `infonce` below
(tiny runs with plain SGD at a constant rate, so float round-off stays round-off) and run them with `launch`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState
from transformers import TrainerCallback

from nlp_contrastive import train

REPO_ROOT = Path(__file__).resolve().parents[1]
INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")
GATHER = ("--loss_kwargs", "{temperature: 0.05, gather_across_devices: true}")
FINAL_EVAL = "[{name: sts, type: sts, dataset: stsb, split: validation, max_rows: 64}]"


def common(model, out, *extra: str, final_eval: str = "[]") -> list[str]:
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--max_train_rows", "40",
            "--per_device_train_batch_size", "8", "--optim", "sgd", "--learning_rate", "0.1",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--bf16", "false", "--use_cpu", "true",
            "--eval_tasks", "[]", "--final_eval_tasks", final_eval, "--eval_strategy", "no", "--report_to", "none",
            "--load_best_model_at_end", "false", "--logging_steps", "1", "--batch_sampler", "no_duplicates",
            *extra]


def infonce(model, out, *extra: str, final_eval: str = FINAL_EVAL) -> list[str]:
    """The InfoNCE runs, with a small final evaluation (on rank 0, of the saved model when the live one is sharded)."""
    return common(model, out, "--max_steps", "3", "--gradient_accumulation_steps", "2", "--save_strategy", "no",
                  *GATHER, *extra, final_eval=final_eval)


def launch(launcher: list[str], plan: list[dict], root: Path) -> subprocess.CompletedProcess:
    """Run `plan` under `accelerate launch <launcher options>` (2 processes, a free port), from the repo root."""
    from tests.test_ddp_training import subprocess_env

    (root / "plan.json").write_text(json.dumps(plan))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--main_process_port", "0",
           "-m", "tests.engine_train", str(root / "plan.json")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=subprocess_env())


class RecordLoss(TrainerCallback):
    def __init__(self) -> None:
        self.trainer = None

    def on_train_end(self, args, state, control, **kwargs):
        values = {name: p.detach().tolist() for name, p in self.trainer.loss.named_parameters()}
        encoder = self.trainer.accelerator.unwrap_model(self.trainer.model)
        record = {"loss_parameters": values,
                  "activation_checkpointing": bool(getattr(encoder.model, "is_activation_checkpointing", False))}
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / f"run-rank{args.process_index}.json").write_text(json.dumps(record))


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
        try:
            status = train.train(run["recipe"], run["args"], callbacks=[record]) or status
        except ValueError as exc:  # as the CLI reports a refused setting; the next run goes on
            print(f"error: {exc}", file=sys.stderr, flush=True)
            status = 2
    trainer = record.trainer
    if trainer is not None:
        leave(trainer)
    return status


if __name__ == "__main__":
    sys.exit(main())
