"""Turn texts into float32 numpy embeddings with any encoder, encoding each distinct text once.

Evaluators accept our `Encoder` or anything with `encode(texts, batch_size=..., convert_to="numpy")`; a
sentence-transformers model (whose encode takes `convert_to_numpy`) works too, so the same evaluator can
score both sides of a comparison.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np


def encode(encoder, texts: Sequence[str], batch_size: int, *, prompt: str | None = None,
           truncate_dim: int | None = None) -> np.ndarray:
    """Embed `texts` as a float32 [len(texts), dim] array, whatever the encoder's encode signature.

    `prompt` is prepended to every text — by the encoder when its encode takes `prompt` (ours and
    sentence-transformers' do, and only they know whether prompt tokens are pooled), else here.
    `truncate_dim` keeps the first d dimensions (Matryoshka), as sentence-transformers' truncate_dim does.
    """
    texts = list(texts)
    try:
        parameters = inspect.signature(encoder.encode).parameters
    except (TypeError, ValueError):  # builtins / C callables without a signature
        parameters = {}
    kwargs = {}
    if prompt:
        if "prompt" in parameters:
            kwargs["prompt"] = prompt
        else:
            texts = [prompt + text for text in texts]
    if "convert_to" not in parameters and "convert_to_numpy" in parameters:
        embeddings = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, **kwargs)
    else:
        embeddings = encoder.encode(texts, batch_size=batch_size, convert_to="numpy", **kwargs)
    if hasattr(embeddings, "detach"):  # a torch tensor (possibly on GPU) from a looser encoder
        embeddings = embeddings.detach().float().cpu().numpy()
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise ValueError(f"encoder returned shape {embeddings.shape} for {len(texts)} texts: encode must return "
                         "one embedding row per text")
    return truncate(embeddings, truncate_dim)


def truncate(embeddings: np.ndarray, truncate_dim: int | None) -> np.ndarray:
    """The first `truncate_dim` dimensions of each row (all of them for None); ValueError if too large."""
    if truncate_dim is None:
        return embeddings
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or truncate_dim < 1:
        raise ValueError(f"truncate_dim must be a positive integer, got {truncate_dim!r}")
    if truncate_dim > embeddings.shape[1]:
        raise ValueError(f"truncate_dim {truncate_dim} exceeds the model's embedding dimension "
                         f"{embeddings.shape[1]}: use a value <= {embeddings.shape[1]}")
    return np.ascontiguousarray(embeddings[:, :truncate_dim])


def encode_unique(encoder, columns: Sequence[Sequence[str]], batch_size: int, *,
                  prompts: Sequence[str | None] | None = None, truncate_dim: int | None = None) -> list[np.ndarray]:
    """Embed several text columns with each distinct text encoded once; one array per column.

    STS and SICK repeat sentences across pairs (SICK-R test: 9,854 texts, 5,007 distinct), so this roughly
    halves the work there, and one call lets the encoder length-sort all texts together. `prompts` (one per
    column, None = no prompt) are applied per column; columns sharing a prompt are encoded in one call.
    """
    prompts = list(prompts) if prompts is not None else [None] * len(columns)
    if len(prompts) != len(columns):
        raise ValueError(f"got {len(prompts)} prompts for {len(columns)} text columns: give one per column")
    out: list[np.ndarray | None] = [None] * len(columns)
    for prompt in dict.fromkeys(p or None for p in prompts):
        members = [i for i, p in enumerate(prompts) if (p or None) == prompt]
        slot: dict[str, int] = {}
        positions = [np.fromiter((slot.setdefault(t, len(slot)) for t in columns[i]), dtype=np.int64,
                                 count=len(columns[i])) for i in members]
        unique = (encode(encoder, list(slot), batch_size, prompt=prompt, truncate_dim=truncate_dim) if slot
                  else np.zeros((0, 0), dtype=np.float32))
        for i, index in zip(members, positions, strict=True):
            out[i] = unique[index]
    return out
