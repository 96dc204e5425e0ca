"""Input checks shared by the evaluators: fail on the first bad value with a one-line error naming the fix.

Evaluators are built from plain lists (by the suite, the trainer, or user code), so these checks run in
their constructors rather than in the data loader: a bad row fails before any encoding starts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

logger = logging.getLogger(__name__)


def check_lengths(task: str, **columns: Sequence) -> int:
    """All columns have the same, non-zero length; returns it."""
    lengths = {role: len(values) for role, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{task}: columns have different lengths {lengths}: give one value per row in each")
    n = next(iter(lengths.values()), 0)
    if n == 0:
        raise ValueError(f"{task}: no rows to evaluate: give a non-empty dataset (check the file, split and filters)")
    return n


def check_texts(task: str, role: str, values: Sequence) -> None:
    """Every value must be a string. Empty strings are allowed (MTEB encodes them too) but reported once."""
    empty = []
    for row, value in enumerate(values):
        if not isinstance(value, str):
            kind = "missing (null)" if value is None else f"a {type(value).__name__}, not text"
            raise ValueError(f"{task}: {role} in row {row} is {kind}: map a text column to '{role}' or fix that row")
        if not value.strip():
            empty.append(row)
    if empty:
        logger.warning("%s: %d empty %s text(s), first in row %d: encoded as given (as MTEB does); drop those "
                       "rows if they are mistakes", task, len(empty), role, empty[0])


def check_numbers(task: str, role: str, values: Sequence) -> None:
    for row, value in enumerate(values):
        if value is None:
            raise ValueError(f"{task}: {role} in row {row} is missing (null): fix or drop that row")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
            raise ValueError(f"{task}: {role} in row {row} is {value!r}, not a number: map a numeric column "
                             f"to '{role}'")
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"{task}: {role} in row {row} is {value}: fix or drop that row")


def check_binary(task: str, role: str, values: Sequence) -> None:
    """Labels must be 0/1 (or booleans): 1 = positive pair / relevant document."""
    check_numbers(task, role, [int(v) if isinstance(v, (bool, np.bool_)) else v for v in values])
    for row, value in enumerate(values):
        if value not in (0, 1):
            raise ValueError(f"{task}: {role} in row {row} is {value!r}; labels must be 0 or 1 (1 = positive): "
                             "map your labels to 0/1")


def check_score_range(task: str, values: Sequence[float], score_range: Sequence[float] | None) -> None:
    if score_range is None:
        return
    if len(score_range) != 2 or not float(score_range[1]) > float(score_range[0]):
        raise ValueError(f"{task}: score_range {list(score_range)} must be [low, high] with high > low")
    low, high = float(score_range[0]), float(score_range[1])
    for row, value in enumerate(values):
        if not low <= value <= high:
            raise ValueError(f"{task}: score {value} in row {row} is outside score_range [{low:g}, {high:g}]: "
                             "fix the row or the task's score_range")
