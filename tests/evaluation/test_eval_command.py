"""`nlp-contrastive eval`: JSON output, table, plots, explicit errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from nlp_contrastive.cli import main


def _sts_file(tmp_path, jsonl, name="mine"):
    rows = [{"sentence1": f"A man plays {w}.", "sentence2": f"Someone is playing {v}.", "score": float(s)}
            for w, v, s in [("guitar", "guitar", 5), ("piano", "a flute", 2), ("chess", "football", 0.5),
                            ("golf", "golf outside", 4), ("cards", "the violin", 1)]]
    return jsonl(tmp_path / f"{name}.jsonl", rows)


def test_sts_files_json_table_and_plots(tmp_path, jsonl, tiny_model_dir, capsys):
    out = tmp_path / "results" / "out.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--sts", str(_sts_file(tmp_path, jsonl)),
                 str(_sts_file(tmp_path, jsonl, "other")), "--output", str(out), "--plot", str(tmp_path / "plots"),
                 "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(out.read_text())
    assert list(results) == ["mine", "other"] and -1 <= results["mine"]["spearman_cosine"] <= 1
    assert f"{100 * results['mine']['spearman_cosine']:.2f}" in captured.out
    assert (tmp_path / "plots" / "mine.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob(".*tmp"))  # no temp file left behind


def test_suite_with_task_selection(tmp_path, tiny_model_dir, capsys, data_dir):
    code = main(["eval", "--model", str(tiny_model_dir), "--suite", "eval/retrieval.yaml",
                 "--tasks", "TrecQA-reranking", "--output", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    assert list(json.loads((tmp_path / "r.json").read_text())) == ["TrecQA-reranking"]


@pytest.mark.parametrize("case, message", [
    ("missing_file", "--sts file .* does not exist"),
    ("empty_file", "is empty"),
    ("missing_column", "column 'score' for role 'score' not found"),
    ("nan_score", "score in row 1 is nan"),
    ("bad_model", "is not a model folder"),
])
def test_bad_input_is_one_line_and_exit_2(case, message, tmp_path, jsonl, tiny_model_dir, capsys):
    path = tmp_path / "bad.jsonl"
    model = str(tiny_model_dir)
    if case == "empty_file":
        path.write_text("")
    elif case == "missing_column":
        jsonl(path, [{"sentence1": "a", "sentence2": "b", "label": 1}])
    elif case == "nan_score":
        path.write_text('{"sentence1": "a", "sentence2": "b", "score": 1.0}\n'
                        '{"sentence1": "c", "sentence2": "d", "score": NaN}\n')
    elif case == "bad_model":
        _sts_file(tmp_path, jsonl, "bad")
        model = str(tmp_path)
    code = main(["eval", "--model", model, "--sts", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("nlp-contrastive eval: error: ")
    assert __import__("re").search(message, err[-1]), err[-1]
