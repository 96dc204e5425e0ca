"""The evaluator contract: `evaluator(encoder) -> {metric: value}`, pure, with a `primary_metric`.

`__call__` is `score(predict(encoder))`: `predict` is the only step that runs the model, `score` is plain
math on its output. The CLI uses the split to draw plots from the same predictions without encoding twice;
writing files never happens in here (DESIGN principle 8).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nlp_contrastive.evaluation.embedding import encode_unique

DEFAULT_BATCH_SIZE = 64


class Evaluator(ABC):
    """Base class: subclasses set `name`, `primary_metric`, `batch_size` and implement predict/score.

    `truncate_dim` (Matryoshka: keep the first d dimensions) and `prompts` ({text role: prompt}, e.g.
    {query: "query: ", document: "passage: "}) change how texts are embedded, not the metrics; set them on any
    evaluator (the suite does, from a task's `truncate_dim` / `prompts` keys).
    """

    name: str
    primary_metric: str
    batch_size: int = DEFAULT_BATCH_SIZE
    truncate_dim: int | None = None
    prompts: Mapping[str, str] = {}

    def encode_roles(self, encoder, columns: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """Embed (role, texts) columns with this task's prompts and truncation, each distinct text once."""
        return encode_unique(encoder, [texts for _, texts in columns], self.batch_size,
                             prompts=[self.prompts.get(role) for role, _ in columns], truncate_dim=self.truncate_dim)

    def __call__(self, encoder) -> dict[str, float]:
        return self.score(self.predict(encoder))

    @abstractmethod
    def predict(self, encoder) -> Any:
        """Encode this task's texts and return the similarity scores the metrics need."""

    @abstractmethod
    def score(self, predictions: Any) -> dict[str, float]:
        """Metrics as fractions in [0, 1] (correlations in [-1, 1]); the primary metric comes first."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, primary_metric={self.primary_metric!r})"
