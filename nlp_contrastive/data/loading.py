"""Load paired-text datasets with `datasets`, map columns to roles by name, validate, pre-tokenize once.

Sources, in the order they are tried:
  1. a named set (`stsb`, `sickr`, `msrp`, `trecqa`) found in the local data dir ($NLPC_DATA_DIR/<name>/<split>.jsonl),
  2. a local file (jsonl / json / csv / tsv / parquet) or a folder holding `<split>.<ext>`,
  3. a hub id (also the fallback for a named set with no local copy), loaded with `datasets.load_dataset`.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from nlp_contrastive.data.batch import LIST_ROLES, ROLES, TEXT_ROLES, VALUE_ROLES
from nlp_contrastive.data.sources import NAMED_SETS, is_local_path, yaml_problem
from nlp_contrastive.data.token_ids import encode_texts

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "NLPC_DATA_DIR"
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def data_dir() -> Path | None:
    """The local mirror of named sets, from $NLPC_DATA_DIR (None when unset)."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def load_split(source: str, split: str = "train", *, config_name: str | None = None,
               data_dir_override: str | os.PathLike | None = None) -> datasets.Dataset:
    """Load one split of a named set, local file/folder or hub id as a `datasets.Dataset`."""
    if source in NAMED_SETS:
        return _load_named(source, split, Path(data_dir_override) if data_dir_override else data_dir())
    path = Path(source).expanduser()
    if path.is_file():
        return _load_file(path, split_label=split)
    if path.is_dir():
        return _load_file(_split_file_in(path, split), split_label=split)
    if is_local_path(source):
        raise FileNotFoundError(f"data file '{source}' does not exist: check the path (relative to {os.getcwd()})")
    return _load_hub(source, split, config_name)


def _load_named(name: str, split: str, root: Path | None) -> datasets.Dataset:
    spec = NAMED_SETS[name]
    if root is not None and (root / name).is_dir():
        return _load_file(_split_file_in(root / name, split), split_label=split)
    if spec.hub_id is None or is_offline():
        where = f"{root / name}" if root else f"${DATA_DIR_ENV} (unset)"
        hint = "no hub copy is known" if spec.hub_id is None else f"HF_HUB_OFFLINE is set, so {spec.hub_id} can't be fetched"
        raise FileNotFoundError(f"named set '{name}' not found in {where} and {hint}: set {DATA_DIR_ENV} to the "
                                "folder holding <name>/<split>.jsonl")
    ds = _load_hub(spec.hub_id, split, spec.hub_config)
    ds = ds.rename_columns({k: v for k, v in spec.hub_columns.items() if k in ds.column_names})
    if spec.hub_score_factor != 1.0 and "score" in ds.column_names:
        ds = ds.map(lambda b: {"score": [s * spec.hub_score_factor for s in b["score"]]}, batched=True)
    if spec.hub_label_names and "label" in ds.column_names:
        names = list(spec.hub_label_names)
        ds = ds.map(lambda b: {"label": [names[i] for i in b["label"]]}, batched=True)
    return ds


def _split_file_in(folder: Path, split: str) -> Path:
    for ext in _FILE_BUILDERS:
        candidate = folder / f"{split}{ext}"
        if candidate.is_file():
            return candidate
    found = sorted(p.name for p in folder.iterdir() if p.suffix in _FILE_BUILDERS)
    raise FileNotFoundError(f"split '{split}' not found in {folder}: expected {split}.jsonl (or .csv/.parquet); "
                            f"files there: {', '.join(found) or 'none'}")


