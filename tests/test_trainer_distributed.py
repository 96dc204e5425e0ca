"""The trainer under `accelerate launch` with 2 CPU processes (gloo): GradCache under DDP gives the uncached weights.

DeepSpeed ZeRO-1/2/3 (with and without GradCache) are in tests/test_deepspeed.py, FSDP in tests/test_fsdp.py.

Every run trains the same tiny random BERT for 2 optimizer steps of gradient accumulation 2 with plain SGD (Adam
would turn float round-off in near-zero gradients into full-size steps), then the saved model.safetensors are
compared. The reference is the plain DDP run without GradCache.

In fp32, GradCache vs uncached under DDP + gradient accumulation differ by ~1e-6 of the update's norm (measured
9.8e-7); the defects these tests guard against (a missed or doubled all-reduce, a shard saved as the model) move it
by O(1). So "equal" below is a relative difference of the weight update under 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")
DDP = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
       "--dynamo_backend", "no"]


def launch(launcher: list[str], model_dir, out, *extra: str) -> subprocess.CompletedProcess:
    recipe_args = ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--max_train_rows", "64",
                   "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2", "--max_steps", "2",
                   "--optim", "sgd", "--learning_rate", "0.1", "--lr_scheduler_type", "constant",
                   "--warmup_steps", "0", "--bf16", "false", "--use_cpu", "true", "--eval_tasks", "[]",
                   "--final_eval_tasks", "[]", "--eval_strategy", "no", "--save_strategy", "no",
                   "--load_best_model_at_end", "false", "--report_to", "none", "--logging_steps", "1",
                   "--cache_mini_batch_size", "3", *extra]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "-m", "nlp_contrastive.train", INFONCE,
           *recipe_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})


def update(run_dir, initial: dict[str, torch.Tensor]) -> torch.Tensor:
    weights = load_file(os.path.join(run_dir, "model.safetensors"))
    assert sorted(weights) == sorted(initial), "saved keys differ from the model's"
    for name, tensor in weights.items():
        assert tensor.shape == initial[name].shape, f"{name} saved with shape {tuple(tensor.shape)} (a shard?)"
    return torch.cat([(weights[k] - initial[k]).flatten() for k in sorted(initial)])


def assert_same_update(run_dir, reference: torch.Tensor, initial) -> None:
    ours = update(run_dir, initial)
    relative = ((ours - reference).norm() / reference.norm()).item()
    assert relative < 1e-5, f"weight update differs from the DDP reference by {relative:.2e} of its norm"


@pytest.fixture(scope="module")
def initial(module_tiny_dir):
    return load_file(module_tiny_dir / "model.safetensors")


@pytest.fixture(scope="module")
def ddp_reference(module_tiny_dir, tmp_path_factory, initial, data_dir):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = launch(DDP, module_tiny_dir, out, "--cached", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr, proc.stderr[-3000:]
    reference = update(out, initial)
    assert reference.norm() > 1e-2, "training did not move the weights"
    return reference


def test_gradcache_ddp_gradient_accumulation_equals_uncached(module_tiny_dir, tmp_path, initial, ddp_reference):
    proc = launch(DDP, module_tiny_dir, tmp_path / "cached", "--cached", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr, "a rank aborted at exit: was the process group destroyed?"
    assert_same_update(tmp_path / "cached", ddp_reference, initial)
