"""Dense retrieval scored with trec_eval metrics, on the engine mining uses (nlp_contrastive.retrieval).

The corpus is encoded chunk by chunk (`retrieval.embeddings`): in memory by default, or into on-disk shards
under `cache_dir` — then a corpus bigger than memory is evaluated out of core, the shards are reused by any
later run of the same model on the same texts (mining writes the same shards), and under accelerate /
torch.distributed every process encodes its share of the chunks. Search is the exact blocked top-k
(`retrieval.search.exact_top_k`, re-exported here) or a faiss index with its recall printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from pathlib import Path

from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE, Evaluator
from nlp_contrastive.evaluation.inputs import check_texts
from nlp_contrastive.evaluation.ranking_metrics import DEFAULT_CUTOFFS, check_qrels, ranking_metrics
from nlp_contrastive.retrieval.corpus import MemoryCorpus
from nlp_contrastive.retrieval.embeddings import (
    DEFAULT_CHUNK_SIZE,
    chunk_size_for_processes,
    encode_corpus,
    temporary_folder,
)
from nlp_contrastive.retrieval.search import (  # noqa: F401  (exact_top_k, RunningTopK: public here before)
    SEARCH_SIMILARITIES,
    IndexOptions,
    RunningTopK,
    exact_top_k,
    search_shards,
)


class RetrievalEvaluator(Evaluator):
    """nDCG@10, MRR@10, MAP@100, Recall@{1,10,100} of exact dense retrieval; primary `ndcg_at_10`.

    Only queries that appear in the qrels are encoded and scored (as MTEB does for a split). The corpus is
    encoded `corpus_chunk_size` documents at a time and merged into the running top-k, so the score matrix is
    never held whole; with `cache_dir` the embeddings are not either (on-disk shards, see the module
    docstring). `index` picks exact search (default) or a faiss index (retrieval.search.IndexOptions).
    `ignore_identical_ids=True` drops a retrieved document whose id equals the query id (MTEB's option of that
    name, for corpora that contain the queries); one extra document is searched so the run still holds k
    documents per query. `with_corpus_subset` makes a cheaper copy for evaluation during training.
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
        corpus_chunk_size: int = DEFAULT_CHUNK_SIZE,
        use_faiss: bool = False,
        ignore_identical_ids: bool = False,
        cache_dir: str | Path | None = None,
        index: IndexOptions | str = "exact",
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
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.index = IndexOptions(index=index) if isinstance(index, str) else index
        if self.index.index != "exact" and similarity != "cosine":
            raise ValueError(f"{name}: approximate search ranks by cosine; similarity '{similarity}' needs index exact")
        self.subset_note: dict[str, float] = {}
        self._corpus = MemoryCorpus(self.corpus, source=f"{name} corpus")
        first = "ndcg" if "ndcg" in self.cutoffs else next(iter(self.cutoffs))
        self.primary_metric = f"{first}_at_{self.cutoffs[first][0]}"

    def predict(self, encoder) -> dict[str, dict[str, float]]:
        """The run: {query id: {doc id: score}} with the top k documents of each query."""
        (query_embeddings,) = self.encode_roles(encoder, [("query", [self.queries[q] for q in self.query_ids])])
        k = self.k + 1 if self.ignore_identical_ids else self.k
        with ExitStack() as scratch:
            shards = self.encode_corpus(encoder, None if self.cache_dir else scratch.enter_context(temporary_folder()))
            if self.index.index == "exact":
                scores, indices = exact_top_k(query_embeddings, shards.blocks(self.truncate_dim), k,
                                              similarity=self.similarity, use_faiss=self.use_faiss)
            else:
                scores, indices, _ = search_shards(query_embeddings, shards, k, self.index,
                                                   truncate_dim=self.truncate_dim)
        run = {}
        for query, row_scores, row_indices in zip(self.query_ids, scores, indices, strict=True):
            ranked = [(self.doc_ids[j], float(s)) for s, j in zip(row_scores, row_indices, strict=True) if j >= 0]
            if self.ignore_identical_ids:
                ranked = [(doc, s) for doc, s in ranked if doc != query][:self.k]
            run[query] = dict(ranked)
        return run

    def encode_corpus(self, encoder, scratch: Path | None = None):
        """The corpus's embedding shards under cache_dir (kept: reused and resumed) or in `scratch` (a temporary
        folder); under several processes each encodes its share of the chunks."""
        chunk_size = chunk_size_for_processes(self.corpus_chunk_size, len(self.doc_ids))
        return encode_corpus(encoder, self._corpus, cache_dir=self.cache_dir, folder=scratch,
                             model_key="scratch" if scratch else None, chunk_size=chunk_size,
                             batch_size=self.batch_size, prompt=self.prompts.get("document") or "",
                             show_progress=False)

    def with_corpus_subset(self, starting_encoder, top_n: int) -> RetrievalEvaluator:
        """A copy whose corpus is every judged document plus each query's top `top_n` under `starting_encoder`.

        Cheap evaluation during training: the documents the model could plausibly move into the top 10 are kept,
        the rest of the corpus is not re-encoded at every evaluation. Deterministic (exact search, ties by corpus
        order); the scores carry `corpus_documents` and `corpus_subset_top_n` so a number is never mistaken for
        a full-corpus one.
        """
        if top_n < 1:
            raise ValueError(f"{self.name}: the corpus subset's top_n must be >= 1, got {top_n}")
        k_before = self.k
        self.k = top_n
        try:
            run = self.predict(starting_encoder)
        finally:
            self.k = k_before
        keep = {d for judged in self.qrels.values() for d in judged} | {d for docs in run.values() for d in docs}
        subset = RetrievalEvaluator(
            self.queries, {d: self.corpus[d] for d in self.doc_ids if d in keep}, self.qrels, name=self.name,
            batch_size=self.batch_size, similarity=self.similarity, cutoffs=self.cutoffs,
            corpus_chunk_size=self.corpus_chunk_size, use_faiss=self.use_faiss,
            ignore_identical_ids=self.ignore_identical_ids, cache_dir=self.cache_dir, index=self.index)
        subset.truncate_dim, subset.prompts = self.truncate_dim, self.prompts
        subset.subset_note = {"corpus_documents": float(len(subset.doc_ids)), "corpus_subset_top_n": float(top_n)}
        return subset

    def score(self, predictions: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        metrics = ranking_metrics(predictions, self.qrels, self.cutoffs)
        return {self.primary_metric: metrics.pop(self.primary_metric), **metrics, **self.subset_note}


def _check_ids(task: str, kind: str, wanted: Iterable[str], available: Mapping[str, str], where: str) -> None:
    unknown = [i for i in wanted if i not in available]
    if unknown:
        raise ValueError(f"{task}: qrels name {len(unknown)} {kind} id(s) missing from the {where} (e.g. "
                         f"{unknown[0]!r}): fix the qrels or add those {kind}s to the {where}")
