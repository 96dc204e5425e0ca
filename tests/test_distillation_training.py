"""Distillation through the trainer: MSE to a teacher's embeddings (computed once, cached) and MarginMSE with
teacher scores from a mined-style file; a layer-dropped student; every bad input as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nlp_contrastive import teacher as teacher_module
from nlp_contrastive.data.batch import BatchCollator, token_column
from nlp_contrastive.modeling import Encoder
from nlp_contrastive.train import main, train
from tests.conftest import REPO_ROOT, make_tiny_encoder
from tests.test_trainer import tiny_overrides

RECIPE = str(REPO_ROOT / "recipes" / "stsb-distill.yaml")
SENTENCES = [f"sentence number {i} about {w}" for i, w in
             enumerate(["cats", "dogs", "music", "rain", "trains", "bread", "chess", "rivers"] * 3)]


@pytest.fixture
def teacher_cache(tmp_path, monkeypatch):
    folder = tmp_path / "teacher-cache"
    monkeypatch.setenv(teacher_module.TEACHER_CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def teacher_dir(tmp_path):
    path = tmp_path / "teacher"
    make_tiny_encoder(seed=1).save_pretrained(path)
    return path


@pytest.fixture
def teacher_calls(monkeypatch):
    """Every time the teacher model is loaded to encode texts."""
    calls = []
    load = teacher_module.load_teacher

    def counting(name, max_seq_length):
        calls.append(name)
        return load(name, max_seq_length)

    monkeypatch.setattr(teacher_module, "load_teacher", counting)
    return calls


def sentences_file(tmp_path):
    path = tmp_path / "sentences.jsonl"
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    return path


def distill_overrides(student, teacher, out, data, *extra):
    return tiny_overrides(str(student), out, "--teacher", str(teacher), "--max_steps", "12",
                          "--learning_rate", "3e-3", "--bf16", "false", "--keep_layers", "null",
                          "--train_data", f"[{{dataset: {data}, columns: {{anchor: text}}}}]", *extra)


def mse_to_teacher(student: Encoder, teacher: Encoder) -> float:
    return float(((student.encode(SENTENCES) - teacher.encode(SENTENCES)) ** 2).mean())


@pytest.mark.parametrize("cached", ["false", "true"])
def test_mse_distillation_moves_the_student_onto_the_teacher(tiny_model_dir, teacher_dir, tmp_path, teacher_cache,
                                                             teacher_calls, cached):
    teacher = Encoder.from_pretrained(str(teacher_dir))
    before = mse_to_teacher(Encoder.from_pretrained(str(tiny_model_dir)), teacher)
    out = tmp_path / "run"
    assert main([RECIPE, *distill_overrides(tiny_model_dir, teacher_dir, out, sentences_file(tmp_path),
                                            "--cached", cached, "--cache_mini_batch_size", "3")]) == 0
    after = mse_to_teacher(Encoder.from_pretrained(str(out)), teacher)
    assert after < 0.5 * before
    assert teacher_calls == [str(teacher_dir)]


def test_teacher_embeddings_are_computed_once_and_reused_by_the_next_run(tiny_model_dir, teacher_dir, tmp_path,
                                                                       teacher_cache, teacher_calls, monkeypatch):
    data = sentences_file(tmp_path)
    batches = []
    collate = BatchCollator.__call__
    monkeypatch.setattr(BatchCollator, "__call__", lambda self, rows: batches.append(collate(self, rows)) or batches[-1])
    assert main([RECIPE, *distill_overrides(tiny_model_dir, teacher_dir, tmp_path / "one", data,
                                            "--max_steps", "-1", "--num_train_epochs", "2")]) == 0
    assert len(teacher_calls) == 1  # two epochs, one teacher pass
    # The targets the loss saw are the teacher's embeddings of those anchors.
    teacher = Encoder.from_pretrained(str(teacher_dir))
    first = batches[0]
    texts = Encoder.from_pretrained(str(tiny_model_dir)).tokenizer.batch_decode(
        first["features"]["anchor"]["input_ids"], skip_special_tokens=True)
    np.testing.assert_allclose(first["teacher_embedding"].numpy(), teacher.encode(texts, bf16=None), atol=1e-5)  # auto, as add_teacher_embeddings
    assert main([RECIPE, *distill_overrides(tiny_model_dir, teacher_dir, tmp_path / "two", data)]) == 0
    assert len(teacher_calls) == 1  # second run: read from the cache, the teacher not even loaded
    assert len(list(teacher_cache.glob("teacher-*.arrow"))) == 1
    # Other texts (here: fewer rows) are other targets: computed again.
    assert main([RECIPE, *distill_overrides(tiny_model_dir, teacher_dir, tmp_path / "three", data,
                                            "--max_train_rows", "20")]) == 0
    assert len(teacher_calls) == 2


def mined_file(tmp_path, bad_row: int | None = None):
    """Rows as `nlp-contrastive mine` writes them (negatives format), with the miner's cosine scores."""
    rows = []
    for i in range(16):
        scores = [0.5 - 0.1 * k for k in range(3)]
        if i == bad_row:
            scores = scores[:2]
        rows.append({"query_id": str(i), "query": f"question {i} about {SENTENCES[i]}", "positive": SENTENCES[i],
                     "positive_score": 0.9, "negatives": [SENTENCES[(i + k + 1) % 24] for k in range(3)],
                     "negative_scores": scores, "known_positives": [SENTENCES[i]]})
    path = tmp_path / "mined.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def margin_overrides(model, out, data, *extra):
    source = (f"[{{dataset: {data}, columns: {{anchor: query, positive: positive, negatives: negatives}}, "
              "teacher_scores: [positive_score, negative_scores]}]")
    return tiny_overrides(str(model), out, "--loss", "margin_mse", "--loss_kwargs", "{similarity: cosine}",
                          "--train_data", source, "--max_steps", "10", "--learning_rate", "3e-3", "--bf16", "false",
                          *extra)


