"""A BEIR folder as training data: judged pairs as rows, and a query's other positives never its negatives."""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch

from nlp_contrastive.data import loading, train_data
from nlp_contrastive.data.batch import Batch, BatchCollator
from nlp_contrastive.losses import InfoNCELoss
from nlp_contrastive.train import main, train
from tests.conftest import REPO_ROOT, make_tiny_encoder
from tests.test_trainer import tiny_overrides

INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")
CORPUS = {"d1": ("Vitamin D", "Vitamin D lowers the risk of fractures."),
          "d2": ("Bones", "Calcium and vitamin D keep bones strong."),
          "d3": ("Sleep", "Sleep deprivation impairs memory."),
          "d4": ("Coffee", "Caffeine improves alertness.")}
QUERIES = {"q1": "Vitamin D protects bones.", "q2": "Calcium helps bones.", "q3": "Lack of sleep hurts memory.",
           "q4": "Coffee keeps you awake."}
# q1 has two relevant documents; d2 is also relevant to q2; d4's judgment has relevance 0 (not a pair).
QRELS = [("q1", "d1", 1), ("q1", "d2", 2), ("q2", "d2", 1), ("q3", "d3", 1), ("q4", "d4", 0), ("q4", "d3", 1)]


def write_beir(folder, newline="\r\n", qrels=QRELS):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                                 for i, (t, x) in CORPUS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / "train.tsv").write_bytes(newline.join(lines + [""]).encode())
    return folder


SPEC = {"split": "train", "columns": {"anchor": "query", "positive": "positive", "known_positives": "known_positives"}}


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_beir_folder_gives_one_row_per_relevant_pair_with_all_known_positives(tmp_path, newline):
    folder = write_beir(tmp_path / "beir", newline)
    ds = train_data.build_train_dataset([{"dataset": str(folder), **SPEC}])
    rows = sorted(zip(ds["anchor"], ds["positive"], ds["known_positives"], strict=True))
    doc = {i: f"{t} {x}" for i, (t, x) in CORPUS.items()}  # MTEB's document text: title + " " + text
    assert rows == sorted([
        (QUERIES["q1"], doc["d1"], [doc["d1"], doc["d2"]]), (QUERIES["q1"], doc["d2"], [doc["d1"], doc["d2"]]),
        (QUERIES["q2"], doc["d2"], [doc["d2"]]), (QUERIES["q3"], doc["d3"], [doc["d3"]]),
        (QUERIES["q4"], doc["d3"], [doc["d3"]]),
    ])


def test_known_positives_are_masked_in_the_loss_the_trainer_computes(tmp_path):
    """Rows (q1, d1) and (q2, d2) in one batch: d2 is relevant to q1 too, so it must not be q1's negative."""
    encoder = make_tiny_encoder()
    doc = {i: f"{t} {x}" for i, (t, x) in CORPUS.items()}
    texts = {"anchor": [QUERIES["q1"], QUERIES["q2"], QUERIES["q3"]], "positive": [doc["d1"], doc["d2"], doc["d3"]],
             "known_positives": [[doc["d1"], doc["d2"]], [doc["d2"]], [doc["d3"]]]}
    ds = loading.tokenize_roles(datasets.Dataset.from_dict(texts), encoder.tokenizer, 64)
    batch = Batch.from_inputs(BatchCollator(0)(ds.to_list()))
    loss = InfoNCELoss(temperature=0.5)
    with torch.no_grad():
        embeddings = batch.embed(encoder)
        value = loss(**batch.loss_kwargs(embeddings, loss))
        a = torch.nn.functional.normalize(embeddings["anchor"], dim=-1)
        p = torch.nn.functional.normalize(embeddings["positive"], dim=-1)
        sims = (a @ p.T / 0.5).tolist()
    # Naive: row 0 (q1) may only compare d1 (its target) with d3; d2 is one of its known positives.
    candidates = [[0, 2], [0, 1, 2], [0, 1, 2]]
    expected = sum(-sims[i][i] + math.log(sum(math.exp(sims[i][j]) for j in candidates[i])) for i in range(3)) / 3
    assert value.item() == pytest.approx(expected, rel=1e-5)
    unmasked = sum(-sims[i][i] + math.log(sum(math.exp(s) for s in sims[i])) for i in range(3)) / 3
    assert abs(unmasked - expected) > 1e-4  # the mask changed the loss: the test can tell


def test_beir_folder_trains_through_the_cli(tmp_path, tiny_model_dir):
    folder = write_beir(tmp_path / "beir")
    source = json.dumps([{"dataset": str(folder), **SPEC}])
    overrides = tiny_overrides(str(tiny_model_dir), tmp_path / "out", "--train_data", source,
                               "--batch_sampler", "no_duplicates", "--per_device_train_batch_size", "2",
                               "--max_steps", "2")
    assert train(INFONCE, overrides) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("qrels,message", [
    ([("q1", "d9", 1)], "not in the corpus"),
    ([("q9", "d1", 1)], "not in the queries"),
    ([("q4", "d4", 0)], "no query has a relevant document"),
])
def test_bad_beir_training_folders_end_in_one_line(tmp_path, tiny_model_dir, capsys, qrels, message):
    folder = write_beir(tmp_path / "beir", qrels=qrels)
    source = json.dumps([{"dataset": str(folder), **SPEC}])
    code = main([INFONCE, *tiny_overrides(str(tiny_model_dir), tmp_path / "out", "--train_data", source)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()
