"""Retrieval inputs -> (queries, corpus, qrels) dicts of strings, from the two layouts a task can use.

- BEIR layout: a folder with corpus.jsonl (`_id`, `title`, `text`), queries.jsonl (`_id`, `text`) and
  qrels/<split>.tsv (`query-id`, `corpus-id`, `score`), or the same on the hub as MTEB publishes it
  (configs `corpus`, `queries` and `default`). Document text is `title + " " + text` as in MTEB/BEIR.
- Pairs layout: rows of (query, document[, label]); the corpus is every distinct document (the pooled
  candidates), a row with label >= 1 (or any row when there is no label) marks the document relevant.
  Queries without any relevant document are left out, as BEIR qrels list relevant pairs only.
Ids are always strings, so "007" in the qrels and "007" in the corpus stay the same id.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from nlp_contrastive.data.sources import is_beir_folder
from nlp_contrastive.evaluation.inputs import check_lengths, check_numbers, check_texts

Queries = dict[str, str]
Corpus = dict[str, str]
Qrels = dict[str, dict[str, int]]


def load_beir_folder(folder: str | Path, split: str) -> tuple[Queries, Corpus, Qrels]:
    queries, qrels = read_beir_queries_qrels(folder, split)
    corpus = beir_corpus(_read_jsonl(Path(folder) / "corpus.jsonl"), source=str(Path(folder) / "corpus.jsonl"))
    return queries, corpus, qrels


def read_beir_queries_qrels(folder: str | Path, split: str) -> tuple[Queries, Qrels]:
    """The queries and one split's qrels of a BEIR folder (the corpus is read separately: it may be huge)."""
    folder = Path(folder)
    qrels_file = folder / "qrels" / f"{split}.tsv"
    for needed in (folder / "queries.jsonl", qrels_file):
        if not needed.is_file():
            raise FileNotFoundError(f"BEIR folder {folder} has no {needed.relative_to(folder)}: expected corpus.jsonl, "
                                    f"queries.jsonl and qrels/{split}.tsv")
    queries = {str(row["_id"]): row.get("text") for row in _read_jsonl(folder / "queries.jsonl", ("_id", "text"))}
    return queries, read_qrels_tsv(qrels_file)


def load_beir(source: str, split: str) -> tuple[Queries, Corpus, Qrels]:
    """A BEIR folder, or the same data on the hub (configs corpus / queries / default, as MTEB publishes it)."""
    if is_beir_folder(source):
        return load_beir_folder(source, split)
    from nlp_contrastive.data.loading import load_split

    return beir_from_rows(load_split(source, "corpus", config_name="corpus"),
                          load_split(source, "queries", config_name="queries"),
                          load_split(source, split, config_name="default"), source=source)


def beir_from_rows(corpus_rows, query_rows, qrel_rows, source: str) -> tuple[Queries, Corpus, Qrels]:
    """(queries, corpus, qrels) from the three row sets of a hub copy of a BEIR dataset."""
    for rows, needed, what in ((query_rows, ("_id", "text"), "queries"),
                               (qrel_rows, ("query-id", "corpus-id", "score"), "qrels")):
        missing = [c for c in needed if c not in rows.column_names]
        if missing:
            raise ValueError(f"{source}: {what} have no column(s) {missing}: the BEIR layout needs {', '.join(needed)}")
    corpus = beir_corpus(corpus_rows, source=f"{source} corpus")
    queries = {str(i): t for i, t in zip(query_rows["_id"][:], query_rows["text"][:], strict=True)}
    qrels = qrels_from_rows(qrel_rows["query-id"][:], qrel_rows["corpus-id"][:],
                            qrel_rows["score"][:], f"{source} qrels")
    return queries, corpus, qrels


