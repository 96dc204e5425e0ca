"""Model cards built from structured run data, and pushing a trained output folder to the Hugging Face hub.

The card is generated from what the trainer writes next to the model (training_run.json, results.json,
results_meta.json) plus the saved folder's own config files, so it can be (re)built at any time and never
depends on live training objects. Writing a card never raises: a finished training run must not die on
its README (sentence-transformers #2739, transformers #37095).

Pushing uploads exactly the files of a sentence-transformers model (no checkpoint-*/ dirs, no temp files,
tensorboard runs/ only on request) in one commit through `huggingface_hub`. Any hub failure becomes a
one-line `HubPushError` saying what happened and what to do; the local folder is only ever read.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from nlp_contrastive.files import write_text_atomic

logger = logging.getLogger(__name__)

MODEL_ID_PLACEHOLDER = "sentence_transformers_model_id"  # same placeholder sentence-transformers uses
CARD_FILE = "README.md"
RUN_FILE = "training_run.json"
RESULTS_FILE = "results.json"
RESULTS_META_FILE = "results_meta.json"
EXAMPLE_SENTENCES = (
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
)
# The first line after the front matter; records the model id the usage snippets were written for, so a
# push to another repo id can update them without regenerating (and clobbering edits to) the card.
_MARKER = "<!-- nlp-contrastive model card; model id: {model_id} -->"
_MARKER_RE = re.compile(r"<!-- nlp-contrastive model card; model id: (.*?) -->")
_PLACEHOLDER_NOTE = (f"\n\nReplace `{MODEL_ID_PLACEHOLDER}` with the hub id of this model, or with the path of "
                     "its folder.")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REPO_ID_RE = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")  # bare names go to your namespace
_SECRET_KEY_RE = re.compile(r"(^|_)(token|password|secret|api_key)$", re.IGNORECASE)
# results_meta "type" -> (model-index task.type, task.name): the names sentence-transformers' cards use.
_TASKS = {
    "sts": ("semantic-similarity", "Semantic Similarity"),
    "retrieval": ("information-retrieval", "Information Retrieval"),
    "reranking": ("reranking", "Reranking"),
    "pair_classification": ("binary-classification", "Binary Classification"),
}
_LOGIN_HINT = ("log in with `hf auth login` (`huggingface-cli login` on huggingface_hub<1.0) or set HF_TOKEN "
               "to a token with write access")


class HubPushError(RuntimeError):
    """A push that did not happen, in one line: what went wrong and what to do about it."""


# =============================================================================================== model card
def build_model_card(run: dict, results: dict, results_meta: dict, model_info: dict, *,
                     model_id: str | None = None) -> str:
    """Render README.md (YAML front matter + Markdown) from plain dicts; any of them may be empty or partial.

    `model_info` keys (see `read_model_info`): name, dimension, max_seq_length, pooling, normalize,
    similarity_fn_name, library_versions. `model_id` goes into the usage snippets; it defaults to the recipe's
    `hub_model_id`, else a placeholder that `push_to_hub` replaces with the repo id.
    Table values are results.json values rounded to 4 decimals; model-index holds them unrounded.
    """
    run, results, results_meta, model_info = (x if isinstance(x, dict) else {}
                                              for x in (run, results, results_meta, model_info))
    model_id = model_id or _find_key(run.get("recipe"), "hub_model_id") or MODEL_ID_PLACEHOLDER
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
    return f"---\n{front}---\n\n{_MARKER.format(model_id=model_id)}\n\n{body}\n"


def read_model_info(output_dir: str | os.PathLike) -> dict:
    """What the card says about the saved model, read from its sentence-transformers config files."""
    from nlp_contrastive.modeling import read_sentence_transformers_layout

    folder = Path(output_dir)
    layout = read_sentence_transformers_layout(str(folder))
    info: dict[str, Any] = {
        "name": folder.resolve().name,
        "pooling": layout.get("pooling", "mean"),
        "normalize": bool(layout.get("normalize", False)),
        "max_seq_length": layout.get("max_seq_length"),
    }
    for module in _read_json(folder / "modules.json") or []:
        if module.get("type", "").endswith(".Pooling"):
            pooling_config = _read_json(folder / module.get("path", "") / "config.json") or {}
            info["dimension"] = pooling_config.get("word_embedding_dimension")
    transformer_config = _read_json(folder / layout.get("transformer_path", "") / "config.json") or {}
    info["dimension"] = info.get("dimension") or transformer_config.get("hidden_size")
    st_config = _read_json(folder / "config_sentence_transformers.json") or {}
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
        if target.exists() and not _MARKER_RE.search(target.read_text(encoding="utf-8", errors="replace")):
            logger.warning("model card not written: %s exists and was not generated by nlp-contrastive", target)
            return None
        write_text_atomic(target, _card_from_folder(folder))
        return target
    except Exception as exc:  # the model is saved; a card problem must not fail the run
        logger.warning("model card not written for %s: %s: %s", output_dir, type(exc).__name__, exc)
        return None


def _card_from_folder(folder: Path, model_id: str | None = None) -> str:
    def optional(read: Callable[[], Any], what: str) -> dict:
        try:
            value = read()
        except Exception as exc:
            logger.warning("model card: ignoring %s (%s: %s)", what, type(exc).__name__, exc)
            return {}
        return value if isinstance(value, dict) else {}

    run = optional(lambda: _read_json(folder / RUN_FILE), RUN_FILE)
    results = optional(lambda: _read_json(folder / RESULTS_FILE), RESULTS_FILE)
    results_meta = optional(lambda: _read_json(folder / RESULTS_META_FILE), RESULTS_META_FILE)
    model_info = optional(lambda: read_model_info(folder), "the model's config files")
    return build_model_card(run, results, results_meta, model_info, model_id=model_id)


def _section(render: Callable[..., Any], *args) -> Any:
    """One broken input spoils one section, not the card."""
    try:
        return render(*args)
    except Exception as exc:
        logger.warning("model card: skipped %s (%s: %s)", render.__name__.strip("_"), type(exc).__name__, exc)
        return None


def _card_metadata(run: dict, results: dict, results_meta: dict, name: str) -> dict:
    loss_name = (run.get("loss") or {}).get("name")
    metadata: dict[str, Any] = {
        "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "nlp-contrastive"]
        + ([f"loss:{loss_name}"] if loss_name else []),
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
    }
    base = _base_model_id(run.get("base_model"))
    if base:
        metadata["base_model"] = base
    datasets = [d.get("name") for d in run.get("datasets") or [] if isinstance(d, dict)]
    hub_datasets = list(dict.fromkeys(h for h, _ in map(_hub_dataset, datasets) if h))
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
        hub_id, config = _hub_dataset(dataset)
        for metric, value in (metrics or {}).items():
            if not _is_number(value):
                continue
            eval_results.append(EvalResult(
                task_type=task_type, task_name=task_name,
                dataset_type=hub_id or _display_name(dataset), dataset_name=task,
                dataset_config=config, dataset_split=meta.get("split"),
                metric_type=metric, metric_name=metric.replace("_", " ").title(), metric_value=float(value),
            ))
    return eval_results_to_model_index(name, eval_results) if eval_results else []


def _intro(run: dict, model_info: dict) -> str:
    base = run.get("base_model")
    base_text = f" finetuned from {_model_link(base)}" if base else ""
    names = [_dataset_link(d.get("name")) for d in run.get("datasets") or [] if isinstance(d, dict) and d.get("name")]
    data_text = f" on {_join(names)}" if names else ""
    dimension = model_info.get("dimension")
    space = f"a {dimension}-dimensional" if dimension else "a dense"
    return (f"This is a [sentence-transformers](https://www.SBERT.net) model{base_text}{data_text}, trained with "
            "nlp-contrastive. It maps sentences and "
            f"paragraphs to {space} dense vector space for semantic similarity, search, clustering and "
            "classification.")


def _model_details(run: dict, model_info: dict) -> str:
    lines = ["## Model details", ""]
    if run.get("base_model"):
        lines.append(f"- **Base model:** {_model_link(run['base_model'])}")
    if model_info.get("max_seq_length"):
        lines.append(f"- **Maximum sequence length:** {model_info['max_seq_length']} tokens")
    if model_info.get("dimension"):
        lines.append(f"- **Output dimensionality:** {model_info['dimension']}")
    if model_info.get("pooling"):
        normalized = ", then L2-normalized" if model_info.get("normalize") else ""
        lines.append(f"- **Pooling:** {model_info['pooling']}{normalized}")
    if model_info.get("similarity_fn_name"):
        lines.append(f"- **Similarity function:** {model_info['similarity_fn_name']}")
    if (run.get("loss") or {}).get("name"):
        lines.append(f"- **Training loss:** `{run['loss']['name']}`")
    names = [_dataset_link(d.get("name")) for d in run.get("datasets") or [] if isinstance(d, dict) and d.get("name")]
    if names:
        lines.append(f"- **Training data:** {_join(names)}")
    return "\n".join(lines) if len(lines) > 2 else ""


def _usage(model_id: str, model_info: dict) -> str:
    placeholder_note = _PLACEHOLDER_NOTE if model_id == MODEL_ID_PLACEHOLDER else ""
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


def sentence_transformers_snippet(model_id: str) -> str:
    """Usage code for sentence-transformers; defines `sentences` and `embeddings`."""
    return "\n".join([
        "from sentence_transformers import SentenceTransformer",
        "",
        f"model = SentenceTransformer({json.dumps(model_id)})",
        f"sentences = {json.dumps(list(EXAMPLE_SENTENCES))}",
        "embeddings = model.encode(sentences)",
        "print(embeddings.shape)",
        "similarities = model.similarity(embeddings, embeddings)",
        "print(similarities)",
    ])


_POOLING_CODE = {
    "mean": ["def pool(token_embeddings, attention_mask):",
             "    # Mean of the token embeddings, ignoring padding",
             "    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)",
             "    return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)"],
    "mean_sqrt_len": ["def pool(token_embeddings, attention_mask):",
                      "    # Sum of the token embeddings divided by sqrt(number of tokens), ignoring padding",
                      "    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)",
                      "    return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9).sqrt()"],
    "cls": ["def pool(token_embeddings, attention_mask):",
            "    # The embedding of the first ([CLS]) token",
            "    return token_embeddings[:, 0]"],
    "max": ["def pool(token_embeddings, attention_mask):",
            "    # Element-wise max over the tokens, ignoring padding",
            "    mask = attention_mask.unsqueeze(-1)",
            "    masked = token_embeddings.masked_fill(mask == 0, torch.finfo(token_embeddings.dtype).min)",
            "    return masked.max(dim=1).values"],
    "last_token": ["def pool(token_embeddings, attention_mask):",
                   "    # The embedding of the last non-padding token (works for left and right padding)",
                   "    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)",
                   "    last = (attention_mask.long() * positions).argmax(dim=1)",
                   "    return token_embeddings[torch.arange(token_embeddings.shape[0]), last]"],
}


def transformers_snippet(model_id: str, *, pooling: str = "mean", normalize: bool = False,
                         max_seq_length: int | None = None) -> str:
    """Usage code for plain transformers + this model's pooling; defines `sentences` and `embeddings`.

    It mirrors `modeling.pool` line for line, so its embeddings equal `Encoder.encode`'s.
    """
    if pooling not in _POOLING_CODE:
        raise ValueError(f"no usage snippet for pooling '{pooling}': choose one of {', '.join(_POOLING_CODE)}")
    truncation = f", max_length={int(max_seq_length)}" if max_seq_length else ""
    lines = [
        "import torch",
        "import torch.nn.functional as F" if normalize else None,
        "from transformers import AutoModel, AutoTokenizer",
        "",
        "",
        *_POOLING_CODE[pooling],
        "",
        "",
        f"sentences = {json.dumps(list(EXAMPLE_SENTENCES))}",
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(model_id)})",
        f"model = AutoModel.from_pretrained({json.dumps(model_id)})",
        "model.eval()",
        f'encoded = tokenizer(sentences, padding=True, truncation=True{truncation}, return_tensors="pt")',
        "with torch.no_grad():",
        "    output = model(**encoded)",
        'embeddings = pool(output.last_hidden_state, encoded["attention_mask"])',
        "embeddings = F.normalize(embeddings, p=2, dim=1)" if normalize else None,
        "print(embeddings.shape)",
    ]
    return "\n".join(line for line in lines if line is not None)


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
            lines += [f"- Dataset: {_dataset_link(meta['dataset'])}{split}", ""]
        lines += ["| Metric | Value |", "|:--|--:|"]
        for metric, value in rows:
            cell = _format_metric(value)
            lines.append(f"| **{metric}** | **{cell}** |" if metric == primary else f"| {metric} | {cell} |")
        blocks.append("\n".join(lines))
    if not blocks:
        return ""
    return "\n\n".join(["## Evaluation", "Values are fractions (1.0 = perfect), rounded to 4 decimals; the "
                        "`model-index` metadata above holds them unrounded.", *blocks])


def _training_details(run: dict) -> str:
    parts = ["## Training details"]
    for dataset in run.get("datasets") or []:
        if not isinstance(dataset, dict):
            continue
        lines = [f"### Training dataset: {_display_name(dataset.get('name') or 'unnamed')}", ""]
        if dataset.get("name"):
            lines.append(f"- Dataset: {_dataset_link(dataset['name'])}"
                         + (f", split `{dataset['split']}`" if dataset.get("split") else ""))
        if _is_number(dataset.get("rows")):
            lines.append(f"- Size: {int(dataset['rows']):,} rows")
        if isinstance(dataset.get("columns"), dict) and dataset["columns"]:
            roles = ", ".join(f"{role} = `{column}`" for role, column in dataset["columns"].items())
            lines.append(f"- Columns (role = column): {roles}")
        if dataset.get("filter"):
            lines.append(f"- Filter: `{dataset['filter']}`")
        parts.append("\n".join(lines))
    if _is_number(run.get("train_rows")):
        parts.append(f"Training rows after loading and filtering: {int(run['train_rows']):,}")
    loss = run.get("loss") or {}
    if loss.get("name"):
        text = f"### Loss\n\n`{loss['name']}`"
        if loss.get("cached"):
            text += " (wrapped in GradCache, `cached: true`: same gradients, bounded memory)"
        if loss.get("config"):
            text += f" with these parameters:\n\n```json\n{json.dumps(loss['config'], indent=4, default=str)}\n```"
        parts.append(text)
    if run.get("recipe"):
        recipe = yaml.safe_dump(_plain(run["recipe"]), sort_keys=False, allow_unicode=True).rstrip()
        parts.append("### Recipe\n\nThe resolved recipe (YAML file + command-line overrides):\n\n"
                     f"<details><summary>Click to expand</summary>\n\n```yaml\n{recipe}\n```\n\n</details>")
    parts.append(_section(_hardware_and_time, run))
    versions = run.get("library_versions") or {}
    if versions:
        parts.append("### Framework versions\n\n" + "\n".join(f"- {k}: {v}" for k, v in versions.items()))
    parts = [p for p in parts if p]
    return "\n\n".join(parts) if len(parts) > 1 else ""


def _hardware_and_time(run: dict) -> str:
    lines = [f"- {key.replace('_', ' ').capitalize()}: {value}"
             for key, value in (run.get("hardware") or {}).items() if value not in (None, "")]
    if _is_number(run.get("train_runtime_seconds")):
        lines.append(f"- Training time: {_format_duration(run['train_runtime_seconds'])}")
    if _is_number(run.get("train_samples_per_second")):
        lines.append(f"- Throughput: {run['train_samples_per_second']:.1f} samples/s")
    if _is_number(run.get("final_train_loss")):
        lines.append(f"- Final training loss: {run['final_train_loss']:.4f}")
    return "### Hardware and time\n\n" + "\n".join(lines) if lines else ""


def _citation(run: dict) -> str:
    loss = run.get("loss") or {}
    bibtex = (loss.get("citation") or "").strip()
    if not bibtex:
        return ""
    return f"## Citation\n\n### {loss.get('name') or 'Loss'}\n\n```bibtex\n{bibtex}\n```"


# ---------------------------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def _plain(value: Any) -> Any:
    """JSON-ish data safe for yaml.safe_dump (tuples, paths, objects -> lists / strings); secrets redacted."""
    if isinstance(value, dict):
        return {str(k): "<redacted>" if _SECRET_KEY_RE.search(str(k)) and v is not None else _plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _looks_like_hub_id(name: Any) -> bool:
    return isinstance(name, str) and bool(_HUB_ID_RE.match(name)) and not os.path.exists(name)


def _base_model_id(base: Any) -> str | None:
    """The hub id of the base model; the bundled offline copy of the default model counts as its hub id."""
    if not isinstance(base, str) or not base:
        return None
    if _looks_like_hub_id(base):
        return base
    try:
        from nlp_contrastive.modeling import DEFAULT_MODEL, bundled_default_model_path

        bundled = bundled_default_model_path()
        if bundled and os.path.realpath(base) == os.path.realpath(bundled):
            return DEFAULT_MODEL
    except Exception:
        pass
    return None


def _hub_dataset(name: Any) -> tuple[str | None, str | None]:
    """(hub id, config) of a dataset given by hub id or by one of data.py's named sets; (None, None) otherwise."""
    if not isinstance(name, str) or not name:
        return None, None
    if _looks_like_hub_id(name):
        return name, None
    try:
        from nlp_contrastive.data import NAMED_SETS
    except Exception:
        return None, None
    spec = NAMED_SETS.get(name)
    return (spec.hub_id, spec.hub_config) if spec and spec.hub_id else (None, None)


