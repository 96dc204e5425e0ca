"""Cross-device negatives: 2 processes on half batches == 1 process on the full batch (loss and every gradient).

The unit tests run without a process group (rank and world size are arguments); the 2-process test starts gloo
workers with torch.multiprocessing, wraps a tiny BERT encoder in DistributedDataParallel and compares with a
single process. The encoder runs in float64 so that the comparison is exact up to summation order: in float32
the two runs differ by ~1e-5 in a few gradient entries from padding lengths alone (half batches pad shorter).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nlp_contrastive.distributed import (
    Gathered,
    agree_max,
    exchange,
    gather_rows,
    label_offset,
    rank_and_world_size,
    reduce_across_ranks,
)
from nlp_contrastive.losses import InfoNCELoss, MatryoshkaLoss, info_nce
from tests.conftest import make_tiny_encoder


# ------------------------------------------------------------------------------------------ no process group
def test_rank_and_world_size_without_process_group():
    assert rank_and_world_size() == (0, 1)


def test_exchange_and_agreement_without_process_group_need_no_collective():
    assert exchange([2, 0, 1]) == [(2, 0, 1)] and agree_max([3, 1]) == (3, 1)


def test_label_offsets():
    assert [label_offset((3, 5, 2), r) for r in range(3)] == [0, 3, 8]
    gathered = Gathered(torch.zeros(10, 2), (3, 5, 2), 1)
    assert gathered.offset == 3 and gathered.local == slice(3, 8) and gathered.world_size == 3
    with pytest.raises(ValueError, match="rank 3 is outside the world of 3"):
        label_offset((3, 5, 2), 3)


def test_gather_is_identity_for_one_process_and_needs_a_group_otherwise():
    x = torch.randn(4, 3, requires_grad=True)
    gathered = gather_rows(x, world_size=1)
    assert gathered.tensor is x and gathered.sizes == (4,) and gathered.offset == 0
    with pytest.raises(ValueError, match="needs an initialised torch.distributed process group"):
        gather_rows(x, rank=0, world_size=2)


def test_scaling_makes_the_rank_average_the_global_mean():
    """DDP averages over ranks; the per-rank scaling must turn that average into the global mean/sum."""
    per_rank = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])]  # uneven: 2 + 3 rows
    everything = torch.cat(per_rank)
    for reduction, expected in (("mean", everything.mean()), ("sum", everything.sum())):
        values = [reduce_across_ranks(rows, reduction, global_rows=5, world_size=2) for rows in per_rank]
        torch.testing.assert_close(sum(values) / 2, expected)
    # Equal halves: each rank's value is just its local mean (no visible factor).
    torch.testing.assert_close(reduce_across_ranks(torch.tensor([1.0, 3.0]), "mean", global_rows=4, world_size=2),
                               torch.tensor(2.0))
    rows = torch.tensor([1.0, 2.0])
    assert reduce_across_ranks(rows, "none", global_rows=5, world_size=2) is rows


# ------------------------------------------------------------------------------------------ 2 processes
ANCHORS = ["how do I bake bread", "what is the capital of France", "best way to learn python", "why is the sky blue",
           "how tall is mount everest", "what do cats eat", "how to fix a flat tire", "who wrote hamlet"]
POSITIVES = ["a simple bread recipe", "Paris is the capital of France", "python tutorials for beginners",
             "Rayleigh scattering explains the blue sky", "Everest is 8849 metres high", "cat food and diets",
             "patching a bicycle tube", "Shakespeare wrote Hamlet"]
NEGATIVES = [["cake decorating tips", "a history of wheat"], ["Lyon is a city in France"], ["java for experts", "snakes"],
             [], ["K2 is the second highest mountain"], ["dog food reviews"], ["buying a new car"],
             ["Marlowe wrote Faustus", "hamlet is a small village"]]


def _scenarios() -> dict[str, dict]:
    dup_anchors, dup_positives, dup_negatives = list(ANCHORS), list(POSITIVES), [list(n) for n in NEGATIVES]
    dup_positives[6] = dup_positives[1]  # rank 1 row shares a positive text with rank 0 row 1
    dup_anchors[5] = dup_anchors[2]  # same question twice, on different ranks
    dup_negatives[3] = [POSITIVES[4], "sunsets are red"]  # a hard negative that is another pair's positive
    dup_negatives[7] = [NEGATIVES[0][0]]  # the same hard negative on both ranks
    return {
        "hard negatives": {"texts": (ANCHORS, POSITIVES, NEGATIVES), "symmetric": False, "split": 4},
        "symmetric": {"texts": (ANCHORS, POSITIVES, NEGATIVES), "symmetric": True, "split": 4},
        "duplicates": {"texts": (dup_anchors, dup_positives, dup_negatives), "symmetric": True, "split": 4},
        "uneven split": {"texts": (ANCHORS, POSITIVES, NEGATIVES), "symmetric": True, "split": 5},
    }


def _text_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """The trainer's collator's ids: a hash of each text's token ids."""
    return torch.tensor([hash(tuple(tokenizer(t)["input_ids"])) for t in texts], dtype=torch.long)


