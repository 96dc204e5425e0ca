"""Hard-negative mining on the retrieval engine, with sentence-transformers' `mine_hard_negatives` meanings.

The corpus is encoded into embedding shards (retrieval.embeddings: in memory, or on disk — resumable, shared
with evaluation, split over processes) and searched (retrieval.search: exact blocked top-k, or a faiss index
with its recall printed). Every option that has a name in sentence-transformers (ST) 6.3 means what it means
there; selection, per query:
  1. candidates: the search's top `range_max + max_positives + 1` distinct corpus texts (ST's candidate count;
     a text that repeats under several ids is searched once, under its first id, as ST de-duplicates);
  2. removed: the query's own text (a corpus entry equal to the query, as ST), every known positive by id and
     by identical text;
  3. score filters, in ST's order: absolute margin (score > positive - m), relative margin
     (score > positive - |positive| x m; NV-Retriever TopK-PercPos, m = 0.05), max_score, min_score — the
     positive score being the query's lowest-scoring positive, as ST;
  4. rank window over the SURVIVORS (as ST): keep survivors ranked [range_min, range_max);
  5. `num_negatives` of them: the best (`top`) or a seeded random sample (`random`), best first.
Scores are the model's similarity on normalized embeddings, as ST computes them: cosine for cosine and dot
models, -(euclidean distance) for euclidean ones; manhattan is refused (its ranking is not the cosine one
the index searches). ST draws `random` with Python's global random; ours uses `seed`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nlp_contrastive.files import write_atomic
from nlp_contrastive.retrieval.corpus import text_hash
from nlp_contrastive.retrieval.embeddings import DEFAULT_CHUNK_SIZE, encode_corpus, temporary_folder
from nlp_contrastive.retrieval.encoding import encode
from nlp_contrastive.retrieval.positives import (  # noqa: F401  (public here before the split)
    RetrievalPositives,
    as_corpus,
    beir_positives,
    check_positives,
    load_positives,
    positive_pairs,
)
from nlp_contrastive.retrieval.search import IndexOptions, check_index, search_shards

SAMPLING = ("top", "random")
OUTPUT_FORMATS = ("negatives", "triplets")
SIMILARITIES = ("cosine", "dot", "euclidean")


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
    corpus_chunk_size: int = DEFAULT_CHUNK_SIZE
    similarity: str | None = None  # None: the encoder's similarity_fn_name, else cosine
    embedding_dtype: str = "float32"
    index: IndexOptions = IndexOptions()

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
        if self.similarity is not None:
            check_similarity(self.similarity)


def check_similarity(name: str) -> str:
    if name not in SIMILARITIES:
        raise ValueError(f"similarity '{name}' cannot be mined: the search ranks by cosine, which orders "
                         f"{', '.join(SIMILARITIES)} alike; use one of those")
    return name


@dataclass
class MiningStats:
    """Counts printed at the end: where every candidate went."""

    queries: int = 0
    corpus_documents: int = 0
    duplicate_documents_collapsed: int = 0
    candidates_seen: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("query_text", "positive_id", "positive_text", "absolute_margin", "relative_margin", "max_score",
         "min_score", "rank_window"), 0))
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
                        embeddings_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                        show_progress: bool = True, log=None) -> tuple[list[MinedQuery], MiningStats]:
    """Encode, search, select: one MinedQuery per query; `encoder` is ours or a SentenceTransformer.

    The corpus's embedding shards go to `embeddings_dir` (exactly that folder) or to a key-named subfolder of
    `cache_dir` (shared with evaluation), both reused and resumed; with neither, to a temporary folder.
    """
    with ExitStack() as scratch:
        if embeddings_dir is None and cache_dir is None:
            embeddings_dir = scratch.enter_context(temporary_folder())
            return _mine(encoder, data, options, embeddings_dir, None, "scratch", show_progress, log)
        return _mine(encoder, data, options, embeddings_dir, cache_dir, None, show_progress, log)


def _mine(encoder, data: RetrievalPositives, options: MiningOptions, embeddings_dir, cache_dir, model_key,
          show_progress: bool, log) -> tuple[list[MinedQuery], MiningStats]:
    log = log or (lambda line: print(line, file=sys.stderr))
    similarity = check_similarity(options.similarity or getattr(encoder, "similarity_fn_name", None) or "cosine")
    corpus = as_corpus(data.corpus)
    repeated = corpus.repeated_text_rows()
    query_ids = list(data.positives)
    query_embeddings = encode(encoder, [data.queries[q] for q in query_ids], options.batch_size,
                              prompt=options.query_prompt or None)
    check_index(options.index, query_embeddings.shape[1])
    shards = encode_corpus(encoder, corpus, folder=embeddings_dir, cache_dir=cache_dir, model_key=model_key,
                           chunk_size=options.corpus_chunk_size,
                           batch_size=options.batch_size, prompt=options.document_prompt,
                           dtype=options.embedding_dtype, show_progress=show_progress)
    positive_ids = [list(data.positives[q]) for q in query_ids]
    flat_ids = [d for ids in positive_ids for d in ids]
    positive_rows = dict(zip(flat_ids, corpus.rows_of_ids(flat_ids).tolist(), strict=True))
    unique_rows = sorted(set(positive_rows.values()))
    positive_vectors = dict(zip(unique_rows, _unit(shards.vectors(unique_rows)), strict=True))
    depth = options.range_max + max(len(ids) for ids in positive_ids) + 1
    unit_queries = _unit(query_embeddings)
    cosines, candidates, _ = search_shards(unit_queries, shards, depth, options.index,
                                           include=None if not repeated.any() else ~repeated, log=log)
    stats = MiningStats(queries=len(query_ids), corpus_documents=len(corpus),
                        duplicate_documents_collapsed=int(repeated.sum()))
    rng = np.random.default_rng(options.seed)
    chosen_rows, choices = set(), []
    for row, q in enumerate(query_ids):
        rows = [positive_rows[d] for d in positive_ids[row]]
        pos_scores = [_score(float(unit_queries[row] @ positive_vectors[r]), similarity) for r in rows]
        excluded = {"query_text": {text_hash(data.queries[q])}, "positive_text": set(corpus.text_hashes[rows].tolist())}
        picked = select_negatives(_score(cosines[row], similarity), candidates[row], corpus.text_hashes, set(rows),
                                  excluded, min(pos_scores), options, rng, stats)
        stats.positive_scores.extend(pos_scores)
        chosen_rows.update(rows)
        chosen_rows.update(r for r, _ in picked)
        choices.append((rows, pos_scores, picked))
    texts, ids = corpus.text_of(chosen_rows), corpus.id_of(chosen_rows)
    mined = [MinedQuery(q, data.queries[q], positive_ids[i], [texts[r] for r in rows], pos_scores,
                        [ids[r] for r, _ in picked], [texts[r] for r, _ in picked], [s for _, s in picked])
             for i, (q, (rows, pos_scores, picked)) in enumerate(zip(query_ids, choices, strict=True))]
    return mined, stats


def saved_similarity(model: str) -> str | None:
    """similarity_fn_name of a saved sentence-transformers folder (config_sentence_transformers.json), if any."""
    from nlp_contrastive.modeling import resolve_model_path

    try:  # a model that cannot be found fails later, where it is loaded, with its own message
        path = Path(resolve_model_path(model)) / "config_sentence_transformers.json"
        return json.loads(path.read_text(encoding="utf-8")).get("similarity_fn_name")
    except (OSError, ValueError):
        return None


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _score(cosine, similarity: str):
    """The model's similarity of unit vectors from their cosine (ST normalizes before model.similarity)."""
    if similarity == "euclidean":
        return -np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(cosine, dtype=np.float64), 0.0))
    return cosine


