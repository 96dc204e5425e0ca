"""Our retrieval metrics equal MTEB's own metric code (pytrec_eval + mteb's MRR) on random and real runs.

Needs the dev extra (`pip install -e ".[dev]"`: mteb, pytrec_eval-terrier); skipped with that reason otherwise.
The long test (all-MiniLM-L6-v2 over SciFact's 5,183 abstracts, ~5 min on 2 cores) runs with NLPC_LONG_TESTS=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nlp_contrastive.evaluation import build_evaluator
from nlp_contrastive.evaluation.ranking_metrics import ranking_metrics
from nlp_contrastive.evaluation.retrieval_data import load_beir_folder

retrieval_metrics = pytest.importorskip(
    "mteb._evaluators.retrieval_metrics",
    reason="mteb is not installed: pip install -e '.[dev]' (mteb + pytrec_eval-terrier) to compare with MTEB")

CUTOFFS = {"ndcg": (1, 3, 10, 100), "map": (10, 100), "recall": (1, 10, 100), "mrr": (10,)}
ROOT = Path(__file__).resolve().parents[2]
SCIFACT = Path(os.environ.get("NLPC_DATA_DIR", ROOT.parent / "shared" / "data")) / "scifact"


def mteb_metrics(run, qrels) -> dict[str, float]:
    """MTEB's numbers under our key names (ndcg_at_10, ...), from calculate_retrieval_scores."""
    ks = sorted({k for ks in CUTOFFS.values() for k in ks})
    result = retrieval_metrics.calculate_retrieval_scores({q: dict(d) for q, d in run.items()}, qrels, ks)
    named = {"ndcg": result.ndcg, "map": result.map, "recall": result.recall, "mrr": result.mrr}
    prefix = {"ndcg": "NDCG", "map": "MAP", "recall": "Recall", "mrr": "MRR"}
    return {f"{m}_at_{k}": named[m][f"{prefix[m]}@{k}"] for m, ks_ in CUTOFFS.items() for k in ks_}


def assert_equal_to_mteb(ours: dict[str, float], theirs: dict[str, float]) -> None:
    # MTEB rounds nDCG/MAP/Recall to 5 decimals (MRR is not rounded).
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=6e-6), key


@pytest.mark.parametrize("seed", range(6))
def test_random_runs_with_ties_and_graded_qrels(seed):
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(40):
        judged = rng.choice(docs, size=int(rng.integers(1, 8)), replace=False)
        grades = rng.integers(0 if q % 7 else 1, 3, size=len(judged))  # some zero grades, graded gains
        qrels[f"q{q}"] = {str(d): int(g) for d, g in zip(judged, grades, strict=True)}
        if not any(grades):
            qrels[f"q{q}"][str(judged[0])] = 1
        retrieved = rng.choice(docs, size=int(rng.integers(5, 150)), replace=False)
        scores = np.round(rng.random(len(retrieved)), 1 if seed % 2 else 4)  # coarse scores: many ties
        run[f"q{q}"] = {str(d): float(s) for d, s in zip(retrieved, scores, strict=True)}
    assert_equal_to_mteb(ranking_metrics(run, qrels, CUTOFFS), mteb_metrics(run, qrels))


def _tfidf_run(queries, corpus, query_ids, k=100):
    """A real ranking of the real SciFact corpus (TF-IDF cosine), cheap enough for the fast suite."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    doc_ids = list(corpus)
    vectorizer = TfidfVectorizer(sublinear_tf=True).fit([corpus[d] for d in doc_ids])
    scores = (vectorizer.transform([queries[q] for q in query_ids])
              @ vectorizer.transform([corpus[d] for d in doc_ids]).T).toarray()
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(query_ids)}


@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"SciFact not found at {SCIFACT}: set NLPC_DATA_DIR")
@pytest.mark.parametrize("split", ["test"])
def test_real_scifact_run_equals_mteb(split):
    queries, corpus, qrels = load_beir_folder(SCIFACT, split)
    run = _tfidf_run(queries, corpus, list(qrels))
    ours = ranking_metrics(run, qrels, CUTOFFS)
    assert_equal_to_mteb(ours, mteb_metrics(run, qrels))
    assert 0.4 < ours["ndcg_at_10"] < 0.8  # a real ranking, not a degenerate one


def test_any_beir_folder_with_identical_ids_equals_mteb(tmp_path, jsonl, table_encoder):
    """A corpus that contains the queries (ArguAna-style): MTEB drops doc id == query id before scoring."""
    rng = np.random.default_rng(3)
    texts = [f"t{i}" for i in range(30)]
    vectors = {t: rng.standard_normal(4).tolist() for t in texts}
    jsonl(tmp_path / "corpus.jsonl", [{"_id": str(i), "title": "", "text": t} for i, t in enumerate(texts)])
    jsonl(tmp_path / "queries.jsonl", [{"_id": str(i), "text": texts[i]} for i in range(10)])
    (tmp_path / "qrels").mkdir()
    lines = [f"{q}\t{(q * 7 + j) % 30}\t{1 + j % 2}\r\n" for q in range(10) for j in (1, 2)]
    (tmp_path / "qrels" / "test.tsv").write_bytes(("query-id\tcorpus-id\tscore\r\n" + "".join(lines)).encode())
    encoder = table_encoder(vectors)
    evaluator = build_evaluator({"type": "retrieval", "dataset": str(tmp_path), "ignore_identical_ids": True})
    run = evaluator.predict(encoder)
    assert all(q not in docs and len(docs) == 29 for q, docs in run.items())  # the query itself is dropped

    queries, corpus, qrels = load_beir_folder(tmp_path, "test")
    emb = {d: np.asarray(vectors[t]) / np.linalg.norm(vectors[t]) for d, t in corpus.items()}
    full = {q: {d: float(emb[d] @ emb[q]) for d in corpus} for q in qrels}  # MTEB's run, then its removal
    mteb_run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in full.items()}
    assert_equal_to_mteb(ranking_metrics(run, qrels, CUTOFFS), mteb_metrics(mteb_run, qrels))
    kept = build_evaluator({"type": "retrieval", "dataset": str(tmp_path)}).predict(encoder)
    assert all(q in docs for q, docs in kept.items())  # default (MTEB's default too): nothing dropped


REFERENCE = {"ndcg_at_10": 0.64508, "mrr_at_10": 0.60472, "map_at_100": 0.60307, "recall_at_100": 0.92500}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NLPC_LONG_TESTS") != "1",
                    reason="encodes 5,183 SciFact abstracts (~5 min on 2 cores): set NLPC_LONG_TESTS=1")
@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"SciFact not found at {SCIFACT}: set NLPC_DATA_DIR")
def test_minilm_on_scifact_test_equals_mteb_reference(tmp_path, minilm_path):
    out = tmp_path / "scifact.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NLPC_DATA_DIR": str(SCIFACT.parent)}
    subprocess.run([sys.executable, "-m", "nlp_contrastive.cli", "eval", "--model", minilm_path,
                    "--suite", str(ROOT / "eval" / "beir.yaml"), "--output", str(out)], check=True, env=env)
    results = json.loads(out.read_text())["SciFact"]
    for key, value in REFERENCE.items():
        assert results[key] == pytest.approx(value, abs=1e-4), key
