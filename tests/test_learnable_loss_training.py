"""Loss parameters (LogLoss(learnable=True)) train with the encoder: in the optimizer, no weight decay."""

import pytest
import torch
from transformers import TrainerCallback

from nlp_contrastive.train import train
from tests.conftest import REPO_ROOT
from tests.test_trainer import tiny_overrides

LOGLOSS = str(REPO_ROOT / "recipes" / "msrp-logloss.yaml")


class GrabTrainer(TrainerCallback):
    """Keeps the optimizer and the loss's parameter values at the start and the end of training."""

    def __init__(self):
        self.start = self.end = self.groups = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = optimizer

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is None:
            self.start = self._values()

    def on_train_end(self, args, state, control, **kwargs):
        self.end = self._values()

    def _values(self):
        groups = self.optimizer.param_groups
        self.groups = [(g["weight_decay"], len(g["params"])) for g in groups]
        return [p.detach().clone() for p in groups[-1]["params"]]


@pytest.mark.parametrize("cached", ["false", "true"])
def test_learnable_scale_and_bias_change_through_training(tiny_model_dir, tmp_path, data_dir, cached):
    grab = GrabTrainer()
    train(LOGLOSS, tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--max_steps", "3", "--learning_rate", "0.05",
                                  "--weight_decay", "0.1", "--cached", cached, "--cache_mini_batch_size", "3",
                                  "--loss_kwargs", "{temperature: 0.05, bias: -15.0, learnable: true}"),
          callbacks=[grab])
    assert grab.groups[-1] == (0.0, 2)  # log_scale and bias, no weight decay
    assert grab.groups[0][0] == 0.1  # the encoder's decayed group is Trainer's as before
    start_scale, start_bias = grab.start
    end_scale, end_bias = grab.end
    assert start_scale.item() == pytest.approx(torch.log(torch.tensor(20.0)).item())
    assert start_bias.item() == pytest.approx(-15.0)
    assert end_scale.item() != pytest.approx(start_scale.item()) and end_bias.item() != pytest.approx(-15.0)


def test_fixed_loss_adds_no_parameter_group(tiny_model_dir, tmp_path, data_dir):
    grab = GrabTrainer()
    train(LOGLOSS, tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--max_steps", "1"), callbacks=[grab])
    assert len(grab.groups) == 2


class FirstStepValues(TrainerCallback):
    def __init__(self):
        self.values = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.values is None:
            self.values = [p.detach().clone() for p in optimizer.param_groups[-1]["params"]]


def test_a_resumed_run_starts_from_the_learned_scale_and_bias_of_its_checkpoint(tiny_model_dir, tmp_path, data_dir):
    """The checkpoint carries loss_parameters.safetensors and resuming loads it (without it the scale and bias
    would restart from their initial values while the optimizer state moved on)."""
    from safetensors.torch import load_file

    from tests.test_trainer import KillAt

    common = ("--max_steps", "4", "--learning_rate", "0.05", "--save_strategy", "steps", "--save_steps", "2",
              "--loss_kwargs", "{temperature: 0.05, bias: -15.0, learnable: true}")
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(LOGLOSS, tiny_overrides(str(tiny_model_dir), out, *common), callbacks=[KillAt(2)])
    saved = load_file(out / "checkpoint-2" / "loss_parameters.safetensors")
    assert sorted(saved) == ["bias", "log_scale"] and saved["bias"].item() != pytest.approx(-15.0)
    resumed = FirstStepValues()
    train(LOGLOSS, tiny_overrides(str(tiny_model_dir), out, *common, "--resume_from_checkpoint", "true"),
          callbacks=[resumed])
    assert [v.item() for v in resumed.values] == [saved["log_scale"].item(), saved["bias"].item()]


class BestAtStep(TrainerCallback):
    """Makes one evaluation's score the best, whatever the model learned, so the best checkpoint is not the last."""

    def __init__(self, best_step):
        self.best_step = best_step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_score"] = 1.0 if state.global_step == self.best_step else 0.0


def test_the_best_checkpoint_brings_back_its_learned_scale_and_bias(tiny_model_dir, tmp_path, data_dir):
    """load_best_model_at_end restores the loss's parameters of the best checkpoint with its encoder weights."""
    from safetensors.torch import load_file

    out, grab = tmp_path / "o", GrabTrainer()
    train(LOGLOSS, tiny_overrides(str(tiny_model_dir), out, "--max_steps", "6", "--learning_rate", "0.05",
                                  "--loss_kwargs", "{temperature: 0.05, bias: -15.0, learnable: true}",
                                  "--eval_tasks", "[{name: sts-val, type: sts, dataset: stsb, split: validation}]",
                                  "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps",
                                  "--save_steps", "2", "--load_best_model_at_end", "true",
                                  "--metric_for_best_model", "score"),
          callbacks=[grab, BestAtStep(2)])
    best, last = (load_file(out / f"checkpoint-{step}" / "loss_parameters.safetensors") for step in (2, 6))
    assert best["bias"].item() != pytest.approx(last["bias"].item())
    assert [v.item() for v in grab.end] == [best["log_scale"].item(), best["bias"].item()]


@pytest.mark.slow
def test_two_processes_keep_one_learned_scale_and_bias(tiny_model_dir, tmp_path, data_dir):
    """The loss's parameters live outside the DDP-wrapped encoder: their gradients are averaged over ranks too,
    so both ranks end with the same scale and bias (each rank's batch differs, so unsynchronised copies drift)."""
    import json

    from tests.test_ddp_training import launch_command, run

    record = tmp_path / "record"
    run(launch_command("--record-loss-parameters", str(record), LOGLOSS,
                       *tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--max_steps", "4", "--learning_rate",
                                       "0.05", "--loss_kwargs", "{temperature: 0.05, bias: -15.0, learnable: true}")))
    rank0, rank1 = (json.loads((record / f"loss-rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1 and rank0[1] != pytest.approx(-15.0)


class GradientsAtStepBegin(TrainerCallback):
    """Whether the loss's parameters still hold a gradient when each optimizer step begins."""

    def __init__(self):
        self.leftover = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.leftover.append([p.grad is not None for p in optimizer.param_groups[-1]["params"]])


@pytest.mark.parametrize("accumulation", ["1", "2"])
def test_each_step_starts_with_no_loss_parameter_gradient(tiny_model_dir, tmp_path, data_dir, accumulation):
    """Trainer clears the model's gradients after each step (model.zero_grad()); the loss's parameters are outside
    the model, so the trainer clears theirs too — else every step would apply the sum of all past gradients."""
    grab = GradientsAtStepBegin()
    train(LOGLOSS, tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--max_steps", "3",
                                  "--gradient_accumulation_steps", accumulation, "--per_device_train_batch_size", "4",
                                  "--loss_kwargs", "{temperature: 0.05, bias: -15.0, learnable: true}"),
          callbacks=[grab])
    assert grab.leftover == [[False, False]] * 3
