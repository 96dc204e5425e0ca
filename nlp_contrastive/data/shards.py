"""Shard readers for streamed training data: local parquet / jsonl(.gz) / csv / tsv files (one file, a folder or a
glob) and hub datasets through `datasets` streaming.

Each reader yields `(row_number, row)` from a given row on, so a stream resumes inside a shard without reading
the shards before it (parquet skips whole row groups by their metadata; text formats skip lines of that one
shard). Nothing is converted, tokenized or cached ahead: extra disk is O(1).
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nlp_contrastive.data.loading import data_dir
from nlp_contrastive.data.sources import NAMED_SETS, is_local_path

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")
HUB_PREFIX = "hub://"  # a shard that is a whole hub dataset split, read with datasets' streaming
BAD_ROW_POLICIES = ("stop", "skip")


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

    stream = datasets.load_dataset(hub_id, config_name, split=split, streaming=True)
    yield from enumerate(stream.skip(start) if start else stream, start)
