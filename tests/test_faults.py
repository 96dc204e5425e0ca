"""Faults during training, through the trainer and the CLI: a NaN loss (stop or skip), SIGTERM mid-epoch and
resume, a full disk while writing a checkpoint."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from nlp_contrastive import losses
from nlp_contrastive.losses import CosineSimilarityLoss
from nlp_contrastive.train import main, train
from tests.conftest import REPO_ROOT, make_tiny_encoder

TRAP_SCORE = 0.123  # the one row whose batch gives a NaN loss


class NaNTrapLoss(CosineSimilarityLoss):
    """cosine_similarity, but NaN for any batch holding the row with score TRAP_SCORE."""

    def forward(self, anchor, positive, score):
        loss = super().forward(anchor, positive, score)
        return loss * float("nan") if torch.isclose(score, torch.tensor(TRAP_SCORE)).any() else loss


@pytest.fixture
def trap(monkeypatch, tmp_path):
    """The nan_trap loss registered, and 24 rows of which row 13 is the trap."""
    monkeypatch.setitem(losses.LOSSES, "nan_trap", NaNTrapLoss)
    rows = [{"sentence1": f"cat number {i}", "sentence2": f"dog number {i}",
             "score": TRAP_SCORE if i == 13 else (i % 5) / 4} for i in range(24)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(model_dir, out, data, *extra):
    return ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--loss", "nan_trap",
            "--train_data", f"[{{dataset: {data}, columns: {{anchor: sentence1, positive: sentence2, score: score}}}}]",
            "--per_device_train_batch_size", "4", "--eval_tasks", "[]", "--final_eval_tasks", "[]",
            "--eval_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none", "--use_cpu", "true",
            "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--learning_rate", "1e-3", *extra]


def test_nan_loss_stops_at_its_step_naming_the_rows_and_keeps_the_last_checkpoint(tiny_model_dir, tmp_path, trap,
                                                                                  capsys, monkeypatch):
    from nlp_contrastive.trainer import ContrastiveTrainer

    step_of_row = {}
    original = ContrastiveTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        for row in inputs["row_ids"].tolist():
            step_of_row.setdefault(row, self.state.global_step + 1)
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "compute_loss", recording)
    out = tmp_path / "o"
    code = main(overrides(tiny_model_dir, out, trap, "--max_steps", "12"))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert 13 in step_of_row, (errors, step_of_row)
    step = step_of_row[13]
    assert f"loss is nan at step {step} " in errors[0], errors[0]
    row_ids = json.loads(errors[0].split("batch rows ")[1].split(":")[0])
    assert 13 in row_ids and len(row_ids) == 4
    assert "likely cause: learning_rate" in errors[0] and "nan_policy: skip" in errors[0]
    if step > 1:
        assert get_last_checkpoint(str(out)) == str(out / f"checkpoint-{step - 1}")
        weights = load_file(out / f"checkpoint-{step - 1}" / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())
        assert f"the last good checkpoint is {out / f'checkpoint-{step - 1}'}" in errors[0]
    assert not (out / "model.safetensors").exists(), "a final model was written after the NaN"


def test_nan_policy_skip_trains_on_and_counts_the_skipped_batches(tiny_model_dir, tmp_path, trap):
    out = tmp_path / "o"
    assert train(None, overrides(tiny_model_dir, out, trap, "--max_steps", "12", "--save_strategy", "no",
                                 "--nan_policy", "skip")) == 0
    history = json.loads((out / "training_run.json").read_text())["log_history"]
    # 24 rows / batch 4 = 6 batches per epoch, 12 steps = 2 epochs: the trap row's batch comes once per epoch
    assert max(e.get("skipped_nonfinite_batches", 0) for e in history) == 2
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    initial = make_tiny_encoder().model.state_dict()
    assert any(not torch.equal(weights[k], initial[k]) for k in weights), "skip must not stop training"


# ---------------------------------------------------------------------------------------------- SIGTERM
def sigterm_overrides(model_dir, out, *extra):
    return ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--max_train_rows", "400",
            "--per_device_train_batch_size", "8", "--eval_tasks", "[]", "--final_eval_tasks", "[]",
            "--eval_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none", "--use_cpu", "true",
            "--logging_steps", "50", "--save_strategy", "steps", "--save_steps", "10", "--max_steps", "60",
            "--learning_rate", "1e-3", *extra]

def sigterm_after_checkpoint(proc: subprocess.Popen, checkpoint: Path) -> str:
    """Wait until `checkpoint` exists, SIGTERM the run, return its stderr (the process is never left running)."""
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err



@pytest.mark.slow
def test_sigterm_mid_epoch_saves_a_checkpoint_and_resume_gives_the_same_weights(tmp_path, data_dir):
    """400 rows / batch 8 = 50 steps per epoch: the signal lands mid-epoch, the resumed run crosses an epoch."""
    model_dir = tmp_path / "tiny-dropout"
    make_tiny_encoder(dropout=0.1).save_pretrained(model_dir)
    recipe = str(REPO_ROOT / "recipes" / "stsb-cosine.yaml")
    killed = tmp_path / "killed"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nlp_contrastive.cli", "train", recipe,
                             *sigterm_overrides(model_dir, killed)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = sigterm_after_checkpoint(proc, killed / "checkpoint-10")
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    stopped = [line for line in err.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(stopped) == 1, err[-2000:]
    step = int(stopped[0].split("at step ")[1].split(":")[0])
    assert 10 <= step < 60, f"stopped at step {step}"
    assert get_last_checkpoint(str(killed)) == str(killed / f"checkpoint-{step}")
    assert not (killed / "model.safetensors").exists(), "an interrupted run must not look finished"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process (OMP_NUM_THREADS=1): same float rounding
    try:
        assert train(recipe, sigterm_overrides(model_dir, killed, "--resume_from_checkpoint", "true")) == 0
        straight = tmp_path / "straight"
        assert train(recipe, sigterm_overrides(model_dir, straight)) == 0
    finally:
        torch.set_num_threads(threads)
    expected, resumed = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


# -------------------------------------------------------------------------------------------- disk full
def test_disk_full_while_writing_a_checkpoint_is_one_line_and_keeps_the_previous_one(tiny_model_dir, tmp_path,
                                                                                      trap, capsys, monkeypatch):
    from nlp_contrastive.modeling import Encoder

    original = Encoder._write_folder
    out = tmp_path / "o"

    def full_disk_at_second_checkpoint(self, folder, *args, **kwargs):
        if "checkpoint-4" in str(folder):
            (folder / "model.safetensors").write_bytes(b"half")  # what a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.safetensors"))
        return original(self, folder, *args, **kwargs)

    monkeypatch.setattr(Encoder, "_write_folder", full_disk_at_second_checkpoint)
    args = overrides(tiny_model_dir, out, trap, "--loss", "cosine_similarity", "--save_steps", "2", "--max_steps", "6")
    code = main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "No space left on device" in errors[0] and "checkpoint-4" in errors[0], errors[0]
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert load_file(out / "checkpoint-2" / "model.safetensors")
    assert not list(out.glob(".staging-*")) and not (out / "checkpoint-4").exists()


@pytest.mark.slow
def test_sigterm_to_an_accelerate_launch_of_two_processes_saves_one_checkpoint_and_resumes_exactly(tmp_path,
                                                                                                   data_dir):
    """The launcher forwards SIGTERM to both ranks; they agree on the step, save it, and stop; resuming with 2
    processes ends with the weights of an uninterrupted 2-process run."""
    model_dir = tmp_path / "tiny"
    make_tiny_encoder().save_pretrained(model_dir)
    recipe = str(REPO_ROOT / "recipes" / "stsb-cosine.yaml")
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}

    def launch(out, *extra):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "nlp_contrastive.train",
               recipe, *sigterm_overrides(model_dir, out, *extra)]
        return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    killed = tmp_path / "killed"
    proc = launch(killed)
    err = sigterm_after_checkpoint(proc, killed / "checkpoint-10")
    stopped = [line for line in err.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(stopped) == 1, err[-3000:]  # printed by rank 0 only
    step = int(stopped[0].split("at step ")[1].split(":")[0])
    assert get_last_checkpoint(str(killed)) == str(killed / f"checkpoint-{step}")
    assert (killed / f"checkpoint-{step}" / "trainer_state.json").exists()
    for out, extra in ((killed, ("--resume_from_checkpoint", "true")), (tmp_path / "straight", ())):
        proc = launch(out, *extra)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    expected, resumed = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
