"""Matryoshka through the trainer: dims checked against the encoder, eval at each dimension, saved dims, card."""

import functools
import json

import numpy as np
import pytest

from nlp_contrastive.cli import main as cli_main
from nlp_contrastive.evaluation.suite import load_suite
from nlp_contrastive.modeling import Encoder
from nlp_contrastive.train import main
from tests.conftest import REPO_ROOT
from tests.test_trainer import tiny_overrides

RECIPE = str(REPO_ROOT / "recipes" / "stsb-matryoshka.yaml")
STS_TASK = "[{name: stsb-test, type: sts, dataset: stsb, split: test, max_rows: 200}]"


def tiny_matryoshka(model_dir, out, *extra):
    return [RECIPE, *tiny_overrides(str(model_dir), out, "--max_steps", "3", "--loss_kwargs",
                                    "{loss: cosent, dims: [8, 32, 16]}", *extra)]


@pytest.mark.parametrize("cached", ["false", "true"])
def test_matryoshka_run_evaluates_each_dimension_and_records_dims(tiny_model_dir, tmp_path, data_dir, cached):
    out = tmp_path / "run"
    assert main(tiny_matryoshka(tiny_model_dir, out, "--final_eval_tasks", STS_TASK, "--cached", cached,
                                "--cache_mini_batch_size", "3")) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["stsb-test", "stsb-test@16", "stsb-test@8"]
    meta = json.loads((out / "results_meta.json").read_text())
    assert meta["stsb-test@8"]["truncate_dim"] == 8 and "truncate_dim" not in meta["stsb-test"]

    encoder = Encoder.from_pretrained(str(out))
    assert encoder.matryoshka_dims == [32, 16, 8]
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["matryoshka_dims"] == [32, 16, 8]
    # The per-dimension scores are those of the saved model cut to d dimensions.
    again = load_suite({"tasks": json.loads(json.dumps([{"name": "t", "type": "sts", "dataset": "stsb",
                                                          "split": "test", "max_rows": 200, "truncate_dim": 8}]))})
    assert again(encoder)["t"]["spearman_cosine"] == pytest.approx(results["stsb-test@8"]["spearman_cosine"],
                                                                 abs=1e-6)
    assert results["stsb-test@8"]["spearman_cosine"] != results["stsb-test"]["spearman_cosine"]

    card = (out / "README.md").read_text()
    assert "Score per embedding dimension (Matryoshka)" in card
    row = next(line for line in card.splitlines() if line.startswith("| stsb-test (spearman_cosine)"))
    assert f"{results['stsb-test@16']['spearman_cosine']:.4f}" in row

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu", truncate_dim=16)
    texts = ["a man plays a guitar", "the cat sleeps"]
    np.testing.assert_allclose(st.encode(texts), encoder.encode(texts)[:, :16], atol=1e-5)


