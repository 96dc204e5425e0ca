"""Suites: named evaluation tasks declared as data (YAML), built into evaluators and run together.

A suite file:

    defaults: {type: sts, split: test}          # merged into every task (optional)
    tasks:
      STSBenchmark: {dataset: stsb, score_range: [0, 5]}
      STS12: {dataset: mteb/sts12-sts, score_range: [0, 5]}
      TrecQA-reranking:
        type: reranking
        dataset: trecqa
        columns: {query: question, document: answer, label: label}   # role: column, by name

`tasks` may also be a list of mappings with a `name` key (the form recipes use in `eval_tasks`), and a
top-level `batch_size` sets the encoding batch size. Task keys mirror the recipes' `train_data` entries
(`dataset`, `split`, `config_name`, `columns`, `score_range`): `dataset` is a named set (stsb, sickr, msrp,
trecqa in $NLPC_DATA_DIR), a local file/folder, or a hub id.
A hub task is read from $NLPC_DATA_DIR/<task name lowercased>/ (or /<last part of the hub id>/) when that
folder exists. Tasks whose data can't be fetched (hub ids while HF_HUB_OFFLINE=1) are skipped with a
one-line warning — unless they were selected by name, then it is an error.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nlp_contrastive.data.sources import check_known_keys, yaml_problem
from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE, Evaluator
from nlp_contrastive.evaluation.reuse import RecentEncodings
from nlp_contrastive.evaluation.tasks import TaskSpec, TaskUnavailable, build_evaluator, default_task_name

__all__ = ["BUILTIN_STS_SUITE", "Suite", "TaskSpec", "TaskUnavailable", "build_evaluator", "default_suite",
           "format_table", "load_suite"]

logger = logging.getLogger(__name__)

SUITE_KEYS = ("defaults", "tasks", "batch_size")
# Used when eval/sts.yaml is not next to the package (a wheel install): the two local STS sets.
BUILTIN_STS_SUITE: dict[str, Any] = {
    "defaults": {"type": "sts", "split": "test"},
    "tasks": {"STSBenchmark": {"dataset": "stsb", "score_range": [0, 5]},
              "SICK-R": {"dataset": "sickr", "score_range": [1, 5]}},
}


# --------------------------------------------------------------------------------------------- suites
class Suite:
    """Named tasks -> `suite(encoder) -> {task: {metric: value}}`; data is loaded once, on first use."""

    def __init__(self, tasks: Sequence[TaskSpec], *, batch_size: int = DEFAULT_BATCH_SIZE,
                 required: Iterable[str] = ()) -> None:
        names = [t.name for t in tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task name(s) {duplicates} appear twice: give each task a unique name")
        if not tasks:
            raise ValueError("the suite has no tasks: add at least one under tasks:")
        self.tasks = list(tasks)
        self.batch_size = batch_size
        self.required = set(required)
        self._evaluators: list[Evaluator] | None = None
        self.skipped: dict[str, str] = {}
        self.reuse_encodings = False

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def select(self, names: Iterable[str]) -> Suite:
        """A suite of just these tasks; they become required (unavailable data is an error, not a skip)."""
        names = list(names)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"task(s) {unknown} are not in the suite: available tasks are {', '.join(self.names)}")
        return Suite([t for t in self.tasks if t.name in names], batch_size=self.batch_size, required=names)

    def evaluators(self) -> list[Evaluator]:
        """Build (once) the evaluator of every task whose data is available."""
        if self._evaluators is None:
            built = []
            for task in self.tasks:
                try:
                    built.append(build_evaluator(task, batch_size=self.batch_size))
                except TaskUnavailable as exc:
                    if task.name in self.required:
                        raise
                    self.skipped[task.name] = str(exc)
                    logger.warning("skipping task %s: %s", task.name, str(exc).splitlines()[0])
            if not built:
                raise ValueError(f"no task of the suite could be loaded ({len(self.skipped)} skipped, data not "
                                 f"available offline): set $NLPC_DATA_DIR or give local files (--sts FILE)")
            self._evaluators = built
        return self._evaluators

    def prepare(self, encoder) -> None:
        """What needs a model, done once with the first one given (in training: the starting model): each retrieval
        task with corpus_subset_top_n gets its corpus subset (RetrievalEvaluator.with_corpus_subset)."""
        evaluators = self.evaluators()
        for i, evaluator in enumerate(evaluators):
            top_n = getattr(evaluator, "pending_subset_top_n", None)
            if top_n is not None:
                evaluator.pending_subset_top_n = None
                evaluators[i] = evaluator.with_corpus_subset(encoder, top_n)

    @property
    def primary_metrics(self) -> dict[str, str]:
        """{task: its primary metric} for the tasks that run (loads the data on first use)."""
        return {e.name: e.primary_metric for e in self.evaluators()}

    def describe(self) -> dict[str, dict[str, Any]]:
        """{task: type, dataset, split, primary_metric, ...} of the tasks that run: results_meta.json."""
        ran = set(self.primary_metrics)
        meta = {}
        for task in self.tasks:
            if task.name in ran:
                entry = {"type": task.type, "dataset": task.dataset, "split": task.split,
                         "primary_metric": self.primary_metrics[task.name]}
                if task.config_name:
                    entry["config_name"] = task.config_name
                if task.score_range:
                    entry["score_range"] = list(task.score_range)
                if task.truncate_dim:
                    entry["truncate_dim"] = task.truncate_dim
                if task.prompts:
                    entry["prompts"] = dict(task.prompts)
                entry.update({k: getattr(task, k) for k in ("corpus_subset_top_n", "cache_dir") if getattr(task, k)})
                if task.index != "exact":
                    entry["index"] = task.index
                meta[task.name] = entry
        return meta

    def at_dimensions(self, dims: Sequence[int | None]) -> Suite:
        """Every task once per dimension (Matryoshka): `task` at full size (None), `task@d` cut to d dims."""
        tasks = [dataclasses.replace(t, name=t.name if d is None else f"{t.name}@{d}", truncate_dim=d)
                 for t in self.tasks for d in dims]
        required = [t.name for t in tasks if t.name.split("@")[0] in self.required]
        suite = Suite(tasks, batch_size=self.batch_size, required=required)
        suite.reuse_encodings = len(set(dims)) > 1  # the dims of a task share one encoding
        return suite

    def __call__(self, encoder, *, on_predictions: Callable[[Evaluator, Any, dict[str, float]], None] | None = None
                 ) -> dict[str, dict[str, float]]:
        """Run every available task; `on_predictions(evaluator, predictions, metrics)` sees raw scores (plots)."""
        results: dict[str, dict[str, float]] = {}
        self.prepare(encoder)
        if self.reuse_encodings:
            encoder = RecentEncodings(encoder)
        for evaluator in self.evaluators():
            predictions = evaluator.predict(encoder)
            results[evaluator.name] = evaluator.score(predictions)
            if on_predictions is not None:
                on_predictions(evaluator, predictions, results[evaluator.name])
        return results


def load_suite(path_or_dict: str | Path | Mapping[str, Any], *, batch_size: int | None = None,
               tasks: Iterable[str] | None = None) -> Suite:
    """Parse a suite YAML file (or the same structure as a dict); `tasks` selects (and requires) some.

    Batch size: the `batch_size` argument, else the suite's `batch_size:` key, else 64; a task's own
    `batch_size` wins over both.
    """
    base_dir = None
    if isinstance(path_or_dict, Mapping):
        raw = path_or_dict
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise FileNotFoundError(f"suite file '{path}' does not exist: give a YAML file like eval/sts.yaml")
        with open(path, encoding="utf-8") as f:
            try:
                raw = yaml.safe_load(f)
            except yaml.YAMLError as exc:
                raise ValueError(f"suite file '{path}' is not valid YAML: {yaml_problem(exc)}") from None
        base_dir = path.resolve().parent
        if not isinstance(raw, Mapping):
            raise ValueError(f"suite file '{path}' must be a mapping with a tasks: section")
    check_known_keys(raw, SUITE_KEYS, "suite", noun="suite key")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ValueError("suite: defaults: must be a mapping of task keys")
    specs = [TaskSpec.from_dict(name, {**defaults, **settings}, base_dir) for name, settings in _task_items(raw)]
    size = next((b for b in (batch_size, raw.get("batch_size")) if b is not None), DEFAULT_BATCH_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"suite: batch_size must be a positive integer, got {size!r}")
    suite = Suite(specs, batch_size=size)
    return suite.select(tasks) if tasks else suite


def _task_items(raw: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, settings) from `tasks:` as a mapping {name: settings} or a list of settings with `name`."""
    tasks = raw.get("tasks") or {}
    if isinstance(tasks, Mapping):
        return [(str(name), settings or {}) for name, settings in tasks.items()]
    if isinstance(tasks, list) and all(isinstance(t, Mapping) for t in tasks):
        items = []
        for task in tasks:
            settings = {k: v for k, v in task.items() if k != "name"}
            items.append((str(task.get("name") or default_task_name(settings)), settings))
        return items
    raise ValueError("suite: tasks: must map task name -> settings, or be a list of settings with a name key")


