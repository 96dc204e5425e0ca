"""One source spec for training and evaluation data, one key check, one "local path or hub id?" rule.

A recipe's `train_data` entries and an evaluation suite's tasks name their data the same way:

    dataset: stsb | path/to/file.jsonl | path/to/folder | user/hub-dataset
    split, config_name           # datasets.load_dataset's names
    columns: {role: column}      # by name, never by position
    filter: "score >= 4"         # column OP value
    score_range: [low, high]     # the declared scale of `score`
    label_map: {value: 0/1}
    max_rows: N

`Source.from_dict` checks these keys once for both (plus the keys the caller adds: `group_pairs` for training,
`type` / `layout` / `batch_size` for evaluation); `nlp_contrastive.data.loading` loads and maps them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE_KEYS = ("dataset", "split", "config_name", "columns", "filter", "score_range", "label_map", "max_rows")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class NamedSet:
    """A dataset we know by name: where its local copy lives and how its hub copy maps onto it."""

    hub_id: str | None
    hub_config: str | None = None
    hub_columns: Mapping[str, str] = field(default_factory=dict)  # hub column -> local column name
    hub_score_factor: float = 1.0  # multiply the hub's score to get the local (original) scale
    hub_label_names: Sequence[str] | None = None  # int label on the hub -> local string label
    score_range: tuple[float, float] | None = None  # the original annotation scale of `score`


NAMED_SETS: dict[str, NamedSet] = {
    "stsb": NamedSet("sentence-transformers/stsb", hub_score_factor=5.0, score_range=(0.0, 5.0)),
    "sickr": NamedSet("RobZamp/sick", hub_columns={"sentence_A": "sentence1", "sentence_B": "sentence2",
                                                   "relatedness_score": "score"},
                      hub_label_names=("entailment", "neutral", "contradiction"), score_range=(1.0, 5.0)),
    "msrp": NamedSet("nyu-mll/glue", hub_config="mrpc"),
    "trecqa": NamedSet(None),
}


def is_local_path(name: str) -> bool:
    """Whether `name` means a local file or folder: it exists, or is written as a path (./x, /x, ~/x, x.jsonl).
    Anything else is a hub id (or a named set, which callers check first)."""
    path = Path(name).expanduser()
    return path.exists() or name.startswith((".", "/", "~")) or path.suffix.lower() in FILE_SUFFIXES


def is_hub_id(name: Any) -> bool:
    """`user/name` (or a bare `name`) that is not a local path."""
    return isinstance(name, str) and "/" in name and bool(_HUB_ID.match(name)) and not is_local_path(name)


def is_beir_folder(path: str | Path) -> bool:
    """A local folder in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."""
    path = Path(path)
    return path.is_dir() and (path / "corpus.jsonl").is_file()


def check_known_keys(raw: Iterable, valid: Iterable[str], where: str, *, noun: str = "key",
                     listed: str | None = None) -> None:
    """The one unknown-key error (recipes, sources, tasks, suites, loss kwargs): names the keys, suggests close
    matches, lists the valid keys (or `listed`, a shorter description, where there are too many to read)."""
    valid = list(valid)
    unknown = [str(k) for k in raw if k not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"{where}: unknown {noun}(s) {unknown}{hint}: valid keys are "
                         f"{listed or ', '.join(sorted(valid))}")


def yaml_problem(exc: Exception) -> str:
    """A YAML parser error in one line, with the line and column where the parser gave up."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(exc, "context", None)
    return f"{problem}{where}" + (f" ({context})" if context else "")


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and how its columns become roles (validated)."""

    dataset: str
    split: str = "train"
    config_name: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    filter: str | None = None
    score_range: tuple[float, float] | None = None
    label_map: Mapping | None = None
    max_rows: int | None = None

    @classmethod
    def from_dict(cls, raw: Any, *, where: str, roles: Sequence[str], extra_keys: Sequence[str] = (),
                  default_split: str = "train", base_dir: Path | None = None) -> Source:
        """Check keys and values of one spec (`extra_keys` are the caller's own, checked by it)."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a mapping with keys {', '.join(SOURCE_KEYS + tuple(extra_keys))}")
        check_known_keys(raw, SOURCE_KEYS + tuple(extra_keys), where)
        data = raw.get("dataset")
        if not isinstance(data, str) or not data:
            raise ValueError(f"{where}: set dataset: to a named set (stsb, sickr, msrp, trecqa, scifact), "
                             "a local file or folder, or a hub id")
        columns = raw.get("columns") or {}
        if not isinstance(columns, Mapping) or not all(isinstance(v, str) for v in columns.values()):
            raise ValueError(f"{where}: columns must map role -> column name, e.g. {{anchor: sentence1}}")
        bad_roles = sorted(set(columns) - set(roles))
        if bad_roles:
            raise ValueError(f"{where}: unknown role(s) {bad_roles} in columns: valid roles are {', '.join(roles)}")
        if raw.get("filter") is not None and not isinstance(raw["filter"], str):
            raise ValueError(f"{where}: filter must be a string 'column OP value', e.g. 'score >= 4'")
        max_rows = raw.get("max_rows")
        if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1):
            raise ValueError(f"{where}: max_rows must be a positive integer, got {max_rows!r}")
        label_map = raw.get("label_map")
        if label_map is not None and not isinstance(label_map, Mapping):
            raise ValueError(f"{where}: label_map must map label values to 0/1, e.g. {{entailment: 1}}")
        if base_dir is not None and not is_named_set(data) and (base_dir / data).exists():
            data = str(base_dir / data)  # paths in a suite file are relative to that file
        return cls(dataset=data, split=str(raw.get("split", default_split)), config_name=raw.get("config_name"),
                   columns=dict(columns), filter=raw.get("filter"),
                   score_range=_score_range(raw.get("score_range"), where), label_map=label_map, max_rows=max_rows)


def _score_range(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
            or not value[1] > value[0]):
        raise ValueError(f"{where}: score_range must be [low, high] with high > low, e.g. [0, 5]; got {value!r}")
    return float(value[0]), float(value[1])


def is_named_set(name: str) -> bool:
    return name in NAMED_SETS
