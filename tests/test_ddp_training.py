"""Two gloo CPU processes through `accelerate launch` and the real trainer: epochs, resume, checkpoints, multi-node.

Rows are recorded where the loss sees them (tests/ddp_train.py), i.e. after accelerate's data loader, its shard
wrapper and, on resume, the loader it rebuilds to skip batches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlp_contrastive.train import train
from tests.conftest import REPO_ROOT, make_tiny_encoder

pytestmark = pytest.mark.slow
INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")  # run with batch_sampler: no_duplicates (below)
STEPS_PER_EPOCH = 3  # 48 rows, 2 processes x 8 = 16 per global batch


def overrides(model_dir: Path, output_dir: Path, per_device: int = 8, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--max_train_rows", "48",
            "--per_device_train_batch_size", str(per_device), "--num_train_epochs", "2", "--learning_rate", "1e-3",
            "--eval_tasks", "[]", "--final_eval_tasks", "[]", "--logging_steps", "1", "--use_cpu", "true",
            "--bf16", "false", "--report_to", "none", "--save_strategy", "steps", "--save_steps", "2",
            "--batch_sampler", "no_duplicates", *extra]  # the recipe's no_duplicates_by_length: test_sampler_training


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(*args: str, machines: int = 1, machine_rank: int = 0, port: int | None = None) -> list[str]:
    # As tests/test_trainer.py: the torch.distributed launcher (`--multi_gpu`) with use_cpu runs gloo on CPU.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", str(machines), "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port or free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "tests.ddp_train", *args]


def subprocess_env() -> dict[str, str]:
    """This checkout first on the path (the venv may hold another editable install), one thread per process."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run(cmd: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT, env=subprocess_env())
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def recorded(directory: Path) -> list[dict[int, list[int]]]:
    """Per rank: global_step -> the rows of that step's batch (a resumed run appends to a killed one's steps)."""
    ranks = []
    for rank in range(2):
        lines = (directory / f"rank{rank}.jsonl").read_text().splitlines()
        ranks.append({entry["step"]: entry["rows"] for entry in map(json.loads, lines)})
    return ranks


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """An uninterrupted 2-process run (2 epochs, dropout on) and the same run killed after step 4 (epoch 1), in
    which rank 1 writes its checkpoint RNG state late (rank 0 must wait for it before renaming the folder)."""
    root = tmp_path_factory.mktemp("ddp")
    model = root / "tiny-dropout"
    make_tiny_encoder(dropout=0.1).save_pretrained(model)
    run(launch_command("--record", str(root / "rows-straight"), INFONCE, *overrides(model, root / "straight")))
    proc = run(launch_command("--record", str(root / "rows-killed"), "--kill-after-step", "4", "--slow-save-rank", "1",
                              INFONCE, *overrides(model, root / "killed")), expect=1)
    assert "simulated kill after step 4" in proc.stderr
    return root


def test_two_processes_see_a_new_disjoint_order_each_epoch_and_the_same_on_a_rerun(runs):
    straight, rerun = recorded(runs / "rows-straight"), recorded(runs / "rows-killed")
    assert sorted(straight[0]) == list(range(2 * STEPS_PER_EPOCH))
    epochs = [[[straight[rank][step] for step in range(e * STEPS_PER_EPOCH, (e + 1) * STEPS_PER_EPOCH)]
               for rank in range(2)] for e in range(2)]
    for per_rank in epochs:
        rows = [{row for batch in batches for row in batch} for batches in per_rank]
        assert not rows[0] & rows[1]  # ranks are disjoint
        assert rows[0] | rows[1] == set(range(48))  # 3 full global batches of 16 cover the 48 rows
    for rank in range(2):
        assert epochs[1][rank] != epochs[0][rank], f"rank {rank} repeats epoch 0's order in epoch 1"
        for step in range(5):  # the killed run ran steps 0..4 (+ step 5's batch): same seed, same batches
            assert rerun[rank][step] == straight[rank][step]


