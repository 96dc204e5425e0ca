"""A dev split carved from a BEIR folder's train qrels, deterministically (`nlp-contrastive beir-split`).

The rule, reproducible by hand: the query ids of qrels/<from>.tsv, `ids = sorted(set(ids))` (string sort),
`perm = numpy.random.default_rng(seed).permutation(len(ids))`, `n_dev = round(len(ids) * dev_fraction)`, the dev
queries are `{ids[i] for i in perm[:n_dev]}`. Their qrels rows go to qrels/dev.tsv, the rest stay in
qrels/<from>.tsv; every row keeps its bytes and order (header line and line endings as in the source). Other
qrels files are copied; corpus.jsonl and queries.jsonl are relative symlinks (a corpus is never copied). The
folder is built under a temporary sibling name and renamed into place, so it is never half-written.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEV_SPLIT = "dev"
LINKED_FILES = ("corpus.jsonl", "queries.jsonl")


@dataclass(frozen=True)
class SplitCounts:
    """What split.json records besides the settings."""

    queries: int
    dev_queries: int
    train_queries: int
    dev_rows: int
    train_rows: int


def dev_query_ids(query_ids: list[str], dev_fraction: float, seed: int) -> set[str]:
    """The dev queries of the module docstring's rule (query ids in any order; duplicates allowed)."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"--dev-fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    ids = sorted(set(query_ids))
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_dev = round(len(ids) * dev_fraction)
    if n_dev == 0 or n_dev == len(ids):
        raise ValueError(f"--dev-fraction {dev_fraction} of {len(ids)} queries gives {n_dev} dev queries, leaving "
                         f"{'no dev' if n_dev == 0 else 'no train'} query: choose a fraction giving 1 to "
                         f"{len(ids) - 1} dev queries")
    return {ids[i] for i in perm[:n_dev]}


def _qrels_lines(path: Path) -> tuple[list[bytes], list[bytes], list[str | None]]:
    """(header lines, data lines with their own endings, query id of each data line (None: blank line))."""
    lines = path.read_bytes().splitlines(keepends=True)
    header: list[bytes] = []
    if lines and _first_field(lines[0]) == "query-id":
        header = [lines.pop(0)]
    return header, lines, [_first_field(line) for line in lines]


def _first_field(line: bytes) -> str | None:
    text = line.decode("utf-8").rstrip("\r\n")
    if not text.strip():
        return None
    return next(csv.reader([text], delimiter="\t"))[0]  # as the qrels reader parses it


def split_beir_folder(data: str | Path, output: str | Path, *, dev_fraction: float = 0.1, seed: int = 0,
                      from_split: str = "train", overwrite: bool = False) -> SplitCounts:
    """Write `output`: the BEIR folder `data` with qrels/<from_split>.tsv split into itself minus the dev queries
    and qrels/dev.tsv (see the module docstring); returns the counts also written to output/split.json."""
    data, output = Path(data), Path(output)
    source = data / "qrels" / f"{from_split}.tsv"
    _check_paths(data, output, source, from_split, overwrite)
    header, lines, ids = _qrels_lines(source)
    query_ids = [q for q in ids if q is not None]
    if not query_ids:
        raise ValueError(f"{source} holds no judgments: give query-id, corpus-id, score lines")
    dev = dev_query_ids(query_ids, dev_fraction, seed)
    dev_lines = [line for line, q in zip(lines, ids, strict=True) if q in dev]
    rest = [line for line, q in zip(lines, ids, strict=True) if q not in dev]
    counts = SplitCounts(queries=len(set(query_ids)), dev_queries=len(dev), train_queries=len(set(query_ids) - dev),
                         dev_rows=len(dev_lines), train_rows=sum(q is not None for q in ids) - len(dev_lines))
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        (staging / "qrels").mkdir(parents=True)
        for other in sorted((data / "qrels").glob("*.tsv")):
            if other.name != source.name:
                shutil.copyfile(other, staging / "qrels" / other.name)
        (staging / "qrels" / source.name).write_bytes(b"".join(header + rest))
        (staging / "qrels" / f"{DEV_SPLIT}.tsv").write_bytes(b"".join(header + dev_lines))
        for name in LINKED_FILES:  # relative to where the folder ends up (staging is its sibling)
            target = os.path.relpath(os.path.realpath(data / name), os.path.realpath(output.parent) + os.sep
                                     + output.name)
            os.symlink(target, staging / name)
        record = {"source": str(data.resolve()), "from_split": from_split, "dev_fraction": dev_fraction,
                  "seed": seed, "rule": "ids = sorted(set(query ids)); perm = numpy.random.default_rng(seed)."
                  "permutation(len(ids)); dev = ids[perm[:round(len(ids) * dev_fraction)]]",
                  **asdict(counts), "dev_query_ids": sorted(dev)}
        (staging / "split.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def _check_paths(data: Path, output: Path, source: Path, from_split: str, overwrite: bool) -> None:
    if not data.is_dir() or not all((data / name).is_file() for name in LINKED_FILES):
        raise FileNotFoundError(f"--data '{data}' is not a BEIR folder: it needs corpus.jsonl, queries.jsonl and "
                                f"qrels/{from_split}.tsv")
    if not source.is_file():
        raise FileNotFoundError(f"--data '{data}' has no qrels/{from_split}.tsv to carve the dev split from: give a "
                                "folder with train qrels, or name its split with --from-split")
    if from_split == DEV_SPLIT or (data / "qrels" / f"{DEV_SPLIT}.tsv").is_file():
        raise ValueError(f"--data '{data}' already has a {DEV_SPLIT} split (qrels/{DEV_SPLIT}.tsv): use it as it is, "
                         "or split a folder without one")
    data_real, out_real = data.resolve(), output.resolve()
    if out_real == data_real or data_real in out_real.parents or out_real in data_real.parents:
        raise ValueError(f"--output '{output}' overlaps --data '{data}': write the split folder outside the source "
                         "folder (e.g. outputs/<name>-split)")
    if output.exists() and not overwrite:
        raise ValueError(f"--output '{output}' exists: pass --overwrite to replace it, or choose another path")
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output '{output}' exists and is a file: give a folder path")


def _move_into_place(staging: Path, output: Path) -> None:
    """Rename the finished folder over `output` (an old one is moved aside first, then deleted)."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(output, old)
    try:
        os.replace(staging, output)
    except BaseException:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
