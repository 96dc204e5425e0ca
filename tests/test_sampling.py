"""Batch samplers: exact lengths on every rank, no repeated text in a global batch, seeded per-epoch order."""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import pytest
from accelerate.data_loader import BatchSamplerShard

from nlp_contrastive.data.sampling import LengthGroupedBatchSampler, NoDuplicatesBatchSampler


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
    assert steps == len(data) // (8 * num_replicas) + (not drop_last)  # full batches + one short (403 % 8n >= n+1)
    for step in range(steps):
        parts = [batches[step] for batches in per_rank]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) >= 2  # equal per-rank batches, never 1 row
        assert len(parts[0]) == 8 or (step == steps - 1 and not drop_last)  # only the last batch may be short
        texts = [text for part in parts for row in part for text in data[row]]
        assert len(texts) == len(set(texts)), f"repeated text in global batch {step}"
    rank_rows = [{row for batch in batches for row in batch} for batches in per_rank]
    assert sum(len(rows) for rows in rank_rows) == len(set().union(*rank_rows))  # ranks are disjoint
    carried = NoDuplicatesBatchSampler(data, 8, drop_last=drop_last, seed=1, num_replicas=num_replicas).carried_over(0)
    assert set().union(*rank_rows) | set(carried) == set(range(len(data)))  # each row placed or carried over
    assert not set().union(*rank_rows) & set(carried)
    for epoch in range(1, 4):  # the same length every epoch: the Trainer's step count is len(epoch 0) x epochs
        assert [len(batches) for batches in all_ranks(lambda rank: NoDuplicatesBatchSampler(  # noqa: B023
            data, 8, drop_last=drop_last, seed=1, num_replicas=num_replicas, rank=rank), num_replicas, epoch)] \
            == [steps] * num_replicas


