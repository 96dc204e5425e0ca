"""STS evaluator: pooled correlations, equal to sentence-transformers and to a direct scipy recomputation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from nlp_contrastive.evaluation import STSEvaluator, build_evaluator


def _stsb_rows(data_dir, n=400):
    with open(data_dir / "stsb" / "test.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:n]
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [r["score"] for r in rows]


def test_matches_direct_scipy_recomputation(tiny_encoder, data_dir):
    s1, s2, gold = _stsb_rows(data_dir)
    results = STSEvaluator(s1, s2, gold, name="stsb")(tiny_encoder)
    # Reference: each side encoded on its own (no dedup), the similarity written out per function.
    a = tiny_encoder.encode(s1, batch_size=16).astype(np.float64)
    b = tiny_encoder.encode(s2, batch_size=16).astype(np.float64)
    similarity = {
        "cosine": (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1),
        "dot": (a * b).sum(1),
        "euclidean": -np.sqrt(((a - b) ** 2).sum(1)),
        "manhattan": -np.abs(a - b).sum(1),
    }
    assert list(results)[:2] == ["spearman_cosine", "pearson_cosine"]
    for name, sim in similarity.items():
        assert results[f"spearman_{name}"] == pytest.approx(spearmanr(gold, sim).statistic, abs=1e-5)
        assert results[f"pearson_{name}"] == pytest.approx(pearsonr(gold, sim).statistic, abs=1e-5)


def test_matches_sentence_transformers_evaluator(tiny_model_dir, data_dir):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from nlp_contrastive.modeling import Encoder

    s1, s2, gold = _stsb_rows(data_dir, n=300)
    functions = ["cosine", "dot", "euclidean", "manhattan"]
    reference = EmbeddingSimilarityEvaluator(s1, s2, gold, similarity_fn_names=functions, write_csv=False)
    expected = reference(st.SentenceTransformer(str(tiny_model_dir), device="cpu"))
    ours = STSEvaluator(s1, s2, gold)(Encoder.from_pretrained(str(tiny_model_dir)))
    for name in functions:
        for stat in ("spearman", "pearson"):
            assert ours[f"{stat}_{name}"] == pytest.approx(expected[f"{stat}_{name}"], abs=1e-5), (stat, name)


def test_pools_all_pairs_and_encodes_each_sentence_once(table_encoder):
    # Two "files" whose own correlations are +1 each; pooled, the offset between them makes it different.
    vectors = {"a": [1, 0], "b": [1, 0.1], "c": [1, 0.5], "d": [1, 1], "e": [0, 1]}
    encoder = table_encoder(vectors)
    s1 = ["a", "a", "a", "e", "e"]
    s2 = ["b", "c", "d", "d", "c"]
    gold = [5.0, 3.0, 1.0, 4.5, 2.0]
    results = STSEvaluator(s1, s2, gold, similarity_functions=["cosine"])(encoder)
    cosine = [np.dot(vectors[x], vectors[y]) / np.linalg.norm(vectors[x]) / np.linalg.norm(vectors[y])
              for x, y in zip(s1, s2, strict=True)]
    assert results["spearman_cosine"] == pytest.approx(spearmanr(gold, cosine).statistic, abs=1e-12)
    assert results["pearson_cosine"] == pytest.approx(pearsonr(gold, cosine).statistic, abs=1e-6)
    assert sorted(encoder.calls[0]) == ["a", "b", "c", "d", "e"] and len(encoder.calls) == 1


def test_sentence_transformers_style_encode_is_accepted():
    class STLike:
        def encode(self, inputs, batch_size=32, convert_to_numpy=True, convert_to_tensor=False):
            assert convert_to_numpy
            return np.array([[1.0, len(t)] for t in inputs])

    results = STSEvaluator(["x", "xx", "xxx"], ["y", "yy", "y"], [1.0, 2.0, 0.0])(STLike())
    assert set(results) >= {"spearman_cosine", "pearson_manhattan"}


@pytest.mark.parametrize("scores, message", [
    ([1.0, float("nan"), 2.0], "score in row 1 is nan"),
    ([1.0, None, 2.0], "score in row 1 is missing"),
    ([1.0, "high", 2.0], "score in row 1 is 'high', not a number"),
    ([3.0, 3.0, 3.0], "every gold score is 3.0"),
    ([1.0, 7.0, 2.0], "outside score_range [0, 5]"),
])
def test_bad_scores_fail_with_the_row(scores, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        STSEvaluator(["a", "b", "c"], ["d", "e", "f"], scores, name="t", score_range=(0, 5))


def test_bad_texts_and_lengths_fail(caplog):
    with pytest.raises(ValueError, match="sentence2 in row 1 is missing"):
        STSEvaluator(["a", "b"], ["c", None], [1.0, 2.0])
    with pytest.raises(ValueError, match="sentence1 in row 0 is a int, not text"):
        STSEvaluator([3, "b"], ["c", "d"], [1.0, 2.0])
    with pytest.raises(ValueError, match="different lengths"):
        STSEvaluator(["a", "b"], ["c"], [1.0, 2.0])
    STSEvaluator(["a", "b"], ["c", "  "], [1.0, 2.0], name="t")  # MTEB encodes empty texts: so do we, loudly
    assert "t: 1 empty sentence2 text(s), first in row 1" in caplog.text


def test_task_file_errors_name_the_fix(tmp_path, jsonl):
    missing = jsonl(tmp_path / "missing.jsonl", [{"sentence1": "a", "sentence2": "b", "similarity": 1.0}])
    with pytest.raises(ValueError, match=r"column 'score' for role 'score' not found .* set columns: \{score: "):
        build_evaluator({"type": "sts", "dataset": str(missing)})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        build_evaluator({"type": "sts", "dataset": str(empty)})
    renamed = jsonl(tmp_path / "renamed.jsonl", [{"s": "a", "t": "b", "sim": 1.0}, {"s": "c", "t": "d", "sim": 2.0}])
    evaluator = build_evaluator({"type": "sts", "dataset": str(renamed),
                                 "columns": {"sentence1": "s", "sentence2": "t", "score": "sim"}})
    assert evaluator.sentences1 == ["a", "c"] and list(evaluator.scores) == [1.0, 2.0]
