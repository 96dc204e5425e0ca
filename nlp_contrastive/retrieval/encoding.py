"""Turn texts into float32 numpy embeddings with any encoder (ours, or a sentence-transformers model).

Retrieval and evaluation accept our `Encoder` or anything with `encode(texts, batch_size=..., convert_to="numpy")`;
a sentence-transformers model (whose encode takes `convert_to_numpy`) works too, so the same code can score
both sides of a comparison.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np


def encode(encoder, texts: Sequence[str], batch_size: int, *, prompt: str | None = None,
           truncate_dim: int | None = None, quiet: bool = False) -> np.ndarray:
    """Embed `texts` as a float32 [len(texts), dim] array, whatever the encoder's encode signature.

    `prompt` is prepended to every text — by the encoder when its encode takes `prompt` (ours and
    sentence-transformers' do, and only they know whether prompt tokens are pooled), else here.
    `truncate_dim` keeps the first d dimensions (Matryoshka), as sentence-transformers' truncate_dim does.
    `quiet` turns the encoder's own progress bar off (corpus chunks show one bar over chunks instead).
    """
    texts = list(texts)
    try:
        parameters = inspect.signature(encoder.encode).parameters
    except (TypeError, ValueError):  # builtins / C callables without a signature
        parameters = {}
    kwargs = {}
    if quiet and "show_progress_bar" in parameters:
        kwargs["show_progress_bar"] = False
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