@pytest.mark.parametrize("cached", ["false", "true"])
def test_margin_mse_with_mined_scores_trains(tiny_model_dir, tmp_path, cached, monkeypatch):
    seen = []
    from nlp_contrastive.losses import distillation

    margin_mse = distillation.margin_mse
    monkeypatch.setattr(distillation, "margin_mse",
                        lambda *a, **k: seen.append(k["teacher_scores"]) or margin_mse(*a, **k))
    out = tmp_path / "run"
    assert train(None, margin_overrides(tiny_model_dir, out, mined_file(tmp_path), "--cached", cached,
                                        "--cache_mini_batch_size", "3")) == 0
    assert seen and all(torch.allclose(s, torch.tensor([0.9, 0.5, 0.4, 0.3]).expand_as(s)) for s in seen)
    losses = [e["loss"] for e in json.loads((out / "training_run.json").read_text())["log_history"] if "loss" in e]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_collator_pads_teacher_scores_of_rows_with_fewer_negatives():
    rows = [{token_column("anchor"): [1, 2], token_column("negatives"): [[3], [4]], "teacher_scores": [0.9, 0.2, 0.1]},
            {token_column("anchor"): [5], token_column("negatives"): [[6]], "teacher_scores": [0.7, 0.3]}]
    batch = BatchCollator(0)(rows)
    assert torch.equal(batch["teacher_scores"], torch.tensor([[0.9, 0.2, 0.1], [0.7, 0.3, 0.0]]))
    assert batch["negatives_index"].tolist() == [[0, 1], [2, -1]]


def one_error(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def test_scores_of_the_wrong_length_name_the_row(tiny_model_dir, tmp_path, capsys):
    assert main(margin_overrides(tiny_model_dir, tmp_path / "o", mined_file(tmp_path, bad_row=5))) == 2
    error = one_error(capsys)
    assert "row 5 has 3 teacher_scores but 1 + its negatives = 4" in error


def test_margin_mse_without_scores_fails_at_load(tiny_model_dir, tmp_path, capsys):
    source = f"[{{dataset: {mined_file(tmp_path)}, columns: {{anchor: query, positive: positive, negatives: negatives}}}}]"
    assert main(margin_overrides(tiny_model_dir, tmp_path / "o", "x", "--train_data", source)) == 2
    error = one_error(capsys)
    assert "needs a 'teacher_scores' column" in error and "teacher_scores: [positive_score, negative_scores]" in error


def test_missing_teacher_fails_at_load(tiny_model_dir, tmp_path, capsys):
    assert main([RECIPE, *distill_overrides(tiny_model_dir, "x", tmp_path / "o", sentences_file(tmp_path),
                                            "--teacher", "null")]) == 2
    assert "needs a 'teacher_embedding' column" in one_error(capsys)
    assert main([RECIPE, *distill_overrides(tiny_model_dir, "x", tmp_path / "o", sentences_file(tmp_path),
                                            "--loss", "info_nce")]) == 2
    assert "teacher is set but loss 'info_nce' does not use teacher embeddings" in one_error(capsys)


def test_teacher_of_another_size_fails_naming_both_sizes_before_encoding(tiny_model_dir, tmp_path, teacher_cache,
                                                                        teacher_calls, capsys):
    wide = tmp_path / "wide-teacher"
    make_tiny_encoder(hidden=48).save_pretrained(wide)
    assert main([RECIPE, *distill_overrides(tiny_model_dir, wide, tmp_path / "o", sentences_file(tmp_path))]) == 2
    error = one_error(capsys)
    assert f"teacher '{wide}' gives 48-dim embeddings but student '{tiny_model_dir}' gives 32-dim ones" in error
    assert teacher_calls == []


@pytest.mark.slow
def test_layer_dropped_student_is_saved_for_sentence_transformers(minilm_path, tmp_path, teacher_cache, data_dir):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "student"
    assert main([RECIPE, *tiny_overrides("sentence-transformers/all-MiniLM-L6-v2", out, "--max_steps", "1",
                                         "--max_train_rows", "16", "--bf16", "false")]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 3
    ours = Encoder.from_pretrained(str(out))
    assert len(ours.model.encoder.layer) == 3
    texts = ["a man plays a guitar", "the cat sleeps on the warm mat"]
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(texts), ours.encode(texts), atol=1e-5)


def test_keep_layers_out_of_range_is_one_line(tiny_model_dir, teacher_dir, tmp_path, capsys):
    assert main([RECIPE, *distill_overrides(tiny_model_dir, teacher_dir, tmp_path / "o", sentences_file(tmp_path),
                                            "--keep_layers", "[0, 4]")]) == 2
    assert "keep_layers [0, 4] names layer 4 but the model has 2 layers (0..1)" in one_error(capsys)
