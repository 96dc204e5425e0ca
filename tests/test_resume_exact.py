"""Killed-and-resumed runs end where uninterrupted ones do, for learnable loss parameters and LoRA adapters.

Each test trains a tiny dropout BERT straight through, then again killed right after a checkpoint and resumed with
`--resume_from_checkpoint true` through `nlp_contrastive.train`, and compares what the two runs wrote.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from nlp_contrastive.modeling import Encoder
from nlp_contrastive.train import main
from tests.conftest import REPO_ROOT
from tests.test_trainer import assert_same_tensors, straight_and_resumed, tiny_overrides

COSINE = str(REPO_ROOT / "recipes" / "stsb-cosine.yaml")
LOGLOSS = str(REPO_ROOT / "recipes" / "msrp-logloss.yaml")
LORA = "{r: 4, alpha: 8, dropout: 0.1, target_modules: [query, value]}"
TEXTS = ["a man is playing a guitar", "the cat sleeps", "two dogs run in the park"]


@pytest.mark.parametrize("cached", ["false", "true"])
def test_resumed_run_with_learnable_scale_and_bias_ends_as_the_uninterrupted_one(dropout_model_dir, tmp_path,
                                                                                 data_dir, cached):
    """Loss parameters live outside the model, so Trainer's model.zero_grad() did not clear their gradients: they
    summed over every step of a run, and a resumed run (gradients restarting from zero) drifted from it."""
    common = ("--max_steps", "5", "--learning_rate", "0.05", "--save_strategy", "steps", "--save_steps", "2",
              "--cached", cached, "--cache_mini_batch_size", "3",
              "--loss_kwargs", "{temperature: 0.05, bias: -15.0, learnable: true}")
    straight, resumed = straight_and_resumed(LOGLOSS, dropout_model_dir, tmp_path, common, kill_at=2)
    assert_same_tensors(load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors"))
    # the final learned values: the run record's loss config (from the live module) and the last checkpoint's file
    learned = [json.loads((out / "training_run.json").read_text())["loss"]["config"] for out in (straight, resumed)]
    assert learned[0]["bias"] != pytest.approx(-15.0) and learned[0]["temperature"] != pytest.approx(0.05)
    assert learned[1]["bias"] == pytest.approx(learned[0]["bias"], rel=0, abs=1e-6)
    assert learned[1]["temperature"] == pytest.approx(learned[0]["temperature"], rel=0, abs=1e-7)
    assert_same_tensors(load_file(straight / "checkpoint-4" / "loss_parameters.safetensors"),
                        load_file(resumed / "checkpoint-4" / "loss_parameters.safetensors"))


class OptimizerParameterNames(TrainerCallback):
    """The names of the model parameters the optimizer steps (to check a resumed LoRA run trains adapters only)."""

    def __init__(self):
        self.names = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.names = [name for name, p in model.named_parameters() if id(p) in held]


@pytest.mark.parametrize("merge,cached", [("false", "false"), ("true", "true")])
def test_resumed_lora_run_trains_the_adapters_only_and_ends_as_the_uninterrupted_one(dropout_model_dir, tmp_path,
                                                                                     data_dir, merge, cached):
    """LoRA checkpoints hold the adapter (adapter_model.safetensors, no model.safetensors): resuming loads it into
    the live adapters, the optimizer state covers the adapter parameters only, and the end is the same."""
    common = ("--max_steps", "6", "--learning_rate", "0.01", "--save_strategy", "steps", "--save_steps", "3",
              "--lora", LORA, "--lora_merge", merge, "--cached", cached, "--cache_mini_batch_size", "3")
    held = OptimizerParameterNames()
    straight, resumed = straight_and_resumed(COSINE, dropout_model_dir, tmp_path, common, kill_at=3,
                                             callbacks=[held])
    assert held.names and all("lora_" in name for name in held.names)
    weights = "model.safetensors" if merge == "true" else "adapter_model.safetensors"
    assert (straight / weights).is_file() and (straight / "adapter_config.json").exists() == (merge == "false")
    expected = load_file(straight / weights)
    assert_same_tensors(expected, load_file(resumed / weights))
    if merge == "false":
        assert any(float(t.abs().sum()) > 0 for n, t in expected.items() if "lora_B" in n)  # B starts at 0
    embeddings = [Encoder.from_pretrained(str(out)).encode(TEXTS) for out in (straight, resumed)]
    torch.testing.assert_close(torch.as_tensor(embeddings[1]), torch.as_tensor(embeddings[0]), rtol=0, atol=1e-6)
    base = Encoder.from_pretrained(dropout_model_dir).encode(TEXTS)
    assert not torch.allclose(torch.as_tensor(base), torch.as_tensor(embeddings[0]), atol=1e-4)


def test_lora_run_loads_its_best_adapter_at_the_end(dropout_model_dir, tmp_path, data_dir):
    """load_best_model_at_end (as recipes/stsb-lora.yaml sets) reads the best checkpoint's adapter back."""
    out = tmp_path / "o"
    assert main([COSINE, *tiny_overrides(dropout_model_dir, out, "--max_steps", "4", "--learning_rate", "0.01",
                                         "--lora", LORA, "--save_strategy", "steps", "--save_steps", "2",
                                         "--eval_strategy", "steps", "--eval_steps", "2",
                                         "--eval_tasks", "[{name: v, type: sts, dataset: stsb, split: validation, "
                                                         "max_rows: 24}]",
                                         "--load_best_model_at_end", "true", "--metric_for_best_model", "score",
                                         "--save_total_limit", "3")]) == 0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    assert best == str(out / "checkpoint-2")  # the scores tie (tiny model, 24 pairs): the first stays best
    best_adapter, last_adapter = (load_file(out / c / "adapter_model.safetensors") for c in ("checkpoint-2",
                                                                                              "checkpoint-4"))
    assert any(not torch.equal(best_adapter[k], last_adapter[k]) for k in best_adapter)
    assert_same_tensors(best_adapter, load_file(out / "adapter_model.safetensors"))


