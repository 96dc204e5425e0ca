"""One evaluation task: its spec (validated YAML mapping), where its data comes from, its evaluator.

Task keys are the recipes' source keys (`nlp_contrastive.data.sources`: dataset, split, config_name, columns,
filter, score_range, label_map, max_rows) plus `type` (sts | pair_classification | reranking | retrieval),
`layout` (retrieval: pairs | beir), `ignore_identical_ids` (retrieval: drop a retrieved document whose id
is the query's, MTEB's option), `batch_size`, `truncate_dim` (keep the first d embedding dimensions:
Matryoshka) and `prompts` ({text role: prompt}, e.g. {query: "query: ", document: "passage: "}; a single
string applies to every text role of the task).
Retrieval tasks also take the engine's options: `cache_dir` (the corpus embeddings kept as on-disk shards there,
reused by later runs of the same model on the same texts), `index` (exact | hnsw | ivf-flat | ivf-pq | a faiss
index_factory string; an approximate one prints its recall) and `corpus_subset_top_n: N` (cheap evaluation during
training: the corpus cut to every judged document plus each query's top N under the model the suite first runs
with — the starting model in training; deterministic, and the results carry corpus_documents and
corpus_subset_top_n so the number is never taken for a full-corpus one).
A hub dataset is read from $NLPC_DATA_DIR/<task name lowercased>/ (or /<last part of the hub id>/) when that
folder exists; otherwise, offline, building the task raises TaskUnavailable (the suite skips it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlp_contrastive.data.loading import data_dir, filter_rows, is_offline, load_split
from nlp_contrastive.data.sources import NAMED_SETS, SOURCE_KEYS, Source, check_known_keys, is_local_path
from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE, Evaluator
from nlp_contrastive.evaluation.pair_classification import PairClassificationEvaluator
from nlp_contrastive.evaluation.reranking import RerankingEvaluator, RerankingSample, group_candidates
from nlp_contrastive.evaluation.retrieval import RetrievalEvaluator
from nlp_contrastive.evaluation.retrieval_data import (
    beir_from_rows,
    is_beir_folder,
    load_beir_folder,
    pairs_to_retrieval,
)
from nlp_contrastive.evaluation.sts import STSEvaluator

TASK_TYPES = ("sts", "pair_classification", "reranking", "retrieval")
ENGINE_KEYS = ("corpus_subset_top_n", "cache_dir", "index")  # retrieval only
TASK_KEYS = ("type", "batch_size", "layout", "ignore_identical_ids", "truncate_dim", "prompts",  # + source keys
             *ENGINE_KEYS)
ROLES: dict[str, tuple[str, ...]] = {
    "sts": ("sentence1", "sentence2", "score"),
    "pair_classification": ("sentence1", "sentence2", "label"),
    "reranking": ("query", "document", "label", "positive", "negative"),
    "retrieval": ("query", "document", "label"),
}
LAYOUTS = ("pairs", "beir")
# The text roles a task embeds, which its `prompts` may name.
PROMPT_ROLES: dict[str, tuple[str, ...]] = {"sts": ("sentence1", "sentence2"),
                                            "pair_classification": ("sentence1", "sentence2"),
                                            "reranking": ("query", "document"), "retrieval": ("query", "document")}


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

    filter: str | None = None
    max_rows: int | None = None
    label_map: Mapping | None = None
    truncate_dim: int | None = None
    prompts: Mapping[str, str] = field(default_factory=dict)
    corpus_subset_top_n: int | None = None
    cache_dir: str | None = None
    index: str = "exact"

    @property
    def source(self) -> Source:
        return Source(dataset=self.dataset, split=self.split, config_name=self.config_name, columns=self.columns,
                      filter=self.filter, score_range=self.score_range, max_rows=self.max_rows)

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any], base_dir: Path | None = None) -> TaskSpec:
        """Validate one task mapping: the common source keys (`nlp_contrastive.data.sources`) plus TASK_KEYS."""
        where = f"task '{name}'"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a mapping of {', '.join(SOURCE_KEYS + TASK_KEYS)}, got {raw!r}")
        kind = raw.get("type")
        if kind not in TASK_TYPES:
            check_known_keys(raw, SOURCE_KEYS + TASK_KEYS, where)
            raise ValueError(f"{where}: type {kind!r} is not one of {', '.join(TASK_TYPES)}: set type:")
        source = Source.from_dict(raw, where=where, roles=ROLES[kind], extra_keys=TASK_KEYS, default_split="test",
                                  base_dir=base_dir)
        if source.score_range is not None and kind != "sts":
            raise ValueError(f"{where}: score_range only applies to type sts")
        layout = raw.get("layout")
        if layout is not None and (kind != "retrieval" or layout not in LAYOUTS):
            raise ValueError(f"{where}: layout applies to type retrieval and is one of {', '.join(LAYOUTS)}")
        ignore_identical = raw.get("ignore_identical_ids", False)
        if not isinstance(ignore_identical, bool) or (ignore_identical and kind != "retrieval"):
            raise ValueError(f"{where}: ignore_identical_ids must be true or false and applies to type retrieval, "
                             f"got {ignore_identical!r}")
        batch_size = raw.get("batch_size")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
        truncate_dim = raw.get("truncate_dim")
        if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int)
                                         or truncate_dim < 1):
            raise ValueError(f"{where}: truncate_dim must be a positive integer (e.g. 64), got {truncate_dim!r}")
        return cls(name=name, type=kind, dataset=source.dataset, split=source.split, config_name=source.config_name,
                   columns=dict(source.columns), score_range=source.score_range, batch_size=batch_size, layout=layout,
                   filter=source.filter, max_rows=source.max_rows, label_map=source.label_map,
                   ignore_identical_ids=ignore_identical, truncate_dim=truncate_dim,
                   prompts=task_prompts(raw.get("prompts"), kind, where), **retrieval_options(raw, kind, where))


def retrieval_options(raw: Mapping[str, Any], kind: str, where: str) -> dict[str, Any]:
    """A retrieval task's engine options, checked: corpus_subset_top_n, cache_dir, index."""
    given = [k for k in ENGINE_KEYS if raw.get(k) is not None]
    if given and kind != "retrieval":
        raise ValueError(f"{where}: {given[0]} applies to type retrieval only: drop it")
    top_n, cache_dir, index = raw.get("corpus_subset_top_n"), raw.get("cache_dir"), raw.get("index", "exact")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ValueError(f"{where}: corpus_subset_top_n must be a positive integer (e.g. 100), got {top_n!r}")
    if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir):
        raise ValueError(f"{where}: cache_dir must be a folder path, got {cache_dir!r}")
    if not isinstance(index, str) or not index:
        raise ValueError(f"{where}: index must be exact, hnsw, ivf-flat, ivf-pq or a faiss index_factory string, "
                         f"got {index!r}")
    return {"corpus_subset_top_n": top_n, "cache_dir": cache_dir, "index": index}