@pytest.fixture(scope="module")
def paraphrase_rows():
    """The training rows of recipes/paraphrase-infonce.yaml (5,112 pairs; one SICK sentence is in 9 rows)."""
    from nlp_contrastive.config import load_recipe
    from nlp_contrastive.data import sampling, train_data
    from tests.conftest import REPO_ROOT

    if not (REPO_ROOT.parent / "shared" / "data" / "sickr").exists() and "NLPC_DATA_DIR" not in os.environ:
        pytest.skip("paraphrase data not found (set NLPC_DATA_DIR)")
    recipe = load_recipe(str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml"), ["--use_cpu", "true"])
    return sampling.texts_per_row(train_data.build_train_dataset(recipe.data.train_data))


@pytest.mark.parametrize("batch_size,seed,num_replicas", [(1024, 42, 1), (64, 0, 1), (64, 10, 1), (32, 0, 2),
                                                          (512, 42, 2)])
def test_paraphrase_data_gives_full_batches_and_loses_nothing_across_epochs(paraphrase_rows, batch_size, seed,
                                                                            num_replicas):
    """Issue 12: batch 1024 seed 42 gave [..., 968, 40, 3, 3, 2] (9 steps, 5 printed); batch 64 seeds 0/10 a 1-row
    batch that info_nce rejects. Now: 5112 // global full batches + one short, every epoch."""
    rows, global_batch = paraphrase_rows, batch_size * num_replicas
    assert len(rows) == 5112
    per_rank = [NoDuplicatesBatchSampler(rows, batch_size, seed=seed, num_replicas=num_replicas, rank=r)
                for r in range(num_replicas)]
    offered, yielded = Counter(), Counter()
    for epoch in range(3):
        for sampler in per_rank:
            sampler.set_epoch(epoch)
        batches = [list(sampler) for sampler in per_rank]
        assert len(batches[0]) == 5112 // global_batch + 1  # 5112 % global >= num_replicas + 1 here
        sizes = [sum(len(b[step]) for b in batches) for step in range(len(batches[0]))]
        assert sizes[:-1] == [global_batch] * (len(sizes) - 1) and sizes[-1] >= 2 * num_replicas
        for step in range(len(sizes)):
            texts = [t for b in batches for row in b[step] for t in set(rows[row])]  # (some rows: anchor == positive)
            assert len(texts) == len(set(texts))
        stats = per_rank[0].epoch_stats[epoch]
        assert stats["dropped"] == 0
        if num_replicas == 1:  # (with 2 ranks the short batch is topped up with rows seen twice)
            yielded.update(row for batch in batches[0] for row in batch)
            offered.update(range(5112))
            assert sum(yielded.values()) + stats["carried_out"] == sum(offered.values())  # nothing lost
    if num_replicas == 1:
        final_carry = Counter(per_rank[0].carried_over(2))
        assert yielded + final_carry == offered  # every row seen once per epoch, only the last carry still due


def test_no_duplicates_counts_carry_and_drops_under_drop_last():
    data = pairs_with_repeats()
    sampler = NoDuplicatesBatchSampler(data, 8, drop_last=True, seed=1)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        assert len(list(sampler)) == 403 // 8 and all(len(b) == 8 for b in sampler)
    stats = [sampler.epoch_stats[e] for e in range(4)]
    assert [s["carried_in"] for s in stats[1:]] == [s["carried_out"] for s in stats[:-1]]
    assert all(s["carried_out"] <= 8 for s in stats) and sum(s["dropped"] for s in stats) > 0  # capped, counted


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
    sampler = NoDuplicatesBatchSampler(data, 6, seed=0)
    batches = list(sampler)
    for batch in batches:
        assert sum(i % 4 == 0 for i in batch) <= 1  # "q common" / "shared negative" at most once per batch
    # 10 rows share "q common" but 40 rows make 6 full batches + 1 short: the old sampler made 4 one-row batches of
    # the 4 left over; now one goes into the short batch (padded to 2 rows with a row seen this epoch) and 3 open
    # the next epoch
    assert [len(b) for b in batches] == [6] * 6 + [2] and sampler.epoch_stats[0]["short_batch_repeats"] == 1
    carried = sampler.carried_over(0)
    assert len(carried) == 3 and all(i % 4 == 0 and not any(i in b for b in batches) for i in carried)
    assert {i for batch in batches for i in batch} | set(carried) == set(range(40))
    sampler.set_epoch(1)
    assert [len(b) for b in sampler] == [6] * 6 + [2]  # same length every epoch
    assert set(carried) <= {i for b in sampler for i in b}  # seen in epoch 1


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


def test_data_that_cannot_form_a_batch_is_a_one_line_error():
    data = [["same", f"p {i}"] for i in range(3)]  # every row shares "same": no batch of 2 rows exists
    with pytest.raises(ValueError, match="cannot form even one batch of 3 rows"):
        NoDuplicatesBatchSampler(data, 4, num_replicas=2, rank=0)


def test_tiny_dataset_under_ddp_keeps_rank_counts_equal():
    data = [["same" if i < 2 else f"a {i}", f"p {i}"] for i in range(7)]  # global 8: one short batch
    per_rank = all_ranks(lambda rank: NoDuplicatesBatchSampler(data, 4, num_replicas=2, rank=rank), 2)
    assert len(per_rank[0]) == len(per_rank[1]) == 1 and len(per_rank[0][0]) == len(per_rank[1][0]) == 3


def test_length_grouped_leaves_out_a_one_row_remainder():
    make = lambda rank: LengthGroupedBatchSampler(list(range(41)), 10, num_replicas=2, rank=rank)  # noqa: E731
    per_rank = all_ranks(make, 2)  # 41 = 2 global batches of 20 + 1 row: a 1-row batch would crash info_nce
    assert [len(b) for b in per_rank[0]] == [10, 10] == [len(b) for b in per_rank[1]]


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


@pytest.mark.parametrize("num_replicas", [2, 4])
def test_rank_parts_of_a_global_batch_are_the_one_process_batch(num_replicas):
    """What makes N processes with gathered negatives equal one process on the global batch (README claim; the
    trainer-level proof is tests/test_ddp_training.py): rank parts of each full global batch, concatenated,
    are exactly the batch one process with batch_size x N builds, epoch after epoch (carry included)."""
    data = pairs_with_repeats()
    one = NoDuplicatesBatchSampler(data, 8 * num_replicas, seed=2)
    for epoch in range(3):
        one.set_epoch(epoch)
        per_rank = all_ranks(lambda rank: NoDuplicatesBatchSampler(data, 8, seed=2, num_replicas=num_replicas,  # noqa: B023
                                                                   rank=rank), num_replicas, epoch)
        full = [b for b in one if len(b) == 8 * num_replicas]
        assert len(full) == 403 // (8 * num_replicas)
        assert [sum((ranks[step] for ranks in per_rank), []) for step in range(len(full))] == full


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_no_duplicates_by_length_groups_lengths_and_keeps_every_no_duplicates_guarantee(num_replicas, drop_last):
    """no_duplicates_by_length: the no-duplicates contract (no repeated text in a global batch, equal rank counts,
    disjoint ranks, placed-or-carried rows, same length every epoch) plus batches of similar length, in
    shuffled order, deterministic in (seed, epoch)."""
    data = pairs_with_repeats()
    rng = random.Random(3)
    lengths = [rng.randint(4, 90) for _ in data]

    def make(rank, seed=1):
        return NoDuplicatesBatchSampler(data, 8, drop_last=drop_last, seed=seed, num_replicas=num_replicas,
                                        rank=rank, lengths=lengths, mega_batch_mult=10)

    per_rank = all_ranks(make, num_replicas)
    steps = len(per_rank[0])
    assert all(len(batches) == steps for batches in per_rank)
    assert steps == len(data) // (8 * num_replicas) + (not drop_last)
    for step in range(steps):
        parts = [batches[step] for batches in per_rank]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) >= 2
        texts = [text for part in parts for row in part for text in data[row]]
        assert len(texts) == len(set(texts)), f"repeated text in global batch {step}"
    rank_rows = [{row for batch in batches for row in batch} for batches in per_rank]
    assert sum(len(rows) for rows in rank_rows) == len(set().union(*rank_rows))
    carried = make(0).carried_over(0) if num_replicas == 1 else NoDuplicatesBatchSampler(
        data, 8 * num_replicas, drop_last=drop_last, seed=1, lengths=lengths, mega_batch_mult=10).carried_over(0)
    assert set().union(*rank_rows) | set(carried) == set(range(len(data)))
    # Grouped: the mean length spread of a global batch is far below a random batch's (~70 for 8n of 4..90).
    globals_ = [[row for ranks in per_rank for row in ranks[step]] for step in range(steps)]
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in globals_ if len(b) == 8 * num_replicas]
    assert sum(spreads) / len(spreads) < 25
    means = [sum(lengths[i] for i in b) / len(b) for b in globals_]
    assert means != sorted(means, reverse=True)  # batch order is shuffled, not longest first
    for epoch in range(1, 3):
        later = all_ranks(make, num_replicas, epoch)
        assert [len(b) for b in later] == [steps] * num_replicas and later[0] != per_rank[0]
    assert all_ranks(make, num_replicas)[0] == per_rank[0]  # resumable: rebuilt from (seed, epoch) alone
    assert all_ranks(lambda rank: make(rank, seed=2), num_replicas)[0] != per_rank[0]


def test_no_duplicates_without_lengths_keeps_its_order():
    """Adding length grouping did not change plain no_duplicates batches (same rng use): the batches pinned here
    are those of the sampler before length grouping existed."""
    data = pairs_with_repeats()
    plain = list(NoDuplicatesBatchSampler(data, 8, seed=1))
    assert (plain[0], plain[-1], len(plain)) == ([1, 267, 130, 120, 200, 226, 334, 318], [187, 102, 255], 51)
    grouped = list(NoDuplicatesBatchSampler(data, 8, seed=1, lengths=[len(a) + len(p) for a, p in data]))
    assert sorted(map(sorted, plain)) != sorted(map(sorted, grouped))


def test_no_duplicates_by_length_rejects_lengths_of_another_dataset():
    with pytest.raises(ValueError, match="3 lengths for 403 rows"):
        NoDuplicatesBatchSampler(pairs_with_repeats(), 8, lengths=[1, 2, 3])
