"""Every class of bad input, through the CLI: exit code 2, one `error:` line naming the problem, no traceback,
nothing new written.

Each case runs in-process through `nlp_contrastive.cli.main` (fast); the first case of every class also runs as
a real `python -m nlp_contrastive.cli` subprocess (all started at once, so the ~20 interpreter starts overlap).
Adding a command (e.g. `mine`) is one more entry in CASES.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pytest

from tests.conftest import REPO_ROOT, make_tiny_encoder


@dataclass(frozen=True)
class Case:
    """argv is a template: $dir (this case's folder), $out ($dir/out), $model, $pairs, $recipe, $beir."""

    id: str
    argv: tuple[str, ...]
    expect: str  # regex the error line must match
    files: dict[str, str] = field(default_factory=dict)  # written under $dir before the run ($-templates too)


def train(*extra: str, files: dict | None = None, expect: str, id: str) -> Case:
    return Case(id, ("train", "$recipe", "--output_dir", "$out", *extra), expect, files or {})


def train_yaml(text: str, *, expect: str, id: str, extra: tuple[str, ...] = ()) -> Case:
    """A recipe written out as YAML ($dir/r.yaml) on top of nothing: text must be a whole recipe."""
    return Case(id, ("train", "$dir/r.yaml", "--output_dir", "$out", *extra), expect, {"r.yaml": text})


def data(path: str, content: str, *, expect: str, id: str, columns: str = "{anchor: sentence1, positive: sentence2, "
         "score: score}", extra: str = "") -> Case:
    spec = f"[{{dataset: $dir/{path}, columns: {columns}{extra}}}]"
    return train("--train_data", spec, files={path: content} if content is not None else {}, expect=expect, id=id)


def ev(*extra: str, files: dict | None = None, expect: str, id: str) -> Case:
    return Case(id, ("eval", "--model", "$model", *extra), expect, files or {})


def retrieval_suite(folder: str = "beir") -> str:
    return f"tasks:\n  r:\n    type: retrieval\n    dataset: $dir/{folder}\n"


def beir(corpus: str, queries: str = '{"_id": "q1", "text": "a question"}\n',
         qrels: str = "query-id\tcorpus-id\tscore\nq1\td1\t1\n") -> dict[str, str]:
    return {"beir/corpus.jsonl": corpus, "beir/queries.jsonl": queries, "beir/qrels/test.tsv": qrels,
            "s.yaml": retrieval_suite()}


def mine(*extra: str, files: dict | None = None, data: str = "$dir/beir", expect: str, id: str) -> Case:
    """`mine` of the BEIR folder written by beir() (split test) into $out/mined.jsonl."""
    return Case(id, ("mine", "--model", "$model", "--data", data, "--split", "test", "--output", "$out/mined.jsonl",
                     *extra), expect, files if files is not None else beir(GOOD_CORPUS))


GOOD_CORPUS = '{"_id": "d1", "text": "an answer"}\n{"_id": "d2", "text": "another"}\n'
ROW = '{"sentence1": "a cat", "sentence2": "a dog", "score": 3.0}\n'
WHOLE = ("model_name_or_path: $model\ntrain_data: [{dataset: $pairs, columns: {anchor: sentence1, positive: sentence2,"
         " score: score}}]\neval_tasks: []\nfinal_eval_tasks: []\neval_strategy: 'no'\nsave_strategy: 'no'\n"
         "load_best_model_at_end: false\nreport_to: none\nuse_cpu: true\n")

CASES: dict[str, list[Case]] = {
    "recipe YAML syntax": [
        train_yaml(WHOLE + "train_data: [\n  {dataset: x\n", expect=r"not valid YAML.* line \d+", id="unclosed"),
        train_yaml(WHOLE + "loss: info_nce\n  loss_kwargs: {a: 1}\n", expect=r"not valid YAML.* line \d+",
                   id="bad-indent"),
        train_yaml("- just\n- a list\n", expect="must be a mapping", id="not-mapping"),
        train("--learning_rate", "[1", expect=r"--learning_rate.* not valid YAML", id="override"),
    ],
    "recipe unknown key": [
        train("--learnin_rate", "1e-3", expect=r"unknown key\(s\) \['learnin_rate'\].*learning_rate", id="top"),
        train_yaml(WHOLE + "training: {warmup_stps: 3}\n", expect=r"unknown key\(s\) \['warmup_stps'\]", id="section"),
        train_yaml(WHOLE + "trainig: {max_steps: 1}\n",
                   expect=r"unknown key\(s\) \['trainig'\]", id="section-name"),
        data("d.jsonl", ROW * 4, extra=", splt: train", expect=r"train_data\[0\]: unknown key\(s\) \['splt'\]",
             id="train-data"),
        train("--eval_tasks", "[{name: x, type: sts, dataset: $pairs, splt: train}]",
              expect=r"eval_tasks\[0\].*unknown key\(s\) \['splt'\]", id="eval-task"),
        train("--final_eval_tasks", "[{name: x, type: sts, dataset: $pairs, split: train, colums: {}}]",
              expect=r"final_eval_tasks\[0\].*unknown key\(s\) \['colums'\]", id="final-eval-task"),
        train("--loss", "info_nce", "--loss_kwargs", "{temprature: 0.05}",
              expect=r"loss_kwargs for 'info_nce': unknown key\(s\) \['temprature'\].*temperature", id="loss-kwargs"),
    ],
    "recipe wrong type or range": [
        train("--learning_rate", "abc", expect=r"learning_rate' must be float, got 'abc'", id="lr-abc"),
        train("--per_device_train_batch_size", "0", expect="per_device_train_batch_size must be >= 1, got 0",
              id="batch-0"),
        train("--gradient_accumulation_steps", "0", expect="gradient_accumulation_steps must be >= 1", id="ga-0"),
        train("--learning_rate", "-1", expect="learning_rate must be >= 0", id="lr-negative"),
        train("--num_train_epochs", "-2", expect="num_train_epochs must be > 0", id="epochs-negative"),
        train("--loss", "info_nce", "--loss_kwargs", "{temperature: -0.05}", expect="temperature must be > 0",
              id="temperature-negative"),
        train("--loss", "info_nce", "--loss_kwargs", "{temperature: abc}", expect="temperature must be a number",
              id="temperature-abc"),
        train("--loss", "triplet", "--loss_kwargs", "{margin: -0.5}", expect="margin must be >= 0", id="margin"),
        train("--loss_kwargs", "[1, 2]", expect=r"loss_kwargs' must be dict", id="kwargs-list"),
        train("--nan_policy", "ignore", expect=r"nan_policy must be one of stop, skip", id="nan-policy"),
        train("--output_dir", "$dir/f/run", files={"f": "a file"},
              expect=r"output_dir '.*f/run' cannot be written: '.*f' is a file.*choose another output_dir",
              id="output-dir-under-a-file"),
    ],
    "score_range": [
        data("d.jsonl", ROW * 4, extra=", score_range: [5, 0]", expect=r"score_range must be \[low, high\] with high > low",
             id="inverted"),
        data("d.jsonl", ROW * 4, extra=", score_range: [3, 3]", expect=r"score_range must be \[low, high\]",
             id="degenerate"),
        data("d.jsonl", ROW * 4, extra=", score_range: [0, 1, 5]", expect=r"score_range must be", id="three"),
        data("d.jsonl", ROW * 4, extra=", score_range: [0, 2]", expect=r"score 3.0 in row 0 is outside score_range",
             id="outside"),
    ],
    "filter expression": [
        data("d.jsonl", ROW * 4, extra=", filter: 'score >>= 4'", expect=r"filter 'score >>= 4'.*not valid", id=">>="),
        data("d.jsonl", ROW * 4, extra=", filter: 'score ~ 4'", expect=r"filter 'score ~ 4' is not 'column OP value'",
             id="no-op"),
        data("d.jsonl", ROW * 4, extra=", filter: 'score >= [4'", expect=r"filter 'score >= \[4'.*not valid",
             id="bad-value"),
        data("d.jsonl", ROW * 4, extra=", filter: 'nope >= 4'", expect=r"column\(s\) \['nope'\] for filter",
             id="unknown-column"),
        data("d.jsonl", ROW * 4, extra=", filter: 'sentence1 >= 4'", expect=r"filter 'sentence1 >= 4' compares",
             id="type-mismatch"),
        data("d.jsonl", ROW * 4, extra=", filter: 'score > 4'", expect=r"has no rows.*filter", id="keeps-nothing"),
    ],
    "unknown loss or evaluator type": [
        train("--loss", "no_such_loss", expect="unknown loss 'no_such_loss': choose one of", id="loss"),
        train("--eval_tasks", "[{name: x, type: stss, dataset: $pairs}]", expect=r"type 'stss' is not one of",
              id="eval-task-type"),
        ev("--suite", "$dir/s.yaml", files={"s.yaml": "tasks:\n  x: {type: nope, dataset: stsb}\n"},
           expect=r"task 'x': type 'nope' is not one of", id="suite-task-type"),
        train("--batch_sampler", "shuffled", expect="batch_sampler", id="sampler"),
    ],
    "loss needs a role the data lacks": [
        data("d.jsonl", ROW * 4, columns="{anchor: sentence1, positive: sentence2}",
             expect=r"loss 'cosine_similarity' needs a 'score' column", id="score"),
        train("--loss", "triplet", expect=r"loss 'triplet' needs a 'negative' column", id="negative"),
        train("--loss", "batch_hard_triplet", expect=r"needs a 'label' column", id="label"),
        train("--loss", "info_nce", "--per_device_train_batch_size", "1",
              expect="per_device_train_batch_size must be >= 2", id="in-batch-1"),
    ],
    "data file missing or empty": [
        data("nope.jsonl", None, expect=r"data file '.*nope.jsonl' does not exist", id="missing"),
        data("e.jsonl", "", expect=r"data file '.*e.jsonl' is empty", id="empty"),
        data("e.jsonl", "\n\n", expect=r"data file '.*e.jsonl' (is empty|has no rows)", id="blank-lines"),
        train("--train_data", "[{dataset: $dir/folder, columns: {anchor: sentence1, positive: sentence2, score: score}}]",
              files={"folder/other.jsonl": ROW}, expect=r"split 'train' not found in .*folder",
              id="folder-without-split"),
        data("d.txt", ROW, expect="unsupported type", id="suffix"),
    ],
    "malformed JSON line": [
        data("d.jsonl", ROW + '{"sentence1": "x", "sentence2": "y", "score": 1\n' + ROW,
             expect=r"d.jsonl': line 2 is not valid JSON \(Expecting ','", id="unclosed"),
        data("d.jsonl", ROW * 3 + "not json\n", expect=r"line 4 is not valid JSON", id="garbage"),
        data("d.jsonl", ROW + "[1, 2]\n", expect=r"line 2 is not a JSON object", id="array"),
    ],
    "missing column": [
        data("d.jsonl", '{"sentence1": "a", "sentence2": "b"}\n' * 4, expect=r"column\(s\) \['score'\]",
             id="score"),
        data("d.jsonl", ROW * 4, columns="{anchor: sentence1, positive: text, score: score}",
             expect=r"column\(s\) \['text'\].*available columns", id="text"),
    ],
    "bad score value": [
        data("d.jsonl", ROW * 3 + '{"sentence1": "a", "sentence2": "b", "score": NaN}\n',
             expect=r"score in row 3 is (NaN|not a finite)", id="nan"),
        data("d.jsonl", ROW + '{"sentence1": "a", "sentence2": "b", "score": Infinity}\n',
             expect=r"score in row 1 is (infinite|not a finite)", id="inf"),
        data("d.jsonl", '{"sentence1": "a", "sentence2": "b", "score": "high"}\n' * 2,
             expect=r"score.* not numbers", id="string"),
        data("d.jsonl", ROW + '{"sentence1": "a", "sentence2": "b", "score": "high"}\n',
             expect=r"line 2|row 1|not numbers", id="mixed"),
        data("d.jsonl", ROW + '{"sentence1": "a", "sentence2": "b", "score": null}\n',
             expect=r"score in row 1 is missing", id="null"),
    ],
    "label outside the declared set": [
        train("--loss", "contrastive", "--train_data",
              "[{dataset: $dir/d.jsonl, columns: {anchor: a, positive: b, label: label}, label_map: {good: 1, bad: 0}}]",
              files={"d.jsonl": '{"a": "x", "b": "y", "label": "good"}\n{"a": "x", "b": "z", "label": "maybe"}\n'},
              expect=r"label values \['maybe'\].*no entry in label_map", id="label-map"),
        train("--loss", "contrastive", "--train_data",
              "[{dataset: $dir/d.jsonl, columns: {anchor: a, positive: b, label: label}, label_map: {yes: 1, no: 0}}]",
              files={"d.jsonl": '{"a": "x", "b": "y", "label": "yes"}\n{"a": "x", "b": "z", "label": "no"}\n'},
              expect=r"YAML reads yes/no.*quote", id="label-map-yes-no"),
        train("--loss", "contrastive", "--train_data",
              "[{dataset: $dir/d.jsonl, columns: {anchor: a, positive: b, label: label}}]",
              files={"d.jsonl": '{"a": "x", "b": "y", "label": 1}\n{"a": "x", "b": "z", "label": 2}\n'},
              expect=r"label must lie in \[0.0, 1.0\], got values in \[1.0, 2.0\]", id="binary-loss"),
        ev("--suite", "$dir/s.yaml", files={"s.yaml": "tasks:\n  p: {type: pair_classification, dataset: $dir/p.jsonl}\n",
                                              "p.jsonl": '{"sentence1": "a", "sentence2": "b", "label": 1}\n'
                                                         '{"sentence1": "a", "sentence2": "c", "label": 7}\n'},
           expect=r"label.*7.*0 or 1|labels must be 0/1", id="eval-pair-labels"),
    ],
    "null or empty text": [
        data("d.jsonl", ROW * 2 + '{"sentence1": null, "sentence2": "b", "score": 1}\n',
             expect=r"anchor in row 2 is missing \(null\)", id="null"),
        data("d.jsonl", ROW + '{"sentence1": "  ", "sentence2": "b", "score": 1}\n',
             expect=r"anchor in row 1 is empty", id="blank"),
        data("d.jsonl", '{"sentence1": 5, "sentence2": "b", "score": 1}\n' * 2,
             expect=r"anchor.* not text", id="number"),
        ev("--sts", "$dir/s.jsonl", files={"s.jsonl": '{"sentence1": "a", "sentence2": "b", "score": 1}\n'
                                          '{"sentence1": "a", "sentence2": null, "score": 2}\n'},
           expect=r"sentence2 in row 1 is missing", id="eval-null-text"),
    ],
    "BEIR folder": [
        ev("--suite", "$dir/s.yaml", files=beir(GOOD_CORPUS + '{"_id": "d1", "text": "dup"}\n'),
           expect=r"corpus.jsonl: line 3: duplicate _id 'd1'", id="duplicate-doc"),
        ev("--suite", "$dir/s.yaml", files=beir(GOOD_CORPUS, queries='{"_id": "q1", "text": "a"}\n' * 2),
           expect=r"queries.jsonl: line 2: duplicate _id 'q1'", id="duplicate-query"),
        ev("--suite", "$dir/s.yaml", files=beir(GOOD_CORPUS, qrels="q1\td9\t1\n"),
           expect=r"qrels name 1 document id\(s\) missing from the corpus \(e.g. 'd9'\)", id="qrels-unknown-doc"),
        ev("--suite", "$dir/s.yaml", files=beir(GOOD_CORPUS, qrels="q7\td1\t1\n"),
           expect=r"qrels name 1 query id\(s\) missing from the queries \(e.g. 'q7'\)", id="qrels-unknown-query"),
        ev("--suite", "$dir/s.yaml", files=beir('{"_id": "d1", "title": "t"}\n'),
           expect=r"no 'text' field", id="corpus-without-text"),
        ev("--suite", "$dir/s.yaml", files=beir('{"_id": "d1", "text": null}\n'),
           expect=r"document in row 0 is missing \(null\)", id="corpus-null-text"),
        ev("--suite", "$dir/s.yaml", files={"beir/corpus.jsonl": GOOD_CORPUS, "s.yaml": retrieval_suite()},
           expect=r"has no queries.jsonl", id="missing-queries"),
        ev("--suite", "$dir/s.yaml", files=beir(GOOD_CORPUS, qrels="q1\td1\n"),
           expect=r"line 1 has 2 fields", id="qrels-fields"),
    ],
    "model path": [
        train("--model_name_or_path", "$dir/nope", expect=r"model path '.*nope' is not a model folder: it does not exist",
              id="missing"),
        train("--model_name_or_path", "$dir/m", files={"m/readme.txt": "x"}, expect=r"not a model folder",
              id="not-a-model"),
        train("--model_name_or_path", "$dir/m", files={"m/config.json": "{not json"},
              expect=r"could not load model .*config.json' is not a valid JSON file", id="corrupt-config"),
        ev("--model", "$dir/nope", "--sts", "$pairs", expect=r"model.*nope", id="eval-missing"),
    ],
    "tokenizer or checkpoint mismatch": [
        # tokenizer with a bigger vocabulary than the model's embedding table (files arranged by the fixture)
        train("--model_name_or_path", "$mismatched", expect=r"tokenizer.*vocab.*embedding", id="tokenizer"),
        train("--resume_from_checkpoint", "true", "--output_dir", "$other_run",
              expect=r"checkpoint .* does not match the model", id="resume-other-model"),
        train("--resume_from_checkpoint", "$dir/nope", expect=r"checkpoint.*nope.*(does not exist|not found)",
              id="resume-missing"),
        train("--resume_from_checkpoint", "true", expect=r"no checkpoint-N folder", id="resume-none"),
    ],
    "eval input": [
        ev("--sts", "$dir/nope.jsonl", expect="does not exist", id="missing-file"),
        ev("--sts", "$dir/e.jsonl", files={"e.jsonl": ""}, expect="is empty", id="empty-file"),
        ev("--suite", "$dir/nope.yaml", expect="suite file .* does not exist", id="missing-suite"),
        ev("--suite", "$dir/s.yaml", files={"s.yaml": "tasks: [\n"}, expect=r"not valid YAML.*line \d+",
           id="suite-yaml"),
        ev("--sts", "$pairs", "--tasks", "nope", expect=r"task\(s\) \['nope'\] are not in the suite", id="task-name"),
        ev("--sts", "$pairs", "--output", "$dir/f/out.json", files={"f": "a file"},
           expect=r"cannot write --output", id="output-unwritable"),
        ev("--sts", "$pairs", "--plot", "$dir/f", files={"f": "a file"}, expect=r"cannot write --plot",
           id="plot-unwritable"),
        ev("--sts", "$pairs", "--batch-size", "0", expect="--batch-size must be >= 1", id="batch-size"),
    ],
    "mine data": [
        mine(data="$dir/nope", files={}, expect=r"--data '.*nope' does not exist: give a BEIR folder", id="missing"),
        mine(files={"beir/queries.jsonl": '{"_id": "q1", "text": "a"}\n', "beir/qrels/test.tsv": "q1\td1\t1\n"},
             expect=r"is not a BEIR folder \(no corpus.jsonl\) and has no pairs file test.jsonl", id="not-beir"),
        mine("--split", "dev", expect=r"has no qrels/dev.tsv", id="unknown-split"),
        mine(files=beir(GOOD_CORPUS, qrels="q1\td9\t1\n"),
             expect=r"qrels name 1 document id\(s\) that are not in the corpus \(e.g. 'd9'\)", id="qrels-unknown-doc"),
        mine(files=beir(GOOD_CORPUS, qrels="q7\td1\t1\n"),
             expect=r"qrels name 1 query id\(s\) that are not in the queries \(e.g. 'q7'\)", id="qrels-unknown-query"),
        mine(files=beir('{"_id": "d1", "title": "t"}\n'), expect=r"corpus.jsonl: line 1 has no _id / text",
             id="corpus-without-text"),
        mine(files=beir('{"_id": "d1", "text": null}\n' + GOOD_CORPUS.replace("d1", "d3")),
             expect=r"document 'd1' \(row 0\) has no text", id="corpus-null-text"),
        mine(files=beir(GOOD_CORPUS + '{"_id": "d3", "title": "", "text": " "}\n'),
             expect=r"document 'd3' has an empty text", id="corpus-empty-text"),
        mine(files=beir(GOOD_CORPUS + '{"_id": "d1", "text": "dup"}\n'),
             expect=r"document id 'd1' repeats \(rows 0 and 2\)", id="duplicate-doc"),
        mine(files=beir(GOOD_CORPUS, queries='{"_id": "q1", "text": "a"}\n' * 2),
             expect=r"queries.jsonl: line 2: duplicate _id 'q1'", id="duplicate-query"),
        mine(data="$dir/p.jsonl", files={"p.jsonl": ROW * 2}, expect=r"no column\(s\) \['query', 'positive'\]",
             id="pairs-columns"),
    ],
    "mine options": [
        mine("--num-negatives", "9", "--range-max", "5",
             expect=r"num_negatives=9 exceeds the rank range \[0, 5\).*raise --range-max", id="num-negatives"),
        mine("--range-min", "5", "--range-max", "5", expect=r"0 <= range_min < range_max", id="range-empty"),
        mine("--range-min", "8", "--range-max", "5", expect=r"0 <= range_min < range_max", id="range-inverted"),
        mine("--absolute-margin", "-0.1", expect=r"absolute_margin must be >= 0", id="absolute-margin"),
        mine("--relative-margin", "-0.05", expect=r"relative_margin must be >= 0", id="relative-margin"),
        mine("--num-negatives", "0", expect=r"num_negatives must be >= 1", id="num-negatives-0"),
        mine("--batch-size", "0", expect=r"batch_size and corpus_chunk_size must be >= 1", id="batch-size"),
    ],
    "mine output": [
        Case("parent-is-file", ("mine", "--model", "$model", "--data", "$dir/beir", "--split", "test", "--output",
                                "$dir/f/mined.jsonl"), r"cannot write --output '.*f/mined.jsonl': '.*f' is not a writable",
             {**beir(GOOD_CORPUS), "f": "a file"}),
        Case("is-a-folder", ("mine", "--model", "$model", "--data", "$dir/beir", "--split", "test", "--output", "$dir/o"),
             r"cannot write --output '.*o': it exists and is a folder: choose a file path",
             {**beir(GOOD_CORPUS), "o/keep.txt": "x"}),
        mine(files={**beir(GOOD_CORPUS), "out/mined.jsonl": "earlier run\n"},
             expect=r"--output '.*mined.jsonl' exists: pass --overwrite", id="exists"),
    ],
    "push input": [
        Case("not-a-directory", ("push", "$dir/nope", "--repo-id", "me/m", "--dry-run"), "is not a directory"),
        Case("not-trained-output", ("push", "$dir/o", "--repo-id", "me/m", "--dry-run"),
             "not a complete sentence-transformers model", {"o/notes.txt": "x"}),
        Case("repo-id", ("push", "$model", "--repo-id", "me/bad name", "--dry-run"), "invalid --repo-id"),
        Case("repo-id-dashes", ("push", "$model", "--repo-id", "me--x/y", "--dry-run"), "invalid --repo-id"),
    ],
}

ALL = [pytest.param(cls, case, id=f"{cls}:{case.id}") for cls, cases in CASES.items() for case in cases]


# ------------------------------------------------------------------------------------------- the world
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Shared good inputs: a tiny model, a small pairs file, a whole recipe, and two prepared bad models."""
    root = tmp_path_factory.mktemp("world")
    model = root / "model"
    make_tiny_encoder().save_pretrained(model)
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(f'{{"sentence1": "cat {i}", "sentence2": "dog {i}", "score": {(i % 5) / 4}}}\n'
                             for i in range(8)))
    values = {"model": str(model), "pairs": str(pairs)}
    recipe = root / "recipe.yaml"
    recipe.write_text(Template(WHOLE).substitute(values))
    values["recipe"] = str(recipe)
    values["mismatched"] = str(_model_with_small_vocab(root / "mismatched"))
    values["other_run"] = str(_run_with_checkpoint_of_another_model(root / "other-run"))
    return values


def _model_with_small_vocab(path: Path) -> Path:
    from transformers import BertConfig, BertModel

    encoder = make_tiny_encoder()
    small = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128))
    encoder.model = small
    encoder.save_pretrained(path)
    return path


def _run_with_checkpoint_of_another_model(path: Path) -> Path:
    make_tiny_encoder(hidden=16).save_pretrained(path / "checkpoint-1")
    return path


def materialize(case: Case, world: dict[str, str], folder: Path) -> list[str]:
    values = {**world, "dir": str(folder), "out": str(folder / "out")}
    for name, content in case.files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(content).safe_substitute(values))
    return [Template(arg).safe_substitute(values) for arg in case.argv]


def snapshot(*folders: str | Path) -> dict[str, tuple[int, int]]:
    """Every path with its size and mtime: a new, removed or rewritten file changes it."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders if Path(folder).exists()
            for p in Path(folder).rglob("*")}


