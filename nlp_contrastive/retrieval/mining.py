"""Hard-negative mining: for each query, the corpus documents a model ranks high that are not known positives.

Search is the evaluation's exact chunked top-k (`evaluation.retrieval.exact_top_k`): the corpus is encoded and
scored `corpus_chunk_size` documents at a time and merged into a running top-k, so memory is
O(queries x depth + chunk) whatever the corpus size; faiss does the block search when installed.

Selection, per query (the order is fixed so each filter's count means one thing):
  1. candidates: the search ranking of distinct corpus texts (duplicate texts are collapsed before encoding);
  2. known positives removed — every relevant document of the query, by id and by identical text;
  3. rank window: skip the first `range_min` remaining candidates, keep up to rank `range_max`
     (FlagEmbedding's `range_for_sampling`; ranks count non-positive candidates, so a query with several
     positives still gets a full window — the search fetches `range_max + its positives` documents);
  4. score filters inside the window: absolute margin (score <= positive - m), relative margin
     (score <= positive - |positive| x m; NV-Retriever's TopK-PercPos, m = 0.05), max_score, min_score —
     the positive score being the query's lowest-scoring positive, as sentence-transformers does;
  5. `num_negatives` of the survivors: the best (`top`) or a seeded random sample (`random`), best first.
sentence-transformers' mine_hard_negatives applies its score filters before the rank window; with
range_min = 0 (the NV-Retriever setting) the two agree whenever range_max leaves enough survivors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nlp_contrastive.evaluation.embedding import encode
from nlp_contrastive.evaluation.retrieval import exact_top_k
from nlp_contrastive.evaluation.retrieval_data import is_beir_folder, load_beir
from nlp_contrastive.files import write_atomic

SAMPLING = ("top", "random")
OUTPUT_FORMATS = ("negatives", "triplets")


@dataclass(frozen=True)
class MiningOptions:
    """What to mine; names follow sentence-transformers' mine_hard_negatives where it has the option."""

    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 50
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"
    seed: int = 42
    query_prompt: str = ""
    document_prompt: str = ""
    batch_size: int = 64
    corpus_chunk_size: int = 8192
    use_faiss: bool | None = None  # None: faiss when installed

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.range_min < 0 or self.range_max <= self.range_min:
            raise ValueError(f"the rank range must satisfy 0 <= range_min < range_max, got range_min="
                             f"{self.range_min}, range_max={self.range_max}")
        if self.num_negatives > self.range_max - self.range_min:
            raise ValueError(f"num_negatives={self.num_negatives} exceeds the rank range [{self.range_min}, "
                             f"{self.range_max}) of {self.range_max - self.range_min} candidates: raise "
                             "--range-max or lower --num-negatives")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling '{self.sampling}' is not one of {', '.join(SAMPLING)}")
        for name in ("absolute_margin", "relative_margin"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.corpus_chunk_size < 1 or self.batch_size < 1:
            raise ValueError("batch_size and corpus_chunk_size must be >= 1")


@dataclass
class MiningStats:
    """Counts printed at the end: where every candidate went."""

    queries: int = 0
    corpus_documents: int = 0
    duplicate_documents_collapsed: int = 0
    candidates_seen: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("positive_id", "positive_text", "rank_window", "absolute_margin", "relative_margin", "max_score",
         "min_score"), 0))
    negatives_per_query: list[int] = field(default_factory=list)
    positive_scores: list[float] = field(default_factory=list)
    negative_scores: list[float] = field(default_factory=list)

    def summary(self, num_negatives: int) -> str:
        per_query = np.asarray(self.negatives_per_query or [0])
        short = int((per_query < num_negatives).sum())
        lines = [f"mined {self.queries} queries over {self.corpus_documents} documents "
                 f"({self.duplicate_documents_collapsed} duplicate texts collapsed)",
                 f"candidates seen: {self.candidates_seen}"]
        lines += [f"  removed by {name}: {count}" for name, count in self.removed.items()]
        lines += [f"negatives per query: mean {per_query.mean():.2f}, min {per_query.min()}, max {per_query.max()}; "
                  f"{short} queries got fewer than {num_negatives} "
                  f"({int((per_query == 0).sum())} none: kept with in-batch negatives only)",
                  f"mean positive score {_mean(self.positive_scores):.4f}, "
                  f"mean negative score {_mean(self.negative_scores):.4f}"]
        return "\n".join(lines)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@dataclass(frozen=True)
class RetrievalPositives:
    """Queries, corpus and every known positive: {query id: text}, {doc id: text}, {query id: [doc ids]}."""

    queries: Mapping[str, str]
    corpus: Mapping[str, str]
    positives: Mapping[str, Sequence[str]]


