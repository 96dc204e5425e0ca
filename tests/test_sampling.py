"""Batch samplers: exact lengths on every rank, no repeated text in a global batch, seeded per-epoch order."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from accelerate.data_loader import BatchSamplerShard

from nlp_contrastive.sampling import LengthGroupedBatchSampler, NoDuplicatesBatchSampler


def pairs_with_repeats(rows: int = 403, seed: int = 0) -> list[list[str]]:
    """(anchor, positive) rows; >= 30% of rows share a text with another row, 12 rows share one frequent text."""
    rng = random.Random(seed)
    data = [[f"anchor {i}", f"positive {i}"] for i in range(rows)]
    for i in rng.sample(range(rows), rows // 5):
        j = rng.randrange(rows)
        data[i][rng.randrange(2)] = data[j][rng.randrange(2)]
    for i in rng.sample(range(rows), 12):
        data[i][0] = "A man is playing a guitar."
    counts = Counter(text for row in data for text in set(row))
    repeated = sum(any(counts[text] > 1 for text in row) for row in data)
    assert repeated >= 0.3 * rows
    return data


def all_ranks(make, num_replicas: int, epoch: int = 0) -> list[list[list[int]]]:
    batches = []
    for rank in range(num_replicas):
        sampler = make(rank)
        sampler.set_epoch(epoch)
        batches.append(list(sampler))
        assert len(batches[-1]) == len(sampler)  # exact __len__
    return batches


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_no_duplicates_global_batches(num_replicas, drop_last):
    data = pairs_with_repeats()
    per_rank = all_ranks(lambda rank: NoDuplicatesBatchSampler(data, 8, drop_last=drop_last, seed=1,
                                                               num_replicas=num_replicas, rank=rank), num_replicas)
    steps = len(per_rank[0])
    assert all(len(batches) == steps for batches in per_rank)  # no rank waits for a batch that never comes
    short_steps = 0
    for step in range(steps):
        parts = [batches[step] for batches in per_rank]
        assert len({len(p) for p in parts}) == 1 and parts[0]  # equal, non-empty per-rank batches
        assert all(len(p) == 8 for p in parts) or not drop_last
        short_steps += len(parts[0]) < 8
        texts = [text for part in parts for row in part for text in data[row]]
        assert len(texts) == len(set(texts)), f"repeated text in global batch {step}"
    rank_rows = [{row for batch in batches for row in batch} for batches in per_rank]
    assert sum(len(rows) for rows in rank_rows) == len(set().union(*rank_rows))  # ranks are disjoint
    if drop_last:
        assert len(set().union(*rank_rows)) >= len(data) - 2 * 8 * num_replicas - 12
    else:
        assert set().union(*rank_rows) == set(range(len(data)))  # nothing skipped
        assert short_steps >= 1  # the deferred rows (frequent text) really went into short final batches


def test_no_duplicates_order_per_epoch_and_seed():
    data = pairs_with_repeats()

    def batches(seed, epoch):
        sampler = NoDuplicatesBatchSampler(data, 8, seed=seed, num_replicas=2, rank=1)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(3, 0) == batches(3, 0)  # identical across runs
    assert batches(3, 1) != batches(3, 0)  # a new order each epoch
    assert batches(4, 0) != batches(3, 0)
    sampler = NoDuplicatesBatchSampler(data, 8, seed=3, num_replicas=2, rank=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == batches(3, 1)
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_no_duplicates_lists_of_negatives_and_frequent_text():
    data = [["q common", [f"neg {i}", "shared negative"]] if i % 4 == 0 else [f"q {i}", [f"neg {i}"]]
            for i in range(40)]
    batches = list(NoDuplicatesBatchSampler(data, 6, seed=0))
    for batch in batches:
        assert sum(i % 4 == 0 for i in batch) <= 1  # "q common" / "shared negative" at most once per batch
    assert sorted(i for batch in batches for i in batch) == list(range(40))


def test_no_duplicates_is_not_quadratic():
    rows = [[f"a {i}", "very common" if i % 100 == 0 else f"b {i}"] for i in range(60_000)]
    start = time.perf_counter()
    sampler = NoDuplicatesBatchSampler(rows, 64, num_replicas=2)
    assert len(sampler) >= 60_000 // 128
    assert time.perf_counter() - start < 15  # O(n^2) would be ~1e9 steps here


def test_rows_pass_through_accelerate_shard_unchanged():
    """The Trainer wraps our rank-aware sampler in accelerate's BatchSamplerShard set to 1 process."""
    sampler = NoDuplicatesBatchSampler(pairs_with_repeats(), 8, num_replicas=2, rank=0)
    assert not hasattr(sampler, "batch_size")  # else BatchSamplerShard pads/drops our short batches
    shard = BatchSamplerShard(sampler, num_processes=1, process_index=0)
    assert list(shard) == list(sampler) and len(shard) == len(sampler)
    assert any(len(batch) < 8 for batch in shard)


def test_tiny_dataset_under_ddp_keeps_rank_counts_equal():
    data = [["same", f"p {i}"] for i in range(3)]  # every row shares "same": 3 batches of one row each
    with pytest.warns(UserWarning, match="dropped"):
        per_rank = all_ranks(lambda rank: NoDuplicatesBatchSampler(data, 4, num_replicas=2, rank=rank), 2)
    assert len(per_rank[0]) == len(per_rank[1])


@pytest.mark.parametrize("num_replicas", [1, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_length_grouped(num_replicas, drop_last):
    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(1003)]
    make = lambda rank: LengthGroupedBatchSampler(lengths, 16, mega_batch_mult=8, seed=5, drop_last=drop_last,  # noqa: E731
                                                  num_replicas=num_replicas, rank=rank)
    per_rank = all_ranks(make, num_replicas)
    steps = len(per_rank[0])
    global_size = 16 * num_replicas
    assert steps == (1003 // global_size if drop_last else -(-1003 // global_size))
    assert all(len(batches) == steps for batches in per_rank)
    rank_rows = [{row for batch in batches for row in batch} for batches in per_rank]
    assert sum(len(rows) for rows in rank_rows) == len(set().union(*rank_rows))
    if not drop_last:
        assert set().union(*rank_rows) == set(range(1003))
    # Grouping works: a batch's length spread is far below that of a random batch (~100).
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in per_rank[0] if len(b) == 16]
    assert sum(spreads) / len(spreads) < 30
    means = [sum(lengths[i] for i in b) / len(b) for b in per_rank[0]]
    assert means != sorted(means, reverse=True)  # batch order is shuffled, not longest first
    assert all_ranks(make, num_replicas, epoch=1)[0] != per_rank[0]
    assert all_ranks(make, num_replicas)[0] == per_rank[0]
