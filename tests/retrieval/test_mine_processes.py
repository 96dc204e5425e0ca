"""`nlp-contrastive mine` end to end: 2 processes write the same bytes as 1; a killed run resumes to the same bytes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from nlp_contrastive import cli
from nlp_contrastive.retrieval import embeddings
from tests.conftest import REPO_ROOT, TWO_PROCESSES, assert_same_lines


@pytest.fixture(scope="module")
def scifact_slice(data_dir, tmp_path_factory) -> Path:
    """1,100 SciFact abstracts (every train positive among them first) and the train claims they answer."""
    source, folder = data_dir / "scifact", tmp_path_factory.mktemp("scifact-slice")
    qrels = [line.split("\t")[:2] for line in (source / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    rows = [json.loads(line) for line in (source / "corpus.jsonl").read_text().splitlines()]
    positives = {d for _, d in qrels}
    keep = [r for r in rows if str(r["_id"]) in positives][:400]
    keep += [r for r in rows if str(r["_id"]) not in positives][:1100 - len(keep)]
    kept = {str(r["_id"]) for r in keep}
    (folder / "qrels").mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    (folder / "queries.jsonl").write_text((source / "queries.jsonl").read_text())
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, d in qrels if d in kept))
    return folder


def _args(folder, model, out, cache, *extra):
    return ["mine", "--model", str(model), "--data", str(folder), "--output", str(out), "--cache-dir", str(cache),
            "--corpus-chunk-size", "400", "--num-negatives", "2", "--range-min", "1", "--range-max", "10",
            "--batch-size", "32", *extra]


def test_two_processes_write_the_same_file_as_one(tmp_path, scifact_slice, tiny_model_dir):
    assert cli.main(_args(scifact_slice, tiny_model_dir, tmp_path / "one.jsonl", tmp_path / "cache1")) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([*TWO_PROCESSES, "-m", "nlp_contrastive.cli",
                           *_args(scifact_slice, tiny_model_dir, tmp_path / "two.jsonl", tmp_path / "cache2")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("wrote ") == 1, done.stderr[-4000:]  # rank 0 writes and reports
    assert_same_lines(tmp_path / "two.jsonl", tmp_path / "one.jsonl")
    # the 3 chunks were split over the processes (2 + 1) into one shared folder
    assert len(list((tmp_path / "cache2").glob("*/shard-*.npz"))) == 3


def test_a_run_killed_mid_encode_resumes_to_the_same_bytes(tmp_path, scifact_slice, tiny_model_dir, monkeypatch):
    assert cli.main(_args(scifact_slice, tiny_model_dir, tmp_path / "straight.jsonl", tmp_path / "cache1")) == 0
    real, encoded = embeddings.encode_chunk, []

    def killed_at_the_second_chunk(encoder, corpus, rows, *args):
        if len(encoded) == 1:
            raise KeyboardInterrupt
        encoded.append(rows.start)
        return real(encoder, corpus, rows, *args)

    monkeypatch.setattr(embeddings, "encode_chunk", killed_at_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_args(scifact_slice, tiny_model_dir, tmp_path / "resumed.jsonl", tmp_path / "cache2"))
    assert not (tmp_path / "resumed.jsonl").exists() and encoded == [0]

    def counted(encoder, corpus, rows, *args):
        encoded.append(rows.start)
        return real(encoder, corpus, rows, *args)

    monkeypatch.setattr(embeddings, "encode_chunk", counted)
    assert cli.main(_args(scifact_slice, tiny_model_dir, tmp_path / "resumed.jsonl", tmp_path / "cache2")) == 0
    assert encoded == [0, 400, 800]  # the rerun encoded only the two unfinished chunks
    assert_same_lines(tmp_path / "resumed.jsonl", tmp_path / "straight.jsonl")


def test_an_index_faiss_does_not_have_is_one_line_and_exit_2(tmp_path, scifact_slice, tiny_model_dir, capsys):
    code = cli.main(_args(scifact_slice, tiny_model_dir, tmp_path / "o.jsonl", tmp_path / "cache", "--index",
                          "IVF8,Bogus"))
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("nlp-contrastive mine: error: faiss has no index "
                                                                   "'IVF8,Bogus'")
    assert not list((tmp_path / "cache").glob("*/shard-*"))  # refused before encoding the corpus
    assert not (tmp_path / "o.jsonl").exists()


def test_more_processes_than_chunks_exit_2_on_every_rank(tmp_path, scifact_slice, tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([*TWO_PROCESSES, "-m", "nlp_contrastive.cli",
                           *_args(scifact_slice, tiny_model_dir, tmp_path / "o.jsonl", tmp_path / "cache",
                                  "--corpus-chunk-size", "5000")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert done.stderr.count("error: 2 processes but only 1 corpus chunk(s) of 5000 documents") == 2
    assert not (tmp_path / "o.jsonl").exists()


def test_evaluating_the_mining_model_on_the_same_corpus_reads_the_mined_embeddings(tmp_path, scifact_slice,
                                                                                      tiny_model_dir, monkeypatch):
    """`make scifact`'s sharing: mine with --cache-dir, then evaluate the same model with the same cache_dir."""
    from nlp_contrastive.evaluation import RetrievalEvaluator
    from nlp_contrastive.evaluation.retrieval_data import load_beir_folder
    from nlp_contrastive.modeling import Encoder

    assert cli.main(_args(scifact_slice, tiny_model_dir, tmp_path / "o.jsonl", tmp_path / "cache")) == 0
    encoded = []
    real = embeddings.encode_chunk
    monkeypatch.setattr(embeddings, "encode_chunk", lambda *a: encoded.append(1) or real(*a))
    evaluator = RetrievalEvaluator(*load_beir_folder(scifact_slice, "train"), cache_dir=tmp_path / "cache",
                                   corpus_chunk_size=400)
    scores = evaluator(Encoder.from_pretrained(str(tiny_model_dir)))
    assert encoded == [] and 0 <= scores["ndcg_at_10"] <= 1
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one set of shards for both