def _load_file(path: Path, split_label: str) -> datasets.Dataset:
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"data file '{path}' has an unsupported type: use .jsonl, .json, .csv, .tsv or .parquet")
    if path.stat().st_size == 0:
        raise ValueError(f"data file '{path}' is empty: give a file with at least one example")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    json_logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = json_logger.level
    json_logger.setLevel(logging.CRITICAL)  # it logs the failure we report below in one line
    try:
        return datasets.load_dataset(builder, data_files={split_label: str(path)}, split=split_label, **kwargs)
    except Exception as exc:  # datasets raises many kinds here (ArrowInvalid, DatasetGenerationError, ...)
        cause = exc.__cause__ or exc
        problem = _first_bad_json_line(path) if path.suffix.lower() == ".jsonl" else None
        raise ValueError(problem or f"could not read data file '{path}' as {builder}: {str(cause).splitlines()[0]} "
                         "— check that every line is a valid record") from None
    finally:
        json_logger.setLevel(level)


def _first_bad_json_line(path: Path) -> str | None:
    """Why a JSONL file did not load, naming the line (pyarrow's message names a block, not a line)."""
    seen_keys: dict[str, type] = {}
    any_row = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            any_row = True
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"could not read data file '{path}': line {number} is not valid JSON ({exc.msg}): fix that line"
            if not isinstance(row, dict):
                return f"could not read data file '{path}': line {number} is not a JSON object ({{column: value, ...}}): fix that line"
            for key, value in row.items():
                kind = _json_kind(value)
                if kind is not None and seen_keys.setdefault(key, kind) is not kind:
                    return (f"could not read data file '{path}': line {number} has {key!r} as {kind.__name__}, earlier lines as "
                            f"{seen_keys[key].__name__}: give a column one type")
    if not any_row:
        return f"data file '{path}' has no rows (only blank lines): give a file with at least one example"
    return None


def _json_kind(value) -> type | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return bool
    return float if isinstance(value, (int, float)) else type(value)


def _load_hub(hub_id: str, split: str, config_name: str | None) -> datasets.Dataset:
    if is_offline():
        raise FileNotFoundError(f"'{hub_id}' is neither a local file nor reachable: HF_HUB_OFFLINE is set, so the "
                                "hub can't be used — give a local file, or a named set with a local copy")
    try:
        return datasets.load_dataset(hub_id, config_name, split=split)
    except Exception as exc:
        raise FileNotFoundError(f"could not load '{hub_id}' split '{split}' from the hub: "
                                f"{str(exc).splitlines()[0]}") from None


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# ------------------------------------------------------------------------------------------- filtering
_FILTER = re.compile(r"^\s*(\w+)\s*(==|!=|>=|<=|>|<|in)\s*(.+?)\s*$")
_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt,
        "<": operator.lt, "in": lambda a, b: a in b}


def parse_condition(expression: str):
    """Turn `column OP value` (value in YAML syntax, e.g. `score >= 4`, `label == entailment`) into a predicate."""
    match = _FILTER.match(expression)
    if not match:
        raise ValueError(f"filter '{expression}' is not 'column OP value' (OP one of {', '.join(_OPS)}): "
                         "e.g. 'score >= 4' or 'label == entailment'")
    column, op, raw = match.groups()
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"filter '{expression}': value {raw!r} is not valid ({yaml_problem(exc)}): write "
                         "'column OP value' with a number, a word or a quoted text, e.g. 'score >= 4'") from None
    compare = _OPS[op]
    return column, (lambda row_value: compare(row_value, value))


def filter_rows(ds: datasets.Dataset, expression: str) -> datasets.Dataset:
    column, predicate = parse_condition(expression)
    _require_columns(ds, [column], purpose=f"filter '{expression}'")
    try:
        return ds.filter(lambda b: [predicate(v) for v in b[column]], batched=True)
    except TypeError as exc:
        raise ValueError(f"filter '{expression}' compares values of column '{column}' ({ds.features[column]}) "
                         f"that do not compare with the given value ({exc}): fix the value or the column") from None


