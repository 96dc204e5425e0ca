"""What a model card shows about using the model: usage code (sentence-transformers, and plain transformers +
this model's pooling) and links to the base model and datasets (hub ids only: local paths are never published)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nlp_contrastive.data.sources import NAMED_SETS, is_hub_id

EXAMPLE_SENTENCES = (
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
)


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


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def base_model_id(base: Any) -> str | None:
    """The hub id of the base model; the bundled offline copy of the default model counts as its hub id."""
    if not isinstance(base, str) or not base:
        return None
    if is_hub_id(base):
        return base
    try:
        from nlp_contrastive.modeling import DEFAULT_MODEL, bundled_default_model_path

        bundled = bundled_default_model_path()
        if bundled and os.path.realpath(base) == os.path.realpath(bundled):
            return DEFAULT_MODEL
    except Exception:
        pass
    return None


def hub_dataset(name: Any) -> tuple[str | None, str | None]:
    """(hub id, config) of a dataset given by hub id or by one of the named sets (data/sources.py); (None, None) otherwise."""
    if not isinstance(name, str) or not name:
        return None, None
    if is_hub_id(name):
        return name, None
    spec = NAMED_SETS.get(name)
    return (spec.hub_id, spec.hub_config) if spec and spec.hub_id else (None, None)


def display_name(name: str) -> str:
    """Local paths are shown by their last component: cards should not publish someone's directory layout."""
    if is_hub_id(name) or not ("/" in name or os.sep in name):
        return name
    return Path(name.rstrip("/" + os.sep)).name or name


def model_link(base: str) -> str:
    hub_id = base_model_id(base)
    return f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{display_name(base)}` (local)"


def dataset_links(run) -> list[str]:
    return [dataset_link(d.name) for d in run.datasets if d.name]


def dataset_link(name: str) -> str:
    hub_id, config = hub_dataset(name)
    if not hub_id:
        return f"`{display_name(name)}`"
    label = hub_id if hub_id == name else f"{name} ({hub_id}" + (f", config `{config}`" if config else "") + ")"
    return f"[{label}](https://huggingface.co/datasets/{hub_id})"
