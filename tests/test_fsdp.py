"""FSDP: what a CPU can prove, and the end-to-end runs for machines with 2 GPUs.

accelerate 1.16 turns FSDP on only for GPU-like devices: under `accelerate launch --config_file
recipes/accelerate/fsdp.yaml` a CPU process gets DistributedType.MULTI_CPU (plain data parallel) with
`--use_cpu true`, and DistributedType.NO (independent processes) without. So on a CPU:
- the recipe run stops with a one-line error instead of training something else (it trained DDP before);
- our save / load / resume code runs on real FSDP2 shards at the torch level (`fully_shard` runs on gloo):
  tests/fsdp_shards.py. The old loader (`load_state_dict` of full tensors into the sharded model) raised there.
The trainer through accelerate's FSDP is tested by the GPU-only tests at the end (skipped without 2 GPUs).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from nlp_contrastive.losses.info_nce import InfoNCELoss
from nlp_contrastive.losses.log_loss import LogLoss
from tests.conftest import REPO_ROOT, TWO_PROCESSES, make_tiny_encoder
from tests.fsdp_shards import PAIRS
from tests.test_ddp_training import subprocess_env
from tests.test_trainer import tiny_overrides

pytestmark = pytest.mark.slow
FSDP_YAML = str(REPO_ROOT / "recipes" / "accelerate" / "fsdp.yaml")
INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")
LOGLOSS = str(REPO_ROOT / "recipes" / "msrp-logloss.yaml")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=subprocess_env())


def one_process_reference(steps: int) -> dict[str, torch.Tensor]:
    """tests/fsdp_shards.py's training in one unsharded process: InfoNCE over both ranks' rows, and LogLoss as the
    two ranks' mean of their own means (DDP/FSDP average the ranks' gradients)."""
    encoder = make_tiny_encoder(seed=0)
    log_loss = LogLoss(temperature=0.05, bias=-15.0, learnable=True)
    optimizer = torch.optim.SGD([*encoder.parameters(), *log_loss.parameters()], lr=0.1)
    for s in range(steps):
        parts = []
        for rank in range(2):
            anchors, positives = zip(*PAIRS[rank][s], strict=True)
            parts.append((encoder(**encoder.tokenize(list(anchors))), encoder(**encoder.tokenize(list(positives)))))
        anchor, positive = torch.cat([a for a, _ in parts]), torch.cat([p for _, p in parts])
        loss = InfoNCELoss()(anchor=anchor, positive=positive) + sum(
            log_loss(anchor=a, positive=p, label=torch.ones(len(a))) for a, p in parts) / 2
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {f"model.{k}": v for k, v in encoder.model.state_dict().items()}


def test_fsdp2_shards_save_load_and_resume_with_our_checkpoint_code(tmp_path):
    proc = run([*TWO_PROCESSES, "-m", "tests.fsdp_shards", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["loaded_equals_checkpoint"], "the checkpoint's full weights did not arrive in the shards"
    assert report["old_loader"].startswith("raised") or not report["old_loaded_equals_checkpoint"]
    straight, resumed = load_file(tmp_path / "straight.safetensors"), load_file(tmp_path / "resumed.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert report["loss"]["resumed"] == pytest.approx(report["loss"]["straight"], abs=1e-6)
    # the sharded run is the one-process training, and what rank 0 saved is the full model
    saved = load_file(tmp_path / "checkpoint" / "model.safetensors")
    reference = one_process_reference(3)
    assert sorted(f"model.{k}" for k in saved) == sorted(k for k in reference if "position_ids" not in k)
    for name, tensor in straight.items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp_accelerate_config_on_a_cpu_stops_with_one_line(tiny_model_dir, tmp_path, data_dir):
    launcher = [*TWO_PROCESSES[:3], "--config_file", FSDP_YAML, "--mixed_precision", "no", "--main_process_port", "0"]
    proc = run([*launcher, "-m", "nlp_contrastive.train", INFONCE,
                *tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--max_steps", "1")])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and errors, proc.stderr[-3000:]
    assert "FSDP only on GPUs" in errors[0] and "deepspeed-zero3.yaml" in errors[0]
    assert not (tmp_path / "o").exists()


needs_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                                reason="FSDP through accelerate needs 2 GPUs: accelerate turns FSDP on only for "
                                       "GPU-like devices (on a CPU see the torch-level test above)")


@needs_gpus
def test_fsdp_trainer_saves_full_weights_and_resumes_with_loss_parameters(tiny_model_dir, tmp_path, data_dir):
    """GPU machines: the trainer under fsdp.yaml (FSDP2, 2 processes) with a learnable LogLoss; checkpoint-2 and
    the final folder hold full weights, and a run resumed from checkpoint-2 ends as the uninterrupted one."""
    launcher = [*TWO_PROCESSES[:3], "--config_file", FSDP_YAML, "--mixed_precision", "no", "--main_process_port", "0"]
    common = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--learning_rate", "0.05",
              "--loss_kwargs", "{temperature: 0.05, bias: -15.0, learnable: true}")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for out, extra in ((straight, ()), (resumed, ("--resume_from_checkpoint", str(straight / "checkpoint-2")))):
        overrides = tiny_overrides(str(tiny_model_dir), out, *common, *extra)
        at = overrides.index("--use_cpu")
        del overrides[at:at + 2]  # on the GPUs
        proc = run([*launcher, "-m", "nlp_contrastive.train", LOGLOSS, *overrides])
        assert proc.returncode == 0, proc.stderr[-4000:]
    initial = load_file(tiny_model_dir / "model.safetensors")
    for folder in (straight / "checkpoint-2", straight, resumed):
        saved = load_file(folder / "model.safetensors")
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in initial.items()}
    expected = load_file(straight / "model.safetensors")
    for name, tensor in load_file(resumed / "model.safetensors").items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    loss = [load_file(run / "checkpoint-4" / "loss_parameters.safetensors") for run in (straight, resumed)]
    assert loss[0]["bias"].item() == pytest.approx(loss[1]["bias"].item(), abs=1e-6)