def test_dims_larger_than_the_encoder_fail_in_one_line_before_training(tiny_model_dir, tmp_path, data_dir, capsys):
    code = main([RECIPE, *tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--max_steps", "1", "--loss_kwargs",
                                         "{loss: cosent, dims: [64, 32]}")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert "dims [64, 32] exceed the model's embedding dimension 32" in errors[0]
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_eval_cli_truncate_dim(tiny_model_dir, tmp_path, data_dir, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n  sts: {type: sts, dataset: stsb, split: test, max_rows: 100}\n")
    out = tmp_path / "r.json"
    assert cli_main(["eval", "--model", str(tiny_model_dir), "--suite", str(suite), "--truncate-dim", "32", "8",
                     "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"sts@32", "sts@8"}
    full = load_suite(str(suite))(Encoder.from_pretrained(str(tiny_model_dir)))["sts"]
    assert results["sts@32"] == pytest.approx(full)
    assert results["sts@8"]["spearman_cosine"] != pytest.approx(full["spearman_cosine"])
    assert cli_main(["eval", "--model", str(tiny_model_dir), "--suite", str(suite), "--truncate-dim", "64"]) == 2
    assert "truncate_dim 64 exceeds the model's embedding dimension 32" in capsys.readouterr().err


def test_a_task_at_several_dims_encodes_its_texts_once(tiny_model_dir, tmp_path, data_dir):
    """Each dim's numbers equal those of a separate run at that dim, with one encoding per task, not one per dim."""
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n  sts: {type: sts, dataset: stsb, split: test, max_rows: 60}\n"
                     "  pairs: {type: pair_classification, dataset: msrp, split: test, max_rows: 60}\n")
    encoder = Encoder.from_pretrained(str(tiny_model_dir))
    calls = []
    original = encoder.encode

    def counting_encode(texts, *args, **kwargs):
        calls.append(len(texts))
        return original(texts, *args, **kwargs)

    encoder.encode = functools.wraps(original)(counting_encode)
    together = load_suite(str(suite)).at_dimensions([None, 16, 8])(encoder)
    per_task_calls = len(calls)
    calls.clear()
    alone = {f"sts@{d}": load_suite(str(suite)).at_dimensions([d])(encoder)[f"sts@{d}"] for d in (16, 8)}
    assert per_task_calls == len(calls) // 2 == 2  # one encode per task for all three dims
    for name, metrics in alone.items():
        assert together[name] == pytest.approx(metrics)
    assert set(together) == {"sts", "sts@16", "sts@8", "pairs", "pairs@16", "pairs@8"}


def test_per_source_matryoshka_losses_record_and_evaluate_every_sources_dims(tiny_model_dir, tmp_path, data_dir):
    """Two sources with their own Matryoshka dims: the model records (and the final eval runs at) all of them,
    not only the first source's."""
    scored = ("{dataset: stsb, split: train, max_rows: 16, columns: {anchor: sentence1, positive: sentence2, "
              "score: score}, score_range: [0, 5], loss: matryoshka, "
              "loss_kwargs: {loss: cosine_similarity, dims: [32, 16]}}")
    pairs = ("{dataset: msrp, split: train, filter: 'label == 1', max_rows: 16, columns: {anchor: sentence1, "
             "positive: sentence2}, loss: matryoshka, loss_kwargs: {loss: info_nce, dims: [8, 32]}}")
    out = tmp_path / "run"
    assert main(tiny_matryoshka(tiny_model_dir, out, "--train_data", f"[{scored}, {pairs}]", "--max_train_rows",
                                "null", "--multi_dataset_sampling", "round_robin", "--batch_sampler",
                                "no_duplicates", "--per_device_train_batch_size", "8",
                                "--final_eval_tasks", STS_TASK)) == 0
    assert Encoder.from_pretrained(str(out)).matryoshka_dims == [32, 16, 8]
    assert list(json.loads((out / "results.json").read_text())) == ["stsb-test", "stsb-test@16", "stsb-test@8"]


def test_a_sources_matryoshka_dims_too_large_fail_before_training(tiny_model_dir, tmp_path, data_dir, capsys):
    pairs = ("{dataset: msrp, split: train, filter: 'label == 1', max_rows: 16, columns: {anchor: sentence1, "
             "positive: sentence2}, loss: matryoshka, loss_kwargs: {loss: info_nce, dims: [64, 8]}}")
    scored = ("{dataset: stsb, split: train, max_rows: 16, columns: {anchor: sentence1, positive: sentence2, "
              "score: score}, score_range: [0, 5]}")
    code = main(tiny_matryoshka(tiny_model_dir, tmp_path / "o", "--train_data", f"[{scored}, {pairs}]",
                                "--max_train_rows", "null", "--multi_dataset_sampling", "round_robin"))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert "dims [64, 8] exceed the model's embedding dimension 32" in errors[0]
    assert not (tmp_path / "o" / "model.safetensors").exists()