def default_suite_path() -> Path | None:
    """eval/sts.yaml of the source checkout this package runs from, if any."""
    path = Path(__file__).resolve().parents[2] / "eval" / "sts.yaml"
    return path if path.is_file() else None


def default_suite(*, batch_size: int | None = None, tasks: Iterable[str] | None = None) -> Suite:
    path = default_suite_path()
    return load_suite(path if path is not None else BUILTIN_STS_SUITE, batch_size=batch_size, tasks=tasks)


# --------------------------------------------------------------------------------------------- output
def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Metrics x100 as aligned text: one block per group of tasks sharing the same metrics, a column per task."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for task, metrics in results.items():
        groups.setdefault(tuple(metrics), []).append(task)
    blocks = []
    for metric_names, tasks in groups.items():
        header = ["metric (x100)", *tasks]
        rows = [[metric, *(_percent(results[t][metric]) for t in tasks)] for metric in metric_names]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                           for i, cell in enumerate(row)) for row in [header, *rows]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _percent(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def check_tasks(tasks: Any, key: str) -> None:
    """A recipe's eval_tasks / final_eval_tasks, checked at recipe load (keys, types, sources; no data read)."""
    if not isinstance(tasks, list) or not all(isinstance(t, Mapping) for t in tasks):
        raise ValueError(f"{key} must be a list of task mappings, e.g. [{{name: stsb-test, type: sts, dataset: stsb}}]")
    for i, task in enumerate(tasks):
        settings = {k: v for k, v in task.items() if k != "name"}
        try:
            TaskSpec.from_dict(str(task.get("name") or default_task_name(settings)), settings)
        except ValueError as exc:
            raise ValueError(f"{key}[{i}]: {exc}") from None


def training_evaluator(tasks: list[dict], batch_size: int, starting_encoder=None
                       ) -> Callable[[Any], dict[str, float]] | None:
    """For evaluation during training: encoder -> {task_metric: value, "score": the first task's primary
    metric} (so `metric_for_best_model: score` works for any task; the trainer logs them as eval_<task>_<metric>,
    e.g. eval_dev_ndcg_at_10), or None without tasks. With `starting_encoder` the data is loaded now and what
    needs a model (a retrieval corpus subset) is cut with it (`Suite.prepare`)."""
    if not tasks:
        return None
    suite = load_suite({"tasks": tasks, "batch_size": batch_size})
    if starting_encoder is not None:
        suite.prepare(starting_encoder)

    def evaluate(encoder) -> dict[str, float]:
        results = suite(encoder)
        flat = {f"{task}_{metric}": value for task, metrics in results.items() for metric, value in metrics.items()}
        first = next(iter(results))
        flat["score"] = results[first][suite.primary_metrics[first]]
        return flat

    return evaluate