def beir_corpus(rows: Iterable[Mapping], source: str) -> Corpus:
    """{doc id: title + " " + text} (just text when there is no title), MTEB's document string."""
    corpus: Corpus = {}
    for number, row in enumerate(rows):
        if str(row.get("_id")) in corpus:
            raise ValueError(f"{source}: row {number}: duplicate _id '{row['_id']}': give each document its own id")
        for key in ("_id", "text"):
            if key not in row:
                raise ValueError(f"{source}: a document has no '{key}' field: BEIR corpus rows need _id, text "
                                 "(and optionally title)")
        title = row.get("title") or ""
        text = row["text"]
        corpus[str(row["_id"])] = f"{title} {text}".strip() if title and isinstance(text, str) else text
    return corpus


def read_qrels_tsv(path: str | Path) -> Qrels:
    """query-id <tab> corpus-id <tab> score, with or without BEIR's header line."""
    qrels: Qrels = {}
    with open(path, encoding="utf-8", newline="") as f:
        for line_number, fields in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not fields or (line_number == 1 and fields[0] == "query-id"):
                continue
            if len(fields) != 3:
                raise ValueError(f"{path}: line {line_number} has {len(fields)} fields; qrels lines are "
                                 "query-id<TAB>corpus-id<TAB>score")
            try:
                relevance = int(fields[2])
            except ValueError:
                raise ValueError(f"{path}: line {line_number} has relevance {fields[2]!r}, not an integer: use 0, "
                                 "1, 2, ...") from None
            qrels.setdefault(fields[0], {})[fields[1]] = relevance
    if not qrels:
        raise ValueError(f"{path} holds no judgments: give query-id, corpus-id, score lines")
    return qrels


def qrels_from_rows(query_ids: Sequence, doc_ids: Sequence, scores: Sequence, source: str) -> Qrels:
    check_lengths(source, **{"query-id": query_ids, "corpus-id": doc_ids, "score": scores})
    check_numbers(source, "score", scores)
    qrels: Qrels = {}
    for query, doc, score in zip(query_ids, doc_ids, scores, strict=True):
        qrels.setdefault(str(query), {})[str(doc)] = int(score)
    return qrels


def pairs_to_retrieval(queries: Sequence[str], documents: Sequence[str], labels: Sequence | None,
                       *, task: str = "retrieval") -> tuple[Queries, Corpus, Qrels]:
    """Pool the documents into a corpus; judged-relevant (label >= 1) pairs become the qrels."""
    labels = [1] * len(queries) if labels is None else labels
    check_lengths(task, query=queries, document=documents, label=labels)
    check_texts(task, "query", queries)
    check_texts(task, "document", documents)
    check_numbers(task, "label", labels)
    query_ids: dict[str, str] = {}
    doc_ids: dict[str, str] = {}
    qrels: Qrels = {}
    for query, document, label in zip(queries, documents, labels, strict=True):
        qid = query_ids.setdefault(query, f"q{len(query_ids)}")
        did = doc_ids.setdefault(document, f"d{len(doc_ids)}")
        if label >= 1:
            qrels.setdefault(qid, {})[did] = max(int(label), qrels.get(qid, {}).get(did, 0))
    if not qrels:
        raise ValueError(f"{task}: no row is marked relevant (label >= 1): check the label column")
    return ({qid: q for q, qid in query_ids.items()}, {did: d for d, did in doc_ids.items()}, qrels)


def _read_jsonl(path: Path, required: Sequence[str] = ()) -> Iterable[dict]:
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: give one JSON object per line")
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {line_number} is not valid JSON ({exc.msg}): fix that line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {line_number} is not a JSON object: BEIR rows are {{\"_id\": ...}}")
            missing = [key for key in required if key not in row]
            if missing:
                raise ValueError(f"{path}: line {line_number} has no {missing} field(s): BEIR rows need "
                                 f"{', '.join(required)}")
            if "_id" in row:
                seen = first_line.setdefault(str(row["_id"]), line_number)
                if seen != line_number:
                    raise ValueError(f"{path}: line {line_number}: duplicate _id '{row['_id']}' (first on line "
                                     f"{seen}): give each row its own id")
            yield row
