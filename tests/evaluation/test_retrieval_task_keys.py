"""A retrieval task's engine options in suites and recipes: corpus_subset_top_n (cut once, with the starting model),
cache_dir, index; bad values in one line."""

from __future__ import annotations

import json

import pytest

from nlp_contrastive.evaluation.suite import TaskSpec, load_suite, training_evaluator
from nlp_contrastive.evaluation.tasks import build_evaluator
from nlp_contrastive.modeling import Encoder
from nlp_contrastive.train import train
from tests.conftest import make_tiny_encoder
from tests.retrieval.test_recipe_mining import write_beir


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "folder")


def task(beir, **keys):
    return {"name": "dev", "type": "retrieval", "layout": "beir", "dataset": str(beir), "split": "train", **keys}


def test_corpus_subset_is_cut_once_with_the_first_model_and_stated_in_the_results(beir, tmp_path):
    starting, later = make_tiny_encoder(seed=0), make_tiny_encoder(seed=1)
    suite = load_suite({"tasks": [task(beir, corpus_subset_top_n=3, cache_dir=str(tmp_path / "cache"))]})
    first = suite(starting)["dev"]
    expected = build_evaluator(task(beir)).with_corpus_subset(starting, 3)
    (evaluator,) = suite.evaluators()
    assert evaluator.doc_ids == expected.doc_ids and len(expected.doc_ids) < 36
    assert first["corpus_documents"] == len(expected.doc_ids) and first["corpus_subset_top_n"] == 3
    assert first["ndcg_at_10"] == pytest.approx(expected(starting)["ndcg_at_10"])
    suite(later)
    assert suite.evaluators()[0].doc_ids == expected.doc_ids  # not cut again with the later model
    assert list((tmp_path / "cache").glob("*/shard-*.npz"))  # cache_dir: the corpus embeddings kept on disk
    assert suite.describe()["dev"]["corpus_subset_top_n"] == 3


def test_training_evaluator_cuts_the_subset_with_the_starting_model(beir):
    starting = make_tiny_encoder(seed=0)
    evaluate = training_evaluator([task(beir, corpus_subset_top_n=2)], 8, starting_encoder=starting)
    expected = build_evaluator(task(beir)).with_corpus_subset(starting, 2)
    scores = evaluate(make_tiny_encoder(seed=1))
    assert scores["dev_corpus_documents"] == len(expected.doc_ids) and scores["dev_corpus_subset_top_n"] == 2


def test_index_reaches_the_evaluator_and_agrees_with_exact_on_a_tiny_corpus(beir):
    encoder = make_tiny_encoder()
    hnsw = build_evaluator(task(beir, index="hnsw"))
    assert hnsw.index.index == "hnsw"
    assert hnsw(encoder)["ndcg_at_10"] == pytest.approx(build_evaluator(task(beir))(encoder)["ndcg_at_10"])


@pytest.mark.parametrize("keys,message", [
    ({"corpus_subset_top_n": 0}, "corpus_subset_top_n must be a positive integer"),
    ({"corpus_subset_top_n": True}, "corpus_subset_top_n must be a positive integer"),
    ({"cache_dir": 3}, "cache_dir must be a folder path"),
    ({"index": ""}, "index must be exact, hnsw"),
    ({"type": "sts", "index": "hnsw"}, "index applies to type retrieval only"),
    ({"type": "sts", "corpus_subset_top_n": 5}, "corpus_subset_top_n applies to type retrieval only"),
])
def test_bad_engine_options_fail_in_one_line(beir, keys, message):
    raw = {k: v for k, v in task(beir, **keys).items() if k != "name" and not (keys.get("type") == "sts"
                                                                                 and k == "layout")}
    with pytest.raises(ValueError, match=message) as info:
        TaskSpec.from_dict("dev", raw)
    assert "\n" not in str(info.value)


def test_training_logs_the_subset_numbers_under_eval_task_keys(beir, tmp_path, tiny_model_dir):
    """eval_<task>_<metric> is what metric_for_best_model names (dev_ndcg_at_10 -> eval_dev_ndcg_at_10)."""
    from tests.test_trainer import tiny_overrides

    source = json.dumps([{"dataset": str(beir), "split": "train", "columns": {"anchor": "query",
                                                                              "positive": "positive"}}])
    tasks = json.dumps([task(beir, corpus_subset_top_n=2)])
    args = tiny_overrides(str(tiny_model_dir), tmp_path / "out", "--train_data", source, "--eval_tasks", tasks,
                          "--loss", "info_nce", "--per_device_train_batch_size", "4", "--max_steps", "2",
                          "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps",
                          "--save_steps", "1", "--load_best_model_at_end", "true",
                          "--metric_for_best_model", "dev_ndcg_at_10")
    assert train(None, args) == 0
    expected = build_evaluator(task(beir)).with_corpus_subset(Encoder.from_pretrained(tiny_model_dir), 2)
    logged = [e for e in json.loads((tmp_path / "out" / "training_run.json").read_text())["log_history"]
              if "eval_dev_ndcg_at_10" in e]
    assert len(logged) == 2 and all(e["eval_dev_corpus_documents"] == len(expected.doc_ids) for e in logged)
