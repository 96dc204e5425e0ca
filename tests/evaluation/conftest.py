"""Helpers for evaluation tests: an encoder whose embeddings are written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


class TableEncoder:
    """`encode` looks each text up in a table, so metrics can be computed on paper; records what it encoded."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = {text: np.asarray(vector, dtype=np.float32) for text, vector in table.items()}
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size=32, convert_to="numpy"):
        self.calls.append(list(texts))
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, 2), np.float32)


@pytest.fixture
def table_encoder():
    return TableEncoder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def jsonl():
    return write_jsonl
