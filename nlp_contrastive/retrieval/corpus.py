"""A retrieval corpus read by row range, without holding its texts: in memory (a dict) or a BEIR corpus.jsonl.

Mining and evaluation need, per corpus row: its text in chunks (to encode), a few texts and ids at the end
(the chosen negatives), and equality tests (duplicate ids, duplicate texts, a query's own text). A JSON Lines
corpus keeps only one byte offset and two 64-bit hashes per row (24 bytes: 24 MB for 1M documents), so memory
does not grow with the text; the in-memory corpus answers the same questions from its lists.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np


def text_hash(text: str) -> int:
    """64-bit hash of a text (blake2b): equal texts, equal hashes; collisions are checked on the texts."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class Corpus:
    """Rows 0..n-1 with an id and a text each; subclasses provide `_texts(start, stop)` and `_ids(start, stop)`."""

    source: str
    text_hashes: np.ndarray  # int64 per row
    id_hashes: np.ndarray
    digest: str  # sha256 over every (id, text): the cache key's "texts"

    def __len__(self) -> int:
        return len(self.text_hashes)

    def texts(self, start: int, stop: int) -> list[str]:
        return self._texts(start, min(stop, len(self)))

    def ids(self, start: int, stop: int) -> list[str]:
        return self._ids(start, min(stop, len(self)))

    def text_of(self, rows: Iterable[int]) -> dict[int, str]:
        return {int(r): self._texts(int(r), int(r) + 1)[0] for r in sorted(set(rows))}

    def id_of(self, rows: Iterable[int]) -> dict[int, str]:
        return {int(r): self._ids(int(r), int(r) + 1)[0] for r in sorted(set(rows))}

    def _hash(self, ids_and_texts: Iterable[tuple[str, str]]) -> None:
        """Hash every row in one pass; refuse non-text documents."""
        digest = hashlib.sha256()
        text_hashes, id_hashes = array("q"), array("q")  # 8 bytes a row, not a Python int
        self.first_empty: str | None = None  # id of the first document whose text is blank
        for row, (doc_id, text) in enumerate(ids_and_texts):
            if not isinstance(text, str):
                raise ValueError(f"{self.source}: document {doc_id!r} (row {row}) has no text: fix the corpus")
            if self.first_empty is None and not text.strip():
                self.first_empty = doc_id
            digest.update(f"{len(doc_id)}:{doc_id}{len(text)}:".encode())
            digest.update(text.encode("utf-8"))
            text_hashes.append(text_hash(text))
            id_hashes.append(text_hash(doc_id))
        self.text_hashes = np.asarray(text_hashes, dtype=np.int64)
        self.id_hashes = np.asarray(id_hashes, dtype=np.int64)
        self.digest = digest.hexdigest()

    def _check(self) -> None:
        """Sort the hashes for lookups; refuse repeated ids, naming both rows."""
        self._id_order = np.argsort(self.id_hashes, kind="stable")
        self._text_order = np.argsort(self.text_hashes, kind="stable")
        sorted_ids = self.id_hashes[self._id_order]
        for i in np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]):
            a, b = sorted(int(r) for r in self._id_order[i:i + 2])
            if self._ids(a, a + 1) == self._ids(b, b + 1):
                raise ValueError(f"{self.source}: document id {self._ids(a, a + 1)[0]!r} repeats (rows {a} and {b}): "
                                 "give each document its own id")

    def rows_of_ids(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Row of each id, -1 for an id the corpus does not hold."""
        rows = np.full(len(doc_ids), -1, dtype=np.int64)
        for i, doc_id in enumerate(doc_ids):
            for r in self._matches(self._id_order, self.id_hashes, text_hash(doc_id)):
                if self._ids(r, r + 1)[0] == doc_id:
                    rows[i] = r
                    break
        return rows

    def rows_with_text(self, text: str) -> list[int]:
        """Every row whose text equals `text` exactly."""
        return [r for r in self._matches(self._text_order, self.text_hashes, text_hash(text))
                if self._texts(r, r + 1)[0] == text]

    @staticmethod
    def _matches(order: np.ndarray, hashes: np.ndarray, value: int) -> list[int]:
        ordered = hashes[order]
        lo, hi = np.searchsorted(ordered, value, side="left"), np.searchsorted(ordered, value, side="right")
        return sorted(int(r) for r in order[lo:hi])

    def repeated_text_rows(self) -> np.ndarray:
        """Bool per row: True where an earlier row has the same text (a repeat that search should skip)."""
        repeat = np.zeros(len(self), dtype=bool)
        sorted_hashes = self.text_hashes[self._text_order]
        same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
        for start in same:
            first = int(self._text_order[start])
            group = self.rows_with_text(self._texts(first, first + 1)[0])
            repeat[group[1:]] = True
        return repeat


class MemoryCorpus(Corpus):
    """A {doc id: text} mapping (evaluation tasks, pairs files, hub copies)."""

    def __init__(self, corpus: Mapping[str, str], source: str = "corpus") -> None:
        self.source = source
        self._id_list = [str(d) for d in corpus]
        self._text_list = list(corpus.values())
        self._hash(zip(self._id_list, self._text_list, strict=True))
        self._check()

    def _texts(self, start: int, stop: int) -> list[str]:
        return self._text_list[start:stop]

    def _ids(self, start: int, stop: int) -> list[str]:
        return self._id_list[start:stop]


class JsonlCorpus(Corpus):
    """A BEIR corpus.jsonl (`_id`, `title`, `text`), read by byte offset; text = title + " " + text as MTEB."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.source = str(path)
        offsets: list[int] = []

        def rows() -> Iterable[tuple[str, str]]:
            with open(self.path, "rb") as f:
                offset = 0
                for number, line in enumerate(f, start=1):
                    start, offset = offset, offset + len(line)
                    if not line.strip():
                        continue
                    offsets.append(start)
                    yield self._parse(line, number)

        self._hash(rows())
        self._offsets = np.asarray(offsets, dtype=np.int64)
        if not len(self):
            empty = "is empty" if not self.path.stat().st_size else "holds no documents (only blank lines)"
            raise ValueError(f"{self.path} {empty}: give one JSON object per line")
        self._check()

    def _parse(self, line: bytes, number: int | str) -> tuple[str, str]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: line {number} is not valid JSON ({exc.msg}): fix that line") from None
        if not isinstance(row, dict) or "_id" not in row or "text" not in row:
            raise ValueError(f"{self.path}: line {number} has no _id / text: BEIR corpus rows need _id, text "
                             "(and optionally title)")
        title, text = row.get("title") or "", row["text"]
        return str(row["_id"]), f"{title} {text}".strip() if title and isinstance(text, str) else text

    def _read(self, start: int, stop: int) -> list[tuple[str, str]]:
        out = []
        with open(self.path, "rb") as f:
            if stop > start:
                f.seek(int(self._offsets[start]))
            for row in range(start, stop):
                line = f.readline()
                while line and not line.strip():  # blank lines hold no row
                    line = f.readline()
                out.append(self._parse(line, f"of row {row}"))
        return out

    def _texts(self, start: int, stop: int) -> list[str]:
        return [text for _, text in self._read(start, stop)]

    def _ids(self, start: int, stop: int) -> list[str]:
        return [doc_id for doc_id, _ in self._read(start, stop)]

    def _rows(self, rows: Iterable[int]) -> dict[int, tuple[str, str]]:
        """(id, text) of scattered rows through one open file."""
        out = {}
        with open(self.path, "rb") as f:
            for row in sorted({int(r) for r in rows}):
                f.seek(int(self._offsets[row]))
                out[row] = self._parse(f.readline(), f"of row {row}")
        return out

    def text_of(self, rows: Iterable[int]) -> dict[int, str]:
        return {row: text for row, (_, text) in self._rows(rows).items()}

    def id_of(self, rows: Iterable[int]) -> dict[int, str]:
        return {row: doc_id for row, (doc_id, _) in self._rows(rows).items()}