# -------------------------------------------------------------------------------------- grouping pairs
def group_pairs(ds: datasets.Dataset, *, anchor: str, text: str, positive_if: str, negative_if: str,
                max_negatives: int | None = None, as_list: bool = False) -> datasets.Dataset:
    """Build (anchor, positive, negative[s]) rows from labelled pairs that share an anchor text.

    Each (anchor, positive) pair becomes a row; its negatives are the texts paired with the same anchor
    that satisfy `negative_if`. Anchors without any negative are dropped. `as_list` keeps all negatives
    (an N-tuple row); otherwise each row takes one negative, cycling through them.
    """
    pos_col, is_pos = parse_condition(positive_if)
    neg_col, is_neg = parse_condition(negative_if)
    _require_columns(ds, [anchor, text, pos_col, neg_col], purpose="group_pairs")
    positives: dict[str, list[str]] = {}
    negatives: dict[str, list[str]] = {}
    for row in ds:
        if is_pos(row[pos_col]):
            positives.setdefault(row[anchor], []).append(row[text])
        elif is_neg(row[neg_col]):
            negatives.setdefault(row[anchor], []).append(row[text])
    rows: dict[str, list] = {"anchor": [], "positive": [], "negatives" if as_list else "negative": []}
    for anchor_text, pos_texts in positives.items():
        neg_texts = negatives.get(anchor_text, [])[:max_negatives]
        if not neg_texts:
            continue
        for i, pos_text in enumerate(pos_texts):
            rows["anchor"].append(anchor_text)
            rows["positive"].append(pos_text)
            if as_list:
                rows["negatives"].append(list(neg_texts))
            else:
                rows["negative"].append(neg_texts[i % len(neg_texts)])
    if not rows["anchor"]:
        raise ValueError(f"group_pairs found no anchor with both a positive ({positive_if}) and a negative "
                         f"({negative_if}): check the conditions against the data's values")
    return datasets.Dataset.from_dict(rows)


# ------------------------------------------------------------------------------------ roles + checking
def select_roles(ds: datasets.Dataset, columns: Mapping[str, str], *,
                 score_range: Sequence[float] | None = None, label_map: Mapping | None = None,
                 source: str = "dataset") -> datasets.Dataset:
    """Keep only the mapped columns, renamed to their roles, validated; scores rescaled to [0, 1] if declared."""
    unknown_roles = [r for r in columns if r not in ROLES]
    if unknown_roles:
        raise ValueError(f"unknown role(s) {unknown_roles} in columns for {source}: valid roles are {', '.join(ROLES)}")
    _require_columns(ds, list(columns.values()), purpose=f"columns of {source}")
    ds = ds.select_columns(list(dict.fromkeys(columns.values())))
    mapping = {column: role for role, column in columns.items()}
    if len(mapping) != len(columns):
        ds = ds.map(lambda b: {role: b[col] for role, col in columns.items()}, batched=True,
                    remove_columns=ds.column_names)
    else:
        ds = ds.rename_columns({c: r for c, r in mapping.items() if c != r})
    validate_roles(ds, source=source)
    if "score" in ds.column_names and score_range is not None:
        low, high = float(score_range[0]), float(score_range[1])
        if not high > low:
            raise ValueError(f"score_range {list(score_range)} for {source} must be [low, high] with high > low")
        scores = ds.data.column("score") if ds._indices is None else ds.with_format("arrow")[:].column("score")
        outside = pc.or_(pc.less(scores, low), pc.greater(scores, high))
        if pc.any(outside).as_py():
            row = pc.index(outside, True).as_py()
            raise ValueError(f"{source}: score {scores[row].as_py()} in row {row} is outside score_range "
                             f"[{low:g}, {high:g}]: fix score_range to the data's scale or fix that row")
        ds = ds.map(lambda b: {"score": [(s - low) / (high - low) for s in b["score"]]}, batched=True)
    if "label" in ds.column_names and label_map:
        missing = sorted(set(ds.unique("label")) - set(label_map))
        if missing:
            yaml_hint = (" (YAML reads yes/no/on/off as true/false: quote them, e.g. {'yes': 1})"
                         if any(isinstance(k, bool) for k in label_map) else "")
            raise ValueError(f"label values {missing[:5]} in {source} have no entry in label_map: add them{yaml_hint}")
        ds = ds.map(lambda b: {"label": [label_map[v] for v in b["label"]]}, batched=True)
    return ds


