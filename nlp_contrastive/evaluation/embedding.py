"""Several text columns embedded with each distinct text encoded once (`encode` itself lives in
nlp_contrastive.retrieval.encoding, shared with mining)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nlp_contrastive.retrieval.encoding import encode, truncate  # noqa: F401  (re-exported: evaluators import them here)


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
