"""Top-k search over a corpus that arrives in blocks (embedding shards): exact in bounded memory, or a faiss index.

`exact_top_k` never materialises the queries x corpus score matrix: it scores one (query block x corpus block)
at a time and merges each block's best k into a running top-k, so extra memory is
O(query_chunk x corpus_chunk + queries x k) whatever the corpus size. Results are exact — the documents a
full sort gives, ties broken by the lower corpus row.

`search_shards(..., IndexOptions(index="ivf-flat" | "hnsw" | "ivf-pq" | <faiss factory string>))` builds a faiss
index over the shards instead (inner product on normalized vectors = cosine), searches it, and measures the
recall@k of its candidates against exact search on a seeded sample of queries, printed with the speed-up. IVF-PQ
holds ~dim/4 bytes per document (the index for corpora whose vectors do not fit in memory); its candidates
(`rerank` x k of them) are rescored exactly from the shards, so the scores handed back are true similarities.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from nlp_contrastive.retrieval.encoding import truncate

SEARCH_SIMILARITIES = ("cosine", "dot")
INDEXES = ("exact", "ivf-flat", "hnsw", "ivf-pq")


class RunningTopK:
    """The best k (score, corpus index) per query seen so far, updated block by block."""

    def __init__(self, num_queries: int, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
        self.indices = np.full((num_queries, k), -1, dtype=np.int64)
        self.seen = 0  # corpus rows merged so far

    def update(self, rows: slice, block_scores: np.ndarray, block_indices: np.ndarray) -> None:
        """Merge candidates [len(rows), m] (scores and global corpus indices) into the running top-k."""
        scores = np.concatenate([self.scores[rows], block_scores.astype(np.float32, copy=False)], axis=1)
        indices = np.concatenate([self.indices[rows], block_indices], axis=1)
        keep = np.argpartition(scores, -self.k, axis=1)[:, -self.k:]
        self.scores[rows] = np.take_along_axis(scores, keep, axis=1)
        self.indices[rows] = np.take_along_axis(indices, keep, axis=1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices) [num_queries, min(k, corpus size)], best first (ties: lower index first); excluded or
        missing slots are index -1 with score -inf."""
        self.indices[~np.isfinite(self.scores)] = -1
        order = np.lexsort((np.where(self.indices < 0, np.iinfo(np.int64).max, self.indices), -self.scores), axis=1)
        scores = np.take_along_axis(self.scores, order, axis=1)
        indices = np.take_along_axis(self.indices, order, axis=1)
        width = min(self.k, self.seen)
        return scores[:, :width], indices[:, :width]