def _inputs(model, tokenizer, anchors, positives, negatives) -> dict[str, torch.Tensor]:
    """One forward over every text; negatives laid out as [B, K, D] + mask and ids as the trainer's collator does."""
    flat_negatives = [n for row in negatives for n in row]
    features = tokenizer(anchors + positives + flat_negatives, padding=True, return_tensors="pt")
    embeddings = model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
    b = len(anchors)
    width = max(len(row) for row in negatives)
    index = torch.full((b, width), -1, dtype=torch.long)
    start = 0
    for i, row in enumerate(negatives):
        index[i, : len(row)] = torch.arange(start, start + len(row))
        start += len(row)
    mask = index >= 0
    flat_ids = _text_ids(tokenizer, flat_negatives)
    return {"anchor": embeddings[:b], "positive": embeddings[b:2 * b],
            "negatives": embeddings[2 * b:][index.clamp(min=0)], "negatives_mask": mask,
            "anchor_ids": _text_ids(tokenizer, anchors), "positive_ids": _text_ids(tokenizer, positives),
            "negative_ids": torch.where(mask, flat_ids[index.clamp(min=0)], -1)}


def _loss_and_rows(model, tokenizer, anchors, positives, negatives, *, symmetric, gather):
    """The mean loss (with graph) and the per-row losses (no graph) from the same embeddings."""
    inputs = _inputs(model, tokenizer, anchors, positives, negatives)
    options = {"symmetric": symmetric, "gather_across_devices": gather, "temperature": 0.05}
    loss = info_nce(**inputs, **options)
    detached = {k: v.detach() for k, v in inputs.items()}
    return loss, info_nce(**detached, **options, reduction="none")


# Matryoshka + self_distill scenarios: rows on rank 0 (of the 8), equal and uneven halves.
MATRYOSHKA_SPLITS = {"matryoshka": 4, "matryoshka uneven": 5}


def _matryoshka_loss(model, tokenizer, anchors, positives, negatives, *, gather):
    """Matryoshka(InfoNCE) with self_distill: the prefix-similarity term compares rows across processes too."""
    loss = MatryoshkaLoss(InfoNCELoss(temperature=0.05, gather_across_devices=gather), dims=[32, 16, 8],
                          self_distill=5.0)
    return loss(**_inputs(model, tokenizer, anchors, positives, negatives))