@pytest.mark.parametrize("first,then,message", [
    (("--lora", LORA), (), "holds LoRA adapters but this run trains a full model"),
    ((), ("--lora", LORA), "holds a full model but this run trains LoRA adapters"),
    (("--lora", LORA), ("--lora", "{r: 2, target_modules: [query, value]}"), "does not match the model's LoRA"),
])
def test_resuming_a_checkpoint_of_other_lora_settings_fails_in_one_line(tiny_model_dir, tmp_path, data_dir, capsys,
                                                                        first, then, message):
    common = ("--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    out = tmp_path / "o"
    assert main([COSINE, *tiny_overrides(str(tiny_model_dir), out, *common, *first)]) == 0
    code = main([COSINE, *tiny_overrides(str(tiny_model_dir), out, *common, "--max_steps", "3", *then,
                                         "--resume_from_checkpoint", "true")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors


@pytest.mark.slow
def test_two_process_lora_run_with_learnable_loss_resumes_to_the_uninterrupted_adapter_and_loss_values(
        dropout_model_dir, tmp_path, data_dir):
    """Both at once under `accelerate launch` with 2 gloo processes: DDP-wrapped peft model, the loss's parameters
    outside it (gradients averaged over ranks by their own hook), one RNG state per rank."""
    from tests.test_ddp_training import launch_command, run

    def launch(out, *hooks, expect=0, resume=()):
        return run(launch_command("--record-loss-parameters", str(out / "loss-values"), *hooks, LOGLOSS,
                                  *tiny_overrides(dropout_model_dir, out, "--max_steps", "5", "--learning_rate", "0.05",
                                                  "--bf16", "false", "--save_strategy", "steps", "--save_steps", "2",
                                                  "--lora", LORA, "--loss_kwargs",
                                                  "{temperature: 0.05, bias: -15.0, learnable: true}", *resume)),
                   expect=expect)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    launch(straight)
    assert "simulated kill after step 2" in launch(killed, "--kill-after-step", "2", expect=1).stderr
    launch(killed, resume=("--resume_from_checkpoint", "true"))
    assert_same_tensors(load_file(straight / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors"))
    values = [[json.loads((out / "loss-values" / f"loss-rank{r}.json").read_text()) for r in (0, 1)]
              for out in (straight, killed)]
    assert values[0][0] == values[0][1] and values[0][0][1] != pytest.approx(-15.0)
    assert values[1][0] == values[1][1]
    assert values[1][0] == pytest.approx(values[0][0], rel=0, abs=1e-6)