def test_killed_two_process_run_resumes_mid_epoch_to_the_same_rows_and_weights(runs):
    """Resume from checkpoint-4 (epoch 1, one batch in): both ranks' RNG (dropout) and the sampler's epoch-1
    order are restored, so the final weights equal the uninterrupted run's."""
    killed = runs / "killed"
    assert (killed / "checkpoint-4" / "rng_state_0.pth").exists() and (killed / "checkpoint-4" / "rng_state_1.pth").exists()
    assert not list(killed.glob(".staging-*"))
    run(launch_command("--record", str(runs / "rows-resumed"), INFONCE,
                       *overrides(runs / "tiny-dropout", killed, 8, "--resume_from_checkpoint", "true")))
    straight, resumed = recorded(runs / "rows-straight"), recorded(runs / "rows-resumed")
    for rank in range(2):
        assert sorted(resumed[rank]) == [4, 5]
        assert [resumed[rank][s] for s in (4, 5)] == [straight[rank][s] for s in (4, 5)], f"rank {rank}"
    expected = load_file(runs / "straight" / "model.safetensors")
    got = load_file(killed / "model.safetensors")
    initial = make_tiny_encoder(dropout=0.1).model.state_dict()
    assert any(not torch.equal(expected[k], initial[k]) for k in expected), "training did not change weights"
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


GATHERED_LOSSES = {
    "info_nce": ("--loss_kwargs", "{temperature: 0.05, gather_across_devices: true}"),
    # Matryoshka's self_distill term compares every process's rows when the wrapped loss gathers.
    "matryoshka self_distill": ("--loss", "matryoshka", "--loss_kwargs",
                                "{loss: info_nce, loss_kwargs: {temperature: 0.05, gather_across_devices: true}, "
                                "dims: [32, 16, 8], self_distill: 2.0}"),
}


@pytest.mark.parametrize("loss", list(GATHERED_LOSSES))
def test_two_machines_of_one_process_equal_one_process_on_the_full_batch(tmp_path, data_dir, loss):
    """Multi-node path: 2 `accelerate launch --num_machines 2 --machine_rank {0,1}` (1 process each, rendezvous on
    127.0.0.1) with gather_across_devices InfoNCE (plain, and in Matryoshka with self_distill) and the
    no-duplicates sampler train to the same weights as one process on the global batch of 16: the sampler's global
    batches are the one-process batches, split by rank."""
    model = tmp_path / "tiny"
    make_tiny_encoder().save_pretrained(model)  # no dropout: both runs are then deterministic functions of the data
    gather = (*GATHERED_LOSSES[loss], "--save_strategy", "no")
    port = free_port()
    machines = [subprocess.Popen(launch_command(INFONCE, *overrides(model, tmp_path / "nodes", 8, *gather),
                                                machines=2, machine_rank=rank, port=port),
                                 cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=subprocess_env())
                for rank in range(2)]
    try:
        assert train(INFONCE, overrides(model, tmp_path / "single", 16, *gather)) == 0
        outputs = [m.communicate(timeout=240) for m in machines]
    finally:
        for m in machines:
            m.kill()
    for m, (_, err) in zip(machines, outputs, strict=True):
        assert m.returncode == 0, err[-3000:]
    assert "processes: 2" in outputs[0][0]
    single, nodes = (load_file(tmp_path / run / "model.safetensors") for run in ("single", "nodes"))
    initial = make_tiny_encoder().model.state_dict()
    assert any(not torch.equal(single[k], initial[k]) for k in single), "training did not change weights"
    for name, tensor in single.items():
        torch.testing.assert_close(nodes[name], tensor, rtol=0, atol=2e-6, msg=name)


@pytest.mark.parametrize("broadcast_buffers", ["false", "true"])
def test_two_processes_with_single_forward_auto_finish_and_equal_one_forward(tmp_path, data_dir, broadcast_buffers):
    """Each rank's batch may prefer another forward plan; the ranks agree on one, so the run finishes (the old code
    hung at the first step: DDP broadcasts buffers at every forward call) and its weights equal single_forward."""
    model = tmp_path / "tiny"
    make_tiny_encoder().save_pretrained(model)
    for plan in ("auto", "true"):
        run(launch_command(INFONCE, *overrides(model, tmp_path / plan, 8, "--single_forward", plan,
                                               "--ddp_broadcast_buffers", broadcast_buffers)))
    auto, single = (load_file(tmp_path / plan / "model.safetensors") for plan in ("auto", "true"))
    assert all(torch.allclose(auto[k], single[k], atol=1e-5) for k in single)