# ------------------------------------------------------------------------------------------ loading
def load_positives(data: str | Path, split: str = "train", *, query_column: str = "query",
                   positive_column: str = "positive") -> RetrievalPositives:
    """A BEIR folder (qrels relevance >= 1 of `split`) or a pairs file (corpus = its distinct positives)."""
    if is_beir_folder(data):
        return beir_positives(str(data), split)
    from nlp_contrastive.data import load_split

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
    """Every relevance >= 1 judgment of a BEIR dataset's split (local folder or hub copy), checked."""
    queries, corpus, qrels = load_beir(source, split)
    positives = {q: [d for d, rel in judged.items() if rel >= 1] for q, judged in qrels.items()}
    return check_positives(RetrievalPositives(queries, corpus, positives), f"{source} qrels/{split}")


def positive_pairs(data: RetrievalPositives) -> dict[str, list]:
    """Training rows, one per (query, relevant document): query_id, query, positive, and known_positives (every
    relevant document of the query, so none of them is ever used as its negative)."""
    rows: dict[str, list] = {"query_id": [], "query": [], "positive": [], "known_positives": []}
    for qid, doc_ids in data.positives.items():
        texts = [data.corpus[d] for d in doc_ids]
        for text in texts:
            rows["query_id"].append(qid)
            rows["query"].append(data.queries[qid])
            rows["positive"].append(text)
            rows["known_positives"].append(texts)
    return rows


def check_positives(data: RetrievalPositives, where: str) -> RetrievalPositives:
    """Fail before any encoding: empty corpus, unknown ids, queries without text or without a positive."""
    if not data.corpus:
        raise ValueError(f"{where}: the corpus is empty: give at least one document")
    positives = {q: list(dict.fromkeys(docs)) for q, docs in data.positives.items() if docs}
    if not positives:
        raise ValueError(f"{where}: no query has a relevant document (relevance >= 1): check the split's qrels")
    for kind, ids, known in (("query", list(positives), data.queries),
                             ("document", [d for docs in positives.values() for d in docs], data.corpus)):
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(f"{where}: qrels name {len(unknown)} {kind} id(s) that are not in the "
                             f"{'queries' if kind == 'query' else 'corpus'} (e.g. {unknown[0]!r}): fix the qrels "
                             "or the files")
    for q in positives:
        text = data.queries[q]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: query {q!r} has no text: give every judged query a text in queries.jsonl")
    for d, text in data.corpus.items():
        if not isinstance(text, str):
            raise ValueError(f"{where}: document {d!r} has no text: fix corpus.jsonl")
        if not text.strip():  # it would be mined as a negative that training then rejects
            raise ValueError(f"{where}: document {d!r} has an empty text (and title): give it a text or drop it from "
                             "corpus.jsonl")
    return RetrievalPositives({q: data.queries[q] for q in positives}, data.corpus, positives)


# ------------------------------------------------------------------------------------------ mining
@dataclass
class MinedQuery:
    query_id: str
    query: str
    positive_ids: list[str]
    positives: list[str]
    positive_scores: list[float]
    negative_ids: list[str]
    negatives: list[str]
    negative_scores: list[float]