def validate_roles(ds: datasets.Dataset, source: str = "dataset") -> None:
    """Fail on the first bad value with the row number: empty/non-string text, missing/NaN score or label."""
    if len(ds) == 0:
        raise ValueError(f"{source} has no rows: give a non-empty dataset (check filters)")
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    if ds._indices is not None:  # a filtered/selected view: check the rows actually used
        table = ds.with_format("arrow")[:]
    for role in ds.column_names:
        column = table.column(role)
        if role in TEXT_ROLES:
            _check_text_column(column, role, source)
        elif role in VALUE_ROLES:
            _check_value_column(column, role, source)


def _check_text_column(column: pa.ChunkedArray, role: str, source: str) -> None:
    kind = "list of texts" if role in LIST_ROLES else "text"
    if role in LIST_ROLES:
        if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
            raise ValueError(f"column for role '{role}' in {source} must hold a list of texts per row, got "
                             f"{column.type}: map a column of text lists")
        first_bad_row(column, pc.is_null(column), role, source, "is missing (null)")
        empty_lists = pc.equal(pc.list_value_length(column), 0)
        if role == "negatives":  # e.g. a mined query whose candidates all failed the filters: in-batch only
            empty = pc.sum(empty_lists).as_py() or 0
            if empty == len(column):
                raise ValueError(f"negatives in {source} is an empty list in every row: map no negatives column "
                                 "(in-batch negatives only) or mine with looser filters")
            if empty:
                logger.info("%s: %d of %d rows have no hard negative (in-batch negatives only)", source, empty,
                            len(column))
        else:
            first_bad_row(column, empty_lists, role, source, "is an empty list")
        column = pc.list_flatten(column)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(f"column for role '{role}' in {source} holds {column.type}, not {kind}: map a text column")
    first_bad_row(column, pc.is_null(column), role, source, "is missing (null)")
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
    first_bad_row(column, blank, role, source, "is empty")


def _check_value_column(column: pa.ChunkedArray, role: str, source: str) -> None:
    first_bad_row(column, pc.is_null(column), role, source, "is missing (None)")
    if role == "score":
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise ValueError(f"column for role 'score' in {source} holds {column.type}, not numbers: map a numeric column")
        if pa.types.is_floating(column.type):
            first_bad_row(column, pc.is_nan(column), role, source, "is NaN")
            first_bad_row(column, pc.is_inf(column), role, source, "is infinite")


def first_bad_row(column: pa.ChunkedArray, bad: pa.ChunkedArray, role: str, source: str, what: str) -> None:
    """One-line error naming the first row where `bad` holds (the message every row check of the data uses)."""
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise ValueError(f"{source}: {role} in row {row} {what}: fix or drop that row")


def _require_columns(ds: datasets.Dataset, needed: Sequence[str], purpose: str) -> None:
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise ValueError(f"column(s) {missing} for {purpose} not found: available columns are {ds.column_names}")


# ---------------------------------------------------------------------------------------- tokenization
def tokenize_roles(ds: datasets.Dataset, tokenizer, max_length: int, *, num_proc: int | None = None) -> datasets.Dataset:
    """Add the token column (`batch.token_column`) of each text role, once; `datasets` caches it by fingerprint."""
    text_roles = [r for r in TEXT_ROLES if r in ds.column_names]

    def encode(batch):
        return encode_texts({role: batch[role] for role in text_roles}, tokenizer, max_length)

    return ds.map(encode, batched=True, batch_size=1000, num_proc=num_proc, desc="Tokenizing")
