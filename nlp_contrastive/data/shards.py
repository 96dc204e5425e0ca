"""One streamed `train_data` source: its shards (local parquet / jsonl(.gz) / csv / tsv files given as one file, a
folder or a glob, or a hub dataset through `datasets` streaming), read into role-mapped rows (`SourceStream`).

Each shard reader yields `(row_number, row)` from a given row on, so a stream resumes inside a shard without reading
the shards before it (parquet skips whole row groups by their metadata; text formats skip lines of that one
shard). Nothing is converted, tokenized or cached ahead: extra disk is O(1). How rows become batches:
`data.streaming`.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nlp_contrastive.data.batch import LIST_ROLES, ROW_ID, TEXT_ROLES, VALUE_ROLES
from nlp_contrastive.data.loading import data_dir, parse_condition
from nlp_contrastive.data.sources import NAMED_SETS, Source, is_local_path

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")
HUB_PREFIX = "hub://"  # a shard that is a whole hub dataset split, read with datasets' streaming
BAD_ROW_POLICIES = ("stop", "skip")
ROW_ID_SHARD, ROW_ID_SOURCE = 10**9, 10**15  # row id = source * 1e15 + shard * 1e9 + row number in the shard


class StreamDataError(ValueError):
    """Bad data met while streaming (names the shard and line); a ValueError, so the CLI exits 2."""


def shard_format(path: str) -> str | None:
    """parquet / json / csv / tsv from the name (a trailing .gz is allowed for the text formats)."""
    name = path.lower().removesuffix(".gz")
    suffix = next((s for s in SHARD_SUFFIXES if name.endswith(s)), None)
    if suffix is None or (suffix == ".parquet" and path.lower().endswith(".gz")):
        return None
    return {".jsonl": "json", ".json": "json"}.get(suffix, suffix[1:])


def find_shards(dataset: str, split: str, where: str) -> list[str]:
    """The shards of a streamed source, in a fixed (sorted) order: a named set's local file, a glob, a folder's
    data files, one file, or a hub id (one `hub://` shard). One-line errors for a glob or folder with no shard."""
    if dataset in NAMED_SETS:
        root = data_dir()
        local = root / dataset / f"{split}.jsonl" if root is not None else None
        if local is None or not local.is_file():
            raise ValueError(f"{where}: named set '{dataset}' has no local {split}.jsonl to stream (set NLPC_DATA_DIR)")
        return [str(local)]
    if any(ch in dataset for ch in "*?["):
        found = sorted(p for p in glob.glob(str(Path(dataset).expanduser()), recursive=True)
                       if Path(p).is_file() and shard_format(p))
        if not found:
            raise ValueError(f"{where}: the glob '{dataset}' matches no shard ({', '.join(SHARD_SUFFIXES)}, "
                             "optionally .gz): check the pattern")
        return found
    if not is_local_path(dataset):
        return [f"{HUB_PREFIX}{dataset}"]
    path = Path(dataset).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and shard_format(str(p)))
        if not found:
            raise ValueError(f"{where}: the folder '{dataset}' holds no shard ({', '.join(SHARD_SUFFIXES)}, "
                             "optionally .gz)")
        return found
    if not path.is_file():
        raise ValueError(f"{where}: '{dataset}' does not exist: give a shard file, a folder or a glob")
    if shard_format(str(path)) is None:
        raise ValueError(f"{where}: '{dataset}' is not a shard type that streams: use {', '.join(SHARD_SUFFIXES)}")
    return [str(path)]


def _open_text(path: str):
    raw = gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def shard_columns(shard: str) -> list[str]:
    """Column names of a shard, read from its head (parquet: the schema in the footer)."""
    kind = shard_format(shard)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(shard).names)
        with _open_text(shard) as f:
            if kind == "json":
                for number, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise ValueError(f"line {number} is not a JSON object")
                        return list(row)
                return []
            return next(csv.reader(f, delimiter="\t" if kind == "tsv" else ","), [])
    except Exception as exc:  # pyarrow, gzip, json and csv each raise their own kinds
        raise StreamDataError(f"shard {shard}: cannot be read as {kind} ({str(exc).splitlines()[0]})") from None


def parquet_rows(shard: str) -> int:
    """A parquet shard's row count from its footer (the row groups' metadata; no row is read)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.read_metadata(shard).num_rows)
    except Exception as exc:  # pyarrow raises its own kinds for a missing or corrupt footer
        raise StreamDataError(f"shard {shard}: cannot read its parquet footer ({str(exc).splitlines()[0]})") from None


