"""recipes/scifact-hardneg.yaml end to end on a tiny BEIR folder: beir-split, hard negatives mined by the starting
model inside the run, dev retrieval evaluated every epoch with the best dev nDCG@10 kept, test evaluated at the
end; the mined rows reused on resume; bad `mine` settings in one line; 2 processes = 1 process."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from safetensors.torch import load_file

from nlp_contrastive.cli import main as cli_main
from nlp_contrastive.retrieval import recipe_mining
from nlp_contrastive.train import main as train_main
from tests.conftest import REPO_ROOT, TWO_PROCESSES, assert_same_lines

RECIPE = str(REPO_ROOT / "recipes" / "scifact-hardneg.yaml")
TOPICS = ["vitamin", "sleep", "coffee", "bones", "memory", "exercise"]


def write_beir(root):
    """36 abstracts on 6 topics, 24 claims (claim i judged relevant to abstract i; claim 0 also to 30), test qrels."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": f"{TOPICS[i % 6]} study {i}",
                    "text": f"results on {TOPICS[i % 6]} number {i} in adults"}) + "\n" for i in range(36)))
    (root / "queries.jsonl").write_text("".join(
        json.dumps({"_id": str(i), "text": f"{TOPICS[i % 6]} claim {i}"}) + "\n" for i in range(30)))
    train = [f"{i}\td{i}\t1" for i in range(24)] + ["0\td30\t1"]
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\r\n" + "\r\n".join(train) + "\r\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{i}\td{i}\t1\n" for i in range(24, 30)))
    return root


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir")
    assert cli_main(["beir-split", "--data", str(write_beir(root / "source")), "--output", str(root / "split"),
                     "--dev-fraction", "0.25"]) == 0
    return root / "split"


def overrides(model_dir, folder, output_dir, *extra):
    return ["--vars.dataset", str(folder), "--model_name_or_path", str(model_dir), "--max_seq_length", "32",
            "--output_dir", str(output_dir), "--per_device_train_batch_size", "4", "--bf16", "false",
            "--use_cpu", "true", "--logging_steps", "1", "--num_train_epochs", "2", "--eval_batch_size", "8",
            *extra]


def test_the_recipe_mines_evaluates_dev_keeps_the_best_and_resumes_without_mining(
        tmp_path, split_folder, module_tiny_dir, monkeypatch):
    out = tmp_path / "out"
    assert train_main([RECIPE, *overrides(module_tiny_dir, split_folder, out)]) == 0
    rows = [json.loads(line) for line in (out / "mined" / "0.jsonl").read_text().splitlines()]
    split = json.loads((split_folder / "split.json").read_text())
    assert len(rows) == split["train_rows"] and split["dev_queries"] == 6
    assert {r["query_id"] for r in rows}.isdisjoint(split["dev_query_ids"])  # mined on train only
    assert all(len(r["negatives"]) <= 1 and r["positive"] in r["known_positives"] for r in rows)
    assert sum(len(r["negatives"]) for r in rows) > 0
    assert list((out / "mined" / "embeddings").glob("*/shard-*.npz"))  # mining's cache_dir
    run = json.loads((out / "training_run.json").read_text())
    dev = [e for e in run["log_history"] if "eval_dev_ndcg_at_10" in e]
    assert len(dev) == 2 and all("eval_dev_recall_at_100" in e for e in dev)  # one evaluation per epoch
    assert run["train_rows"] == len(rows)
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    best = max(dev, key=lambda e: e["eval_dev_ndcg_at_10"])
    assert state["best_metric"] == pytest.approx(best["eval_dev_ndcg_at_10"])
    best_dir = REPO_ROOT / state["best_model_checkpoint"] if not os.path.isabs(state["best_model_checkpoint"]) \
        else state["best_model_checkpoint"]
    final, kept = load_file(out / "model.safetensors"), load_file(f"{best_dir}/model.safetensors")
    assert all((final[k] == kept[k]).all() for k in final)  # load_best_model_at_end: the best dev checkpoint
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"test"} and 0 <= results["test"]["ndcg_at_10"] <= 1
    assert "${" not in json.dumps(run["recipe"]) and run["recipe"]["vars"]["dataset"] == str(split_folder)

    mined_before = (out / "mined" / "0.jsonl").stat().st_mtime_ns

    def no_mining(*args, **kwargs):
        raise AssertionError("mined again on resume")

    monkeypatch.setattr(recipe_mining, "mine_source", no_mining)
    assert train_main([RECIPE, *overrides(module_tiny_dir, split_folder, out, "--resume_from_checkpoint",
                                          "true")]) == 0
    assert (out / "mined" / "0.jsonl").stat().st_mtime_ns == mined_before


def bad(spec: dict) -> list[str]:
    base = {"split": "train", "columns": {"anchor": "query", "positive": "positive"}}
    return ["--train_data", json.dumps([{**base, **spec}])]


@pytest.mark.parametrize("extra,message", [
    (bad({"dataset": "rows.jsonl", "mine": {"num_negatives": 1}}), "train_data[0]: mine needs a local BEIR folder"),
    (bad({"dataset": "$split", "mine": {"rangemax": 5}}), "mine: unknown option(s) ['rangemax'] (did you mean range_max"),
    (bad({"dataset": "$split", "mine": {"num_negatives": 0}}), "train_data[0] mine: num_negatives must be >= 1"),
    (bad({"dataset": "$split", "mine": {"index": 3}}), "train_data[0] mine: index must be a search name"),
    (bad({"dataset": "$split", "mine": "top"}), "train_data[0]: mine must be a mapping of mining options"),
    (bad({"dataset": "$split", "mine": {"num_negatives": 1}, "streaming": True}) + ["--max_steps", "2"],
     "train_data[0]: mine reads the whole split before training, which streaming does not"),
    (bad({"dataset": "$tmp", "mine": {"num_negatives": 1}}), "is not one (no corpus.jsonl)"),
])
def test_bad_mine_settings_end_in_one_line_and_write_nothing(tmp_path, capsys, split_folder, module_tiny_dir, extra,
                                                            message):
    extra = [a.replace("$split", str(split_folder)).replace("$tmp", str(tmp_path)) for a in extra]
    code = train_main([RECIPE, *overrides(module_tiny_dir, split_folder, tmp_path / "out", *extra)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_mine_and_evaluate_as_one(tmp_path, split_folder, module_tiny_dir):
    """learning_rate 0: the weights stay the starting model's, so the dev numbers of both runs must agree; the corpus
    encoding (mining and evaluation) is split over the processes."""
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, launcher in (("one", ["python"]), ("two", [*TWO_PROCESSES])):
        args = overrides(module_tiny_dir, split_folder, tmp_path / name, "--learning_rate", "0",
                         "--num_train_epochs", "1", "--final_eval_tasks", "[]")
        cmd = [*launcher, "-m", "nlp_contrastive.train", RECIPE, *args]
        if name == "one":
            cmd[0] = TWO_PROCESSES[0]
        done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "training_run.json").read_text())
    assert "processes: 2" in done.stdout
    assert_same_lines(tmp_path / "two" / "mined" / "0.jsonl", tmp_path / "one" / "mined" / "0.jsonl")
    dev = {name: next(e for e in run["log_history"] if "eval_dev_ndcg_at_10" in e) for name, run in runs.items()}
    metrics = sorted(k for k in dev["one"] if k.startswith("eval_dev_"))
    assert len(metrics) >= 6
    assert [dev["two"][k] for k in metrics] == pytest.approx([dev["one"][k] for k in metrics], abs=1e-6)
