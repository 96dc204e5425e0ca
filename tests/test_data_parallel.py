"""nn.DataParallel (several GPUs in one process, no launcher): the printed steps are the steps the Trainer runs.

The Trainer batches per device x n_gpu rows per step (`TrainingArguments.train_batch_size`) and splits them over
the GPUs. The start-up print used the per-device size, so it showed n_gpu times too many steps. A CPU has no GPUs:
`n_gpu` is faked (nn.DataParallel without CUDA runs its module directly), which is all the counting depends on.
"""

from __future__ import annotations

import re

import pytest
from transformers import TrainerCallback, TrainingArguments

from nlp_contrastive.train import train
from tests.conftest import REPO_ROOT
from tests.test_trainer import tiny_overrides

INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")


class MaxSteps(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.max_steps, self.batch = state.max_steps, state.train_batch_size


@pytest.mark.parametrize("sampler", ["random", "no_duplicates"])
def test_printed_steps_and_global_batch_are_the_data_parallel_trainer_s(tiny_model_dir, tmp_path, data_dir, capsys,
                                                                        monkeypatch, sampler):
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 2))
    seen = MaxSteps()
    assert train(INFONCE, tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--batch_sampler", sampler,
                                         "--num_train_epochs", "1"), callbacks=[seen]) == 0
    printed = capsys.readouterr().out
    steps = int(re.search(r"optimizer_steps: (\d+)", printed).group(1))
    global_batch = int(re.search(r"global_batch_size: (\d+)", printed).group(1))
    assert seen.batch == 16  # 8 per device x 2 GPUs
    assert (steps, global_batch) == (seen.max_steps, 16) == (3, 16)  # 48 rows
