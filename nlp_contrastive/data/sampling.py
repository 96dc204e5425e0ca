"""Rank-aware batch samplers: no duplicate texts in a global batch, or batches of similar length.

Both build the whole epoch's batches up front (deterministic in seed and epoch, identical on every rank) and
yield this rank's share, so `len()` is exact and every rank yields the same number of batches: a sampler whose
ranks disagree on the number of batches hangs DDP at the last step (sentence-transformers #3348).

Global batch = `batch_size * num_replicas` rows; rank r gets rows [r * batch_size, (r + 1) * batch_size) of each.
Every epoch has `rows // global_batch` full global batches and at most one short last batch (the remainder).
A short batch is kept only when every rank gets >= 2 rows of it (`num_replicas + 1` rows or more), so an
in-batch-negatives loss never sees a 1-row batch; it is cut into `num_replicas` equal parts of
ceil(rows / num_replicas) rows, and ranks left short are topped up with rows they already had this epoch (seen
twice, like `DistributedSampler`'s padding), never with a row of another rank and never with a conflicting text,
so rank outputs stay disjoint. With `drop_last=True` there is no short batch.

The samplers have no `batch_size` attribute on purpose: accelerate's `BatchSamplerShard` would then pad or drop
every batch shorter than it; without one it passes batches through unchanged.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from nlp_contrastive.data.batch import EMBEDDED_ROLES, LIST_ROLES, TEXT_ROLES, token_column

logger = logging.getLogger(__name__)

BATCH_SAMPLERS = ("random", "no_duplicates", "group_by_length", "no_duplicates_by_length")


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared machinery: per-epoch global batches (subclass), cached; rank sharding with disjoint top-ups."""

    def __init__(self, num_rows: int, batch_size: int, *, drop_last: bool, seed: int, num_replicas: int,
                 rank: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        self.num_rows = num_rows
        self.per_device_batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        # When set (ContrastiveTrainer does), each pass starts at this epoch: accelerate's wrappers do not forward
        # set_epoch in every version, and the loader rebuilt to skip batches on resume forwards it to no one.
        self.epoch_source: Callable[[], int] | None = None
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.per_device_batch_size * self.num_replicas

    @property
    def min_short_batch(self) -> int:
        """Smallest short last batch that still gives every rank two rows (one is no batch for InfoNCE)."""
        return self.num_replicas + 1

    def set_epoch(self, epoch: int) -> None:
        """A new epoch gives a new order (the Trainer calls this before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        yield from (list(batch) for batch in self._rank_batches())

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _global_batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def _keys(self, row: int) -> Sequence[Hashable]:
        """What may not repeat inside a global batch (besides the row itself)."""
        return ()

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._shard(self._global_batches(self.epoch)))
        return self._cache[1]

    def _shard(self, global_batches: list[list[int]]) -> list[list[int]]:
        size, replicas = self.per_device_batch_size, self.num_replicas
        full = [b for b in global_batches if len(b) == self.global_batch_size]
        seen = [[row for b in full for row in b[r * size:(r + 1) * size]] for r in range(replicas)]
        mine = []
        for batch in global_batches:
            if len(batch) == self.global_batch_size:
                mine.append(batch[self.rank * size:(self.rank + 1) * size])
            elif not self.drop_last:
                parts = self._split_short(batch, seen)
                if parts is None:
                    warnings.warn(f"{type(self).__name__}: dropped a final batch of {len(batch)} rows that cannot "
                                  f"be split over {replicas} ranks without repeating a text or a row", stacklevel=3)
                    continue
                for r, part in enumerate(parts):
                    seen[r].extend(part)
                mine.append(parts[self.rank])
        return mine

    def _split_short(self, batch: list[int], seen: list[list[int]]) -> list[list[int]] | None:
        """Equal parts for all ranks; short parts topped up from the same rank's rows, without conflicts."""
        part_size = math.ceil(len(batch) / self.num_replicas)
        parts = [batch[r * part_size:(r + 1) * part_size] for r in range(self.num_replicas)]
        used_rows = set(batch)
        used_keys = {key for row in batch for key in self._keys(row)}
        for r, part in enumerate(parts):
            candidates = iter(seen[r])
            while len(part) < part_size:
                row = next(candidates, None)
                if row is None:
                    return None
                keys = self._keys(row)
                if row in used_rows or not used_keys.isdisjoint(keys):
                    continue
                part.append(row)
                used_rows.add(row)
                used_keys.update(keys)
        return parts


class NoDuplicatesBatchSampler(_EpochBatchSampler):
    """Batches in which no text occurs twice across all rows and columns of the global (all-rank) batch.

    With in-batch negatives a repeated text is a false negative: the model is pushed away from the right
    answer. `texts_per_row[i]` lists every text of dataset row i (anchor, positive, negatives...).

    Each epoch the rows are shuffled (seed, epoch); rows go into the current global batch in that order, and a
    row whose text is already in it waits in a queue that is tried first for the next batches (at most
    4 x global batch queued rows are examined per batch, so one very frequent text cannot make this quadratic).
    An epoch is `rows // global_batch` full batches plus, unless `drop_last`, one short batch of up to
    `rows % global_batch` rows if that remainder is at least `num_replicas + 1` rows (when conflicts leave fewer
    distinct rows, it is padded to that size with rows already seen this epoch), so every epoch has the same
    length and the step count printed at start is the one the Trainer runs.

    Rows that find no place without a repeated text (a text in more rows than the epoch has batches, or the
    remainder under `drop_last`) are CARRIED OVER: they open the next epoch's order, so across epochs nothing
    is lost; only the last epoch's carry is never seen. At most one global batch of rows is carried; beyond that
    the oldest are dropped. Each epoch's counts (carried, dropped) are logged on rank 0 and kept in
    `epoch_stats`. Epoch e's batches depend on epochs < e only through the carry, which is recomputed from the
    seed, so resuming mid-training gives the same order. Texts are compared exactly, through a text -> integer
    table, so every rank builds the same batches.

    With `lengths` (each row's token count), batches are also of similar length (less padding): the shuffled
    order is sorted by length inside each mega-batch of `mega_batch_mult` global batches before the batches are
    filled, and the full batches are then shuffled, as `LengthGroupedBatchSampler` does. A row's in-batch
    negatives are then texts of similar length.
    """

    def __init__(self, texts_per_row: Sequence[Sequence[str]], batch_size: int, *, drop_last: bool = False,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0, lengths: Sequence[int] | None = None,
                 mega_batch_mult: int = 50) -> None:
        super().__init__(len(texts_per_row), batch_size, drop_last=drop_last, seed=seed,
                         num_replicas=num_replicas, rank=rank)
        if lengths is not None and len(lengths) != len(texts_per_row):
            raise ValueError(f"no_duplicates_by_length: {len(lengths)} lengths for {len(texts_per_row)} rows")
        if mega_batch_mult < 1:
            raise ValueError(f"mega_batch_mult must be >= 1, got {mega_batch_mult}")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.mega_batch_mult = mega_batch_mult
        table: dict[str, int] = {}
        self._row_keys = [tuple({table.setdefault(text, len(table)) for text in _flatten(row)})
                          for row in texts_per_row]
        self._plans: list[tuple[list[list[int]], list[int]]] = []  # per epoch: (global batches, carried out)
        self.epoch_stats: dict[int, dict[str, int]] = {}
        if not self._global_batches(0):
            raise ValueError(f"no_duplicates: {self.num_rows} rows cannot form even one batch of "
                             f"{self.min_short_batch} rows without repeating a text: use more (or more varied) "
                             "data, or batch_sampler: random")

    def _keys(self, row: int) -> Sequence[Hashable]:
        return self._row_keys[row]

    def carried_over(self, epoch: int) -> list[int]:
        """Rows epoch `epoch` could not place without a repeated text; they open epoch `epoch + 1`."""
        self._global_batches(epoch)
        return list(self._plans[epoch][1])

    def _global_batches(self, epoch: int) -> list[list[int]]:
        while len(self._plans) <= epoch:
            self._plans.append(self._plan_epoch(len(self._plans)))
        return self._plans[epoch][0]

    def _plan_epoch(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        size, keys = self.global_batch_size, self._row_keys
        carried_in = self._plans[epoch - 1][1] if epoch else []
        rng = self._rng(epoch)
        order = carried_in + self._epoch_order(rng)
        wanted = self.num_rows // size
        batches, leftover = _fill_full_batches(order, keys, size, wanted)
        if self.lengths is not None:  # longest-first filling must not mean longest-first training
            batches = [batches[i] for i in rng.permutation(len(batches))]
        full = len(batches)
        remainder = self.num_rows - wanted * size
        repeated = 0
        if not self.drop_last and remainder >= self.min_short_batch:
            short, leftover = _take_distinct(leftover, keys, remainder)
            if len(short) < self.min_short_batch:  # pad with rows seen this epoch: every epoch keeps its length
                placed = [row for batch in batches for row in batch]
                used = {key for row in short for key in keys[row]}
                padding, _ = _take_distinct(placed, keys, self.min_short_batch - len(short), used)
                short, repeated = short + padding, len(padding)
            if len(short) >= self.min_short_batch:
                batches.append(short)
            else:
                warnings.warn(f"NoDuplicatesBatchSampler: epoch {epoch} has no short last batch (too many rows "
                              "share a text): epochs may differ in length from epoch 0, on which the Trainer's step count is based",
                              stacklevel=2)
                leftover = short[:len(short) - repeated] + leftover
        carried_out, dropped = leftover[:size], len(leftover) - min(len(leftover), size)
        self.epoch_stats[epoch] = {"full_batches": full, "short_batch_rows": len(batches[-1]) if len(batches) > full else 0,
                                   "short_batch_repeats": repeated, "carried_in": len(carried_in),
                                   "carried_out": len(carried_out), "dropped": dropped}
        if full < wanted:
            warnings.warn(f"NoDuplicatesBatchSampler: epoch {epoch} has only {full} of {wanted} full batches "
                          "(too many rows share a text): epochs may differ in length from epoch 0, on which the "
                          "Trainer's step count is based", stacklevel=2)
        if self.rank == 0:
            logger.info("no_duplicates epoch %d: %s", epoch, self.epoch_stats[epoch])
        return batches, carried_out


    def _epoch_order(self, rng: np.random.Generator) -> list[int]:
        """This epoch's shuffle; with lengths, sorted by length (longest first) inside each mega-batch."""
        order = rng.permutation(self.num_rows)
        if self.lengths is None:
            return order.tolist()
        return _sorted_in_chunks(order, self.lengths, self.global_batch_size * self.mega_batch_mult).tolist()


def _sorted_in_chunks(order: np.ndarray, lengths: np.ndarray, chunk: int) -> np.ndarray:
    """`order` cut into chunks of `chunk` rows, each sorted by length, longest first (stable)."""
    return np.concatenate([part[np.argsort(-lengths[part], kind="stable")]
                           for part in np.split(order, range(chunk, len(order), chunk))])


def _fill_full_batches(order: list[int], keys: list[tuple[int, ...]], size: int, wanted: int
                       ) -> tuple[list[list[int]], list[int]]:
    """Up to `wanted` full batches without a repeated key, greedily in `order`; returns them and the unused rows."""
    fresh = iter(order)
    waiting: deque[int] = deque()
    batches: list[list[int]] = []
    while len(batches) < wanted:
        batch: list[int] = []
        used: set[int] = set()
        kept: list[int] = []
        while waiting and len(batch) < size and len(kept) + len(batch) < 4 * size:
            row = waiting.popleft()
            if used.isdisjoint(keys[row]):
                batch.append(row)
                used.update(keys[row])
            else:
                kept.append(row)
        waiting.extendleft(reversed(kept))  # still first in line, in their order
        while len(batch) < size:
            row = next(fresh, None)
            if row is None:
                return batches, batch + list(waiting)
            if used.isdisjoint(keys[row]):
                batch.append(row)
                used.update(keys[row])
            else:
                waiting.append(row)
        batches.append(batch)
    return batches, list(waiting) + list(fresh)


def _take_distinct(rows: list[int], keys: list[tuple[int, ...]], limit: int, used: set[int] | None = None
                   ) -> tuple[list[int], list[int]]:
    """The first up-to-`limit` rows of `rows` (in order) that share no key (nor one in `used`); them and the rest."""
    taken: list[int] = []
    rest: list[int] = []
    used = set() if used is None else set(used)
    for row in rows:
        if len(taken) < limit and used.isdisjoint(keys[row]):
            taken.append(row)
            used.update(keys[row])
        else:
            rest.append(row)
    return taken, rest


class LengthGroupedBatchSampler(_EpochBatchSampler):
    """Batches of similar-length rows (less padding, faster steps), still in random order.

    Each epoch: shuffle (seed, epoch), sort each mega-batch of `mega_batch_mult` global batches by length
    (longest first), cut it into global batches, and shuffle the order of the batches. `lengths[i]` is row i's
    length (e.g. its token count over all columns). A remainder smaller than `num_replicas + 1` rows is left out of
    that epoch (logged), as is any remainder with `drop_last`; the next epoch's shuffle leaves out other rows.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, mega_batch_mult: int = 50, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(len(lengths), batch_size, drop_last=drop_last, seed=seed,
                         num_replicas=num_replicas, rank=rank)
        if mega_batch_mult < 1:
            raise ValueError(f"mega_batch_mult must be >= 1, got {mega_batch_mult}")
        if self.num_rows < self.min_short_batch:
            raise ValueError(f"group_by_length: {self.num_rows} rows cannot give {num_replicas} process(es) 2 rows "
                             "each: use more data or fewer processes")
        self.lengths = np.asarray(lengths)
        self.mega_batch_mult = mega_batch_mult

    def _global_batches(self, epoch: int) -> list[list[int]]:
        size = self.global_batch_size
        rng = self._rng(epoch)
        order = rng.permutation(self.num_rows)
        grouped = _sorted_in_chunks(order, self.lengths, size * self.mega_batch_mult)
        batches = [grouped[i:i + size].tolist() for i in range(0, self.num_rows, size)]
        if len(batches[-1]) < size and (self.drop_last or len(batches[-1]) < self.min_short_batch):
            if self.rank == 0 and not self.drop_last:
                logger.info("group_by_length epoch %d: left out a last batch of %d row(s), fewer than %d",
                            epoch, len(batches[-1]), self.min_short_batch)
            batches.pop()
        return [batches[i] for i in rng.permutation(len(batches))]


# ----------------------------------------------------------------------------------- recipe -> sampler
def build_batch_sampler(kind: str, dataset: Any, batch_size: int, args: Any) -> _EpochBatchSampler | None:
    """The recipe's `batch_sampler` for a tokenized training `dataset` (None = the Trainer's random sampler).

    `args` are the TrainingArguments: seed (data_seed first), dataloader_drop_last, world_size, process_index.
    """
    check_batch_sampler(kind)
    if kind == "random":
        return None
    common = _sampler_arguments(args)
    if kind == "no_duplicates":
        return NoDuplicatesBatchSampler(texts_per_row(dataset), batch_size, **common)
    if kind == "no_duplicates_by_length":
        return NoDuplicatesBatchSampler(texts_per_row(dataset), batch_size, lengths=token_lengths(dataset), **common)
    return LengthGroupedBatchSampler(token_lengths(dataset), batch_size, **common)


def check_batch_sampler(kind: str) -> None:
    if kind not in BATCH_SAMPLERS:
        raise ValueError(f"unknown batch_sampler '{kind}': choose {', '.join(BATCH_SAMPLERS)}")


def _sampler_arguments(args: Any) -> dict:
    """Seed (data_seed first), drop_last, world size and rank from the TrainingArguments."""
    return {"seed": args.data_seed if args.data_seed is not None else args.seed,
            "drop_last": args.dataloader_drop_last, "num_replicas": args.world_size, "rank": args.process_index}


def batches_per_epoch(factory: Callable[[Any, int, Any], _EpochBatchSampler] | None, dataset: Any, batch_size: int,
                      args: Any) -> int:
    """Batches each process runs per epoch: what the Trainer's step count is built from (printed as derived).
    `factory` is the one `batch_sampler_factory` gave the Trainer (None: the Trainer's random sampler), so the
    count is the length of the very sampler the Trainer will use, built once."""
    sampler = factory(dataset, batch_size, args) if factory is not None else None
    if sampler is not None:
        return len(sampler)
    per_step = batch_size * args.world_size  # accelerate shards the Trainer's batches over processes
    return len(dataset) // per_step if args.dataloader_drop_last else math.ceil(len(dataset) / per_step)


def texts_per_row(dataset: Any) -> list[list[str]]:
    """Every text of each row (all text role columns; a negatives list adds all its texts)."""
    rows: list[list[str]] = [[] for _ in range(len(dataset))]
    for column in [c for c in TEXT_ROLES if c in dataset.column_names]:
        for i, value in enumerate(dataset[column]):
            rows[i].extend(value if isinstance(value, list) else [value])
    return rows


def token_lengths(dataset: Any) -> list[int]:
    """Each row's token count over its single-text roles (their `batch.token_column`s): what padding follows."""
    columns = [token_column(r) for r in EMBEDDED_ROLES
               if r not in LIST_ROLES and token_column(r) in dataset.column_names]
    return [sum(len(ids) for ids in row) for row in zip(*(dataset[c] for c in columns), strict=True)]


def _flatten(row: Sequence) -> Iterator[str]:
    for value in [row] if isinstance(row, str) else row:
        if isinstance(value, str):
            yield value
        else:
            yield from value  # a list of negatives inside the row
