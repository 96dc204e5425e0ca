"""Training data bigger than memory: `train_data` sources read as streams of shards (`data.shards`), drawn into
duplicate-free global batches from a bounded look-ahead buffer, tokenized on the fly, resumable exactly.

How a global batch (`per_device_train_batch_size x processes` rows) is drawn, identically on every rank:
  - each source keeps a buffer of up to `stream: {buffer_size}` rows, refilled from its shards; the shards are read
    in an order shuffled per (seed, epoch, pass), rows of a shard in file order;
  - candidates are the rows deferred by earlier batches (oldest first), then the buffer in random order
    (`no_duplicates`, `random`) or by closeness of length to a random pivot row (`*_by_length`,
    `group_by_length`); with a no-duplicates sampler a row whose text is already in the batch is deferred to
    the next batch (counted in the log, never dropped);
  - rank r trains on rows [r * k, (r + 1) * k) of the batch (k = rows // processes) and tokenizes only those.
So every row is used once per epoch across the ranks, and ranks never disagree on the number of batches.
Every rank reads the text of every row (that is what lets all ranks agree on a duplicate-free global batch
without communicating); only tokenization and the model work are split.

Several sources (multi_dataset_sampling): every batch from one source. `round_robin` takes turns; `weighted`,
`proportional` and `temperature` draw each batch's source with the planner's seeded generator, with the in-memory
probabilities (∝ source_weights, ∝ rows, ∝ rows ** (1 / T)) from the row counts of `data.stream_sources` (parquet
footers, or the source's `num_rows`). Unlike the in-memory proportional sampler, which deals every batch of an
epoch exactly once in a random order, a stream cannot know its batches ahead: each batch's source is an independent
draw, so a source may run out before the others (temperature > 1 favours the small ones, which run out first), and
the exhaustion rule decides the end. Exhaustion (`stream: {exhaustion}`): `stop` ends the epoch when the first
source runs out; `cycle` restarts an exhausted source (reshuffled) until every source has run out once. A source's
last rows that cannot form a batch with two rows per rank are counted in the log as left at the end of its pass.

Exact resume: the checkpoint holds `stream_state.json` (epoch, each source's shard and row position, its
buffer and deferred rows, the random generator's state): a resumed run draws the very batches an uninterrupted
run would, reading on from the saved position instead of from the start.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlp_contrastive.data.batch import ROW_ID, SOURCE_COLUMN, TEXT_ROLES
from nlp_contrastive.data.shards import (
    BAD_ROW_POLICIES,
    ROW_ID_SOURCE,
    SourceStream,
    StreamDataError,
    find_shards,
)
from nlp_contrastive.data.sources import Source, check_known_keys
from nlp_contrastive.data.stream_sources import DRAWN, NEEDS_ROWS, known_rows
from nlp_contrastive.data.token_ids import encode_texts
from nlp_contrastive.files import write_json_atomic

logger = logging.getLogger(__name__)

STATE_FILE = "stream_state.json"
STREAM_DEFAULTS = {"buffer_size": 10_000, "bad_rows": "stop", "exhaustion": "stop"}  # the recipe's `stream` keys
EXHAUSTION = ("stop", "cycle")
NO_DUPLICATES = ("no_duplicates", "no_duplicates_by_length")
BY_LENGTH = ("group_by_length", "no_duplicates_by_length")


def stream_options(raw: Mapping | None) -> dict[str, Any]:
    """The recipe's `stream` options with their defaults (unknown keys: the usual one-line error)."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ValueError(f"stream must be a mapping such as {{buffer_size: 10000}}, got {raw!r}")
    check_known_keys(raw or {}, STREAM_DEFAULTS, "stream")
    return {**STREAM_DEFAULTS, **(raw or {})}


