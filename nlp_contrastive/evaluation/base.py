"""The evaluator contract: `evaluator(encoder) -> {metric: value}`, pure, with a `primary_metric`.

`__call__` is `score(predict(encoder))`: `predict` is the only step that runs the model, `score` is plain
math on its output. The CLI uses the split to draw plots from the same predictions without encoding twice;
writing files never happens in here (DESIGN principle 8).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

DEFAULT_BATCH_SIZE = 64


class Evaluator(ABC):
    """Base class: subclasses set `name`, `primary_metric`, `batch_size` and implement predict/score."""

    name: str
    primary_metric: str
    batch_size: int = DEFAULT_BATCH_SIZE

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
