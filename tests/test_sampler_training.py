"""Batch samplers through the real train entry point: the printed step count is the one the Trainer runs."""

import re

import pytest
from transformers import TrainerCallback

from nlp_contrastive.data import sampling
from nlp_contrastive.train import train
from tests.conftest import REPO_ROOT

INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")


class FinalStep(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        self.global_step = state.global_step


@pytest.mark.parametrize("epochs,accumulation", [(1, 1), pytest.param(2, 2, marks=pytest.mark.slow)])
def test_printed_optimizer_steps_equal_the_steps_run(tiny_model_dir, tmp_path, data_dir, capsys, monkeypatch,
                                                     epochs, accumulation):
    """Issue 12: on the full paraphrase data (5,112 rows) at batch 1024, seed 42, the no-duplicates sampler made
    9 batches (..., 968, 40, 3, 3, 2) while 5 steps were printed; with accumulation the printed count also
    rounded differently from the Trainer."""
    final = FinalStep()
    builds = count_builds(monkeypatch, sampling.NoDuplicatesBatchSampler)
    overrides = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "o"),
                 "--per_device_train_batch_size", "1024", "--num_train_epochs", str(epochs),
                 "--gradient_accumulation_steps", str(accumulation), "--seed", "42", "--bf16", "false",
                 "--use_cpu", "true", "--eval_tasks", "[]", "--final_eval_tasks", "[]", "--report_to", "none",
                 "--learning_rate", "1e-4", "--logging_steps", "1", "--save_strategy", "no"]
    assert train(INFONCE, overrides, callbacks=[final]) == 0
    printed = int(re.search(r"optimizer_steps: (\d+)", capsys.readouterr().out).group(1))
    assert printed == final.global_step == epochs * -(-5 // accumulation)  # 5 batches per epoch: 4 x 1024 + 1 short
    assert len(builds) == 1  # the printed count and the Trainer's data loader share one sampler


def test_multi_dataset_steps_are_the_samplers_real_count_and_it_is_built_once(tiny_model_dir, tmp_path, data_dir,
                                                                              capsys, monkeypatch):
    """41 + 25 rows at batch 8, group_by_length inside each source: each source's 1-row remainder is left out
    (fewer than 2 rows), so an epoch is 5 + 3 batches, not the 6 + 4 the per-source estimate gives."""
    from nlp_contrastive.data.multi_dataset import MultiDatasetBatchSampler
    from tests.test_trainer import tiny_overrides

    final = FinalStep()
    builds = count_builds(monkeypatch, MultiDatasetBatchSampler)
    sources = ("[{dataset: stsb, split: train, max_rows: 41, columns: {anchor: sentence1, positive: sentence2}}, "
               "{dataset: sickr, split: train, max_rows: 25, columns: {anchor: sentence1, positive: sentence2}}]")
    overrides = tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--train_data", sources, "--max_train_rows",
                               "null", "--multi_dataset_sampling", "round_robin", "--batch_sampler",
                               "group_by_length", "--num_train_epochs", "2", "--bf16", "false")
    assert train(INFONCE, overrides, callbacks=[final]) == 0
    printed = int(re.search(r"optimizer_steps: (\d+)", capsys.readouterr().out).group(1))
    assert printed == final.global_step == 2 * (5 + 3)
    assert len(builds) == 1


def count_builds(monkeypatch, cls) -> list:
    """Record every construction of sampler class `cls` (one entry each)."""
    builds, original = [], cls.__init__

    def init(self, *args, **kwargs):
        builds.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)
    return builds


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["group_by_length", "no_duplicates_by_length"])
def test_length_grouped_samplers_under_two_processes_are_disjoint_distinct_and_resume_to_the_same_rows(
        tmp_path, data_dir, sampler):
    """The length-grouped samplers through accelerate with 2 processes, 2 epochs: every step both ranks get a
    batch, ranks are disjoint, (no_duplicates_by_length) no text repeats in a global batch, and a run killed
    after step 3 resumes to the uninterrupted run's rows."""
    from tests.conftest import make_tiny_encoder
    from tests.test_ddp_training import launch_command, recorded, run

    model = tmp_path / "tiny"
    make_tiny_encoder().save_pretrained(model)

    def args(out, *extra):
        return [INFONCE, "--model_name_or_path", str(model), "--output_dir", str(tmp_path / out), "--max_train_rows",
                "80", "--per_device_train_batch_size", "8", "--num_train_epochs", "2", "--batch_sampler", sampler,
                "--eval_tasks", "[]", "--final_eval_tasks", "[]", "--use_cpu", "true", "--bf16", "false",
                "--report_to", "none", "--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1",
                *extra]

    run(launch_command("--record", str(tmp_path / "rows-straight"), *args("straight")))
    run(launch_command("--record", str(tmp_path / "rows-killed"), "--kill-after-step", "3", *args("killed")),
        expect=1)
    run(launch_command("--record", str(tmp_path / "rows-resumed"),
                       *args("killed", "--resume_from_checkpoint", "true")))
    straight, resumed = recorded(tmp_path / "rows-straight"), recorded(tmp_path / "rows-resumed")
    steps = sorted(straight[0])
    assert steps == sorted(straight[1]) == list(range(10))  # 80 rows / 16 per global batch = 5 steps x 2 epochs
    from nlp_contrastive.config import load_recipe
    from nlp_contrastive.data import train_data

    rows = train_data.build_train_dataset(load_recipe(INFONCE).data.train_data, max_rows=80)
    for step in steps:
        batch = straight[0][step] + straight[1][step]
        assert not set(straight[0][step]) & set(straight[1][step]), f"ranks share a row at step {step}"
        if sampler == "no_duplicates_by_length":
            texts = [rows[i][role] for i in batch for role in ("anchor", "positive")]
            assert len(texts) == len(set(texts)), f"repeated text in global batch {step}"
    for rank in range(2):
        assert sorted(resumed[rank]) == [3, 4, 5, 6, 7, 8, 9]  # from checkpoint-3 on
        assert all(resumed[rank][s] == straight[rank][s] for s in resumed[rank]), f"rank {rank} resumed elsewhere"
        assert [straight[rank][s] for s in range(5)] != [straight[rank][s] for s in range(5, 10)]  # new epoch order
