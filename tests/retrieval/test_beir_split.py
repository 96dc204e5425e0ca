"""`nlp-contrastive beir-split`: the dev rule reproduced by hand, rows kept byte for byte, links not copies,
nothing half-written, bad input in one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nlp_contrastive.cli import main
from nlp_contrastive.evaluation.retrieval_data import load_beir_folder


def write_folder(root, newline="\r\n", header=True, queries=20):
    """A BEIR folder: query i judged relevant to doc i (and, for even i, doc i+1); ids not in numeric order."""
    (root / "qrels").mkdir(parents=True)
    ids = [f"{i * 7 % queries}" for i in range(queries)]  # first-appearance order differs from the sorted one
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n"
                                               for i in range(queries + 1)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"query {q}"}) + "\n" for q in ids))
    rows = []
    for q in ids:
        rows.append(f"{q}\td{q}\t1")
        if int(q) % 2 == 0:
            rows.append(f"{q}\td{int(q) + 1}\t1")
    lines = (["query-id\tcorpus-id\tscore"] if header else []) + rows
    (root / "qrels" / "train.tsv").write_bytes(newline.join(lines + [""]).encode())
    (root / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\n0\td3\t1\n")
    return root


@pytest.mark.parametrize("newline,header", [("\r\n", True), ("\n", False)])
def test_split_follows_the_rule_and_keeps_rows_as_they_were(tmp_path, newline, header):
    data = write_folder(tmp_path / "beir", newline, header)
    assert main(["beir-split", "--data", str(data), "--output", str(tmp_path / "out"), "--dev-fraction", "0.25",
                 "--seed", "3"]) == 0
    out = tmp_path / "out"
    source = (data / "qrels" / "train.tsv").read_bytes().splitlines(keepends=True)
    head = source[:1] if header else []
    body = source[1:] if header else source
    ids = sorted({line.split(b"\t")[0].decode() for line in body})
    perm = np.random.default_rng(3).permutation(len(ids))
    dev = {ids[i] for i in perm[:round(len(ids) * 0.25)]}
    assert len(dev) == 5
    assert (out / "qrels" / "dev.tsv").read_bytes() == b"".join(
        head + [line for line in body if line.split(b"\t")[0].decode() in dev])
    assert (out / "qrels" / "train.tsv").read_bytes() == b"".join(
        head + [line for line in body if line.split(b"\t")[0].decode() not in dev])
    assert (out / "qrels" / "test.tsv").read_bytes() == (data / "qrels" / "test.tsv").read_bytes()
    for name in ("corpus.jsonl", "queries.jsonl"):
        assert (out / name).is_symlink() and not os.path.isabs(os.readlink(out / name))
        assert (out / name).resolve() == (data / name).resolve()
    record = json.loads((out / "split.json").read_text())
    assert (record["dev_queries"], record["train_queries"], record["seed"], record["dev_fraction"]) == (5, 15, 3, 0.25)
    assert record["dev_query_ids"] == sorted(dev)
    _, _, dev_qrels = load_beir_folder(out, "dev")  # the loaders read the result
    _, _, train_qrels = load_beir_folder(out, "train")
    assert set(dev_qrels) == dev and not set(train_qrels) & dev and len(train_qrels) == 15


def test_same_seed_same_split_and_overwrite_replaces(tmp_path, capsys):
    data = write_folder(tmp_path / "beir")
    out = tmp_path / "nested" / "out"
    assert main(["beir-split", "--data", str(data), "--output", str(out)]) == 0
    first = (out / "qrels" / "dev.tsv").read_bytes()
    assert main(["beir-split", "--data", str(data), "--output", str(out)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert main(["beir-split", "--data", str(data), "--output", str(out), "--overwrite"]) == 0
    assert (out / "qrels" / "dev.tsv").read_bytes() == first
    assert main(["beir-split", "--data", str(data), "--output", str(out), "--overwrite", "--seed", "1"]) == 0
    assert (out / "qrels" / "dev.tsv").read_bytes() != first
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no staging or old folder left behind


@pytest.mark.parametrize("args,message", [
    (["--dev-fraction", "0"], "between 0 and 1"),
    (["--dev-fraction", "1.5"], "between 0 and 1"),
    (["--dev-fraction", "0.01"], "gives 0 dev queries"),
    (["--dev-fraction", "0.99"], "leaving no train query"),
    (["--from-split", "validation"], "has no qrels/validation.tsv"),
    (["--output", "$data/inside"], "overlaps --data"),
    (["--output", "$tmp"], "overlaps --data"),
    (["--data", "$tmp/missing"], "is not a BEIR folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    data = write_folder(tmp_path / "beir")
    given = dict(zip(args[::2], (a.replace("$data", str(data)).replace("$tmp", str(tmp_path)) for a in args[1::2]),
                     strict=True))
    flags = {"--data": str(data), "--output": str(tmp_path / "out"), **given}
    argv = ["beir-split", *(x for pair in flags.items() for x in pair)]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in data.iterdir()) == ["corpus.jsonl", "qrels", "queries.jsonl"]


def test_folder_without_train_qrels_is_refused(tmp_path, capsys):
    data = write_folder(tmp_path / "beir")
    (data / "qrels" / "train.tsv").unlink()
    assert main(["beir-split", "--data", str(data), "--output", str(tmp_path / "out")]) == 2
    assert "has no qrels/train.tsv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
