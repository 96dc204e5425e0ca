"""Several datasets in one run: every batch from one source, DDP-safe and per-epoch deterministic."""

import json
import os
import subprocess
from collections import Counter

import numpy as np
import pytest

from nlp_contrastive.data.multi_dataset import MultiDatasetBatchSampler, batches_per_source
from nlp_contrastive.data.sampling import NoDuplicatesBatchSampler
from nlp_contrastive.train import main
from tests.conftest import REPO_ROOT, TWO_PROCESSES
from tests.test_trainer import tiny_overrides

SOURCES = [0] * 50 + [1] * 23 + [2] * 13
TWO_SOURCES = ("[{dataset: stsb, split: train, max_rows: 40, columns: {anchor: sentence1, positive: sentence2}, "
               "prompts: {anchor: 'alpha '}}, {dataset: sickr, split: train, max_rows: 24, "
               "columns: {anchor: sentence1, positive: sentence2}, prompts: {anchor: 'beta '}}]")


def rank_batches(sampling, num_replicas=1, epoch=0, drop_last=False, **kwargs):
    out = []
    for rank in range(num_replicas):
        sampler = MultiDatasetBatchSampler(SOURCES, 4, sampling=sampling, seed=3, num_replicas=num_replicas,
                                           rank=rank, drop_last=drop_last, **kwargs)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
        assert len(sampler) == len(out[-1])
    return out


@pytest.mark.parametrize("sampling", ["proportional", "round_robin"])
@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_each_batch_from_one_source_every_row_once(sampling, num_replicas):
    ranks = rank_batches(sampling, num_replicas)
    assert len({len(batches) for batches in ranks}) == 1  # same count on every rank: no DDP hang
    for step in zip(*ranks, strict=True):
        assert len({SOURCES[row] for batch in step for row in batch}) == 1  # the global batch: one source
    rows = [row for batches in ranks for batch in batches for row in batch]
    assert set(rows) == set(range(len(SOURCES)))
    if num_replicas == 1:
        assert sorted(rows) == list(range(len(SOURCES)))
    # Every rank's batch has >= 2 rows (an in-batch loss needs a negative) and at most one row above the batch size
    # (a source's remainder too short for all ranks joins its previous batch).
    assert {len(batch) for batches in ranks for batch in batches} <= {2, 3, 4, 5}


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
@pytest.mark.parametrize("sources", [[0] * 9 + [1] * 8, [0] * 13 + [1] * 25, [0] * 6 + [1] * 30])
def test_short_remainders_join_the_previous_batch_never_one_row_per_rank(num_replicas, sources):
    """Rows n = 9 + 8, batch 4 gave a 1-row batch per source remainder (a crash mid-run: "info_nce has no
    negatives"); with 2-3 processes a short global batch gave each rank 1 row."""
    for epoch in range(3):
        ranks = []
        for rank in range(num_replicas):
            sampler = MultiDatasetBatchSampler(sources, 4, seed=1, num_replicas=num_replicas, rank=rank)
            sampler.set_epoch(epoch)
            ranks.append(list(sampler))
        for step in zip(*ranks, strict=True):
            assert min(len(part) for part in step) >= 2, step
            assert max(len(part) for part in step) - min(len(part) for part in step) <= 1
        rows = sorted(row for batches in ranks for batch in batches for row in batch)
        assert set(rows) == set(range(len(sources)))  # no row left out
        expected = batches_per_source(list(Counter(sources).values()), 4 * num_replicas, "proportional",
                                      num_replicas=num_replicas)
        assert len(ranks[0]) == sum(expected)  # the printed per-source numbers count the joined remainders
        if num_replicas == 1:
            assert rows == list(range(len(sources)))  # each exactly once


def test_a_source_too_small_for_one_batch_fails_at_construction():
    with pytest.raises(ValueError, match=r"train_data\[1\] has 2 row\(s\), too few for one batch of 3 rows over 2"):
        MultiDatasetBatchSampler([0] * 10 + [1] * 2, 4, num_replicas=2, rank=0)


def test_round_robin_alternates_and_epochs_differ():
    (batches,) = rank_batches("round_robin")
    assert [SOURCES[b[0]] for b in batches[:6]] == [0, 1, 2, 0, 1, 2]
    assert rank_batches("proportional", epoch=0) != rank_batches("proportional", epoch=1)
    assert rank_batches("proportional", epoch=1) == rank_batches("proportional", epoch=1)


def test_weighted_and_temperature_shares():
    sources = [0] * 400 + [1] * 40
    sampler = MultiDatasetBatchSampler(sources, 4, sampling="weighted", weights=[1, 1], seed=0)
    counts = Counter(sources[b[0]] for epoch in range(5) if not sampler.set_epoch(epoch) for b in sampler)
    assert abs(counts[0] / sum(counts.values()) - 0.5) < 0.05  # up-sampled the small source to half the batches
    hot = MultiDatasetBatchSampler(sources, 4, sampling="temperature", temperature=1e6, seed=0)
    assert np.allclose(hot.probabilities, [0.5, 0.5], atol=1e-4)
    assert batches_per_source([400, 40], 4, "proportional") == [100.0, 10.0]
    assert batches_per_source([400, 40], 4, "weighted", weights=[1, 1]) == [55.0, 55.0]


def test_no_duplicates_inside_each_source():
    texts = [[f"t{i % 10}", f"u{i}"] for i in range(len(SOURCES))]
    sampler = MultiDatasetBatchSampler(
        SOURCES, 4, sampling="proportional", seed=0,
        inner=lambda rows: NoDuplicatesBatchSampler([texts[i] for i in rows], 4))
    for batch in sampler:
        words = [t for row in batch for t in texts[row]]
        assert len(words) == len(set(words)) and len({SOURCES[r] for r in batch}) == 1