def _block_top_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (unordered) column indices and scores of each row of a score block."""
    if block.shape[1] <= k:
        cols = np.broadcast_to(np.arange(block.shape[1]), block.shape)
        return block, cols
    cols = np.argpartition(block, -k, axis=1)[:, -k:]
    return np.take_along_axis(block, cols, axis=1), cols


def block_scores(queries: np.ndarray, wide_chunk: np.ndarray) -> np.ndarray:
    """queries @ chunk.T as float32 values that do not depend on BLAS's thread count or the block's shape.

    A float32 GEMM's sums change with the threads (measured: 1 vs 2 OpenBLAS threads on an AVX2 CPU differ by up to
    6e-6, so a 2-process `mine` wrote other scores than 1 process); float32 products are exact in float64 and a
    float64 sum of them rounds to the same float32. `wide_chunk` is the corpus block already in float64.
    """
    return (queries.astype(np.float64) @ wide_chunk.T).astype(np.float32)


def normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def exact_top_k(
    queries: np.ndarray,
    corpus: np.ndarray | Iterable[np.ndarray],
    k: int,
    *,
    similarity: str = "cosine",
    query_chunk_size: int = 256,
    corpus_chunk_size: int = 8192,
    use_faiss: bool = False,
    include: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k corpus rows per query: (scores, indices), each [num_queries, min(k, corpus size)].

    `corpus` is an array (split into `corpus_chunk_size` row blocks) or an iterable of arrays (used as the
    blocks, e.g. embedding shards). `include` (bool per corpus row) leaves the False rows out. Scores are the same
    whatever the thread count (`block_scores`). Peak extra memory is about 28 bytes x query_chunk_size x
    corpus_chunk_size (~60 MB at the defaults), the corpus block in float64, and the running top-k.
    """
    if similarity not in SEARCH_SIMILARITIES:
        raise ValueError(f"similarity '{similarity}' is not supported for search: use one of {SEARCH_SIMILARITIES}")
    queries = np.asarray(queries, dtype=np.float32)
    if similarity == "cosine":
        queries = normalized(queries)
    if isinstance(corpus, np.ndarray):
        chunks: Iterable[np.ndarray] = (corpus[i:i + corpus_chunk_size] for i in range(0, len(corpus), corpus_chunk_size))
    else:
        chunks = corpus
    faiss = import_faiss() if use_faiss else None
    knn = faiss.knn if faiss is not None and include is None else None  # faiss.knn cannot leave rows out
    top = RunningTopK(len(queries), k)
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32)
        if similarity == "cosine":
            chunk = normalized(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != queries.shape[1]:
            raise ValueError(f"corpus chunk has shape {chunk.shape} but queries have dimension {queries.shape[1]}: "
                             "encode queries and corpus with the same model")
        offset = top.seen
        wide_chunk = chunk.astype(np.float64) if knn is None else None
        skip = None if include is None else ~include[offset:offset + len(chunk)]
        for start in range(0, len(queries), query_chunk_size):
            rows = slice(start, start + query_chunk_size)
            if knn is not None:
                scores, cols = knn(np.ascontiguousarray(queries[rows]), np.ascontiguousarray(chunk),
                                   min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
            else:
                block = block_scores(queries[rows], wide_chunk)
                if skip is not None:
                    block[:, skip] = -np.inf
                scores, cols = _block_top_k(block, k)
            top.update(rows, scores, cols + offset)
        top.seen += len(chunk)
    return top.result()


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("this search needs faiss: pip install faiss-cpu (or use the exact search)") from None
    return faiss


@dataclass(frozen=True)
class IndexOptions:
    """Which search: `exact`, `ivf-flat`, `hnsw`, `ivf-pq`, or any faiss index_factory string (e.g. 'IVF4096,Flat').

    nlist (IVF cells; default 4 x sqrt(documents)), nprobe (cells searched; default nlist / 8, at least 16),
    ef_search (HNSW, built with efConstruction 200; default max(16k, 512), sized for recall@k >= 0.99 on a 1M
    corpus), pq_m (PQ sub-quantizers; default dim / 4), rerank (IVF-PQ rescores rerank x k candidates exactly), recall_sample (queries the recall vs exact
    is measured on; 0 = skip).
    """

    index: str = "exact"
    nlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    pq_m: int | None = None
    rerank: int = 4
    recall_sample: int = 200
    seed: int = 0


@dataclass
class SearchReport:
    index: str
    recall: float | None = None
    sampled_queries: int = 0
    exact_seconds: float = 0.0
    approximate_seconds: float = 0.0
    build_seconds: float = 0.0

    def line(self, k: int) -> str:
        if self.recall is None:
            return f"search: {self.index} (recall not measured)"
        speed = self.exact_seconds / max(self.approximate_seconds, 1e-9)
        return (f"search: {self.index}: recall@{k} of its candidates vs exact {self.recall:.4f} on "
                f"{self.sampled_queries} sampled queries; {speed:.1f}x faster than exact search on them "
                f"({self.approximate_seconds:.2f} s vs {self.exact_seconds:.2f} s; index built in "
                f"{self.build_seconds:.1f} s)")


def search_shards(queries: np.ndarray, shards, k: int, options: IndexOptions = IndexOptions(), *,
                  include: np.ndarray | None = None, truncate_dim: int | None = None,
                  log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray, SearchReport]:
    """Cosine top-k of `queries` over `shards` (an EmbeddingShards): exact, or the index in `options`."""
    log = log or (lambda line: print(line, file=sys.stderr))
    queries = normalized(np.asarray(queries, dtype=np.float32))

    def exact(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return exact_top_k(q, shards.blocks(truncate_dim), k, include=include)

    if options.index == "exact":
        scores, indices = exact(queries)
        return scores, indices, SearchReport("exact")
    start = time.perf_counter()
    index, row_map, name = build_index(shards, options, k, include, truncate_dim)
    report = SearchReport(name, build_seconds=time.perf_counter() - start)

    def approximate(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return approximate_search(index, row_map, name, q, k, options, shards, truncate_dim)

    scores, indices = approximate(queries)
    if options.recall_sample > 0:
        rng = np.random.default_rng(options.seed)
        sample = np.sort(rng.choice(len(queries), size=min(options.recall_sample, len(queries)), replace=False))
        t0 = time.perf_counter()
        _, exact_indices = exact(queries[sample])
        t1 = time.perf_counter()
        _, approx_indices = approximate(queries[sample])
        report.exact_seconds, report.approximate_seconds = t1 - t0, time.perf_counter() - t1
        report.recall = recall_at_k(approx_indices, exact_indices)
        report.sampled_queries = len(sample)
    log(report.line(k))
    return scores, indices, report


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact| (padding -1 left out)."""
    values = []
    for f, e in zip(found, exact, strict=True):
        wanted = set(e[e >= 0].tolist())
        if wanted:
            values.append(len(wanted.intersection(f[f >= 0].tolist())) / len(wanted))
    return float(np.mean(values)) if values else 1.0


def build_index(shards, options: IndexOptions, k: int, include: np.ndarray | None, truncate_dim: int | None):
    """(trained and filled faiss index, its row -> corpus row map, a readable name)."""
    faiss = import_faiss()
    rows = np.arange(len(shards)) if include is None else np.flatnonzero(include)
    if not len(rows):
        raise ValueError("no corpus document is left to index")
    dim = next(iter(shards.blocks(truncate_dim))).shape[1]
    nlist = options.nlist or max(1, min(int(4 * np.sqrt(len(rows))), len(rows) // 39 or 1))
    pq_m = options.pq_m or max(1, dim // 4)
    factory = {"ivf-flat": f"IVF{nlist},Flat", "hnsw": "HNSW32,Flat", "ivf-pq": f"IVF{nlist},PQ{pq_m}x8"}.get(
        options.index, options.index)
    index = make_index(options.index, factory, dim)
    if hasattr(index, "hnsw"):  # inner-product HNSW needs a wider build than faiss's default 40 for 0.99 recall
        index.hnsw.efConstruction = 200
    if not index.is_trained:
        rng = np.random.default_rng(options.seed)
        size = min(len(rows), max(64 * nlist, 10_000))
        index.train(normalized(shards.vectors(np.sort(rng.choice(rows, size=size, replace=False)), truncate_dim)))
    for chunk, block in enumerate(shards.blocks(truncate_dim)):
        span = shards.rows(chunk)
        keep = np.ones(len(span), dtype=bool) if include is None else include[span.start:span.stop]
        if keep.any():
            index.add(normalized(block[keep]))
    ivf = faiss.try_extract_index_ivf(index) if "IVF" in factory else None
    if ivf is not None:
        ivf.nprobe = options.nprobe or max(16, ivf.nlist // 8)
    if "HNSW" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", options.ef_search or max(16 * k, 512))
    return index, rows, factory


def make_index(name: str, factory: str, dim: int):
    """faiss.index_factory, its error turned into one line naming the option and the valid ones."""
    faiss = import_faiss()
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[-1][:160]
        raise ValueError(f"faiss has no index '{name}' ({message}): use one of {', '.join(INDEXES)} or a "
                         "faiss index_factory string such as 'IVF1024,Flat'") from None


def check_index(options: IndexOptions, dim: int) -> None:
    """Fail before any encoding on an index faiss cannot build (a factory string is tried on an empty index)."""
    if options.index not in INDEXES:
        make_index(options.index, options.index, dim)
    elif options.index != "exact":
        import_faiss()


def approximate_search(index, row_map: np.ndarray, name: str, queries: np.ndarray, k: int, options: IndexOptions,
                       shards, truncate_dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """faiss search mapped back to corpus rows; PQ candidates rescored exactly from the shards."""
    rescore = "PQ" in name
    depth = min(k * (options.rerank if rescore else 1), len(row_map))
    scores, found = index.search(np.ascontiguousarray(queries), depth)
    rows = np.where(found >= 0, row_map[np.clip(found, 0, None)], -1)
    if rescore:
        scores = rescore_rows(queries, rows, shards, truncate_dim)
    top = RunningTopK(len(queries), k)
    top.update(slice(None), np.where(rows >= 0, scores, -np.inf), rows)
    top.seen = len(row_map)
    return top.result()


def rescore_rows(queries: np.ndarray, rows: np.ndarray, shards, truncate_dim: int | None) -> np.ndarray:
    """Exact cosine of each (query, candidate row) pair, one shard at a time."""
    scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    chunk_of = np.where(rows >= 0, rows // shards.key.chunk_size, -1)
    for chunk in np.unique(chunk_of[chunk_of >= 0]):
        block = normalized(truncate(shards.load(int(chunk)), truncate_dim))
        q, j = np.nonzero(chunk_of == chunk)
        local = rows[q, j] - int(chunk) * shards.key.chunk_size
        scores[q, j] = np.einsum("ij,ij->i", queries[q], block[local])
    return scores
