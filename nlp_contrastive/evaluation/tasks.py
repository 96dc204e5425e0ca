"""One evaluation task: its spec (validated YAML mapping), where its data comes from, its evaluator.

Task keys mirror the recipes' `train_data` entries: `type` (sts | pair_classification | reranking |
retrieval), `dataset` (named set, local file/folder, or hub id), `split`, `config_name`, `columns`
({role: column}, by name), `score_range` (sts), `layout` (retrieval: pairs | beir), `ignore_identical_ids` (retrieval: drop a retrieved
document whose id is the query's, MTEB's option), `batch_size`.
A hub dataset is read from $NLPC_DATA_DIR/<task name lowercased>/ (or /<last part of the hub id>/) when that
folder exists; otherwise, offline, building the task raises TaskUnavailable (the suite skips it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlp_contrastive.data import NAMED_SETS, data_dir, is_offline, load_split
from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE, Evaluator
from nlp_contrastive.evaluation.pair_classification import PairClassificationEvaluator
from nlp_contrastive.evaluation.reranking import RerankingEvaluator, RerankingSample, group_candidates
from nlp_contrastive.evaluation.retrieval import RetrievalEvaluator
from nlp_contrastive.evaluation.retrieval_data import (
    beir_corpus,
    is_beir_folder,
    load_beir_folder,
    pairs_to_retrieval,
    qrels_from_rows,
)
from nlp_contrastive.evaluation.sts import STSEvaluator

TASK_TYPES = ("sts", "pair_classification", "reranking", "retrieval")
TASK_KEYS = ("type", "dataset", "split", "config_name", "columns", "score_range", "batch_size", "layout",
             "ignore_identical_ids")
ROLES: dict[str, tuple[str, ...]] = {
    "sts": ("sentence1", "sentence2", "score"),
    "pair_classification": ("sentence1", "sentence2", "label"),
    "reranking": ("query", "document", "label", "positive", "negative"),
    "retrieval": ("query", "document", "label"),
}
LAYOUTS = ("pairs", "beir")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


class TaskUnavailable(FileNotFoundError):
    """The task's data lives on the hub and can't be fetched now (offline, or the hub refused)."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite, as written in YAML (validated)."""

    name: str
    type: str
    dataset: str
    split: str = "test"
    config_name: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    score_range: tuple[float, float] | None = None
    batch_size: int | None = None
    layout: str | None = None
    ignore_identical_ids: bool = False

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any], base_dir: Path | None = None) -> TaskSpec:
        """Validate one task mapping; unknown keys fail with the list of valid ones."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"task '{name}' must be a mapping of {', '.join(TASK_KEYS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(TASK_KEYS))
        if unknown:
            raise ValueError(f"task '{name}': unknown key(s) {unknown}: valid keys are {', '.join(TASK_KEYS)}")
        kind = raw.get("type")
        if kind not in TASK_TYPES:
            raise ValueError(f"task '{name}': type {kind!r} is not one of {', '.join(TASK_TYPES)}: set type:")
        data = raw.get("dataset")
        if not isinstance(data, str) or not data:
            raise ValueError(f"task '{name}': set dataset: to a named set ({', '.join(NAMED_SETS)}), a local file or "
                             "folder, or a hub id")
        columns = raw.get("columns") or {}
        if not isinstance(columns, Mapping) or not all(isinstance(v, str) for v in columns.values()):
            raise ValueError(f"task '{name}': columns must map role -> column name, e.g. {{score: similarity}}")
        bad_roles = sorted(set(columns) - set(ROLES[kind]))
        if bad_roles:
            raise ValueError(f"task '{name}': unknown role(s) {bad_roles} in columns for type {kind}: valid roles "
                             f"are {', '.join(ROLES[kind])}")
        score_range = raw.get("score_range")
        if score_range is not None:
            if kind != "sts":
                raise ValueError(f"task '{name}': score_range only applies to type sts")
            if (not isinstance(score_range, Sequence) or len(score_range) != 2
                    or not all(isinstance(x, (int, float)) for x in score_range)
                    or not score_range[1] > score_range[0]):
                raise ValueError(f"task '{name}': score_range must be [low, high] with high > low, e.g. [0, 5]")
            score_range = (float(score_range[0]), float(score_range[1]))
        layout = raw.get("layout")
        if layout is not None and (kind != "retrieval" or layout not in LAYOUTS):
            raise ValueError(f"task '{name}': layout applies to type retrieval and is one of {', '.join(LAYOUTS)}")
        ignore_identical = raw.get("ignore_identical_ids", False)
        if not isinstance(ignore_identical, bool) or (ignore_identical and kind != "retrieval"):
            raise ValueError(f"task '{name}': ignore_identical_ids must be true or false and applies to type "
                             f"retrieval, got {ignore_identical!r}")
        batch_size = raw.get("batch_size")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"task '{name}': batch_size must be a positive integer, got {batch_size!r}")
        if base_dir is not None and data not in NAMED_SETS and (base_dir / data).exists():
            data = str(base_dir / data)  # paths in a suite file are relative to that file
        return cls(name=name, type=kind, dataset=data, split=str(raw.get("split", "test")),
                   config_name=raw.get("config_name"),
                   columns=dict(columns), score_range=score_range, batch_size=batch_size, layout=layout,
                   ignore_identical_ids=ignore_identical)


# ------------------------------------------------------------------------------------------ building
def build_evaluator(task_spec: Mapping[str, Any] | TaskSpec, *, name: str | None = None,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> Evaluator:
    """Load a task's data and return its evaluator; raises TaskUnavailable if the data can't be fetched.

    `task_spec` is a TaskSpec or a mapping like one YAML task (a `name` key is accepted there, e.g. for
    the trainer's eval config); the name defaults to the data source.
    """
    if not isinstance(task_spec, TaskSpec):
        raw = dict(task_spec)
        name = name or raw.pop("name", None) or default_task_name(raw)
        raw.pop("name", None)
        task_spec = TaskSpec.from_dict(name, raw)
    spec = task_spec
    size = spec.batch_size or batch_size
    source, remote = _resolve_source(spec)
    if spec.type == "retrieval" and (spec.layout == "beir" or (spec.layout is None and is_beir_folder(source))):
        queries, corpus, qrels = _load_beir(spec, source, remote)
        return RetrievalEvaluator(queries, corpus, qrels, name=spec.name, batch_size=size,
                                  ignore_identical_ids=spec.ignore_identical_ids)
    rows = _load(spec, source, remote, spec.split, spec.config_name)
    columns = _columns(spec, rows)
    if spec.type == "sts":
        return STSEvaluator(columns["sentence1"], columns["sentence2"], columns["score"], name=spec.name,
                            batch_size=size, score_range=spec.score_range)
    if spec.type == "pair_classification":
        return PairClassificationEvaluator(columns["sentence1"], columns["sentence2"], columns["label"],
                                           name=spec.name, batch_size=size)
    if spec.type == "reranking":
        if "positive" in columns:
            triples = zip(columns["query"], columns["positive"], columns["negative"], strict=True)
            samples = [RerankingSample(q, tuple(_as_list(p)), tuple(_as_list(n))) for q, p, n in triples]
        else:
            samples = group_candidates(columns["query"], columns["document"], columns["label"], task=spec.name)
        return RerankingEvaluator(samples, name=spec.name, batch_size=size)
    queries, corpus, qrels = pairs_to_retrieval(columns["query"], columns["document"], columns.get("label"),
                                                task=spec.name)
    return RetrievalEvaluator(queries, corpus, qrels, name=spec.name, batch_size=size,
                              ignore_identical_ids=spec.ignore_identical_ids)


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value or [])


def _resolve_source(spec: TaskSpec) -> tuple[str, bool]:
    """(where to load from, whether that is the hub)."""
    root = data_dir()
    if spec.dataset in NAMED_SETS:
        return spec.dataset, not (root is not None and (root / spec.dataset).is_dir())
    path = Path(spec.dataset).expanduser()
    if path.exists() or spec.dataset.startswith((".", "/", "~")) or path.suffix.lower() in _FILE_SUFFIXES:
        return str(path), False
    if root is not None:
        for folder in (spec.name.lower(), spec.dataset.rstrip("/").rsplit("/", 1)[-1].lower()):
            if (root / folder).is_dir():
                return str(root / folder), False
    return spec.dataset, True


def _load(spec: TaskSpec, source: str, remote: bool, split: str, config: str | None):
    try:
        return load_split(source, split, config_name=config)
    except FileNotFoundError as exc:
        if not remote:
            raise
        if source in NAMED_SETS or not is_offline():
            raise TaskUnavailable(str(exc).splitlines()[0]) from None
        raise TaskUnavailable(f"{source} is on the hub and HF_HUB_OFFLINE is set (to run it offline, put its "
                              f"{split} split at $NLPC_DATA_DIR/{spec.name.lower()}/{split}.jsonl)") from None


def _load_beir(spec: TaskSpec, source: str, remote: bool):
    if not remote and Path(source).is_dir():
        return load_beir_folder(source, spec.split)
    corpus_rows = _load(spec, source, remote, "corpus", "corpus")
    query_rows = _load(spec, source, remote, "queries", "queries")
    qrel_rows = _load(spec, source, remote, spec.split, spec.config_name or "default")
    for rows, needed, what in ((query_rows, ("_id", "text"), "queries"),
                               (qrel_rows, ("query-id", "corpus-id", "score"), "qrels")):
        missing = [c for c in needed if c not in rows.column_names]
        if missing:
            raise ValueError(f"task '{spec.name}': {what} of {source} have no column(s) {missing}: the BEIR layout "
                             f"needs {', '.join(needed)}")
    corpus = beir_corpus(corpus_rows, source=f"{source} corpus")
    queries = {str(i): t for i, t in zip(query_rows["_id"][:], query_rows["text"][:], strict=True)}
    qrels = qrels_from_rows(qrel_rows["query-id"][:], qrel_rows["corpus-id"][:], qrel_rows["score"][:],
                            f"{source} qrels")
    return queries, corpus, qrels


def _columns(spec: TaskSpec, rows) -> dict[str, list]:
    """role -> values, columns taken by name (defaults: the role's own name)."""
    available = rows.column_names
    if spec.type == "reranking":
        lists = "positive" in spec.columns or (
            not spec.columns and {"positive", "negative"} <= set(available) and "document" not in available)
        roles = ("query", "positive", "negative") if lists else ("query", "document", "label")
    elif spec.type == "retrieval":
        with_label = "label" in spec.columns or "label" in available
        roles = ("query", "document", "label") if with_label else ("query", "document")
    else:
        roles = ROLES[spec.type]
    out: dict[str, list] = {}
    for role in roles:
        column = spec.columns.get(role, role)
        if column not in available:
            raise ValueError(f"task '{spec.name}': column '{column}' for role '{role}' not found in {spec.dataset} "
                             f"(columns: {', '.join(available)}): set columns: {{{role}: <column>}} in the task")
        out[role] = rows[column][:]  # a plain list (datasets returns a lazy Column)
    return out


def default_task_name(settings: Mapping[str, Any]) -> str:
    """`<dataset>-<split>` (e.g. stsb-test) for tasks given without a name."""
    dataset = str(settings.get("dataset", "task")).rstrip("/").rsplit("/", 1)[-1]
    return f"{Path(dataset).stem}-{settings.get('split', 'test')}"