def test_through_the_trainer_batches_keep_their_source(tiny_model_dir, tmp_path, data_dir, capsys, monkeypatch):
    seen = record_batch_prompts(monkeypatch)
    out = tmp_path / "o"
    assert main([str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml"),
                 *tiny_overrides(str(tiny_model_dir), out, "--train_data", TWO_SOURCES, "--max_train_rows", "null",
                                 "--multi_dataset_sampling", "round_robin", "--num_train_epochs", "2",
                                 "--batch_sampler", "random")]) == 0
    printed = capsys.readouterr().out
    assert "batches_per_epoch_per_source:" in printed and "train_data[0]: 5.0" in printed
    assert "train_data[1]: 3.0" in printed and "optimizer_steps: 16" in printed
    assert all(len(prompts) == 1 for prompts in seen) and len(seen) == 16
    assert [next(iter(p)) for p in seen[:4]] == ["alpha", "beta", "alpha", "beta"]


def test_through_the_trainer_every_batch_has_two_rows_and_every_row_comes_once(tiny_model_dir, tmp_path, data_dir,
                                                                              monkeypatch):
    """9 + 8 rows, batch 4, the default random sampler, through train() and the trainer's data loader: before, the
    1-row remainder of each source was a batch of its own and the run stopped at step 3 ("no negatives")."""
    from nlp_contrastive.trainer import ContrastiveTrainer

    sizes, original = [], ContrastiveTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        sizes.append(inputs["row_ids"].tolist())
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "compute_loss", compute_loss)
    sources = TWO_SOURCES.replace("max_rows: 40", "max_rows: 9").replace("max_rows: 24", "max_rows: 8")
    assert main([str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml"),
                 *tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--train_data", sources, "--max_train_rows",
                                 "null", "--multi_dataset_sampling", "proportional", "--num_train_epochs", "1",
                                 "--per_device_train_batch_size", "4", "--batch_sampler", "random")]) == 0
    assert sorted(len(rows) for rows in sizes) == [4, 4, 4, 5]
    assert sorted(row for rows in sizes for row in rows) == list(range(17))


def record_batch_prompts(monkeypatch, sizes: list | None = None) -> list:
    """Patch compute_loss to record the first word of every anchor of each batch (the source's prompt), and into
    `sizes` each batch's number of rows."""
    from nlp_contrastive.data.batch import Batch
    from nlp_contrastive.trainer import ContrastiveTrainer

    seen, original = [], ContrastiveTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        ids = Batch.from_inputs(inputs).features["anchor"]["input_ids"]
        words = self.accelerator.unwrap_model(model).tokenizer.batch_decode(ids, skip_special_tokens=True)
        seen.append({w.split()[0] for w in words})
        if sizes is not None:
            sizes.append(len(words))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "compute_loss", compute_loss)
    return seen


SCRIPT = """
import json, os, sys
import pytest
from tests.test_multi_dataset_sampling import record_batch_prompts
from nlp_contrastive.train import train
mp = pytest.MonkeyPatch()
sizes = []
seen = record_batch_prompts(mp, sizes)
train(sys.argv[1], sys.argv[3:])
with open(sys.argv[2] + f".{os.environ['RANK']}", "w") as f:  # the process group is gone after train()
    json.dump({"prompts": [sorted(s) for s in seen], "sizes": sizes}, f)
"""


@pytest.mark.slow
def test_two_processes_two_epochs_one_source_per_global_batch(tiny_model_dir, tmp_path, data_dir):
    """41 + 26 rows, 2 x 4 per global batch: each source's remainder (1 and 2 rows) joins its previous batch
    (before, it was a global batch of 1 row per rank: "info_nce has no negatives")."""
    sources = TWO_SOURCES.replace("max_rows: 40", "max_rows: 41").replace("max_rows: 24", "max_rows: 26")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    record = tmp_path / "seen"
    cmd = [*TWO_PROCESSES, str(script),
           str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml"), str(record),
           *tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--train_data", sources, "--max_train_rows",
                           "null", "--multi_dataset_sampling", "proportional", "--num_train_epochs", "2",
                           "--per_device_train_batch_size", "4", "--batch_sampler", "random")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rank0, sizes0), (rank1, sizes1) = (json.loads((tmp_path / f"seen.{r}").read_text()).values() for r in (0, 1))
    assert len(rank0) == len(rank1) == 16  # 2 epochs x (41/8 + 26/8, remainders joined) global batches
    for a, b in zip(rank0, rank1, strict=True):
        assert a == b and len(a) == 1  # both halves of each global batch from the same single source
    assert Counter(s[0] for s in rank0) == {"alpha": 10, "beta": 6}
    assert min(sizes0 + sizes1) == 4 and sum(sizes0 + sizes1) == 2 * (41 + 26)  # every row once per epoch


@pytest.mark.parametrize("extra,message", [
    (["--multi_dataset_sampling", "zigzag"], "unknown multi_dataset_sampling 'zigzag'"),
    (["--source_weights", "[1, 2, 3]"], "source_weights is set but multi_dataset_sampling is not"),
    (["--multi_dataset_sampling", "weighted", "--source_weights", "[1, 2]"], "source_weights must hold 3"),
    (["--multi_dataset_sampling", "weighted"], "weighted needs source_weights"),
    (["--multi_dataset_sampling", "temperature", "--sampling_temperature", "0"], "sampling_temperature must be > 0"),
])
def test_bad_multi_dataset_settings_fail_in_one_line(tiny_model_dir, tmp_path, capsys, extra, message):
    code = main([str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml"),
                 *tiny_overrides(str(tiny_model_dir), tmp_path / "o"), *extra])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