def task_prompts(value: Any, kind: str, where: str) -> dict[str, str]:
    """{text role: prompt} from a task's `prompts` (a mapping, or one string for every text role)."""
    roles = PROMPT_ROLES[kind]
    if value is None:
        return {}
    if isinstance(value, str):
        return dict.fromkeys(roles, value)
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{where}: prompts must map text roles ({', '.join(roles)}) to prompt strings, got {value!r}")
    unknown = [r for r in value if r not in roles]
    if unknown:
        raise ValueError(f"{where}: prompts name role(s) {unknown}, but a {kind} task embeds {', '.join(roles)}")
    return dict(value)


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
    evaluator = _build(task_spec, batch_size)
    evaluator.truncate_dim = task_spec.truncate_dim
    evaluator.prompts = dict(task_spec.prompts)
    return evaluator


def _build(spec: TaskSpec, batch_size: int) -> Evaluator:
    size = spec.batch_size or batch_size
    source, remote = _resolve_source(spec)
    if spec.type == "retrieval" and (spec.layout == "beir" or (spec.layout is None and is_beir_folder(source))):
        return _retrieval(spec, *_load_beir(spec, source, remote), size)
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
    return _retrieval(spec, *pairs_to_retrieval(columns["query"], columns["document"], columns.get("label"),
                                                task=spec.name), size)


def _retrieval(spec: TaskSpec, queries, corpus, qrels, batch_size: int) -> RetrievalEvaluator:
    """The retrieval evaluator of a task; a corpus subset is cut by `Suite.prepare` once a model is at hand."""
    evaluator = RetrievalEvaluator(queries, corpus, qrels, name=spec.name, batch_size=batch_size,
                                   ignore_identical_ids=spec.ignore_identical_ids, cache_dir=spec.cache_dir,
                                   index=spec.index)
    evaluator.pending_subset_top_n = spec.corpus_subset_top_n
    return evaluator


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value or [])


def _resolve_source(spec: TaskSpec) -> tuple[str, bool]:
    """(where to load from, whether that is the hub)."""
    root = data_dir()
    if spec.dataset in NAMED_SETS:
        return spec.dataset, not (root is not None and (root / spec.dataset).is_dir())
    if is_local_path(spec.dataset):
        return str(Path(spec.dataset).expanduser()), False
    if root is not None:
        for folder in (spec.name.lower(), spec.dataset.rstrip("/").rsplit("/", 1)[-1].lower()):
            if (root / folder).is_dir():
                return str(root / folder), False
    return spec.dataset, True


def _load(spec: TaskSpec, source: str, remote: bool, split: str, config: str | None):
    rows = _load_unfiltered(spec, source, remote, split, config)
    if spec.filter and split == spec.split:
        rows = filter_rows(rows, spec.filter)
    if spec.max_rows is not None and split == spec.split:
        rows = rows.select(range(min(spec.max_rows, len(rows))))
    return rows


def _load_unfiltered(spec: TaskSpec, source: str, remote: bool, split: str, config: str | None):
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
    return beir_from_rows(corpus_rows, query_rows, qrel_rows, source=f"task '{spec.name}': {source}")


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
        if role == "label" and spec.label_map:
            missing = sorted({str(v) for v in out[role]} - {str(k) for k in spec.label_map})
            if missing:
                raise ValueError(f"task '{spec.name}': label values {missing[:5]} have no entry in label_map: add them")
            mapping = {str(k): v for k, v in spec.label_map.items()}
            out[role] = [mapping[str(v)] for v in out[role]]
    return out


def default_task_name(settings: Mapping[str, Any]) -> str:
    """`<dataset>-<split>` (e.g. stsb-test) for tasks given without a name."""
    dataset = str(settings.get("dataset", "task")).rstrip("/").rsplit("/", 1)[-1]
    return f"{Path(dataset).stem}-{settings.get('split', 'test')}"