def read_shard(shard: str, start: int, bad: Callable[[str], None], *, config_name: str | None = None,
               split: str = "train") -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of one shard from row `start` on, as (row number, {column: value}). `bad(message)` gets each
    unreadable row or part (it raises under stop, counts under skip)."""
    if shard.startswith(HUB_PREFIX):
        yield from _read_hub(shard[len(HUB_PREFIX):], split, config_name, start)
    elif shard_format(shard) == "parquet":
        yield from _read_parquet(shard, start, bad)
    elif shard_format(shard) == "json":
        yield from _read_json_lines(shard, start, bad)
    else:
        yield from _read_csv(shard, start, bad)


def _read_parquet(shard: str, start: int, bad: Callable[[str], None]) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(shard)
    except Exception as exc:
        bad(f"shard {shard}: not a readable parquet file ({str(exc).splitlines()[0]})")
        return
    first = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if first + rows <= start:  # resume: skip the row groups before the position without reading them
            first += rows
            continue
        try:
            table = parquet.read_row_group(group)
        except Exception as exc:
            bad(f"shard {shard} rows {first + 1}-{first + rows}: corrupt parquet row group "
                f"({str(exc).splitlines()[0]})")
            first += rows
            continue
        for offset, row in enumerate(table.to_pylist()):
            if first + offset >= start:
                yield first + offset, row
        first += rows


def _read_json_lines(shard: str, start: int, bad: Callable[[str], None]) -> Iterator[tuple[int, dict]]:
    number = -1
    try:
        with _open_text(shard) as f:
            for number, line in enumerate(f):
                if number < start or not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    bad(f"shard {shard} line {number + 1}: not valid JSON ({exc.msg})")
                    continue
                if not isinstance(row, dict):
                    bad(f"shard {shard} line {number + 1}: not a JSON object")
                    continue
                yield number, row
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # a truncated .gz, bytes that are not UTF-8
        bad(f"shard {shard} after line {number + 1}: unreadable ({exc})")


def _read_csv(shard: str, start: int, bad: Callable[[str], None]) -> Iterator[tuple[int, dict]]:
    delimiter = "\t" if shard_format(shard) == "tsv" else ","
    number = -1
    try:
        with _open_text(shard) as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, [])
            for number, values in enumerate(reader):
                if number < start:
                    continue
                if len(values) != len(header):
                    bad(f"shard {shard} line {reader.line_num}: {len(values)} fields, the header has {len(header)}")
                    continue
                yield number, {k: _csv_value(v) for k, v in zip(header, values, strict=True)}
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        bad(f"shard {shard} after row {number + 1}: unreadable ({exc})")


def _csv_value(value: str) -> Any:
    """Numbers as numbers (scores, 0/1 labels), everything else as text."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _read_hub(hub_id: str, split: str, config_name: str | None, start: int) -> Iterator[tuple[int, dict]]:
    """A hub dataset through datasets' streaming; resuming skips `start` rows with `IterableDataset.skip`
    (the hub gives no random access, so the rows before the position are streamed past, not trained on)."""
    import datasets

    try:
        stream = datasets.load_dataset(hub_id, config_name, split=split, streaming=True)
        yield from enumerate(stream.skip(start) if start else stream, start)
    except (OSError, ValueError) as exc:  # not found, offline, no such split
        raise StreamDataError(f"hub dataset '{hub_id}' (split {split}) cannot be streamed: "
                              f"{str(exc).splitlines()[0]}") from None