def _display_name(name: str) -> str:
    """Local paths are shown by their last component: cards should not publish someone's directory layout."""
    if _looks_like_hub_id(name) or not ("/" in name or os.sep in name):
        return name
    return Path(name.rstrip("/" + os.sep)).name or name


def _model_link(base: str) -> str:
    hub_id = _base_model_id(base)
    return f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{_display_name(base)}` (local)"


def _dataset_link(name: str) -> str:
    hub_id, config = _hub_dataset(name)
    if not hub_id:
        return f"`{_display_name(name)}`"
    label = hub_id if hub_id == name else f"{name} ({hub_id}" + (f", config `{config}`" if config else "") + ")"
    return f"[{label}](https://huggingface.co/datasets/{hub_id})"


# ==================================================================================================== push
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def check_model_folder(output_dir: str | os.PathLike) -> None:
    """Fail with one line naming what is missing unless `output_dir` is a loadable sentence-transformers model."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise HubPushError(f"{folder} is not a directory: give the output folder of a training run")
    missing: list[str] = []
    modules = None
    try:
        modules = _read_json(folder / "modules.json")
    except (OSError, ValueError):
        missing.append("a readable modules.json")
    if modules is None and not missing:
        missing.append("modules.json")
    transformer_dir = folder
    for module in modules if isinstance(modules, list) else []:
        module_dir = folder / module.get("path", "")
        if module.get("type", "").endswith(".Transformer"):
            transformer_dir = module_dir
        elif module.get("type", "").endswith(".Pooling") and not (module_dir / "config.json").exists():
            missing.append(f"{module.get('path')}/config.json")
    prefix = "" if transformer_dir == folder else f"{transformer_dir.relative_to(folder).as_posix()}/"
    if not (transformer_dir / "config.json").exists():
        missing.append(f"{prefix}config.json")
    if not any((transformer_dir / name).exists() for name in _WEIGHTS):
        missing.append(f"weights ({prefix}model.safetensors or {prefix}pytorch_model.bin)")
    if not any((transformer_dir / name).exists() for name in _TOKENIZER):
        missing.append(f"a tokenizer ({prefix}tokenizer.json or {prefix}tokenizer_config.json)")
    if missing:
        raise HubPushError(f"{folder} is not a complete sentence-transformers model: missing {', '.join(missing)}; "
                           "push the output folder of a finished run (Encoder.save_pretrained writes all of these)")


def upload_file_list(output_dir: str | os.PathLike, *, include_logs: bool = False) -> list[str]:
    """Files to push, relative POSIX paths: no checkpoint-*/ dirs, hidden/temp files, caches; runs/ on request."""
    folder = Path(output_dir)
    files = []
    for root, dirs, names in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not (
            d.startswith((".", "checkpoint-")) or d == "__pycache__"
            or (rel_root == Path(".") and d == "runs" and not include_logs)))
        for name in sorted(names):
            if name.startswith(".") or name.endswith((".tmp", ".lock", "~")):
                continue
            files.append((rel_root / name).as_posix())
    return sorted(files)


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None, dry_run: bool = False,
                include_logs: bool = False) -> str:
    """Push a trained output folder to `repo_id` in one commit; return the repo URL (or the dry-run listing).

    The token comes from `token`, else huggingface_hub's usual places (HF_TOKEN, `hf auth login`). The card is
    generated if the folder has none; a card we generated gets its usage snippets pointed at `repo_id`; a
    hand-written README.md is uploaded as is. The local folder is only read, also when the push fails.
    """
    folder = Path(output_dir)
    check_model_folder(folder)
    _check_repo_id(repo_id)
    files = [f for f in upload_file_list(folder, include_logs=include_logs) if f != CARD_FILE]
    if dry_run:
        card, card_origin = _card_for_upload(folder, repo_id)
        return _dry_run_listing(folder, repo_id, files, card, card_origin, private, revision)

    import huggingface_hub
    from huggingface_hub import CommitOperationAdd, HfApi

    token = token or huggingface_hub.get_token()
    if not token:
        raise HubPushError(f"push to {repo_id} failed: no Hugging Face token found; {_LOGIN_HINT}")
    leaking = [f for f in files + [CARD_FILE] if (folder / f).exists() and _contains_text(folder / f, token)]
    if leaking:
        raise HubPushError(f"refusing to push: {', '.join(leaking)} in {folder} contain(s) your hub token; "
                           "remove it from those files, then push again")
    from nlp_contrastive import __version__

    api = HfApi(library_name="nlp-contrastive", library_version=__version__)  # shows up in the user agent
    try:
        url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or repo_id  # a bare name resolves to your namespace
        card, _ = _card_for_upload(folder, repo_id)
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]
        if card is not None:
            operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        api.create_commit(repo_id, operations, token=token, revision=revision, repo_type="model",
                          commit_message=commit_message or "Add sentence-embedding model trained with nlp-contrastive")
    except Exception as exc:
        message = _explain_hub_error(exc, repo_id, api.endpoint)
        raise HubPushError(f"{message}. The local model in {folder} is unchanged.".replace(token, "***")) from exc
    return f"{str(url).rstrip('/')}/tree/{revision}" if revision else str(url)


def _contains_text(path: Path, needle: str, limit: int = 50_000_000) -> bool:
    """Whether a (text-sized) file holds `needle`; weights and other big files are not scanned."""
    if path.suffix not in (".json", ".md", ".txt", ".yaml", ".yml", ".csv", ".jsonl", ".py", ".cfg", ".ini") or (
            path.stat().st_size > limit):
        return False
    return needle.encode("utf-8") in path.read_bytes()


def _check_repo_id(repo_id: str) -> None:
    if (not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or ".." in repo_id or "--" in repo_id
            or len(repo_id) > 96):
        raise HubPushError(f"invalid --repo-id '{repo_id}': use 'user-or-org/model-name' or just 'model-name' "
                           "(letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters)")


def _card_for_upload(folder: Path, repo_id: str) -> tuple[str | None, str]:
    """(card text, where it came from): generated if absent, retargeted if ours, otherwise the user's as is."""
    path = folder / CARD_FILE
    if not path.exists():
        try:
            return _card_from_folder(folder, model_id=repo_id), "generated"
        except Exception as exc:
            logger.warning("pushing without a model card: generating it failed (%s: %s)", type(exc).__name__, exc)
            return None, "none"
    text = path.read_text(encoding="utf-8")
    match = _MARKER_RE.search(text)
    if not match or match.group(1) == repo_id:
        return text, "existing"
    old = match.group(1)
    if old == MODEL_ID_PLACEHOLDER:
        text = text.replace(_PLACEHOLDER_NOTE, "")
    text = text.replace(match.group(0), _MARKER.format(model_id=repo_id)).replace(json.dumps(old), json.dumps(repo_id))
    return text, f"existing, model id {old} -> {repo_id}"


def _dry_run_listing(folder: Path, repo_id: str, files: list[str], card: str | None, card_origin: str,
                     private: bool, revision: str | None) -> str:
    from huggingface_hub import constants

    rows = [(f, (folder / f).stat().st_size, "") for f in files]
    if card is not None:
        rows.append((CARD_FILE, len(card.encode("utf-8")), f"  ({card_origin})"))
    rows.sort()
    width = max(len(f) for f, _, _ in rows)
    target = repo_id if "/" in repo_id else f"<your namespace>/{repo_id}"
    lines = [f"Dry run: would push {folder} to {constants.ENDPOINT}/{target} (revision {revision or 'main'}, "
             f"{'private' if private else 'public if new'}); nothing was uploaded.",
             f"{len(rows)} files, {_format_size(sum(size for _, size, _ in rows))}:"]
    lines += [f"  {f.ljust(width)}  {_format_size(size):>10}{note}" for f, size, note in rows]
    lines += ["", f"----- {CARD_FILE} -----", card if card is not None else "(no model card)"]
    return "\n".join(lines)


def _format_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _transport_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeout, connection) exception types of whichever HTTP stack this huggingface_hub uses."""
    timeouts: list[type] = [TimeoutError]
    connection: list[type] = [ConnectionError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
            timeouts.append(module.TimeoutException)
            connection.append(module.TransportError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        timeouts.append(requests.Timeout)
        connection.append(requests.ConnectionError)
    except ImportError:
        pass
    return tuple(timeouts), tuple(connection)


def _explain_hub_error(exc: BaseException, repo_id: str, endpoint: str) -> str:
    """What happened and what to do, in one line, for the errors a push meets in practice."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(exc, "response", None), "status_code", None)
    server = (getattr(exc, "server_message", None) or "").strip().splitlines()
    detail = f" ({server[0]})" if server else ""
    timeouts, connection = _transport_errors()
    if isinstance(exc, HfHubHTTPError) and status is not None:
        if status == 401:
            what = f"HTTP 401, the hub did not accept the token{detail}; {_LOGIN_HINT}"
        elif status == 403:
            what = (f"HTTP 403, the token may not write to {repo_id}{detail}; use a token with write access to that "
                    "namespace (fine-grained tokens need write permission on it) or push to a namespace you own")
        elif status == 404:
            what = (f"HTTP 404, {repo_id} or its revision was not found{detail}; check --repo-id / --revision and "
                    "that your token can see the repo")
        elif status == 429:
            what = f"HTTP 429, rate limited by the hub{detail}; wait a few minutes and retry"
        elif status >= 500:
            what = (f"HTTP {status}, a server error on the hub{detail}; retry later "
                    "(status: https://status.huggingface.co)")
        else:
            what = f"HTTP {status}{detail}; check the message and retry"
    elif isinstance(exc, OfflineModeIsEnabled):
        what = "HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to push"
    elif isinstance(exc, timeouts):
        what = f"timed out waiting for {endpoint}; check your connection and retry"
    elif isinstance(exc, connection):
        what = f"could not connect to {endpoint}; check your network or proxy (and HF_ENDPOINT), then retry"
    elif isinstance(exc, ValueError) and "metadata" in str(exc).lower():
        reason = " ".join(str(exc).split())
        what = f"the hub rejected README.md's metadata: {reason}; fix its YAML front matter or delete it to regenerate"
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        what = f"{type(exc).__name__}: {first}; retry, and report it if it persists"
    return f"push to {repo_id} failed: {what}"


# ===================================================================================================== CLI
def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """`nlp-contrastive push OUTPUT_DIR --repo-id user/name ...` (no --token flag: it would land in shell history)."""
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="output folder of a training run")
    parser.add_argument("--repo-id", required=True, help="hub repo to push to, e.g. your-name/my-model")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing); default main")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument("--include-logs", action="store_true", help="also upload tensorboard logs (runs/)")
    parser.add_argument("--dry-run", action="store_true", help="print the file list and model card, upload nothing")


def run_push(args: argparse.Namespace) -> int:
    """Exit code 1 with a one-line error (no traceback) when the push cannot happen."""
    try:
        result = push_to_hub(args.output_dir, args.repo_id, private=args.private, revision=args.revision,
                             commit_message=args.commit_message, dry_run=args.dry_run,
                             include_logs=args.include_logs)
    except HubPushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result if args.dry_run else f"Pushed {args.output_dir} to {result}")
    return 0
