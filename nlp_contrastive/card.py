"""The model card (README.md) of a trained output folder, built from its run record and results.

The card is generated from what the trainer writes next to the model (the `RunRecord` in training_run.json,
results.json, results_meta.json) plus the saved folder's own config files, so it can be (re)built at any time
and never depends on live training objects. Writing a card never raises: a finished training run must not
die on its README (sentence-transformers #2739, transformers #37095). Pushing is `nlp_contrastive.hub`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from nlp_contrastive.card_usage import (
    base_model_id,
    dataset_link,
    dataset_links,
    display_name,
    hub_dataset,
    join,
    model_link,
    sentence_transformers_snippet,
    transformers_snippet,
)
from nlp_contrastive.files import write_text_atomic
from nlp_contrastive.run_record import RESULTS_FILE, RESULTS_META_FILE, RunRecord, read_json

logger = logging.getLogger(__name__)

MODEL_ID_PLACEHOLDER = "sentence_transformers_model_id"  # same placeholder sentence-transformers uses
CARD_FILE = "README.md"
# The first line after the front matter; records the model id the usage snippets were written for, so a
# push to another repo id can update them without regenerating (and clobbering edits to) the card.
CARD_MARKER = "<!-- nlp-contrastive model card; model id: {model_id} -->"
CARD_MARKER_RE = re.compile(r"<!-- nlp-contrastive model card; model id: (.*?) -->")
PLACEHOLDER_NOTE = (f"\n\nReplace `{MODEL_ID_PLACEHOLDER}` with the hub id of this model, or with the path of "
                     "its folder.")
# results_meta "type" -> (model-index task.type, task.name): the names sentence-transformers' cards use.
_TASKS = {
    "sts": ("semantic-similarity", "Semantic Similarity"),
    "retrieval": ("information-retrieval", "Information Retrieval"),
    "reranking": ("reranking", "Reranking"),
    "pair_classification": ("binary-classification", "Binary Classification"),
}


def build_model_card(run: RunRecord | Mapping, results: dict, results_meta: dict, model_info: dict, *,
                     model_id: str | None = None) -> str:
    """Render README.md (YAML front matter + Markdown) from plain dicts; any of them may be empty or partial.

    `model_info` keys (see `read_model_info`): name, dimension, max_seq_length, pooling, normalize,
    similarity_fn_name, library_versions. `model_id` goes into the usage snippets; it defaults to the recipe's
    `hub_model_id`, else a placeholder that `push_to_hub` replaces with the repo id.
    Table values are results.json values rounded to 4 decimals; model-index holds them unrounded.
    """
    results, results_meta, model_info = (x if isinstance(x, dict) else {} for x in (results, results_meta, model_info))
    if not isinstance(run, RunRecord):
        run = RunRecord.from_dict(run if isinstance(run, Mapping) else {})
    model_id = model_id or _find_key(run.recipe, "hub_model_id") or MODEL_ID_PLACEHOLDER
    name = model_id.rsplit("/", 1)[-1] if model_id != MODEL_ID_PLACEHOLDER else (
        model_info.get("name") or "sentence-embedding-model")
    metadata = _section(_card_metadata, run, results, results_meta, name) or {}
    sections = [
        f"# {name}",
        _section(_intro, run, model_info),
        _section(_model_details, run, model_info),
        _section(_usage, model_id, model_info),
        _section(_evaluation, results, results_meta),
        _section(_training_details, run),
        _section(_citation, run),
    ]
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    body = "\n\n".join(s for s in sections if s)
    return f"---\n{front}---\n\n{CARD_MARKER.format(model_id=model_id)}\n\n{body}\n"


def read_model_info(output_dir: str | os.PathLike) -> dict:
    """What the card says about the saved model, read from its sentence-transformers config files."""
    from nlp_contrastive.st_layout import read_sentence_transformers_layout

    folder = Path(output_dir)
    layout = read_sentence_transformers_layout(str(folder))
    info: dict[str, Any] = {
        "name": folder.resolve().name,
        "pooling": layout.get("pooling", "mean"),
        "normalize": bool(layout.get("normalize", False)),
        "max_seq_length": layout.get("max_seq_length"),
    }
    for module in read_json(folder / "modules.json") or []:
        if module.get("type", "").endswith(".Pooling"):
            pooling_config = read_json(folder / module.get("path", "") / "config.json") or {}
            info["dimension"] = pooling_config.get("word_embedding_dimension")
    transformer_config = read_json(folder / layout.get("transformer_path", "") / "config.json") or {}
    info["dimension"] = info.get("dimension") or transformer_config.get("hidden_size")
    st_config = read_json(folder / "config_sentence_transformers.json") or {}
    info["similarity_fn_name"] = st_config.get("similarity_fn_name") or "cosine"
    if isinstance(st_config.get("__version__"), dict):
        info["library_versions"] = st_config["__version__"]
    return info


def write_model_card(output_dir: str | os.PathLike) -> Path | None:
    """Write OUTPUT_DIR/README.md atomically from the run's JSON files; never raises (warns, returns None).

    A README.md that nlp-contrastive did not generate is left alone: it is the user's.
    """
    try:
        folder = Path(output_dir)
        if not folder.is_dir():  # never create an output folder just to hold a card
            raise FileNotFoundError(f"{folder} is not a folder")
        target = folder / CARD_FILE
        if target.exists() and not CARD_MARKER_RE.search(target.read_text(encoding="utf-8", errors="replace")):
            logger.warning("model card not written: %s exists and was not generated by nlp-contrastive", target)
            return None
        write_text_atomic(target, card_from_folder(folder))
        return target
    except Exception as exc:  # the model is saved; a card problem must not fail the run
        logger.warning("model card not written for %s: %s: %s", output_dir, type(exc).__name__, exc)
        return None


def card_from_folder(folder: Path, model_id: str | None = None) -> str:
    def optional(read: Callable[[], Any], what: str) -> dict:
        try:
            value = read()
        except Exception as exc:
            logger.warning("model card: ignoring %s (%s: %s)", what, type(exc).__name__, exc)
            return {}
        return value if isinstance(value, dict) else {}

    try:
        run = RunRecord.read(folder)
    except Exception as exc:
        logger.warning("model card: ignoring the run record (%s: %s)", type(exc).__name__, exc)
        run = RunRecord()
    results = optional(lambda: read_json(folder / RESULTS_FILE), RESULTS_FILE)
    results_meta = optional(lambda: read_json(folder / RESULTS_META_FILE), RESULTS_META_FILE)
    model_info = optional(lambda: read_model_info(folder), "the model's config files")
    return build_model_card(run, results, results_meta, model_info, model_id=model_id)


def _section(render: Callable[..., Any], *args) -> Any:
    """One broken input spoils one section, not the card."""
    try:
        return render(*args)
    except Exception as exc:
        logger.warning("model card: skipped %s (%s: %s)", render.__name__.strip("_"), type(exc).__name__, exc)
        return None


def _card_metadata(run: RunRecord, results: dict, results_meta: dict, name: str) -> dict:
    loss_name = run.loss.name
    metadata: dict[str, Any] = {
        "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "nlp-contrastive"]
        + [f"loss:{name}" for name in (loss_name or "").split(" + ") if name],
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
    }
    base = base_model_id(run.base_model)
    if base:
        metadata["base_model"] = base
    datasets = [d.name for d in run.datasets]
    hub_datasets = list(dict.fromkeys(h for h, _ in map(hub_dataset, datasets) if h))
    if hub_datasets:
        metadata["datasets"] = hub_datasets
    model_index = _section(_model_index, name, results, results_meta)
    if model_index:
        metadata["metrics"] = list(dict.fromkeys(m["type"] for entry in model_index[0]["results"]
                                                 for m in entry["metrics"]))
        metadata["model-index"] = model_index
    return metadata


def _model_index(name: str, results: dict, results_meta: dict) -> list[dict]:
    """The hub's model-index block, serialized by huggingface_hub itself so it matches the hub's schema."""
    from huggingface_hub.repocard_data import EvalResult, eval_results_to_model_index

    eval_results = []
    for task, metrics in results.items():
        meta = results_meta.get(task) or {}
        task_type, task_name = _TASKS.get(meta.get("type"), ("sentence-similarity", "Sentence Similarity"))
        dataset = meta.get("dataset") or task
        hub_id, config = hub_dataset(dataset)
        for metric, value in (metrics or {}).items():
            if not _is_number(value):
                continue
            eval_results.append(EvalResult(
                task_type=task_type, task_name=task_name,
                dataset_type=hub_id or display_name(dataset), dataset_name=task,
                dataset_config=config, dataset_split=meta.get("split"),
                metric_type=metric, metric_name=metric.replace("_", " ").title(), metric_value=float(value),
            ))
    return eval_results_to_model_index(name, eval_results) if eval_results else []


def _intro(run: RunRecord, model_info: dict) -> str:
    base = run.base_model
    base_text = f" finetuned from {model_link(base)}" if base else ""
    names = dataset_links(run)
    data_text = f" on {join(names)}" if names else ""
    dimension = model_info.get("dimension")
    space = f"a {dimension}-dimensional" if dimension else "a dense"
    return (f"This is a [sentence-transformers](https://www.SBERT.net) model{base_text}{data_text}, trained with "
            "nlp-contrastive. It maps sentences and "
            f"paragraphs to {space} dense vector space for semantic similarity, search, clustering and "
            "classification.")


def _model_details(run: RunRecord, model_info: dict) -> str:
    lines = ["## Model details", ""]
    if run.base_model:
        lines.append(f"- **Base model:** {model_link(run.base_model)}")
    if model_info.get("max_seq_length"):
        lines.append(f"- **Maximum sequence length:** {model_info['max_seq_length']} tokens")
    if model_info.get("dimension"):
        lines.append(f"- **Output dimensionality:** {model_info['dimension']}")
    if model_info.get("pooling"):
        normalized = ", then L2-normalized" if model_info.get("normalize") else ""
        lines.append(f"- **Pooling:** {model_info['pooling']}{normalized}")
    if model_info.get("similarity_fn_name"):
        lines.append(f"- **Similarity function:** {model_info['similarity_fn_name']}")
    if run.loss.name:
        lines.append(f"- **Training loss:** `{run.loss.name}`")
    names = dataset_links(run)
    if names:
        lines.append(f"- **Training data:** {join(names)}")
    return "\n".join(lines) if len(lines) > 2 else ""


def _usage(model_id: str, model_info: dict) -> str:
    placeholder_note = PLACEHOLDER_NOTE if model_id == MODEL_ID_PLACEHOLDER else ""
    return "\n".join([
        "## Usage", "",
        "### Sentence Transformers", "",
        "```bash", "pip install -U sentence-transformers", "```", "",
        "```python", sentence_transformers_snippet(model_id), "```", "",
        "### Transformers", "",
        "Without sentence-transformers: run the model, then apply its pooling to the token embeddings.", "",
        "```python",
        transformers_snippet(model_id, pooling=model_info.get("pooling") or "mean",
                             normalize=bool(model_info.get("normalize")),
                             max_seq_length=model_info.get("max_seq_length")),
        "```",
    ]) + placeholder_note


def _evaluation(results: dict, results_meta: dict) -> str:
    blocks = []
    for task, metrics in results.items():
        rows = [(k, v) for k, v in (metrics or {}).items() if _is_number(v)]
        if not rows:
            continue
        meta = results_meta.get(task) or {}
        primary = meta.get("primary_metric")
        kind = _TASKS.get(meta.get("type"), (None, None))[1]
        lines = [f"### {task}" + (f" ({kind})" if kind else ""), ""]
        if meta.get("dataset"):
            split = f", split `{meta['split']}`" if meta.get("split") else ""
            lines += [f"- Dataset: {dataset_link(meta['dataset'])}{split}", ""]
        lines += ["| Metric | Value |", "|:--|--:|"]
        for metric, value in rows:
            cell = _format_metric(value)
            lines.append(f"| **{metric}** | **{cell}** |" if metric == primary else f"| {metric} | {cell} |")
        blocks.append("\n".join(lines))
    if not blocks:
        return ""
    per_dimension = _per_dimension_table(results, results_meta)
    return "\n\n".join(["## Evaluation", "Values are fractions (1.0 = perfect), rounded to 4 decimals; the "
                        "`model-index` metadata above holds them unrounded.", *per_dimension, *blocks])


def _per_dimension_table(results: dict, results_meta: dict) -> list[str]:
    """Matryoshka runs evaluate `task` and `task@d`: one row per task, the primary metric per dimension."""
    dims = sorted({m["truncate_dim"] for m in results_meta.values() if isinstance(m, dict) and m.get("truncate_dim")},
                  reverse=True)
    if not dims:
        return []
    rows = []
    for task, meta in results_meta.items():
        if not isinstance(meta, dict) or meta.get("truncate_dim") or task not in results:
            continue
        primary = meta.get("primary_metric")
        cells = [results.get(name, {}).get(primary) for name in (task, *(f"{task}@{d}" for d in dims))]
        if primary and any(_is_number(c) for c in cells[1:]):
            rows.append(f"| {task} ({primary}) | " + " | ".join(_format_metric(c) if _is_number(c) else "-"
                                                               for c in cells) + " |")
    if not rows:
        return []
    header = "| Task | full | " + " | ".join(str(d) for d in dims) + " |"
    return ["### Score per embedding dimension (Matryoshka)",
            "The embeddings keep their quality when cut to a prefix: load with "
            "`SentenceTransformer(model_id, truncate_dim=d)`.",
            "\n".join([header, "|:--|" + "--:|" * (len(dims) + 1), *rows])]


def _training_details(run: RunRecord) -> str:
    parts = ["## Training details"]
    for dataset in run.datasets:
        lines = [f"### Training dataset: {display_name(dataset.name or 'unnamed')}", ""]
        if dataset.name:
            lines.append(f"- Dataset: {dataset_link(dataset.name)}"
                         + (f", split `{dataset.split}`" if dataset.split else ""))
        if _is_number(dataset.rows):
            lines.append(f"- Size: {int(dataset.rows):,} rows")
        if isinstance(dataset.columns, dict) and dataset.columns:
            roles = ", ".join(f"{role} = `{column}`" for role, column in dataset.columns.items())
            lines.append(f"- Columns (role = column): {roles}")
        if dataset.filter:
            lines.append(f"- Filter: `{dataset.filter}`")
        if dataset.loss:
            lines.append(f"- Loss for its batches: `{dataset.loss}`")
        parts.append("\n".join(lines))
    if _is_number(run.train_rows):
        parts.append(f"Training rows after loading and filtering: {int(run.train_rows):,}")
    loss = run.loss
    if loss.name:
        text = f"### Loss\n\n`{loss.name}`"
        if loss.cached:
            text += " (wrapped in GradCache, `cached: true`: same gradients, bounded memory)"
        if loss.config:
            text += f" with these parameters:\n\n```json\n{json.dumps(loss.config, indent=4, default=str)}\n```"
        parts.append(text)
    if run.recipe:
        # Imported here: config pulls in transformers, and importing the card module stays light (like
        # card_usage's lookups).
        from nlp_contrastive.config import plain_values

        recipe = yaml.safe_dump(plain_values(run.recipe, redact=True), sort_keys=False,
                                allow_unicode=True).rstrip()
        parts.append("### Recipe\n\nThe resolved recipe (YAML file + command-line overrides):\n\n"
                     f"<details><summary>Click to expand</summary>\n\n```yaml\n{recipe}\n```\n\n</details>")
    parts.append(_section(_hardware_and_time, run))
    versions = run.library_versions
    if versions:
        parts.append("### Framework versions\n\n" + "\n".join(f"- {k}: {v}" for k, v in versions.items()))
    parts = [p for p in parts if p]
    return "\n\n".join(parts) if len(parts) > 1 else ""


def _hardware_and_time(run: RunRecord) -> str:
    lines = [f"- {key.replace('_', ' ').capitalize()}: {value}"
             for key, value in run.hardware.items() if value not in (None, "")]
    if run.precision.get("reason"):
        lines.append(f"- Precision: {'bf16 autocast' if run.precision.get('bf16') else 'fp32'} "
                     f"({run.precision['reason']})")
    if _is_number(run.train_runtime_seconds):
        lines.append(f"- Training time: {_format_duration(run.train_runtime_seconds)}")
    if _is_number(run.train_samples_per_second):
        lines.append(f"- Throughput: {run.train_samples_per_second:.1f} samples/s")
    if _is_number(run.final_train_loss):
        lines.append(f"- Final training loss: {run.final_train_loss:.4f}")
    return "### Hardware and time\n\n" + "\n".join(lines) if lines else ""


def _citation(run: RunRecord) -> str:
    bibtex = (run.loss.citation or "").strip()
    if not bibtex:
        return ""
    return f"## Citation\n\n### {run.loss.name or 'Loss'}\n\n```bibtex\n{bibtex}\n```"


# ---------------------------------------------------------------------------------------------- helpers
def _find_key(tree: Any, key: str) -> Any:
    """A key of a flat or sectioned recipe dict."""
    if isinstance(tree, dict):
        if tree.get(key):
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key)
            if found:
                return found
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _format_metric(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d} ({seconds:.0f} s)"
