"""What mining starts from: queries, a corpus and each query's known positives, loaded and checked.

A local BEIR folder keeps its corpus on disk (`JsonlCorpus`: read by row, never held as text), so a corpus of
millions of documents costs a few arrays; a pairs file or a hub copy is small enough for a dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nlp_contrastive.retrieval.corpus import Corpus, JsonlCorpus, MemoryCorpus


@dataclass(frozen=True)
class RetrievalPositives:
    """Queries, corpus and every known positive: {query id: text}, {doc id: text} or a Corpus, {query id: [doc ids]}."""

    queries: Mapping[str, str]
    corpus: Mapping[str, str] | Corpus
    positives: Mapping[str, Sequence[str]]


def as_corpus(corpus: Mapping[str, str] | Corpus) -> Corpus:
    return corpus if isinstance(corpus, Corpus) else MemoryCorpus(corpus)


def load_positives(data: str | Path, split: str = "train", *, query_column: str = "query",
                   positive_column: str = "positive") -> RetrievalPositives:
    """A BEIR folder (qrels relevance >= 1 of `split`) or a pairs file (corpus = its distinct positives)."""
    from nlp_contrastive.evaluation.retrieval_data import is_beir_folder

    if is_beir_folder(data):
        return beir_positives(str(data), split)
    from nlp_contrastive.data.loading import load_split

    try:
        rows = load_split(str(data), split)
    except FileNotFoundError:
        if not Path(data).is_dir():
            raise
        raise FileNotFoundError(f"--data folder '{data}' is not a BEIR folder (no corpus.jsonl) and has no pairs file "
                                f"{split}.jsonl/.csv/.parquet: give corpus.jsonl, queries.jsonl and qrels/{split}.tsv, "
                                "or a pairs file") from None
    missing = [c for c in (query_column, positive_column) if c not in rows.column_names]
    if missing:
        raise ValueError(f"{data}: no column(s) {missing} (columns: {', '.join(rows.column_names)}): set "
                         "--query-column / --positive-column")
    queries, corpus, positives = {}, {}, {}
    query_ids: dict[str, str] = {}
    doc_ids: dict[str, str] = {}
    for row, (query, positive) in enumerate(zip(rows[query_column], rows[positive_column], strict=True)):
        for role, text in (("query", query), ("positive", positive)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{data}: row {row} has no {role} text: fix or drop that row")
        qid = query_ids.setdefault(query, f"q{len(query_ids)}")
        queries[qid] = query
        did = doc_ids.setdefault(positive, f"d{len(doc_ids)}")
        corpus[did] = positive
        positives.setdefault(qid, []).append(did)
    return check_positives(RetrievalPositives(queries, corpus, positives), str(data))


def beir_positives(source: str, split: str) -> RetrievalPositives:
    """Every relevance >= 1 judgment of a BEIR dataset's split (local folder: corpus left on disk; or a hub copy)."""
    from nlp_contrastive.evaluation.retrieval_data import is_beir_folder, load_beir, read_beir_queries_qrels

    if is_beir_folder(source):
        queries, qrels = read_beir_queries_qrels(source, split)
        corpus: Mapping[str, str] | Corpus = JsonlCorpus(Path(source) / "corpus.jsonl")
    else:
        queries, corpus, qrels = load_beir(source, split)
    positives = {q: [d for d, rel in judged.items() if rel >= 1] for q, judged in qrels.items()}
    return check_positives(RetrievalPositives(queries, corpus, positives), f"{source} qrels/{split}")


def positive_pairs(data: RetrievalPositives) -> dict[str, list]:
    """Training rows, one per (query, relevant document): query_id, query, positive, and known_positives (every
    relevant document of the query, so none of them is ever used as its negative)."""
    corpus = as_corpus(data.corpus)
    wanted = [d for docs in data.positives.values() for d in docs]
    text_of = corpus.text_of(corpus.rows_of_ids(wanted))
    row_of = dict(zip(wanted, corpus.rows_of_ids(wanted).tolist(), strict=True))
    rows: dict[str, list] = {"query_id": [], "query": [], "positive": [], "known_positives": []}
    for qid, doc_ids in data.positives.items():
        texts = [text_of[row_of[d]] for d in doc_ids]
        for text in texts:
            rows["query_id"].append(qid)
            rows["query"].append(data.queries[qid])
            rows["positive"].append(text)
            rows["known_positives"].append(texts)
    return rows


def check_positives(data: RetrievalPositives, where: str) -> RetrievalPositives:
    """Fail before any encoding: empty corpus, unknown ids, queries without text or without a positive."""
    corpus = as_corpus(data.corpus)
    if not len(corpus):
        raise ValueError(f"{where}: the corpus is empty: give at least one document")
    positives = {q: list(dict.fromkeys(docs)) for q, docs in data.positives.items() if docs}
    if not positives:
        raise ValueError(f"{where}: no query has a relevant document (relevance >= 1): check the split's qrels")
    unknown = [q for q in positives if q not in data.queries]
    if unknown:
        raise ValueError(f"{where}: qrels name {len(unknown)} query id(s) that are not in the queries (e.g. "
                         f"{unknown[0]!r}): fix the qrels or the files")
    wanted = [d for docs in positives.values() for d in docs]
    unknown = [d for d, row in zip(wanted, corpus.rows_of_ids(wanted).tolist(), strict=True) if row < 0]
    if unknown:
        raise ValueError(f"{where}: qrels name {len(unknown)} document id(s) that are not in the corpus (e.g. "
                         f"{unknown[0]!r}): fix the qrels or the files")
    if corpus.first_empty is not None:  # it would be mined as a negative that training then rejects
        raise ValueError(f"{where}: document {corpus.first_empty!r} has an empty text (and title): give it a text or "
                         "drop it from the corpus")
    for q in positives:
        text = data.queries[q]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: query {q!r} has no text: give every judged query a text in queries.jsonl")
    return RetrievalPositives({q: data.queries[q] for q in positives}, data.corpus, positives)