def check_outcome(code: int, err: str, case: Case) -> None:
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}\n{err}"
    assert len(errors) == 1, err
    assert re.search(case.expect, errors[0]), errors[0]
    assert len(errors[0]) < 600, "error line too long to be read"


def watched(world: dict[str, str], folder: Path) -> list[str | Path]:
    return [folder, world["model"], world["other_run"]]


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """train() calls logging.basicConfig, binding a handler to this test's captured stderr: drop it after."""
    import logging

    handlers = list(logging.getLogger().handlers)
    yield
    logging.getLogger().handlers[:] = handlers


@pytest.mark.parametrize("cls,case", ALL)
def test_bad_input_in_process(cls, case, world, tmp_path, capsys):
    from nlp_contrastive.cli import main

    argv = materialize(case, world, tmp_path)
    before = snapshot(*watched(world, tmp_path))
    code = main(argv)
    err = capsys.readouterr().err
    check_outcome(code, err, case)
    assert snapshot(*watched(world, tmp_path)) == before, "files were written"


# ----------------------------------------------------------------------------- one real process per class
@pytest.fixture(scope="module")
def subprocess_runs(world, tmp_path_factory):
    """Run the first case of every class as `python -m nlp_contrastive.cli ...`, two at a time (one per core:
    more only thrash, each start imports torch and transformers)."""
    from concurrent.futures import ThreadPoolExecutor

    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def run(case: Case):
        folder = tmp_path_factory.mktemp("proc")
        argv = materialize(case, world, folder)
        before = snapshot(*watched(world, folder))
        proc = subprocess.run([sys.executable, "-m", "nlp_contrastive.cli", *argv], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=600)
        return proc, folder, before

    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {cls: pool.submit(run, cases[0]) for cls, cases in CASES.items()}


@pytest.mark.slow  # ~7 s of CPU per interpreter start (torch, transformers, scipy): 21 of them
@pytest.mark.parametrize("cls", list(CASES))
def test_bad_input_as_subprocess(cls, world, subprocess_runs):
    proc, folder, before = subprocess_runs[cls].result()
    check_outcome(proc.returncode, proc.stderr, CASES[cls][0])
    assert snapshot(*watched(world, folder)) == before, "files were written"