def check_streaming(*, batch_sampler: str, multi_dataset_sampling: str | None, options: Mapping | None,
                    max_steps: int, global_batch_size: int, dataloader_num_workers: int,
                    specs: Sequence[Mapping], max_train_rows: int | None = None, teacher: Any = None) -> None:
    """Recipe checks for a streamed run (before any model loads); each failure is one line."""
    buffer_size, bad_rows, exhaustion = stream_options(options).values()
    if max_steps <= 0:
        raise ValueError("streaming: the stream's length is unknown ahead, so set max_steps (optimizer steps; the "
                         "learning-rate schedule follows it)")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < global_batch_size:
        raise ValueError(f"stream buffer_size {buffer_size!r} is smaller than the global batch ({global_batch_size} "
                         "rows): a batch is drawn from the buffer, so set stream: {buffer_size: N} with N >= the "
                         "global batch (default 10000)")
    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"stream bad_rows must be one of {', '.join(BAD_ROW_POLICIES)}, got {bad_rows!r}")
    if exhaustion not in EXHAUSTION:
        raise ValueError(f"stream exhaustion must be one of {', '.join(EXHAUSTION)}, got {exhaustion!r}")
    if len(specs) > 1 and multi_dataset_sampling is None:
        raise ValueError("several streamed train_data sources: set multi_dataset_sampling: round_robin, weighted, "
                         "proportional or temperature (every batch from one source)")
    if max_train_rows is not None:
        raise ValueError("max_train_rows does not apply to streaming: set max_rows on a train_data source")
    if teacher is not None:
        raise ValueError("a teacher (distillation) scores the whole dataset ahead, which a stream does not allow: "
                         "set streaming: false")
    if dataloader_num_workers:
        raise ValueError("streaming draws and tokenizes its batches in the training process: set "
                         "dataloader_num_workers: 0")
    for i, spec in enumerate(specs):
        needs_all = [k for k in ("group_pairs", "layout", "teacher_scores", "prompts") if spec.get(k) is not None]
        if needs_all:
            raise ValueError(f"train_data[{i}]: {needs_all[0]} is not available with streaming (it needs the "
                             "whole dataset): drop it or set streaming: false")
        find_shards(str(spec.get("dataset")), str(spec.get("split", "train")), f"train_data[{i}]")
    if len(specs) > 1 and multi_dataset_sampling in NEEDS_ROWS:
        known_rows(specs, multi_dataset_sampling)  # every source's row count, without reading a row


def row_texts(row: Mapping) -> set[str]:
    """Every text of a row (what may not repeat inside a global batch)."""
    texts = set()
    for role in TEXT_ROLES:
        value = row.get(role)
        if isinstance(value, str):
            texts.add(value)
        elif isinstance(value, list):
            texts.update(value)
    return texts


def _length(row: Mapping) -> int:
    return sum(len(row[r]) for r in TEXT_ROLES if isinstance(row.get(r), str))


def _remove(buffer: list, positions: set[int]) -> None:
    """Take the rows at `positions` out of the buffer in O(len(positions)): each gap is filled with the buffer's
    last row (the buffer's order carries no meaning: candidates are drawn from it at random or by length)."""
    for i in sorted(positions, reverse=True):
        last = buffer.pop()
        if i < len(buffer):
            buffer[i] = last