def select_negatives(scores: np.ndarray, rows: np.ndarray, text_hashes: np.ndarray, positive_rows: set[int],
                     excluded_texts: Mapping[str, set[int]], positive_score: float, options: MiningOptions,
                     rng: np.random.Generator, stats: MiningStats) -> list[tuple[int, float]]:
    """Steps 2-5 of the module docstring for one query's ranked candidates (best first, -1 = padding)."""
    survivors: list[tuple[int, float]] = []
    for row, score in zip(rows.tolist(), np.asarray(scores).tolist(), strict=True):
        if row < 0:
            continue
        stats.candidates_seen += 1
        reason = ("positive_id" if row in positive_rows else
                  next((name for name, hashes in excluded_texts.items() if int(text_hashes[row]) in hashes), None)
                  or _filtered_by(score, positive_score, options))
        if reason:
            stats.removed[reason] += 1
        else:
            survivors.append((row, float(score)))
    window = survivors[options.range_min:options.range_max]
    stats.removed["rank_window"] += len(survivors) - len(window)
    if options.sampling == "random" and len(window) > options.num_negatives:
        picked = np.sort(rng.choice(len(window), size=options.num_negatives, replace=False))
        window = [window[i] for i in picked]
    keep = window[:options.num_negatives]
    stats.negatives_per_query.append(len(keep))
    stats.negative_scores.extend(s for _, s in keep)
    return keep


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
