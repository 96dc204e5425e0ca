"""Exact, memory-bounded top-k search and the retrieval evaluator (BEIR and pairs layouts)."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from nlp_contrastive.evaluation import RetrievalEvaluator, build_evaluator, exact_top_k
from nlp_contrastive.evaluation.retrieval import RunningTopK


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(queries, corpus, k):
    scores = queries @ corpus.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("chunks", ["array", "iterable"])
def test_top_k_equals_full_sort(chunks):
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((1000, 16), dtype=np.float32)
    queries = rng.standard_normal((37, 16), dtype=np.float32)
    corpus_input = corpus if chunks == "array" else (corpus[i:i + 97] for i in range(0, 1000, 97))
    scores, indices = exact_top_k(queries, corpus_input, 25, similarity="dot", query_chunk_size=8,
                                  corpus_chunk_size=128)
    expected_scores, expected_indices = _brute_force(queries, corpus, 25)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_cosine_normalizes_and_k_larger_than_corpus_is_clipped():
    corpus = np.array([[10.0, 0.0], [0.0, 0.5], [1.0, 1.0]], dtype=np.float32)
    scores, indices = exact_top_k(np.array([[1.0, 0.1]], dtype=np.float32), corpus, 10, similarity="cosine")
    assert indices.tolist() == [[0, 2, 1]]
    assert scores[0, 0] == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)


def test_faiss_backend_agrees_when_installed():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    corpus, queries = _unit(rng, 5000, 32), _unit(rng, 50, 32)
    ours = exact_top_k(queries, corpus, 20, corpus_chunk_size=700)
    with_faiss = exact_top_k(queries, corpus, 20, corpus_chunk_size=700, use_faiss=True)
    np.testing.assert_array_equal(ours[1], with_faiss[1])


def _peak_extra_bytes(queries, corpus, k, **kwargs):
    tracemalloc.start()
    try:
        result = exact_top_k(queries, corpus, k, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


def test_200k_corpus_is_exact_and_memory_is_bounded_by_the_chunks():
    """1k queries x 200k unit vectors: the full score matrix would be 800 MB; chunking keeps ~20 MB."""
    rng = np.random.default_rng(0)
    dim, k = 32, 100
    corpus = _unit(rng, 200_000, dim)
    queries = _unit(rng, 1_000, dim)
    chunking = {"query_chunk_size": 256, "corpus_chunk_size": 4096}
    start = time.perf_counter()
    peak_big, (scores, indices) = _peak_extra_bytes(queries, corpus, k, similarity="dot", **chunking)
    elapsed = time.perf_counter() - start
    peak_small, _ = _peak_extra_bytes(queries, corpus[:25_000], k, similarity="dot", **chunking)

    block = chunking["query_chunk_size"] * chunking["corpus_chunk_size"]
    state = len(queries) * k * (4 + 8)
    bound = 3 * block * 4 + 4 * block * 8 // 2 + 4 * state  # scores + argpartition ints + running top-k copies
    assert peak_big < bound < len(queries) * len(corpus) * 4 // 20, (peak_big, bound)
    assert peak_big <= peak_small * 1.05 + 64_000, (peak_big, peak_small)  # independent of corpus size
    assert elapsed < 60

    sample = slice(0, 1_000, 50)  # a slice of queries against the whole corpus, fully sorted
    expected_scores, expected_indices = _brute_force(queries[sample], corpus, k)
    np.testing.assert_array_equal(indices[sample], expected_indices)
    np.testing.assert_allclose(scores[sample], expected_scores, atol=1e-6)


def test_running_top_k_keeps_best_over_updates():
    top = RunningTopK(1, 2)
    top.update(slice(0, 1), np.array([[0.1, 0.9]]), np.array([[0, 1]]))
    top.seen = 2
    top.update(slice(0, 1), np.array([[0.5, 0.95]]), np.array([[2, 3]]))
    top.seen = 4
    scores, indices = top.result()
    assert indices.tolist() == [[3, 1]] and scores[0].tolist() == pytest.approx([0.95, 0.9])


def _toy(table_encoder):
    vectors = {"q1": [1, 0], "q2": [0, 1], "q3": [1, 1],
               "d1": [1, 0.1], "d2": [0.9, 0.5], "d3": [0.1, 1], "d4": [-1, 0]}
    queries = {"1": "q1", "2": "q2", "3": "q3"}
    corpus = {"a": "d1", "b": "d2", "c": "d3", "d": "d4"}
    return table_encoder(vectors), queries, corpus


def test_retrieval_metrics_on_paper(table_encoder):
    encoder, queries, corpus = _toy(table_encoder)
    # q1 ranks a, b, c, d; q2 ranks c, b, a, d.  Relevant: q1 -> b; q2 -> c (rel 2) and d (rel 1).
    qrels = {"1": {"b": 1}, "2": {"c": 2, "d": 1}}
    evaluator = RetrievalEvaluator(queries, corpus, qrels, cutoffs={"ndcg": (10,), "mrr": (10,), "map": (100,),
                                                                     "recall": (1, 10)})
    results = evaluator(encoder)
    ndcg_q1 = (1 / np.log2(3)) / 1.0
    ndcg_q2 = (2 / 1 + 1 / np.log2(5)) / (2 / 1 + 1 / np.log2(3))
    assert list(results)[0] == "ndcg_at_10" == evaluator.primary_metric
    assert results["ndcg_at_10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert results["mrr_at_10"] == pytest.approx((1 / 2 + 1) / 2)
    assert results["map_at_100"] == pytest.approx((1 / 2 + (1 + 2 / 4) / 2) / 2)
    assert results["recall_at_1"] == pytest.approx((0 + 1 / 2) / 2)
    assert results["recall_at_10"] == pytest.approx(1.0)
    assert "3" not in evaluator.query_ids  # not in the qrels: not encoded, not scored
    assert all("q3" not in call for call in encoder.calls)


def test_qrels_naming_unknown_ids_fail(table_encoder):
    _, queries, corpus = _toy(table_encoder)
    with pytest.raises(ValueError, match=r"qrels name 1 query id\(s\) missing from the queries \(e.g. '9'\)"):
        RetrievalEvaluator(queries, corpus, {"9": {"a": 1}})
    with pytest.raises(ValueError, match=r"qrels name 2 document id\(s\) missing from the corpus"):
        RetrievalEvaluator(queries, corpus, {"1": {"zz": 1, "yy": 1}})
    with pytest.raises(ValueError, match="qrels are empty"):
        RetrievalEvaluator(queries, corpus, {})
    with pytest.raises(ValueError, match="is not an integer"):
        RetrievalEvaluator(queries, corpus, {"1": {"a": 0.5}})


def _beir_folder(root, jsonl, qrels_lines):
    jsonl(root / "corpus.jsonl", [{"_id": "a", "title": "", "text": "d1"}, {"_id": "b", "title": "T", "text": "x"},
                                  {"_id": "007", "text": "d3"}])
    jsonl(root / "queries.jsonl", [{"_id": "1", "text": "q1"}, {"_id": "2", "text": "q2"}])
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(qrels_lines))
    return root


def test_beir_folder_layout(tmp_path, jsonl, table_encoder):
    folder = _beir_folder(tmp_path / "toy", jsonl, ["1\tb\t1\n", "2\t007\t1\n"])
    evaluator = build_evaluator({"type": "retrieval", "dataset": str(folder)})
    assert evaluator.corpus == {"a": "d1", "b": "T x", "007": "d3"}  # title + text, ids kept as strings
    encoder = table_encoder({"q1": [1, 0], "q2": [0, 1], "d1": [1, 0.1], "T x": [0.9, 0.5], "d3": [0.1, 1]})
    results = evaluator(encoder)
    assert results["recall_at_10"] == 1.0 and results["mrr_at_10"] == pytest.approx((1 / 2 + 1) / 2)


def test_beir_qrels_with_unknown_id_fail(tmp_path, jsonl):
    folder = _beir_folder(tmp_path / "toy", jsonl, ["1\tb\t1\n", "2\tmissing-doc\t1\n"])
    with pytest.raises(ValueError, match="missing from the corpus .*'missing-doc'"):
        build_evaluator({"type": "retrieval", "dataset": str(folder)})


def test_pairs_layout_pools_candidates(tmp_path, jsonl, table_encoder):
    rows = [{"question": "q1", "answer": "d1", "label": 0}, {"question": "q1", "answer": "d2", "label": 1},
            {"question": "q2", "answer": "d3", "label": 1}, {"question": "q3", "answer": "d1", "label": 0}]
    evaluator = build_evaluator({"type": "retrieval", "dataset": str(jsonl(tmp_path / "qa.jsonl", rows)),
                                 "columns": {"query": "question", "document": "answer"}})
    assert sorted(evaluator.corpus.values()) == ["d1", "d2", "d3"]
    assert [evaluator.queries[q] for q in evaluator.query_ids] == ["q1", "q2"]  # q3 has no relevant answer
    encoder = table_encoder({"q1": [1, 0], "q2": [0, 1], "d1": [1, 0.1], "d2": [0.9, 0.5], "d3": [0.1, 1]})
    assert evaluator(encoder)["mrr_at_10"] == pytest.approx((1 / 2 + 1) / 2)


# ------------------------------------------------------------------------------------------ out of core
@pytest.fixture(scope="module")
def scifact(data_dir):
    from nlp_contrastive.evaluation.retrieval_data import load_beir_folder

    return load_beir_folder(data_dir / "scifact", "test")


def test_out_of_core_scifact_equals_the_in_memory_search_for_every_metric(tmp_path, scifact, tiny_encoder):
    """SciFact test (300 claims, 5,183 abstracts): shards of 700 documents on disk vs the whole corpus embedded in
    one array and searched at once; then a second evaluation reads the shards instead of encoding."""
    from nlp_contrastive.evaluation.embedding import encode

    queries, corpus, qrels = scifact
    evaluator = RetrievalEvaluator(queries, corpus, qrels, corpus_chunk_size=700, cache_dir=tmp_path / "cache")
    out_of_core = evaluator(tiny_encoder)
    q = encode(tiny_encoder, [evaluator.queries[i] for i in evaluator.query_ids], 64)
    d = encode(tiny_encoder, [corpus[i] for i in evaluator.doc_ids], 64)
    scores, indices = exact_top_k(q, d, evaluator.k)
    in_memory = evaluator.score({query: {evaluator.doc_ids[j]: float(s) for s, j in zip(row_s, row_i, strict=True)}
                                 for query, row_s, row_i in zip(evaluator.query_ids, scores, indices, strict=True)})
    assert out_of_core.keys() == in_memory.keys() and len(out_of_core) >= 6
    for metric, value in in_memory.items():
        assert out_of_core[metric] == pytest.approx(value, abs=1e-6), metric
    shards = list((tmp_path / "cache").glob("*/shard-*.npz"))
    assert len(shards) == 8
    before = {p: p.stat().st_mtime_ns for p in shards}
    assert evaluator(tiny_encoder) == out_of_core  # the shards are read, not written again
    assert {p: p.stat().st_mtime_ns for p in shards} == before


def test_corpus_subset_keeps_judged_documents_and_the_starting_models_top_n(tmp_path, scifact, tiny_encoder):
    queries, corpus, qrels = scifact
    full = RetrievalEvaluator(queries, corpus, qrels, corpus_chunk_size=2000, cache_dir=tmp_path)  # encoded once
    subset = full.with_corpus_subset(tiny_encoder, top_n=20)
    again = full.with_corpus_subset(tiny_encoder, top_n=20)
    judged = {d for judged in qrels.values() for d in judged}
    assert judged <= set(subset.doc_ids) and len(subset.doc_ids) < len(corpus) and subset.doc_ids == again.doc_ids
    run = full.predict(tiny_encoder)
    assert {d for docs in run.values() for d in list(docs)[:20]} <= set(subset.doc_ids)
    scores = subset(tiny_encoder)
    assert scores["corpus_documents"] == len(subset.doc_ids) and scores["corpus_subset_top_n"] == 20
    assert "corpus_documents" not in full.score(run)


WORKER = '''
import json, sys
import torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from tests.conftest import make_tiny_encoder
from nlp_contrastive.evaluation import RetrievalEvaluator
from nlp_contrastive.retrieval import embeddings

dist.init_process_group("gloo")
encoded = []
real = embeddings.encode_chunk
embeddings.encode_chunk = lambda encoder, corpus, rows, *a: encoded.append(rows.start) or real(encoder, corpus, rows, *a)
corpus = {f"d{i}": f"document {i} on topic {i % 9} with word {i * 7 % 13}" for i in range(300)}
queries = {f"q{i}": f"topic {i % 9} word {i % 13}" for i in range(40)}
qrels = {f"q{i}": {f"d{(i * 11) % 300}": 1} for i in range(40)}
scores = RetrievalEvaluator(queries, corpus, qrels, corpus_chunk_size=64)(make_tiny_encoder())
with open(f"{sys.argv[1]}.{dist.get_rank()}", "w") as f:
    json.dump({"scores": scores, "encoded": encoded}, f)
'''


def test_two_processes_split_the_corpus_encoding_and_agree_with_one(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, TWO_PROCESSES

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([*TWO_PROCESSES, str(script), str(tmp_path / "out"), str(REPO_ROOT)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), str(REPO_ROOT)],
                         env={**env, "WORLD_SIZE": "1", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
                              "MASTER_PORT": "29533"}, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    single = json.loads((tmp_path / "single.0").read_text())
    assert ranks[0]["encoded"] == [0, 128, 256] and ranks[1]["encoded"] == [64, 192]  # each its share
    assert single["encoded"] == [0, 64, 128, 192, 256]
    for rank in ranks:
        assert rank["scores"] == pytest.approx(single["scores"], abs=1e-6)
