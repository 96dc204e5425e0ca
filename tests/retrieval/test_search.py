"""Search over embedding shards: exact blocked top-k equals a full sort; faiss indexes report their recall."""

from __future__ import annotations

import numpy as np
import pytest

from nlp_contrastive.retrieval.corpus import MemoryCorpus
from nlp_contrastive.retrieval.embeddings import encode_corpus
from nlp_contrastive.retrieval.search import IndexOptions, exact_top_k, recall_at_k, search_shards


class VectorEncoder:
    """Text "v{i}" -> row i of a fixed matrix (clustered, so an IVF index has structure to find)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def encode(self, texts, batch_size=32, convert_to="numpy"):
        return self.vectors[[int(t[1:]) for t in texts]]


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, dim))
    return (centers[rng.integers(0, 64, n)] + 0.35 * rng.standard_normal((n, dim))).astype(np.float32)


def _shards(tmp_path, vectors: np.ndarray, chunk_size: int):
    corpus = MemoryCorpus({f"d{i}": f"v{i}" for i in range(len(vectors))})
    return encode_corpus(VectorEncoder(vectors), corpus, folder=tmp_path / "shards", chunk_size=chunk_size,
                         model_key="test-vectors", show_progress=False)


def _full_sort(queries, corpus, k, include=None):
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ \
        (corpus / np.linalg.norm(corpus, axis=1, keepdims=True)).T
    if include is not None:
        scores[:, ~include] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_exact_search_over_shards_equals_a_full_sort_with_excluded_rows(tmp_path):
    vectors = _clustered(3000, 16)
    queries = _clustered(40, 16, seed=1)
    include = np.random.default_rng(2).random(3000) > 0.1
    shards = _shards(tmp_path, vectors, chunk_size=700)
    scores, indices, report = search_shards(queries, shards, 25, include=include)
    want_scores, want = _full_sort(queries, vectors, 25, include)
    assert report.index == "exact" and (indices == want).all()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert include[indices].all()


def test_excluded_rows_pad_with_minus_one_when_fewer_than_k_remain():
    corpus = np.eye(4, dtype=np.float32)
    scores, indices = exact_top_k(np.ones((1, 4), dtype=np.float32), iter([corpus[:2], corpus[2:]]), 4,
                                  include=np.array([True, False, True, False]))
    assert indices.tolist() == [[0, 2, -1, -1]] and np.isinf(scores[0, 2:]).all()


@pytest.mark.parametrize("index", ["ivf-flat", "hnsw", "ivf-pq"])
def test_faiss_indexes_report_recall_against_exact_search(tmp_path, index):
    pytest.importorskip("faiss")
    vectors = _clustered(10_000, 32)
    queries = _clustered(300, 32, seed=3)
    shards = _shards(tmp_path, vectors, chunk_size=4096)
    lines = []
    scores, indices, report = search_shards(queries, shards, 20, IndexOptions(index=index, recall_sample=100),
                                            log=lines.append)
    _, exact = _full_sort(queries, vectors, 20)
    assert report.sampled_queries == 100 and len(lines) == 1 and "recall@20 of its candidates vs exact" in lines[0]
    sample = np.sort(np.random.default_rng(0).choice(300, 100, replace=False))
    assert report.recall == pytest.approx(recall_at_k(indices[sample], exact[sample]), abs=1e-9)
    assert recall_at_k(indices, exact) >= 0.99
    # scores handed back are the true cosines of the rows returned (PQ candidates are rescored from the shards)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    true = np.einsum("qd,qkd->qk", queries / np.linalg.norm(queries, axis=1, keepdims=True), unit[indices])
    np.testing.assert_allclose(scores, true, atol=1e-4)


def test_an_index_faiss_does_not_have_is_refused_in_one_line(tmp_path):
    pytest.importorskip("faiss")
    shards = _shards(tmp_path, _clustered(500, 8), chunk_size=200)
    with pytest.raises(ValueError, match=r"faiss has no index 'IVF16,Bogus' \(.*\): use one of exact, ivf-flat, "
                                         r"hnsw, ivf-pq or a faiss index_factory string"):
        search_shards(np.ones((2, 8), dtype=np.float32), shards, 5, IndexOptions(index="IVF16,Bogus"))