def _gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        encoder = make_tiny_encoder(seed=0).double()
        # The BERT pooler is built but unused by mean pooling: DDP must be told.
        model = torch.nn.parallel.DistributedDataParallel(encoder, find_unused_parameters=True)
        results = {}
        for name, scenario in _scenarios().items():
            anchors, positives, negatives = scenario["texts"]
            rows = slice(0, scenario["split"]) if rank == 0 else slice(scenario["split"], None)
            local = (anchors[rows], positives[rows], negatives[rows])
            model.zero_grad(set_to_none=True)
            loss, per_row = _loss_and_rows(model, encoder.tokenizer, *local, symmetric=scenario["symmetric"],
                                           gather=True)
            loss.backward()
            results[name] = {"loss": loss.detach(), "rows": per_row, "grads": _gradients(model.module)}
        for name, split in MATRYOSHKA_SPLITS.items():
            rows = slice(0, split) if rank == 0 else slice(split, None)
            model.zero_grad(set_to_none=True)
            loss = _matryoshka_loss(model, encoder.tokenizer, ANCHORS[rows], POSITIVES[rows], NEGATIVES[rows],
                                    gather=True)
            loss.backward()
            results[name] = {"loss": loss.detach(), "grads": _gradients(model.module)}
        # Uneven row counts of ids (int64) and masks (bool), gathered without gradient.
        n = 3 if rank == 0 else 1
        ids = gather_rows(torch.arange(n) + 10 * rank)
        results["ids"] = {"tensor": ids.tensor, "sizes": ids.sizes, "rank": ids.rank, "offset": ids.offset}
        results["mask"] = gather_rows(torch.tensor([[rank == 0, True]] * n)).tensor
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single_process_encoder():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide BERT gains nothing from threads; on a busy machine they cost seconds
    yield make_tiny_encoder(seed=0).double()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory, single_process_encoder):
    out_dir = tmp_path_factory.mktemp("ddp")
    # fork reuses this process's imports (transformers, imported by the fixture above, takes seconds to import
    # in a fresh process);
    # torch makes forked children single-threaded, as for DataLoader workers. spawn where fork is unavailable.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True, start_method=method)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(2)]


def test_ids_and_masks_gather_with_uneven_rows(two_process_results):
    for rank, result in enumerate(two_process_results):
        ids, mask = result["ids"], result["mask"]
        assert ids["sizes"] == (3, 1) and ids["rank"] == rank and ids["offset"] == (0, 3)[rank]
        assert ids["tensor"].tolist() == [0, 1, 2, 10]
        assert mask.dtype == torch.bool and mask.tolist() == [[True, True]] * 3 + [[False, True]]


@pytest.mark.parametrize("scenario", list(_scenarios()))
def test_two_processes_equal_one_process_on_the_full_batch(two_process_results, single_process_encoder, scenario):
    spec = _scenarios()[scenario]
    encoder = single_process_encoder
    encoder.zero_grad(set_to_none=True)
    full_loss, full_rows = _loss_and_rows(encoder, encoder.tokenizer, *spec["texts"], symmetric=spec["symmetric"],
                                          gather=False)
    full_loss.backward()
    expected_grads = _gradients(encoder)
    largest = max(g.abs().max().item() for g in expected_grads.values())
    ranks = [r[scenario] for r in two_process_results]

    # What a DDP trainer reports (the ranks' average) is the full-batch loss; each rank's rows are its share.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, full_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.cat([ranks[0]["rows"], ranks[1]["rows"]]), full_rows, rtol=1e-5, atol=1e-7)
    # After DDP's gradient averaging every rank holds the full-batch gradient, for every parameter
    # (atol only for entries that are 0 in exact arithmetic, e.g. attention key biases).
    for result in ranks:
        assert result["grads"].keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-7 * largest,
                                       msg=lambda m, n=name: f"{scenario}: gradient of {n}: {m}")
    # Gathering matters: without it a rank's half batch gives different per-row losses (the test can fail).
    _, half_rows = _loss_and_rows(encoder, encoder.tokenizer, *(t[: spec["split"]] for t in spec["texts"]),
                                  symmetric=spec["symmetric"], gather=False)
    assert not torch.allclose(half_rows, full_rows[: spec["split"]], rtol=1e-3)


@pytest.mark.parametrize("scenario", list(MATRYOSHKA_SPLITS))
def test_matryoshka_self_distill_on_two_processes_equals_one_process(two_process_results, single_process_encoder,
                                                                     scenario):
    """Matryoshka(InfoNCE) + self_distill with gathering: every process's rows enter the prefix-similarity term,
    so the ranks' average loss and the DDP-averaged gradients are those of one process on the whole batch."""
    encoder = single_process_encoder
    encoder.zero_grad(set_to_none=True)
    full_loss = _matryoshka_loss(encoder, encoder.tokenizer, ANCHORS, POSITIVES, NEGATIVES, gather=False)
    full_loss.backward()
    expected = _gradients(encoder)
    largest = max(g.abs().max().item() for g in expected.values())
    ranks = [r[scenario] for r in two_process_results]
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, full_loss.detach(), rtol=1e-5, atol=0)
    for result in ranks:
        for name, grad in expected.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-7 * largest,
                                       msg=lambda m, n=name: f"{scenario}: gradient of {n}: {m}")
