"""Dense retrieval: exact top-k search over a corpus in bounded memory, scored with trec_eval metrics.

`exact_top_k` never materialises the queries x corpus score matrix: it scores one
(query chunk x corpus chunk) block at a time and merges each block's best k into a running top-k, so extra
memory is O(query_chunk x corpus_chunk + queries x k) whatever the corpus size, and the corpus itself can
arrive chunk by chunk (the evaluator encodes it that way). Results are exact — the same documents a full
sort gives, up to the order of exactly tied scores. faiss (IndexFlatIP-style exact kNN) can do the block
search when installed and asked for (`use_faiss=True`); the merge is the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE, Evaluator
from nlp_contrastive.evaluation.embedding import encode_unique
from nlp_contrastive.evaluation.inputs import check_texts
from nlp_contrastive.evaluation.ranking_metrics import DEFAULT_CUTOFFS, check_qrels, ranking_metrics

SEARCH_SIMILARITIES = ("cosine", "dot")


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
        """(scores, indices) [num_queries, min(k, corpus size)], best first (ties: lower index first)."""
        order = np.lexsort((self.indices, -self.scores), axis=1)
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


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def exact_top_k(
    queries: np.ndarray,
    corpus: np.ndarray | Iterable[np.ndarray],
    k: int,
    *,
    similarity: str = "cosine",
    query_chunk_size: int = 256,
    corpus_chunk_size: int = 8192,
    use_faiss: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k corpus rows per query: (scores, indices), each [num_queries, min(k, corpus size)].

    `corpus` is an array (split into `corpus_chunk_size` row blocks) or an iterable of arrays (used as the
    blocks, e.g. embeddings computed chunk by chunk). Peak extra memory is about
    20 bytes x query_chunk_size x corpus_chunk_size (float32 scores, int64 argpartition indices and numpy's
    work copy; ~45 MB at the defaults) plus the running top-k — independent of the corpus size.
    """
    if similarity not in SEARCH_SIMILARITIES:
        raise ValueError(f"similarity '{similarity}' is not supported for search: use one of {SEARCH_SIMILARITIES}")
    queries = np.asarray(queries, dtype=np.float32)
    if similarity == "cosine":
        queries = _normalized(queries)
    if isinstance(corpus, np.ndarray):
        chunks: Iterable[np.ndarray] = (corpus[i:i + corpus_chunk_size] for i in range(0, len(corpus), corpus_chunk_size))
    else:
        chunks = corpus
    faiss = _import_faiss() if use_faiss else None
    top = RunningTopK(len(queries), k)
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32)
        if similarity == "cosine":
            chunk = _normalized(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != queries.shape[1]:
            raise ValueError(f"corpus chunk has shape {chunk.shape} but queries have dimension {queries.shape[1]}: "
                             "encode queries and corpus with the same model")
        offset = top.seen
        for start in range(0, len(queries), query_chunk_size):
            rows = slice(start, start + query_chunk_size)
            if faiss is not None:
                scores, cols = faiss.knn(np.ascontiguousarray(queries[rows]), np.ascontiguousarray(chunk),
                                         min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
            else:
                scores, cols = _block_top_k(queries[rows] @ chunk.T, k)
            top.update(rows, scores, cols + offset)
        top.seen += len(chunk)
    return top.result()


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("use_faiss=True needs faiss: pip install faiss-cpu (or drop use_faiss; the numpy "
                          "search is exact too)") from None
    return faiss


class RetrievalEvaluator(Evaluator):
    """nDCG@10, MRR@10, MAP@100, Recall@{1,10,100} of exact dense retrieval; primary `ndcg_at_10`.

    Only queries that appear in the qrels are encoded and scored (as MTEB does for a split). The corpus is
    encoded `corpus_chunk_size` documents at a time and merged into the running top-k, so neither its
    embeddings nor the score matrix are ever held whole. `ignore_identical_ids=True` drops a retrieved
    document whose id equals the query id (MTEB's option of that name, for corpora that contain the queries);
    one extra document is searched so the run still holds k documents per query.
    """

    primary_metric = "ndcg_at_10"

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        *,
        name: str = "retrieval",
        batch_size: int = DEFAULT_BATCH_SIZE,
        similarity: str = "cosine",
        cutoffs: Mapping[str, Iterable[int]] = DEFAULT_CUTOFFS,
        corpus_chunk_size: int = 50_000,
        use_faiss: bool = False,
        ignore_identical_ids: bool = False,
    ) -> None:
        if similarity not in SEARCH_SIMILARITIES:
            raise ValueError(f"{name}: similarity '{similarity}' is not supported: use one of {SEARCH_SIMILARITIES}")
        check_qrels(qrels)
        _check_ids(name, "query", qrels.keys(), queries, "queries")
        _check_ids(name, "document", {d for judged in qrels.values() for d in judged}, corpus, "corpus")
        if not corpus:
            raise ValueError(f"{name}: the corpus is empty: give at least one document")
        self.query_ids = [q for q in queries if q in qrels]
        self.doc_ids = list(corpus)
        check_texts(name, "query", [queries[q] for q in self.query_ids])
        check_texts(name, "document", [corpus[d] for d in self.doc_ids])
        self.queries = {q: queries[q] for q in self.query_ids}
        self.corpus = dict(corpus)
        self.qrels = {q: dict(judged) for q, judged in qrels.items()}
        self.cutoffs = {metric: tuple(ks) for metric, ks in cutoffs.items()}
        self.k = max(k for ks in self.cutoffs.values() for k in ks)
        self.name = name
        self.batch_size = batch_size
        self.similarity = similarity
        self.corpus_chunk_size = corpus_chunk_size
        self.use_faiss = use_faiss
        self.ignore_identical_ids = bool(ignore_identical_ids)
        first = "ndcg" if "ndcg" in self.cutoffs else next(iter(self.cutoffs))
        self.primary_metric = f"{first}_at_{self.cutoffs[first][0]}"

    def predict(self, encoder) -> dict[str, dict[str, float]]:
        """The run: {query id: {doc id: score}} with the top k documents of each query."""
        (query_embeddings,) = encode_unique(encoder, [[self.queries[q] for q in self.query_ids]], self.batch_size)

        def corpus_chunks():
            for start in range(0, len(self.doc_ids), self.corpus_chunk_size):
                texts = [self.corpus[d] for d in self.doc_ids[start:start + self.corpus_chunk_size]]
                yield encode_unique(encoder, [texts], self.batch_size)[0]

        k = self.k + 1 if self.ignore_identical_ids else self.k
        scores, indices = exact_top_k(query_embeddings, corpus_chunks(), k, similarity=self.similarity,
                                      use_faiss=self.use_faiss)
        run = {}
        for query, row_scores, row_indices in zip(self.query_ids, scores, indices, strict=True):
            ranked = [(self.doc_ids[j], float(s)) for s, j in zip(row_scores, row_indices, strict=True)]
            if self.ignore_identical_ids:
                ranked = [(doc, s) for doc, s in ranked if doc != query][:self.k]
            run[query] = dict(ranked)
        return run

    def score(self, predictions: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        metrics = ranking_metrics(predictions, self.qrels, self.cutoffs)
        return {self.primary_metric: metrics.pop(self.primary_metric), **metrics}


def _check_ids(task: str, kind: str, wanted: Iterable[str], available: Mapping[str, str], where: str) -> None:
    unknown = [i for i in wanted if i not in available]
    if unknown:
        raise ValueError(f"{task}: qrels name {len(unknown)} {kind} id(s) missing from the {where} (e.g. "
                         f"{unknown[0]!r}): fix the qrels or add those {kind}s to the {where}")
