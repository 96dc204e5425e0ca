"""A saved model + its card work without nlp-contrastive: the card's own usage code, run as written, gives the
same embeddings through sentence-transformers and through plain transformers + the card's pooling function."""

from __future__ import annotations

import re

import numpy as np
import pytest

from nlp_contrastive.card import build_model_card, read_model_info, write_model_card
from tests.conftest import make_tiny_encoder


def python_blocks(card: str) -> tuple[str, str]:
    """(sentence-transformers snippet, transformers snippet) exactly as the card shows them."""
    st_code, tf_code = re.findall(r"```python\n(.*?)\n```", card, flags=re.DOTALL)
    assert "SentenceTransformer(" in st_code and "AutoModel.from_pretrained(" in tf_code
    return st_code, tf_code


def run_snippet(code: str) -> tuple[list[str], np.ndarray]:
    namespace: dict = {}
    exec(compile(code, "<model card snippet>", "exec"), namespace)
    embeddings = namespace["embeddings"]
    return namespace["sentences"], np.asarray(embeddings.cpu() if hasattr(embeddings, "cpu") else embeddings)


@pytest.mark.parametrize("pooling, normalize", [
    ("mean", False), ("mean", True), ("cls", True), ("max", False), ("last_token", False), ("mean_sqrt_len", False),
])
def test_card_snippets_give_the_same_embeddings_in_sentence_transformers_and_transformers(
        tmp_path, pooling, normalize):
    encoder = make_tiny_encoder(pooling=pooling, normalize=normalize, seed=3)
    path = tmp_path / "model"
    encoder.save_pretrained(path)
    card = build_model_card({}, {}, {}, read_model_info(path), model_id=str(path))
    st_code, tf_code = python_blocks(card)

    st_sentences, st_embeddings = run_snippet(st_code)
    tf_sentences, tf_embeddings = run_snippet(tf_code)
    ours = encoder.encode(tf_sentences)

    assert st_sentences == tf_sentences
    assert st_embeddings.shape == tf_embeddings.shape == (len(tf_sentences), encoder.dimension)
    assert np.abs(st_embeddings - tf_embeddings).max() < 1e-5
    assert np.abs(ours - tf_embeddings).max() < 1e-5
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(tf_embeddings, axis=1), 1.0, atol=1e-5)


def test_card_written_after_training_runs_once_the_placeholder_is_replaced(tiny_model_dir):
    card = write_model_card(tiny_model_dir).read_text()
    card = card.replace("sentence_transformers_model_id", str(tiny_model_dir))
    _, st_embeddings = run_snippet(python_blocks(card)[0])
    _, tf_embeddings = run_snippet(python_blocks(card)[1])
    assert np.abs(st_embeddings - tf_embeddings).max() < 1e-5


def test_the_saved_model_evaluates_to_the_number_in_its_card(tiny_model_dir, data_dir):
    import itertools
    import json

    from sentence_transformers import SentenceTransformer

    from nlp_contrastive.evaluation.sts import STSEvaluator
    from nlp_contrastive.modeling import Encoder

    with open(data_dir / "stsb" / "test.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in itertools.islice(f, 120)]
    evaluator = STSEvaluator([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
                             [r["score"] for r in rows], name="stsb-test")
    primary = evaluator.primary_metric
    results = {"stsb-test": evaluator(Encoder.from_pretrained(tiny_model_dir))}
    (tiny_model_dir / "results.json").write_text(json.dumps(results))
    (tiny_model_dir / "results_meta.json").write_text(json.dumps(
        {"stsb-test": {"type": "sts", "dataset": "stsb", "split": "test", "primary_metric": primary}}))
    card = write_model_card(tiny_model_dir).read_text()

    from huggingface_hub import ModelCard

    in_card = {r.metric_type: r.metric_value for r in ModelCard(card).data.eval_results}
    assert in_card == results["stsb-test"]
    assert f"| **{primary}** | **{in_card[primary]:.4f}** |" in card
    # evaluating the folder again, as saved and as users load it, reproduces the card's number
    assert evaluator(Encoder.from_pretrained(tiny_model_dir))[primary] == in_card[primary]
    assert abs(evaluator(SentenceTransformer(str(tiny_model_dir)))[primary] - in_card[primary]) < 1e-4
