"""Turn texts into float32 numpy embeddings with any encoder, encoding each distinct text once.

Evaluators accept our `Encoder` or anything with `encode(texts, batch_size=..., convert_to="numpy")`; a
sentence-transformers model (whose encode takes `convert_to_numpy`) works too, so the same evaluator can
score both sides of a comparison.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np


def encode(encoder, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Embed `texts` as a float32 [len(texts), dim] array, whatever the encoder's encode signature."""
    texts = list(texts)
    try:
        parameters = inspect.signature(encoder.encode).parameters
    except (TypeError, ValueError):  # builtins / C callables without a signature
        parameters = {}
    if "convert_to" not in parameters and "convert_to_numpy" in parameters:
        embeddings = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    else:
        embeddings = encoder.encode(texts, batch_size=batch_size, convert_to="numpy")
    if hasattr(embeddings, "detach"):  # a torch tensor (possibly on GPU) from a looser encoder
        embeddings = embeddings.detach().float().cpu().numpy()
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise ValueError(f"encoder returned shape {embeddings.shape} for {len(texts)} texts: encode must return "
                         "one embedding row per text")
    return embeddings


def encode_unique(encoder, columns: Sequence[Sequence[str]], batch_size: int) -> list[np.ndarray]:
    """Embed several text columns in one call with each distinct text encoded once; one array per column.

    STS and SICK repeat sentences across pairs (SICK-R test: 9,854 texts, 5,007 distinct), so this roughly
    halves the work there, and one call lets the encoder length-sort all texts together.
    """
    slot: dict[str, int] = {}
    positions = [np.fromiter((slot.setdefault(t, len(slot)) for t in column), dtype=np.int64, count=len(column))
                 for column in columns]
    unique = encode(encoder, list(slot), batch_size) if slot else np.zeros((0, 0), dtype=np.float32)
    return [unique[index] for index in positions]
