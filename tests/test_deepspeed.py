"""DeepSpeed ZeRO-1, 2 and 3 through `accelerate launch` with 2 gloo CPU processes and the real trainer.

One launch per stage (recipes/accelerate/deepspeed-zero{1,2,3}.yaml, `--mixed_precision no`) runs four trainings in
one process group (tests/engine_train.py):
- plain: InfoNCE with gather_across_devices, gradient accumulation 2, plain SGD, the no-duplicates sampler over 40
  rows (global batches of 16, 16 and a short 8: the ranks hold different texts and lengths);
- cached: the same with GradCache (`cached: true`, mini-batches of 3 rows);
- cached-checkpointing: GradCache with activation (gradient) checkpointing;
- straight: LogLoss with a learnable scale and bias, 4 steps, checkpoints at 2 and 4;
- resumed: the same resumed from straight's checkpoint-2.
The InfoNCE runs must give the weights of ONE process training on the whole global batch (gathered InfoNCE makes
2 x 8 rows the same loss as 1 x 16), saved as a full sentence-transformers folder (under ZeRO-3 the weights are
gathered from the shards). "Equal" = the weight update differs from the one-process update by less than 1e-5 of
its norm (measured 0.9-1.5e-6 on a Xeon with AVX512: fp32 round-off of a different summation order; a missed or
doubled reduction, or a shard saved as the model, moves it by O(1)). The resumed run must end with the straight
run's weights and loss parameters (measured: bit-identical; asserted to 1e-6).

On the old code GradCache under ZeRO >= 2 was refused, and a learnable loss parameter crashed DeepSpeed's setup
(it is not a parameter of the module DeepSpeed wraps); its resume never read loss_parameters.safetensors.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from nlp_contrastive.train import train
from tests.conftest import REPO_ROOT
from tests.engine_train import INFONCE, common, infonce, launch
from tests.test_trainer_distributed import assert_same_update, update

pytest.importorskip("deepspeed", reason="deepspeed is part of the dev extra: pip install -e '.[dev]'")
pytestmark = pytest.mark.slow

LOGLOSS = str(REPO_ROOT / "recipes" / "msrp-logloss.yaml")
LEARNABLE = ("--loss_kwargs", "{temperature: 0.05, bias: -15.0, learnable: true}")


def logloss(model, out, *extra: str) -> list[str]:
    return common(model, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", *LEARNABLE,
                  *extra)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def loss_values(folder) -> list[dict]:
    return [json.loads((folder / f"run-rank{rank}.json").read_text())["loss_parameters"] for rank in (0, 1)]


@pytest.fixture(scope="module")
def one_process(module_tiny_dir, tmp_path_factory, data_dir):
    """The weight update of one process on the global batch of 16 (same batches, same steps)."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert train(INFONCE, infonce(module_tiny_dir, out, "--per_device_train_batch_size", "16", "--cached", "false")) == 0
    reference = update(out, weights(module_tiny_dir))
    assert reference.norm() > 1e-2, "training did not move the weights"
    return reference, final_score(out)


def final_score(folder) -> float:
    return json.loads((folder / "results.json").read_text())["sts"]["pearson_cosine"]


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda stage: f"zero{stage}")
def stage_runs(request, module_tiny_dir, tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp(f"zero{request.param}")
    plan = [{"recipe": INFONCE, "args": infonce(module_tiny_dir, root / "plain", "--cached", "false")},
            {"recipe": INFONCE, "args": infonce(module_tiny_dir, root / "cached", "--cached", "true",
                                                "--cache_mini_batch_size", "3")},
            {"recipe": INFONCE, "args": infonce(module_tiny_dir, root / "cached-checkpointing", "--cached", "true",
                                                "--cache_mini_batch_size", "3", "--activation_checkpointing", "true")},
            {"recipe": LOGLOSS, "args": logloss(module_tiny_dir, root / "straight")},
            {"recipe": LOGLOSS, "args": logloss(module_tiny_dir, root / "resumed", "--resume_from_checkpoint",
                                                str(root / "straight" / "checkpoint-2"))}]
    config = REPO_ROOT / "recipes" / "accelerate" / f"deepspeed-zero{request.param}.yaml"
    proc = launch(["--config_file", str(config), "--mixed_precision", "no"], plan, root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "terminate called" not in proc.stderr, "a rank aborted at exit"
    return root


@pytest.mark.parametrize("run", ["plain", "cached", "cached-checkpointing"])
def test_zero_stage_trains_to_the_one_process_weights(stage_runs, one_process, module_tiny_dir, run):
    reference, score = one_process
    assert_same_update(stage_runs / run, reference, weights(module_tiny_dir))
    assert final_score(stage_runs / run) == pytest.approx(score, abs=1e-4)  # the full model was evaluated
    checkpointing = json.loads((stage_runs / run / "run-rank0.json").read_text())["activation_checkpointing"]
    assert checkpointing == run.endswith("checkpointing")

def test_zero_stage_saves_a_full_sentence_transformers_folder(stage_runs, module_tiny_dir):
    from sentence_transformers import SentenceTransformer

    from nlp_contrastive.modeling import Encoder

    folder = stage_runs / "plain"
    update(folder, weights(module_tiny_dir))  # every key, full shapes
    texts = ["a cat sits on the mat", "stocks fell sharply on monday"]
    ours = Encoder.from_pretrained(folder).encode(texts, convert_to="torch")
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    # the same vectors up to float round-off (the two libraries batch and pad differently)
    assert torch.nn.functional.cosine_similarity(ours, theirs.to(ours.dtype)).min() > 0.99999


def test_zero_stage_resumes_to_the_uninterrupted_weights_and_loss_parameters(stage_runs, module_tiny_dir):
    straight, resumed = stage_runs / "straight", stage_runs / "resumed"
    saved = load_file(straight / "checkpoint-2" / "loss_parameters.safetensors")
    assert saved["bias"].item() != pytest.approx(-15.0), "the loss parameters did not train"
    ends = loss_values(straight)
    assert ends[0] == ends[1], "the ranks hold different loss parameters"
    resumed_ends = loss_values(resumed)
    assert resumed_ends[0] == resumed_ends[1], "the resumed ranks hold different loss parameters"
    for name, value in ends[0].items():
        assert resumed_ends[0][name] == pytest.approx(value, abs=1e-6), name
    expected = weights(straight)
    assert any(not torch.equal(expected[k], weights(module_tiny_dir)[k]) for k in expected)
    for name, tensor in weights(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
