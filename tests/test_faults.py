"""Faults during long work, through the trainer and the CLI: a NaN loss (stop or skip), SIGTERM mid-epoch and
resume, a full disk or read-only folder while writing a checkpoint, mining and eval killed mid-way."""

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
from tests.conftest import REPO_ROOT, TWO_PROCESSES, make_tiny_encoder

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
    assert "free disk space or choose another output_dir" in errors[0], errors[0]
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert load_file(out / "checkpoint-2" / "model.safetensors")
    assert not list(out.glob(".staging-*")) and not (out / "checkpoint-4").exists()


@pytest.mark.parametrize("fault", ["EROFS-at-rename", "EACCES-at-first-write"])
def test_read_only_output_dir_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous_one(
        tiny_model_dir, tmp_path, trap, capsys, monkeypatch, fault):
    """As root chmod stops nothing, so the folder turning read-only at checkpoint-4 is simulated where the files
    are made: the staged checkpoint's rename into place (EROFS), or the model's first file in staging (EACCES)."""
    import tempfile

    from nlp_contrastive.cli import main as cli_main
    from nlp_contrastive.modeling import Encoder

    out = tmp_path / "o"
    if fault == "EROFS-at-rename":
        original, code_, target = os.replace, errno.EROFS, "os.replace"

        def refuse(src, dst, *args, **kwargs):
            if str(dst).endswith("checkpoint-4"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), None, str(dst))
            return original(src, dst, *args, **kwargs)
    else:
        original, code_, target = tempfile.mkdtemp, errno.EACCES, "tempfile.mkdtemp"

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and "checkpoint-4" in str(dir):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return original(*args, dir=dir, **kwargs)
    monkeypatch.setattr(target, refuse)
    args = overrides(tiny_model_dir, out, trap, "--loss", "cosine_similarity", "--save_steps", "2", "--max_steps", "6")
    code = cli_main(["train", *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert os.strerror(code_) in errors[0] and str(out) in errors[0], errors[0]
    assert "make it writable or choose another output_dir" in errors[0], errors[0]
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert Encoder.from_pretrained(out / "checkpoint-2").dimension == 32  # intact and loadable
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert not list(out.glob(".staging-*")) and not (out / "checkpoint-4").exists()
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("layout", ["parent-is-a-file", "output-dir-is-a-file"])
def test_output_dir_that_cannot_be_made_fails_before_the_model_loads(tiny_model_dir, tmp_path, trap, capsys,
                                                                     monkeypatch, layout):
    from nlp_contrastive.cli import main as cli_main
    from nlp_contrastive.modeling import Encoder

    (tmp_path / "f").write_text("a file")
    out = tmp_path / "f" / "run" if layout == "parent-is-a-file" else tmp_path / "f"

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output_dir check")

    monkeypatch.setattr(Encoder, "from_pretrained", must_not_load)
    code = cli_main(["train", *overrides(tiny_model_dir, out, trap, "--loss", "cosine_similarity")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    expect = "'.*f' is a file: make it a writable folder" if layout == "parent-is-a-file" else "is a file, not a folder"
    assert __import__("re").search(f"output_dir '{out}'.*{expect}.*choose another output_dir", errors[0]), errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "pairs.jsonl", "tiny-model"]  # nothing new


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
        cmd = [*TWO_PROCESSES, "-m", "nlp_contrastive.train",
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


# ------------------------------------------------------------------------------------ interrupted mine / eval
def kill_when(proc: subprocess.Popen, pattern: str, sig: signal.Signals) -> str:
    """Send `sig` once stderr matches `pattern` (tqdm redraws with \\r, so stderr is read in chunks, not lines);
    returns all of stderr. The process is never left running."""
    import re
    import threading

    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(256), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not re.search(pattern, "".join(chunks)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be interrupted:\n" + "".join(chunks)[-2000:]
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return "".join(chunks)


def _big_beir(root: Path, documents: int = 15000, queries: int = 200) -> Path:
    """Enough documents that the tiny model mines for ~4 s (about 3600 documents/s on one core)."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "text": f"document {i} about topic {i % 37} and word {i * 7 % 101}"}) + "\n"
        for i in range(documents)))
    (root / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": f"question {i} on topic {i % 37}"}) + "\n" for i in range(queries)))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i * 13 % documents}\t1\n" for i in range(queries)))
    return root


@pytest.fixture(scope="module")
def mining_world(tmp_path_factory):
    """A tiny model, a 15k-document BEIR folder and the output of one uninterrupted in-process run (the reference)."""
    from nlp_contrastive.cli import main as cli_main

    root = tmp_path_factory.mktemp("mining")
    model = root / "model"
    make_tiny_encoder().save_pretrained(model)
    folder = _big_beir(root / "beir")
    args = ["mine", "--model", str(model), "--data", str(folder), "--corpus-chunk-size", "500", "--range-max", "20",
            "--sampling", "random", "--seed", "7", "--index", "exact"]
    reference = root / "reference.jsonl"
    assert cli_main([*args, "--output", str(reference)]) == 0
    return args, reference


@pytest.mark.slow  # two interpreter starts' worth of imports plus ~8 s of mining: 15-25 s on 2 busy cores
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_mining_leaves_no_output_and_the_rerun_gives_the_uninterrupted_file(mining_world, tmp_path, sig):
    from nlp_contrastive.cli import main as cli_main

    args, reference = mining_world
    out = tmp_path / "mined" / "train.jsonl"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nlp_contrastive.cli", *args, "--output", str(out)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = kill_when(proc, r"Encoding corpus chunks:\s+\d+%\|[^|]*\| [1-9]\d*/30", sig)  # 500-document chunks
    assert proc.returncode == -sig, err[-2000:]
    assert "wrote" not in err, "the run finished before the signal"
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir())), "partial output left"
    assert cli_main([*args, "--output", str(out)]) == 0  # the rerun starts over: nothing stands in its way
    assert out.read_bytes() == reference.read_bytes()
    assert len(out.read_text().splitlines()) == 200
    assert list(out.parent.iterdir()) == [out], "a temp file was left next to the output"


def test_stale_temp_file_of_a_killed_write_does_not_stop_the_rerun(mining_world, tmp_path):
    """A kill inside the final write leaves `.NAME.PID-HEX.tmp` (unique per run): the rerun writes its own."""
    from nlp_contrastive.cli import main as cli_main

    args, reference = mining_world
    out = tmp_path / "train.jsonl"
    stale = tmp_path / ".train.jsonl.999999-deadbeef.tmp"
    stale.write_text('{"query_id": "q0", "query": "half a ro')
    assert cli_main([*args, "--output", str(out)]) == 0
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.slow  # an interpreter start plus a few seconds of encoding
def test_interrupted_eval_leaves_no_results_file(tmp_path, tiny_model_dir):
    """`eval --output` writes its results once, at the end, through a temp file: a kill mid-way leaves nothing."""
    sts = tmp_path / "big-sts.jsonl"
    sts.write_text("".join(json.dumps({"sentence1": f"a cat number {i} on mat {i % 13}",
                                       "sentence2": f"a dog number {i * 7 % 5000}", "score": i % 6}) + "\n"
                           for i in range(8000)))
    out = tmp_path / "results" / "eval.json"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nlp_contrastive.cli", "eval", "--model", str(tiny_model_dir),
                             "--sts", str(sts), "--output", str(out), "--device", "cpu"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = kill_when(proc, r"evaluating .* on 1 task", signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir())), "partial results left"