class SourceStream:
    """One `train_data` source as a stream: its shards in a shuffled order per (epoch, pass), rows mapped onto
    roles, a bounded buffer and the rows deferred by the last batch. Its position is plain data (state())."""

    def __init__(self, index: int, source: Source, *, bad_rows: str, seed: int) -> None:
        self.index, self.source, self.seed, self.bad_rows = index, source, seed, bad_rows
        self.where = f"train_data[{index}]"
        self.shards = find_shards(source.dataset, source.split, self.where)
        self.columns = dict(source.columns)
        self._check_schemas()
        self.keep = parse_condition(source.filter) if source.filter else None
        self.skipped, self.read_total = 0, 0  # over the run: bad rows skipped (stream: {bad_rows: skip}), rows read
        self.reset(epoch=0, passes=0)

    def _check_schemas(self) -> None:
        local = [s for s in self.shards if not s.startswith("hub://")]
        if not local:
            return
        first = shard_columns(local[0])
        missing = sorted(set(self.columns.values()) - set(first))
        if missing:
            raise ValueError(f"{self.where}: column(s) {missing} not in shard {local[0]}: its columns are {first}")
        for shard in local[1:]:
            columns = shard_columns(shard)
            if sorted(columns) != sorted(first):
                raise ValueError(f"{self.where}: shard {shard} has columns {columns} but the first shard {local[0]} "
                                 f"has {first}: write every shard with the same columns")

    def reset(self, *, epoch: int, passes: int) -> None:
        """Start a pass over the shards (a new epoch, or a cycled restart), in a new order."""
        self.epoch, self.passes = epoch, passes
        self.shard_pos, self.row_pos, self.done_reading, self.accepted = 0, 0, False, 0
        self.buffer: list[dict] = []
        self.deferred: list[dict] = []
        self._rows: Iterator[dict] | None = None

    def order(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.index, self.passes])
        return rng.permutation(len(self.shards)).tolist()

    def fill(self, size: int) -> None:
        """Read rows until buffer + deferred hold `size` rows or the shards are read to the end."""
        while not self.done_reading and len(self.buffer) + len(self.deferred) < size:
            row = next(self._stream(), None)
            if row is None:
                self.done_reading = True
            else:
                self.buffer.append(row)

    def _stream(self) -> Iterator[dict]:
        if self._rows is None:
            self._rows = self._read()
        return self._rows

    def _read(self) -> Iterator[dict]:
        order = self.order()
        while self.shard_pos < len(order):
            shard_number = order[self.shard_pos]
            shard = self.shards[shard_number]
            for number, raw in read_shard(shard, self.row_pos, self._bad, config_name=self.source.config_name,
                                          split=self.source.split):
                self.row_pos = number + 1
                row = self._roles(raw, shard, number)
                if row is None:
                    continue
                row[ROW_ID] = self.index * ROW_ID_SOURCE + shard_number * ROW_ID_SHARD + number
                self.accepted += 1
                self.read_total += 1
                yield row
                if self.source.max_rows is not None and self.accepted >= self.source.max_rows:
                    self.shard_pos = len(order)
                    return
            self.shard_pos, self.row_pos = self.shard_pos + 1, 0

    def _bad(self, message: str) -> None:
        if self.bad_rows == "stop":
            raise StreamDataError(f"{self.where}: {message}: fix it, or set stream: {{bad_rows: skip}} to skip and "
                                  "count such rows")
        self.skipped += 1
        logger.warning("%s: skipped (stream bad_rows: skip, %d so far): %s", self.where, self.skipped, message)

    def _roles(self, raw: Mapping, shard: str, number: int) -> dict | None:
        """Role-mapped, filtered, checked row (None: filtered out or a skipped bad row)."""
        where = f"shard {shard} row {number + 1}"
        if self.keep is not None:
            column, predicate = self.keep
            try:
                if not predicate(raw.get(column)):
                    return None
            except TypeError:
                self._bad(f"{where}: filter '{self.source.filter}' cannot compare {raw.get(column)!r}")
                return None
        row = {}
        for role, column in self.columns.items():
            value = raw.get(column)
            if role == "label" and self.source.label_map:
                if value not in self.source.label_map:
                    self._bad(f"{where}: label {value!r} has no entry in label_map")
                    return None
                value = self.source.label_map[value]
            problem = _role_problem(role, value)
            if problem:
                self._bad(f"{where}: {role} (column '{column}') {problem}")
                return None
            row[role] = value
        if "score" in row and self.source.score_range is not None:
            low, high = self.source.score_range
            row["score"] = (float(row["score"]) - low) / (high - low)
        return row

    def state(self) -> dict:
        return {"epoch": self.epoch, "passes": self.passes, "shard_pos": self.shard_pos, "row_pos": self.row_pos,
                "done_reading": self.done_reading, "accepted": self.accepted, "skipped": self.skipped,
                "read_total": self.read_total,
                "buffer": list(self.buffer), "deferred": list(self.deferred)}

    def load(self, state: Mapping) -> None:
        self.reset(epoch=state["epoch"], passes=state["passes"])
        for key in ("shard_pos", "row_pos", "done_reading", "accepted", "skipped", "read_total"):
            setattr(self, key, state[key])
        self.buffer, self.deferred = list(state["buffer"]), list(state["deferred"])


def _role_problem(role: str, value: Any) -> str | None:
    if role in LIST_ROLES:
        ok = isinstance(value, list) and all(isinstance(t, str) and t.strip() for t in value)
        return None if ok and (value or role == "negatives") else "is not a list of non-empty texts"
    if role in TEXT_ROLES:
        return None if isinstance(value, str) and value.strip() else "is missing or empty"
    if role in VALUE_ROLES:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
        return None if ok or (role == "label" and isinstance(value, bool)) else "is not a finite number (map text " \
            "labels with label_map)"
    return None
