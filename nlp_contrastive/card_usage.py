"""The usage code a model card shows: sentence-transformers, and plain transformers + this model's pooling."""

from __future__ import annotations

import json

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
