"""Suite YAML: parsing, validation, skipping hub tasks offline, local mirrors, the table."""

from __future__ import annotations

import logging

import pytest

from nlp_contrastive.evaluation import STSEvaluator, TaskUnavailable, format_table, load_suite
from nlp_contrastive.evaluation.suite import default_suite, default_suite_path


def _sts_rows(n=4):
    return [{"sentence1": f"a{i}", "sentence2": f"b{i}", "score": float(i)} for i in range(n)]


def test_default_suite_is_the_repo_sts_yaml_with_local_sets(data_dir):
    assert default_suite_path() is not None and default_suite_path().name == "sts.yaml"
    suite = default_suite()
    assert suite.names[:2] == ["STSBenchmark", "SICK-R"] and "STS12" in suite.names


def test_hub_tasks_are_skipped_offline_with_one_line_each(tmp_path, jsonl, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = jsonl(tmp_path / "local.jsonl", _sts_rows())
    suite = load_suite({"defaults": {"type": "sts"},
                        "tasks": {"Local": {"dataset": str(local)}, "STS12": {"dataset": "mteb/sts12-sts"}}})
    with caplog.at_level(logging.WARNING):
        evaluators = suite.evaluators()
    assert [e.name for e in evaluators] == ["Local"]
    (record,) = [r for r in caplog.records if "STS12" in r.getMessage()]
    assert "\n" not in record.getMessage() and "HF_HUB_OFFLINE" in record.getMessage()
    assert "STS12" in suite.skipped


def test_selected_hub_task_is_an_error_not_a_skip(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite = load_suite({"tasks": {"STS12": {"type": "sts", "dataset": "mteb/sts12-sts"}}}, tasks=["STS12"])
    with pytest.raises(TaskUnavailable, match="mteb/sts12-sts is on the hub"):
        suite.evaluators()


def test_nothing_available_is_an_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite = load_suite({"tasks": {"STS12": {"type": "sts", "dataset": "mteb/sts12-sts"}}})
    with pytest.raises(ValueError, match="no task of the suite could be loaded"):
        suite.evaluators()


def test_hub_task_reads_a_local_mirror_in_the_data_dir(tmp_path, jsonl, monkeypatch):
    jsonl(tmp_path / "sts12" / "test.jsonl", _sts_rows(5))
    monkeypatch.setenv("NLPC_DATA_DIR", str(tmp_path))
    (evaluator,) = load_suite("eval/sts.yaml", tasks=["STS12"]).evaluators()
    assert isinstance(evaluator, STSEvaluator) and len(evaluator.sentences1) == 5


def test_suite_file_paths_are_relative_to_the_file(tmp_path, jsonl):
    jsonl(tmp_path / "data" / "mine.jsonl", _sts_rows())
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text("tasks:\n  Mine: {type: sts, dataset: data/mine.jsonl, split: test}\n")
    (evaluator,) = load_suite(suite_file).evaluators()
    assert evaluator.name == "Mine" and evaluator.primary_metric == "spearman_cosine"


@pytest.mark.parametrize("raw, message", [
    ({"tasks": {"T": {"type": "sts", "dataset": "x.jsonl", "colums": {}}}}, r"unknown key\(s\) \['colums'\] \(did you mean columns\?\): valid keys"),
    ({"tasks": {"T": {"type": "nli", "dataset": "x.jsonl"}}}, "type 'nli' is not one of sts"),
    ({"tasks": {"T": {"type": "sts"}}}, "set dataset:"),
    ({"tasks": {"T": {"type": "sts", "data": "x"}}}, r"unknown key\(s\) \['data'\]"),
    ({"tasks": [{"name": "T"}, "not a mapping"]}, "or be a list of settings"),
    ({"batch_size": 0, "tasks": {"T": {"type": "sts", "dataset": "x"}}}, "batch_size must be a positive integer"),
    ({"tasks": {"T": {"type": "sts", "dataset": "x", "columns": {"text": "s"}}}}, r"unknown role\(s\) \['text'\]"),
    ({"tasks": {"T": {"type": "sts", "dataset": "x", "score_range": [5, 0]}}}, "score_range must be"),
    ({"tasks": {"T": {"type": "reranking", "dataset": "x", "layout": "beir"}}}, "layout applies to type retrieval"),
    ({"task": {}}, r"unknown suite key\(s\) \['task'\]"),
    ({"tasks": {}}, "the suite has no tasks"),
])
def test_invalid_suites_fail_with_the_fix(raw, message):
    with pytest.raises(ValueError, match=message):
        load_suite(raw)


def test_selecting_an_unknown_task_lists_the_available_ones():
    with pytest.raises(ValueError, match="not in the suite: available tasks are STSBenchmark, SICK-R"):
        load_suite("eval/sts.yaml", tasks=["STS-B"])


def test_runs_and_formats_an_aligned_table(tmp_path, jsonl, table_encoder):
    # cosine: a-b 0, a-c 0.74, b-c 0.67 -> ranks 1, 3, 2 against gold ranks 1, 2, 3: Spearman 0.5
    rows = [{"sentence1": "a", "sentence2": "b", "score": 1.0}, {"sentence1": "a", "sentence2": "c", "score": 2.0},
            {"sentence1": "b", "sentence2": "c", "score": 3.0}]
    suite = load_suite({"tasks": {"Tiny": {"type": "sts", "dataset": str(jsonl(tmp_path / "t.jsonl", rows))}}})
    results = suite(table_encoder({"a": [1, 0], "b": [0, 1], "c": [1, 0.9]}))
    assert results["Tiny"]["spearman_cosine"] == pytest.approx(0.5)
    table = format_table({**results, "Other": {"map": 0.5, "mrr_at_10": 0.25}}).splitlines()
    assert table[0].split() == ["metric", "(x100)", "Tiny"]
    assert table[1].split() == ["spearman_cosine", "50.00"]
    assert len({len(line) for line in table[:9]}) == 1  # aligned block
    assert table[10].split()[-1] == "Other" and table[11].split() == ["map", "50.00"]


def test_recipe_style_task_list_batch_size_and_describe(data_dir):
    """The form `eval_tasks` / `final_eval_tasks` in recipes use, as nlp_contrastive.train passes it."""
    suite = load_suite({"tasks": [{"name": "stsb-test", "type": "sts", "dataset": "stsb", "split": "test"},
                                  {"type": "pair_classification", "dataset": "msrp", "split": "validation"}],
                        "batch_size": 16})
    assert suite.names == ["stsb-test", "msrp-validation"] and suite.batch_size == 16
    assert [e.batch_size for e in suite.evaluators()] == [16, 16]
    assert suite.primary_metrics == {"stsb-test": "spearman_cosine", "msrp-validation": "max_ap"}
    assert suite.describe()["stsb-test"] == {"type": "sts", "dataset": "stsb", "split": "test",
                                             "primary_metric": "spearman_cosine"}
    assert load_suite({"batch_size": 16, "tasks": {"T": {"type": "sts", "dataset": "stsb"}}},
                      batch_size=8).batch_size == 8
