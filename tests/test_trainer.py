"""End-to-end training on a tiny random BERT: outputs, resume equality, reproducibility, bad inputs."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from nlp_contrastive.train import main, train
from tests.conftest import REPO_ROOT, TWO_PROCESSES, make_tiny_encoder

COSINE = str(REPO_ROOT / "recipes" / "stsb-cosine.yaml")
INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")


def tiny_overrides(model_dir, output_dir, *extra):
    """A few steps of a tiny run. fp32 on every CPU class (`bf16: auto` would train in bf16 on AVX512-BF16/AMX
    machines only), so exact comparisons hold everywhere; the auto choice has its own tests (test_precision)."""
    return ["--model_name_or_path", model_dir, "--output_dir", str(output_dir), "--max_train_rows", "48", "--bf16", "false",
            "--per_device_train_batch_size", "8", "--eval_tasks", "[]", "--final_eval_tasks", "[]",
            "--logging_steps", "1", "--use_cpu", "true", "--report_to", "none", "--eval_strategy", "no",
            "--save_strategy", "no", "--load_best_model_at_end", "false", *extra]


class KillAt(TrainerCallback):
    """Simulates a crash right after a given optimizer step (after that step's checkpoint was written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step + 1:
            raise KeyboardInterrupt("simulated kill")


def straight_and_resumed(recipe, model_dir, tmp_path, common, kill_at, callbacks=()):
    """Output dirs of an uninterrupted run and of one killed after step `kill_at` then resumed."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(recipe, tiny_overrides(model_dir, straight, *common))
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tiny_overrides(model_dir, killed, *common), callbacks=[KillAt(kill_at)])
    assert (killed / f"checkpoint-{kill_at}").is_dir()
    train(recipe, tiny_overrides(model_dir, killed, *common, "--resume_from_checkpoint", "true"),
          callbacks=list(callbacks))
    return straight, killed


def assert_same_tensors(expected: dict, actual: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_killed_and_resumed_run_ends_with_the_same_weights(dropout_model_dir, tmp_path, data_dir):
    common = ("--save_strategy", "steps", "--save_steps", "3", "--max_steps", "6", "--learning_rate", "1e-3")
    straight_dir, resumed_dir = straight_and_resumed(COSINE, dropout_model_dir, tmp_path, common, kill_at=3)
    straight = load_file(straight_dir / "model.safetensors")
    resumed = load_file(resumed_dir / "model.safetensors")
    initial = make_tiny_encoder(dropout=0.1).model.state_dict()
    assert any(not torch.equal(straight[k], initial[k]) for k in straight), "training did not change weights"
    assert_same_tensors(straight, resumed)


def test_same_seed_same_loss_curve_and_outputs(dropout_model_dir, tmp_path, data_dir):
    for run in ("a", "b"):
        train(INFONCE, tiny_overrides(dropout_model_dir, tmp_path / run, "--max_steps", "4"))
    curves = [json.loads((tmp_path / run / "training_run.json").read_text()) for run in ("a", "b")]
    assert curves[0]["final_train_loss"] == curves[1]["final_train_loss"]
    states = [load_file(tmp_path / run / "model.safetensors") for run in ("a", "b")]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_outputs_results_card_and_curves(tiny_model_dir, tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    code = main([COSINE, *tiny_overrides(str(tiny_model_dir), out, "--max_steps", "2", "--final_eval_tasks",
                                         "[{name: stsb-test, type: sts, dataset: stsb, split: test}]")])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    # The number written is the saved model's: recomputed here with sentence-transformers and scipy.
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    rows = [json.loads(line) for line in (data_dir / "stsb" / "test.jsonl").read_text().splitlines() if line]
    st_model = SentenceTransformer(str(out), device="cpu")
    first = torch.as_tensor(st_model.encode([r["sentence1"] for r in rows], batch_size=64))
    second = torch.as_tensor(st_model.encode([r["sentence2"] for r in rows], batch_size=64))
    cosine = torch.nn.functional.cosine_similarity(first, second).numpy()
    expected = spearmanr(cosine, [r["score"] for r in rows]).statistic
    assert abs(results["stsb-test"]["spearman_cosine"] - expected) < 1e-4
    assert (out / "training_curves.png").stat().st_size > 1000
    assert (out / "README.md").exists()
    printed = capsys.readouterr().out
    assert "global_batch_size: 8" in printed and "stsb-test" in printed
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").encode(["hello"]).shape == (1, 32)


@pytest.mark.parametrize("extra,message", [
    (["--loss", "cosine_similarity", "--train_data",
      "[{dataset: stsb, columns: {anchor: sentence1, positive: sentence2}}]"], "needs a 'score' column"),
    (["--loss", "info_nce", "--per_device_train_batch_size", "1"], "per_device_train_batch_size must be >= 2"),
    (["--loss", "no_such_loss"], "unknown loss 'no_such_loss'"),
    (["--train_data", "[{dataset: stsb, columns: {anchor: sentence1, positive: nope, score: score}}]"], r"column\(s\) \['nope'\]"),
    (["--batch_size", "8"], r"unknown key\(s\) \['batch_size'\]"),
    (["--eval_tasks", "[]", "--eval_strategy", "steps"], "eval_strategy is 'steps' but eval_tasks is empty"),
])
def test_bad_inputs_fail_before_training(tiny_model_dir, tmp_path, data_dir, capsys, extra, message):
    code = main([COSINE, *tiny_overrides(str(tiny_model_dir), tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert re.search(message, errors[0]), err


def test_non_empty_output_dir_and_missing_recipe(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "precious.txt").write_text("keep me")
    assert main([COSINE, *tiny_overrides(str(tiny_model_dir), tmp_path / "used")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "used" / "precious.txt").read_text() == "keep me"
    assert main(["recipes/nope.yaml"]) == 2
    assert "recipe 'recipes/nope.yaml' does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tiny_model_dir, tmp_path, data_dir):
    out = tmp_path / "ddp"
    # `--cpu` alone makes accelerate start one process unless MPI is set up; the torch.distributed launcher
    # (`--multi_gpu`) with use_cpu (set by the recipe's bf16 on CPU-only machines, or passed here) runs gloo.
    cmd = [*TWO_PROCESSES, "-m", "nlp_contrastive.train", INFONCE,
           *tiny_overrides(str(tiny_model_dir), out, "--max_steps", "2", "--loss_kwargs",
                           "{temperature: 0.05, gather_across_devices: true}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processes: 2" in proc.stdout and "global_batch_size: 16" in proc.stdout
    assert (out / "model.safetensors").exists()


# scifact-hardneg trains on the output of `nlp-contrastive beir-split`: tests/retrieval/test_recipe_mining.py runs it.
MADE_BY_ANOTHER_STEP = {"scifact-hardneg.yaml"}


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO_ROOT / "recipes").glob("*.yaml")
                                          if p.name not in MADE_BY_ANOTHER_STEP))
def test_every_recipe_runs_on_a_tiny_model(recipe, tiny_model_dir, tmp_path, data_dir):
    """Each shipped recipe parses, loads its data, and trains 2 steps (cached ones through GradCache)."""
    extra = ["--max_steps", "2", "--cache_mini_batch_size", "3", "--bf16", "false"]
    if "matryoshka" in recipe:  # the recipe's dims are MiniLM's (384, ...); the tiny model has 32
        extra += ["--loss_kwargs", "{loss: cosine_similarity, dims: [32, 16], weights: [1, 2], self_distill: 1.0}"]
    if "distill" in recipe:  # the recipe's teacher is MiniLM (384 dims) and keeps layers 0, 2, 4 of 6; tiny: 2
        extra += ["--teacher", str(tiny_model_dir), "--keep_layers", "[0]"]
    if "streaming" in recipe:  # its shards come from the command in its header, written here into tmp_path
        shards = tmp_path / "shards"
        subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_streaming.py"), "--paraphrase-shards",
                        str(shards)], check=True, capture_output=True)
        extra += ["--max_train_rows", "null", "--train_data", f"[{{dataset: '{shards}/*.parquet', "
                  "columns: {anchor: anchor, positive: positive}, streaming: true}]"]
    assert main([str(REPO_ROOT / "recipes" / recipe), *tiny_overrides(str(tiny_model_dir), tmp_path / "o", *extra)]) == 0
    run = json.loads((tmp_path / "o" / "training_run.json").read_text())
    step_losses = [e["loss"] for e in run["log_history"] if "loss" in e]
    assert len(step_losses) == 2 and all(math.isfinite(x) for x in step_losses), step_losses
    if "lora" in recipe:  # the output is a peft adapter; LoRA's B matrices start at 0, so non-zero = trained
        adapter = load_file(tmp_path / "o" / "adapter_model.safetensors")
        assert any(float(t.abs().sum()) > 0 for n, t in adapter.items() if "lora_B" in n), "the adapter did not train"
        return
    trained = load_file(tmp_path / "o" / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(trained[k], initial[k]) for k in initial), "2 optimizer steps left the weights as they were"


def test_cached_info_nce_with_ragged_negatives(tiny_model_dir, tmp_path, data_dir):
    recipe = str(REPO_ROOT / "recipes" / "sick-ntuple.yaml")
    extra = ["--max_steps", "2", "--loss", "info_nce", "--loss_kwargs", "{temperature: 0.05}", "--cached", "true",
             "--cache_mini_batch_size", "5", "--batch_sampler", "no_duplicates"]
    assert main([recipe, *tiny_overrides(str(tiny_model_dir), tmp_path / "o", *extra)]) == 0


def test_eval_during_training_selects_best_and_logs_tensorboard(tiny_model_dir, tmp_path, data_dir):
    out = tmp_path / "o"
    overrides = tiny_overrides(str(tiny_model_dir), out, "--max_steps", "4")
    overrides += ["--eval_tasks", "[{name: sts-val, type: sts, dataset: stsb, split: validation}]",
                  "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                  "--load_best_model_at_end", "true", "--metric_for_best_model", "score",
                  "--report_to", "tensorboard"]
    assert main([COSINE, *overrides]) == 0
    history = json.loads((out / "training_run.json").read_text())["log_history"]
    scores = {e["step"]: e["eval_score"] for e in history if "eval_score" in e}
    assert sorted(scores) == [2, 4]
    assert all(e["eval_sts-val_spearman_cosine"] == e["eval_score"] for e in history if "eval_score" in e)
    best_step = max(scores, key=scores.get)
    from nlp_contrastive.modeling import Encoder

    final = Encoder.from_pretrained(str(out))
    best = Encoder.from_pretrained(str(out / f"checkpoint-{best_step}"))
    for (name, a), (_, b) in zip(final.model.state_dict().items(), best.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"final model is not the best checkpoint ({name})"
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard event file"


def test_crash_while_writing_a_checkpoint_leaves_no_partial_checkpoint(dropout_model_dir, tmp_path, data_dir,
                                                                       monkeypatch):
    from transformers.trainer_utils import get_last_checkpoint

    from nlp_contrastive.trainer import ContrastiveTrainer

    original = ContrastiveTrainer._save_rng_state

    def crash_on_second_checkpoint(self, output_dir):
        if self.state.global_step == 6:
            raise KeyboardInterrupt("killed while writing checkpoint-6")
        return original(self, output_dir)

    monkeypatch.setattr(ContrastiveTrainer, "_save_rng_state", crash_on_second_checkpoint)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        train(COSINE, tiny_overrides(dropout_model_dir, out, "--save_strategy", "steps", "--save_steps", "3",
                                     "--max_steps", "6"))
    assert (out / "checkpoint-3" / "trainer_state.json").exists()
    assert not (out / "checkpoint-6").exists()
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-3")


def test_eval_during_bf16_training_equals_cli_eval_of_the_saved_model(tiny_model_dir, tmp_path, data_dir):
    """results.json / best-checkpoint numbers are the ones `nlp-contrastive eval` reproduces: fp32, not bf16."""
    from nlp_contrastive.cli import main as cli_main

    task = "[{name: STSBenchmark, type: sts, dataset: stsb, split: test, score_range: [0, 5]}]"
    out = tmp_path / "o"
    overrides = tiny_overrides(str(tiny_model_dir), out, "--max_steps", "2", "--bf16", "true", "--eval_tasks", task,
                               "--eval_strategy", "steps", "--eval_steps", "2", "--eval_batch_size", "64")
    assert main([COSINE, *overrides]) == 0
    history = json.loads((out / "training_run.json").read_text())["log_history"]
    during = [e["eval_STSBenchmark_spearman_cosine"] for e in history if "eval_STSBenchmark_spearman_cosine" in e]
    assert len(during) == 1
    assert cli_main(["eval", "--model", str(out), "--suite", str(REPO_ROOT / "eval" / "sts.yaml"), "--tasks",
                     "STSBenchmark", "--batch-size", "64", "--output", str(tmp_path / "r.json")]) == 0
    after = json.loads((tmp_path / "r.json").read_text())["STSBenchmark"]["spearman_cosine"]
    assert abs(during[0] - after) < 1e-6, (during[0], after)


SGD = ("--optim", "sgd", "--learning_rate", "0.1", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
       "--bf16", "false")


def test_gradient_accumulation_equals_one_step_on_the_combined_batch(tiny_model_dir, tmp_path, data_dir):
    """cosine_similarity is a per-row mean: 2 accumulated batches of 8 = 1 batch of 16 (same 16 rows, same step).
    Random batches: the recipe's group_by_length cuts its mega-batches by batch size, so 16 != 8 + 8 rows there."""
    model = str(tiny_model_dir)
    random = ("--batch_sampler", "random")
    train(COSINE, tiny_overrides(model, tmp_path / "big", "--max_steps", "1", "--per_device_train_batch_size", "16",
                                 *random, *SGD))
    train(COSINE, tiny_overrides(model, tmp_path / "ga", "--max_steps", "1", "--per_device_train_batch_size", "8",
                                 "--gradient_accumulation_steps", "2", *random, *SGD))
    initial = load_file(tiny_model_dir / "model.safetensors")
    big, accumulated = (load_file(tmp_path / run / "model.safetensors") for run in ("big", "ga"))
    update_big = torch.cat([(big[k] - initial[k]).flatten() for k in initial])
    update_ga = torch.cat([(accumulated[k] - initial[k]).flatten() for k in initial])
    assert update_big.norm() > 1e-3
    # A GA-scaling defect (no division, or twice) is a factor of 2; float round-off is ~1e-6 of the norm.
    assert ((update_ga - update_big).norm() / update_big.norm()).item() < 1e-4


def test_several_epochs_run_every_step_and_learn(tiny_model_dir, tmp_path, data_dir):
    out = tmp_path / "o"
    train(COSINE, tiny_overrides(str(tiny_model_dir), out, "--max_train_rows", "16", "--num_train_epochs", "3",
                                 "--learning_rate", "1e-3", "--bf16", "false"))
    history = json.loads((out / "training_run.json").read_text())["log_history"]
    steps = [e for e in history if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]  # 16 rows / batch 8 = 2 steps per epoch, 3 epochs
    assert history[-1]["epoch"] == pytest.approx(3.0)
    first_epoch, last_epoch = (sum(e["loss"] for e in steps[i:i + 2]) / 2 for i in (0, 4))
    assert last_epoch < first_epoch, (first_epoch, last_epoch)  # the same 16 rows: the loss must go down


def test_save_writes_the_state_dict_the_trainer_gathered(tiny_model_dir, tmp_path):
    """Under FSDP / DeepSpeed, Trainer.save_model gathers the full weights and hands them to `_save`; the local
    parameters are shards there, so `_save` must write the given state dict, not the live model."""
    from nlp_contrastive.config import ContrastiveTrainingArguments
    from nlp_contrastive.losses import CosineSimilarityLoss
    from nlp_contrastive.modeling import Encoder
    from nlp_contrastive.trainer import ContrastiveTrainer

    encoder = Encoder.from_pretrained(str(tiny_model_dir))
    args = ContrastiveTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
    trainer = ContrastiveTrainer(encoder, args, CosineSimilarityLoss(), train_dataset=[{"anchor_input_ids": [1]}])
    gathered = {name: tensor + 1.0 for name, tensor in encoder.state_dict().items() if tensor.is_floating_point()}
    trainer._save(str(tmp_path / "saved"), state_dict=gathered)
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert sorted(saved) == sorted(k.removeprefix("model.") for k in gathered)
    for name, tensor in gathered.items():
        assert torch.equal(saved[name.removeprefix("model.")], tensor), name
    assert Encoder.from_pretrained(str(tmp_path / "saved")).encode(["hello"]).shape == (1, 32)