def mine_hard_negatives(encoder, data: RetrievalPositives, options: MiningOptions = MiningOptions(), *,
                        show_progress: bool = True) -> tuple[list[MinedQuery], MiningStats]:
    """Encode, search, select: one MinedQuery per query; `encoder` is ours or a SentenceTransformer."""
    doc_ids = list(data.corpus)
    texts = list(dict.fromkeys(data.corpus[d] for d in doc_ids))  # duplicate texts collapsed
    text_slot = {t: i for i, t in enumerate(texts)}
    representative = {}
    for d in doc_ids:
        representative.setdefault(text_slot[data.corpus[d]], d)
    query_ids = list(data.positives)
    positive_slots = [[text_slot[data.corpus[d]] for d in data.positives[q]] for q in query_ids]
    query_embeddings = encode(encoder, [options.query_prompt + data.queries[q] for q in query_ids],
                              options.batch_size)
    wanted = {s for slots in positive_slots for s in slots}
    positive_vectors: dict[int, np.ndarray] = {}

    def corpus_chunks() -> Iterable[np.ndarray]:
        bar = tqdm(total=len(texts), desc="Mining: corpus", disable=not show_progress, file=sys.stderr)
        for start in range(0, len(texts), options.corpus_chunk_size):
            chunk = texts[start:start + options.corpus_chunk_size]
            embeddings = encode(encoder, [options.document_prompt + t for t in chunk], options.batch_size)
            for slot in wanted.intersection(range(start, start + len(chunk))):
                positive_vectors[slot] = embeddings[slot - start]
            bar.update(len(chunk))
            yield embeddings
        bar.close()

    depth = options.range_max + max(len(set(s)) for s in positive_slots)
    scores, indices = exact_top_k(query_embeddings, corpus_chunks(), depth, similarity="cosine",
                                  corpus_chunk_size=options.corpus_chunk_size, use_faiss=_want_faiss(options))
    stats = MiningStats(queries=len(query_ids), corpus_documents=len(doc_ids),
                        duplicate_documents_collapsed=len(doc_ids) - len(texts))
    rng = np.random.default_rng(options.seed)
    mined = []
    for row, q in enumerate(query_ids):
        pos_scores = [_cosine(query_embeddings[row], positive_vectors[s]) for s in positive_slots[row]]
        positive_id_slots = {text_slot[data.corpus[d]] for d in data.positives[q] if representative[
            text_slot[data.corpus[d]]] == d}
        chosen, chosen_scores = select_negatives(scores[row], indices[row], set(positive_slots[row]),
                                                 positive_id_slots, min(pos_scores), options, rng, stats)
        stats.positive_scores.extend(pos_scores)
        mined.append(MinedQuery(q, data.queries[q], list(data.positives[q]),
                                [data.corpus[d] for d in data.positives[q]], pos_scores,
                                [representative[s] for s in chosen], [texts[s] for s in chosen], chosen_scores))
    return mined, stats


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _want_faiss(options: MiningOptions) -> bool:
    if options.use_faiss is not None:
        return options.use_faiss
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def select_negatives(scores: np.ndarray, slots: np.ndarray, positive_slots: set[int], positive_id_slots: set[int],
                     positive_score: float, options: MiningOptions, rng: np.random.Generator,
                     stats: MiningStats) -> tuple[list[int], list[float]]:
    """Steps 2-5 of the module docstring for one query's ranked candidates (best first, -1 = padding)."""
    window: list[tuple[int, float]] = []
    rank = 0
    for slot, score in zip(slots.tolist(), scores.tolist(), strict=True):
        if slot < 0:
            continue
        stats.candidates_seen += 1
        if slot in positive_slots:
            stats.removed["positive_id" if slot in positive_id_slots else "positive_text"] += 1
            continue
        if options.range_min <= rank < options.range_max:
            window.append((slot, score))
        else:
            stats.removed["rank_window"] += 1
        rank += 1
    keep = []
    for slot, score in window:
        reason = _filtered_by(score, positive_score, options)
        if reason:
            stats.removed[reason] += 1
        else:
            keep.append((slot, score))
    if options.sampling == "random" and len(keep) > options.num_negatives:
        picked = np.sort(rng.choice(len(keep), size=options.num_negatives, replace=False))
        keep = [keep[i] for i in picked]
    keep = keep[:options.num_negatives]
    stats.negatives_per_query.append(len(keep))
    stats.negative_scores.extend(s for _, s in keep)
    return [s for s, _ in keep], [float(s) for _, s in keep]


def _filtered_by(score: float, positive: float, options: MiningOptions) -> str | None:
    if options.absolute_margin is not None and score > positive - options.absolute_margin:
        return "absolute_margin"
    if options.relative_margin is not None and score > positive - abs(positive) * options.relative_margin:
        return "relative_margin"
    if options.max_score is not None and score > options.max_score:
        return "max_score"
    if options.min_score is not None and score < options.min_score:
        return "min_score"
    return None


# ------------------------------------------------------------------------------------------ output
def mined_rows(mined: Sequence[MinedQuery], output_format: str = "negatives") -> list[dict]:
    """One row per (query, positive) — `negatives` — or per (query, positive, negative) — `triplets`."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format '{output_format}' is not one of {', '.join(OUTPUT_FORMATS)}")
    rows = []
    for m in mined:
        if not m.negatives and output_format == "triplets":
            continue  # nothing survived the filters: no triplet to write
        # `negatives`: a query whose candidates all failed the filters (typically the base model ranks its
        # positive below them — the queries there is most to learn from) keeps its rows with `negatives: []`;
        # it trains on in-batch negatives. sentence-transformers' n-tuple output drops such queries.
        for positive, positive_score in zip(m.positives, m.positive_scores, strict=True):
            if output_format == "triplets":
                rows += [{"query_id": m.query_id, "query": m.query, "positive": positive, "negative": negative}
                         for negative in m.negatives]
            else:
                rows.append({"query_id": m.query_id, "query": m.query, "positive": positive,
                             "positive_score": positive_score, "negatives": list(m.negatives),
                             "negative_scores": list(m.negative_scores), "known_positives": list(m.positives)})
    return rows


def write_rows(path: str | Path, rows: Sequence[Mapping]) -> Path:
    """JSON Lines, or parquet when the name ends in .parquet; written to a temp file, then renamed."""
    path = Path(path)
    if path.suffix == ".parquet":
        import datasets

        return write_atomic(path, lambda tmp: datasets.Dataset.from_list(list(rows)).to_parquet(str(tmp)))

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    return write_atomic(path, write)


def options_dict(options: MiningOptions) -> dict:
    return asdict(options)


# ------------------------------------------------------------------------------------------ command line
