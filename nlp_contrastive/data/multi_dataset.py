"""Several datasets in one run: every global batch from one `train_data` source (so in-batch negatives are of
one kind), in proportional, round-robin, weighted or temperature order; the recipe's batch sampler runs inside
each source. Built on the shared rank sharding and per-epoch determinism of `nlp_contrastive.data.sampling`.
Also the recipe's `batch_sampler` (+ `multi_dataset_sampling`) -> the factory the Trainer builds its sampler with.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from nlp_contrastive.data.batch import SOURCE_COLUMN
from nlp_contrastive.data.sampling import (
    LengthGroupedBatchSampler,
    NoDuplicatesBatchSampler,
    _EpochBatchSampler,
    _sampler_arguments,
    build_batch_sampler,
    check_batch_sampler,
    texts_per_row,
    token_lengths,
)

MULTI_DATASET_SAMPLING = ("proportional", "round_robin", "weighted", "temperature")


class MultiDatasetBatchSampler(_EpochBatchSampler):
    """Batches drawn from one source each, so in-batch negatives are of one kind (a question never has a
    paraphrase as its negative); the inner sampler (random / no_duplicates / group_by_length) runs per source.

    `sources[i]` is row i's source index. Each epoch (seed, epoch) every source is cut into global batches by
    its inner sampler; then the order of batches over sources is
      proportional  every batch once, in random order (a source is picked with probability ∝ its batches left);
      round_robin   every batch once, sources in turn (an exhausted source is skipped);
      weighted      as many batches as the epoch has in total, source s drawn with probability ∝ weights[s]
                    (a source drawn more often than it has batches restarts, reshuffled: up-sampling);
      temperature   the same with weights = rows_s ** (1 / temperature) (T=1 proportional, large T uniform).
    Rank sharding, short final batches and set_epoch are the shared ones; a short batch is topped up only with
    rows of its own source. With the plain shuffle inside a source (no inner sampler), a source's remainder
    shorter than `num_replicas + 1` rows (which would give some rank a 1-row batch: no in-batch negative) joins
    the source's previous batch, so every row still comes once per epoch: that one batch is up to
    `num_replicas` rows larger, cut into parts that differ by at most one row (no row repeated; gathering and
    the loss scaling of `nlp_contrastive.distributed` take ranks of different sizes). A source too small for
    any batch is an error at construction.
    """

    def __init__(self, sources: Sequence[int], batch_size: int, *, sampling: str = "proportional",
                 weights: Sequence[float] | None = None, temperature: float = 1.0, inner=None,
                 drop_last: bool = False, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(len(sources), batch_size, drop_last=drop_last, seed=seed, num_replicas=num_replicas,
                         rank=rank)
        self.source_of = np.asarray(sources, dtype=np.int64)
        count = int(self.source_of.max()) + 1 if len(self.source_of) else 0
        self.rows_of = [np.flatnonzero(self.source_of == s) for s in range(count)]
        self.sampling = sampling
        self.probabilities = source_probabilities([len(r) for r in self.rows_of], sampling, weights, temperature)
        # inner(rows of one source) -> a sampler over those rows whose `_global_batches(rng)` gives local indices
        self._inner = [inner(rows) if inner is not None else None for rows in self.rows_of]
        smallest = self.global_batch_size if drop_last else self.min_short_batch
        for source, rows in enumerate(self.rows_of):
            if len(rows) < smallest:
                raise ValueError(f"train_data[{source}] has {len(rows)} row(s), too few for one batch of "
                                 f"{'the global batch size ' if drop_last else ''}{smallest} rows over "
                                 f"{num_replicas} process(es): add rows to it (or raise max_train_rows), drop it, or lower the "
                                 "batch size")

    def _source_batches(self, source: int, epoch: int, rng: np.random.Generator, repeat: int = 0) -> list[list[int]]:
        rows = self.rows_of[source]
        if self._inner[source] is not None:
            local = self._inner[source]._global_batches(epoch)
            if repeat:  # an up-sampled extra pass: the same batches, in another order
                local = [local[i] for i in rng.permutation(len(local))]
        else:
            order = rng.permutation(len(rows)).tolist()
            local = [order[i:i + self.global_batch_size] for i in range(0, len(rows), self.global_batch_size)]
            if not self.drop_last and len(local) > 1 and len(local[-1]) < self.min_short_batch:
                tail = local.pop()  # too few rows to give every rank 2: they join the previous batch
                local[-1] = local[-1] + tail
        batches = [rows[batch].tolist() for batch in local]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.global_batch_size]
        return batches

    def _global_batches(self, epoch: int) -> list[list[int]]:
        rng = self._rng(epoch)
        per_source = [deque(self._source_batches(s, epoch, rng)) for s in range(len(self.rows_of))]
        passes = [0] * len(per_source)
        total = sum(len(b) for b in per_source)
        if self.sampling == "round_robin":
            remaining, picks = [len(b) for b in per_source], []
            while any(remaining):
                for source, left in enumerate(remaining):
                    if left:
                        picks.append(source)
                        remaining[source] -= 1
        elif self.sampling == "proportional":
            picks = rng.permutation(np.repeat(np.arange(len(per_source)), [len(b) for b in per_source])).tolist()
        else:
            picks = rng.choice(len(per_source), size=total, p=self.probabilities).tolist()
        batches = []
        for source in picks:
            if not per_source[source]:  # up-sampled past its end: another pass over the source, reshuffled
                passes[source] += 1
                per_source[source].extend(self._source_batches(source, epoch, rng, passes[source]))
            batches.append(per_source[source].popleft())
        return batches

    def _split_short(self, batch: list[int], seen: list[list[int]]) -> list[list[int]] | None:
        """Equal parts topped up with rows of the same source (the shared way); a batch with its source's
        remainder, or one without such rows to top up with, is cut into parts differing by <= 1 row instead."""
        source = self.source_of[batch[0]]
        parts = None
        if len(batch) < self.global_batch_size:
            parts = super()._split_short(batch, [[row for row in rows if self.source_of[row] == source]
                                                 for rows in seen])
        if parts is None and len(batch) >= 2 * self.num_replicas:
            parts = [part.tolist() for part in np.array_split(np.asarray(batch), self.num_replicas)]
        return parts

    def _keys(self, row: int) -> Sequence[Hashable]:
        inner = self._inner[self.source_of[row]]
        if inner is None:
            return ()
        return inner._keys(int(np.searchsorted(self.rows_of[self.source_of[row]], row)))


def check_multi_dataset_sampling(sampling: str | None, weights: Sequence[float] | None, temperature: float,
                                 num_sources: int) -> None:
    """Recipe checks for multi_dataset_sampling / source_weights / sampling_temperature."""
    if sampling is None:
        if weights is not None:
            raise ValueError("source_weights is set but multi_dataset_sampling is not: set multi_dataset_sampling: "
                             "weighted")
        return
    if sampling not in MULTI_DATASET_SAMPLING:
        raise ValueError(f"unknown multi_dataset_sampling '{sampling}': choose {', '.join(MULTI_DATASET_SAMPLING)}")
    if (sampling == "weighted") != (weights is not None):
        raise ValueError("multi_dataset_sampling: weighted needs source_weights (one number per train_data entry), "
                         "and source_weights only applies to it")
    if weights is not None and (len(weights) != num_sources or any(not isinstance(w, (int, float)) or w < 0
                                                                    for w in weights) or not sum(weights) > 0):
        raise ValueError(f"source_weights must hold {num_sources} non-negative numbers (one per train_data entry, "
                         f"not all 0), got {weights}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"sampling_temperature must be > 0, got {temperature!r}")


def source_probabilities(rows: Sequence[int], sampling: str, weights: Sequence[float] | None = None,
                         temperature: float = 1.0) -> np.ndarray:
    """The share of batches each source gets (proportional / round_robin: its share of the batches)."""
    rows = np.asarray(rows, dtype=np.float64)
    if sampling == "weighted":
        raw = np.asarray(weights, dtype=np.float64)
    elif sampling == "temperature":
        raw = rows ** (1.0 / temperature)
    else:
        raw = rows
    return raw / raw.sum()


def batches_per_source(rows: Sequence[int], global_batch_size: int, sampling: str, *,
                       weights: Sequence[float] | None = None, temperature: float = 1.0,
                       drop_last: bool = False, num_replicas: int = 1) -> list[float]:
    """Expected batches per epoch from each source (printed with the derived numbers); a remainder of fewer
    than `num_replicas + 1` rows joins the previous batch (`MultiDatasetBatchSampler`)."""
    own = [r // global_batch_size if drop_last or (r > global_batch_size and r % global_batch_size <= num_replicas)
           else math.ceil(r / global_batch_size) for r in rows]
    if sampling in ("proportional", "round_robin"):
        return [float(n) for n in own]
    return [round(float(p) * sum(own), 1) for p in source_probabilities(rows, sampling, weights, temperature)]


# ----------------------------------------------------------------------------------- recipe -> sampler
def batch_sampler_factory(kind: str, multi_dataset_sampling: str | None = None, *,
                          source_weights: Sequence[float] | None = None, sampling_temperature: float = 1.0):
    """None for the Trainer's own random sampler; else `factory(dataset, batch_size, args)` -> a rank-aware
    batch sampler (what ContrastiveTrainer calls when it builds its data loader). With `multi_dataset_sampling`,
    every batch comes from one source (the dataset's `source` column) and `kind` runs inside each source.

    The factory serves one training set and keeps the sampler it built (see `_built_once`), so the start-up
    print (`batches_per_epoch`) and the Trainer's data loader share one build."""
    check_batch_sampler(kind)
    if multi_dataset_sampling is None:
        if kind == "random":
            return None
        return _built_once(lambda dataset, batch_size, args: build_batch_sampler(kind, dataset, batch_size, args))

    def factory(dataset, batch_size: int, args) -> _EpochBatchSampler:
        common = _sampler_arguments(args)
        return MultiDatasetBatchSampler(
            dataset[SOURCE_COLUMN][:], batch_size, sampling=multi_dataset_sampling, weights=source_weights,
            temperature=sampling_temperature, inner=_inner_factory(kind, dataset, batch_size, common), **common)

    return _built_once(factory)


def _built_once(build: Callable[[Any, int, Any], _EpochBatchSampler]) -> Callable[[Any, int, Any], _EpochBatchSampler]:
    """`build` that returns its last sampler again while rows, batch size, seed, drop_last and ranks are the same:
    an epoch of no_duplicates / group_by_length batches reads every row's texts or token counts (0.3-0.4 s per
    5k rows), and the sampler is deterministic in (seed, epoch), so one build serves the derived numbers printed
    at start and the Trainer. Keyed on the row count, not the dataset object: the Trainer trains on a copy of the
    same rows with a row-id column added. A new batch size (auto_find_batch_size) builds a new sampler."""
    last: list[tuple[tuple, _EpochBatchSampler]] = []

    def factory(dataset, batch_size: int, args) -> _EpochBatchSampler:
        key = (len(dataset), batch_size, *_sampler_arguments(args).values())
        if not last or last[0][0] != key:
            last[:] = [(key, build(dataset, batch_size, args))]
        return last[0][1]

    return factory


def _inner_factory(kind: str, dataset, batch_size: int, common: dict):
    """rows of one source -> the `kind` sampler over them (None: a plain shuffle)."""
    if kind == "random":
        return None
    if kind == "no_duplicates_by_length":
        texts, lengths = texts_per_row(dataset), token_lengths(dataset)
        return lambda rows: NoDuplicatesBatchSampler([texts[i] for i in rows], batch_size,
                                                     lengths=[lengths[i] for i in rows], **common)
    per_row = texts_per_row(dataset) if kind == "no_duplicates" else token_lengths(dataset)
    cls = NoDuplicatesBatchSampler if kind == "no_duplicates" else LengthGroupedBatchSampler
    return lambda rows: cls([per_row[i] for i in rows], batch_size, **common)