class StreamPlanner:
    """The sequence of global batches over one or several source streams; deterministic in (seed, epoch) and in
    its state, so every rank draws the same batches and a restored state continues the same sequence.
    `weights`: each source's draw weight under weighted / proportional / temperature sampling."""

    def __init__(self, sources: list[SourceStream], *, global_batch_size: int, processes: int,
                 batch_sampler: str = "no_duplicates", buffer_size: int = 10_000, sampling: str | None = None,
                 weights: Sequence[float] | None = None, exhaustion: str = "stop", seed: int = 0) -> None:
        self.sources, self.global_batch_size, self.processes = sources, global_batch_size, processes
        self.no_duplicates, self.by_length = batch_sampler in NO_DUPLICATES, batch_sampler in BY_LENGTH
        self.buffer_size, self.sampling, self.exhaustion, self.seed = buffer_size, sampling, exhaustion, seed
        self.weights = np.asarray(weights if weights is not None else [1.0] * len(sources), dtype=np.float64)
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.batches, self.turn = epoch, 0, 0
        self.counts = {"deferred": 0, "short_batches": 0, "left_at_pass_end": 0}  # this epoch's, for the log
        self.rng = np.random.default_rng([self.seed, epoch, 1 << 20])
        self.ran_out = [False] * len(self.sources)
        for source in self.sources:
            source.reset(epoch=epoch, passes=0)

    def next_batch(self) -> list[dict] | None:
        """The next global batch of this epoch (rows of one source), or None at the epoch's end."""
        s = self._pick_source()
        batch, restarted = self._draw(self.sources[s]), False
        while batch is None:
            if restarted:
                raise StreamDataError(f"{self.sources[s].where} gives no batch (no rows, or all filtered out)")
            self.ran_out[s] = restarted = True
            if len(self.sources) == 1 or self.exhaustion == "stop" or all(self.ran_out):
                self._log_epoch_end()
                return None
            self.sources[s].reset(epoch=self.epoch, passes=self.sources[s].passes + 1)  # cycle: reshuffled
            batch = self._draw(self.sources[s])
        self.batches += 1
        return batch

    def _pick_source(self) -> int:
        if len(self.sources) == 1:
            return 0
        if self.sampling in DRAWN:
            return int(self.rng.choice(len(self.sources), p=self.weights / self.weights.sum()))
        self.turn = (self.turn + 1) % len(self.sources)
        return (self.turn - 1) % len(self.sources)

    def _draw(self, source: SourceStream) -> list[dict] | None:
        size = self.global_batch_size
        source.fill(self.buffer_size)
        chosen, used, deferred = [], set(), []

        def take(row: dict) -> bool:
            texts = row_texts(row)
            if self.no_duplicates and not texts.isdisjoint(used):
                self.counts["deferred"] += 1
                return False
            chosen.append(row)
            used.update(texts)
            return True

        for row in source.deferred:  # rows that lost to a repeated text before go first
            if len(chosen) >= size or not take(row):
                deferred.append(row)
        placed, lost = set(), []
        for i in self._candidates(source.buffer):
            if len(chosen) >= size:
                break
            if take(source.buffer[i]):
                placed.add(i)
            else:
                lost.append(i)
        while len(chosen) < size and not source.done_reading:  # many repeats: look further than the buffer
            source.fill(len(source.buffer) + len(source.deferred) + 1)
            if not source.done_reading:
                if take(source.buffer[-1]):
                    placed.add(len(source.buffer) - 1)
                else:
                    lost.append(len(source.buffer) - 1)
        source.deferred = deferred + [source.buffer[i] for i in lost]
        _remove(source.buffer, placed.union(lost))
        return self._finish(source, chosen)

    def _finish(self, source: SourceStream, chosen: list[dict]) -> list[dict] | None:
        """A full batch as is; a short one cut to equal rank parts of >= 2 rows, else the source's pass ends."""
        if len(chosen) == self.global_batch_size:
            return chosen
        keep = len(chosen) // self.processes * self.processes
        if keep >= 2 * self.processes:
            self.counts["short_batches"] += 1
            source.deferred = chosen[keep:] + source.deferred
            return chosen[:keep]
        left = len(chosen) + len(source.buffer) + len(source.deferred)
        if left:
            self.counts["left_at_pass_end"] += left
            logger.info("%s: %d row(s) left at the end of its pass (too few for 2 rows per rank without a "
                        "repeated text)", source.where, left)
        source.buffer, source.deferred = [], []
        return None

    def _candidates(self, buffer: list[dict]) -> np.ndarray:
        if not buffer:
            return np.zeros(0, dtype=np.int64)
        if not self.by_length:
            return self.rng.permutation(len(buffer))
        lengths = np.fromiter((_length(r) for r in buffer), dtype=np.int64, count=len(buffer))
        pivot = lengths[self.rng.integers(len(buffer))]
        return np.lexsort((self.rng.random(len(buffer)), np.abs(lengths - pivot)))

    def _log_epoch_end(self) -> None:
        read = sum(s.accepted for s in self.sources)  # of the last pass of each source
        skipped = sum(s.skipped for s in self.sources)  # over the run
        logger.info("stream epoch %d: %d batches, %d rows read, %d deferred to a later batch (repeated text), "
                    "%d short batches, %d rows left at a pass end, %d bad rows skipped", self.epoch, self.batches,
                    read, self.counts["deferred"], self.counts["short_batches"], self.counts["left_at_pass_end"],
                    skipped)

    def state(self) -> dict:
        """A snapshot (copies: the planner goes on drawing while a prefetched batch waits)."""
        return {"version": 1, "epoch": self.epoch, "batches": self.batches, "turn": self.turn,
                "ran_out": list(self.ran_out), "counts": dict(self.counts), "rng": self.rng.bit_generator.state,
                "sources": [s.state() for s in self.sources]}

    def load(self, state: Mapping) -> None:
        if state.get("version") != 1 or len(state["sources"]) != len(self.sources):
            raise ValueError(f"{STATE_FILE} does not match this recipe's {len(self.sources)} streamed source(s): "
                             "resume with the recipe that wrote the checkpoint")
        self.epoch, self.batches, self.turn = state["epoch"], state["batches"], state["turn"]
        self.ran_out, self.counts = list(state["ran_out"]), dict(state["counts"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        for source, saved in zip(self.sources, state["sources"], strict=True):
            source.load(saved)


class StreamingTrainData(torch.utils.data.IterableDataset):
    """What the Trainer trains on when the recipe streams: yields this rank's part of each global batch, tokenized
    (rows with `<role>_input_ids`, `row_id`, and `source` with several sources); an iteration is one epoch."""

    is_stream = True

    def __init__(self, planner: StreamPlanner, tokenizer, max_length: int, *, rank: int, processes: int) -> None:
        super().__init__()
        self.planner, self.tokenizer, self.max_length = planner, tokenizer, max_length
        self.rank, self.processes = rank, processes
        self.with_source = len(planner.sources) > 1

    def __iter__(self) -> Iterator[list[dict] | dict]:
        """One epoch. A background thread draws, tokenizes (and collates, see data_loader) up to PREFETCH batches
        ahead (the tokenizer and torch release the GIL, so this overlaps the training step); each batch carries the
        stream state after it, and the state of the last batch handed out is what a checkpoint saves."""
        produced: queue.Queue = queue.Queue(maxsize=self.PREFETCH)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(produced, stop), daemon=True)
        producer.start()
        ended = False
        try:
            while True:
                kind, item, state = produced.get()
                if kind == "error":
                    raise item
                self._consumed = state
                if kind == "end":
                    ended = True
                    return
                yield item
        finally:
            stop.set()
            producer.join()
            if not ended and self._consumed is not None:  # left early: forget the batches drawn ahead
                self.planner.load(self._consumed)

    PREFETCH = 2
    _consumed: dict | None = None
    collate: Callable[[list[dict]], dict] | None = None  # set by data_loader: batches leave the thread collated

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        def put(entry) -> bool:
            while not stop.is_set():
                try:
                    out.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            first, retried = True, False
            while not stop.is_set():
                batch = self.planner.next_batch()
                if batch is None:
                    self.planner.start_epoch(self.planner.epoch + 1)
                    if not first:
                        put(("end", None, self.planner.state()))
                        return
                    if retried:
                        raise StreamDataError("the streamed train_data gives no batch (no rows, or every row "
                                              "filtered out): check the shards and the filter")
                    retried = True  # a resumed state may sit exactly at an epoch's end: go on with the next epoch
                    continue
                first = False
                part = len(batch) // self.processes
                rows = self.encode(batch[self.rank * part:(self.rank + 1) * part])
                if not put(("batch", rows if self.collate is None else self.collate(rows), self.planner.state())):
                    return
        except BaseException as exc:  # handed to the training loop, which raises it (bad data: exit 2)
            put(("error", exc, None))

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning (each epoch reads the shards in a new order)."""
        self.planner.start_epoch(epoch)
        self._consumed = None

    def encode(self, rows: list[dict]) -> list[dict]:
        roles = [r for r in TEXT_ROLES if r in rows[0]]
        columns = encode_texts({r: [row[r] for row in rows] for r in roles}, self.tokenizer, self.max_length)
        out = []
        for i, row in enumerate(rows):
            item = {k: v for k, v in row.items() if k not in roles}
            item.update({name: values[i] for name, values in columns.items()})
            if self.with_source:
                item[SOURCE_COLUMN] = row[ROW_ID] // ROW_ID_SOURCE
            out.append(item)
        return out

    def data_loader(self, collate_fn: Callable[[list[dict]], dict]) -> torch.utils.data.DataLoader:
        """Batches as drawn (batch_size=None): already this rank's part, so no sampler and no accelerate shard.
        `collate_fn` runs in the background thread with the tokenizer, so the training loop's thread only takes
        ready tensors (collating on it cost the streamed path ~1.4 ms of a 55 ms tiny-model step).
        Its own generator: a DataLoader iterator made at each epoch would otherwise draw its seed from the global
        torch RNG, shifting the dropout masks of a resumed run (whose iterator starts mid-epoch) from the
        uninterrupted run's."""
        self.collate = collate_fn
        return torch.utils.data.DataLoader(self, batch_size=None, collate_fn=_collated, num_workers=0,
                                           generator=torch.Generator())

    def rows_read(self) -> list[int]:
        """Rows read from each source over the run (a row read in two epochs counts twice)."""
        return [s.read_total for s in self.planner.sources]

    def save_state(self, checkpoint_dir: str | Path) -> None:
        state = self._consumed if self._consumed is not None else self.planner.state()
        write_json_atomic(Path(checkpoint_dir) / STATE_FILE, state)

    def load_state(self, checkpoint_dir: str | Path) -> None:
        path = Path(checkpoint_dir) / STATE_FILE
        if not path.is_file():
            raise ValueError(f"checkpoint {checkpoint_dir} has no {STATE_FILE} (not written by a streaming run): "
                             "resume it without streaming, or start a new run")
        self.planner.load(json.loads(path.read_text(encoding="utf-8")))
        self._consumed = None


def _collated(batch: dict) -> dict:
    return batch  # collated by the producer thread already


def build_stream(sources: Sequence[Source], *, tokenizer, max_length: int,
                 per_device_batch_size: int, processes: int, rank: int, seed: int, batch_sampler: str,
                 buffer_size: int, bad_rows: str, exhaustion: str, sampling: str | None,
                 shares: Sequence[float] | None) -> StreamingTrainData:
    """The streamed training set of a recipe's `train_data` (already checked by `check_streaming`); `shares`: each
    source's probability of giving a batch (`stream_sources.stream_shares`), drawn by weighted / proportional /
    temperature."""
    streams = [SourceStream(i, source, bad_rows=bad_rows, seed=seed) for i, source in enumerate(sources)]
    planner = StreamPlanner(streams, global_batch_size=per_device_batch_size * processes, processes=processes,
                            batch_sampler=batch_sampler, buffer_size=buffer_size, sampling=sampling,
                            weights=shares, exhaustion=exhaustion, seed=seed)
    return StreamingTrainData(planner, tokenizer, max_length, rank=rank, processes=processes)
