"""The batch contract: the collator on list roles, and mined rows with no hard negative through the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from nlp_contrastive.data.batch import Batch, BatchCollator
from nlp_contrastive.losses import InfoNCELoss


def _row(anchor, positive, negatives):
    return {"anchor_input_ids": anchor, "positive_input_ids": positive, "negatives_input_ids": negatives}


def test_rows_with_and_without_negatives_are_masked_and_a_batch_without_any_has_no_negatives_role():
    collate = BatchCollator(pad_token_id=0)
    mixed = Batch.from_inputs(collate([_row([5, 6], [7], [[8, 9], [10]]), _row([11], [12, 13], [])]))
    assert mixed.negatives_index.tolist() == [[0, 1], [-1, -1]]
    assert mixed.features["negatives"]["input_ids"].shape == (2, 2)
    none = Batch.from_inputs(collate([_row([5, 6], [7], []), _row([11], [12, 13], [])]))
    assert "negatives" not in none.features and "negatives" not in none.text_hashes

    def model(input_ids, attention_mask):
        return torch.nn.functional.one_hot(input_ids[:, 0], 16).float()

    loss = InfoNCELoss(temperature=0.05)
    for batch in (mixed, none):
        value = loss(**batch.loss_kwargs(batch.embed(model), loss))
        assert math.isfinite(value.item())


def test_padding_matches_the_per_text_reference_on_ragged_texts_and_a_nonzero_pad_id():
    sequences = [[101, 7, 8, 102], [101, 102], [101, 5, 6, 7, 8, 9, 102], [3]]
    padded = BatchCollator(pad_token_id=99).pad(sequences)
    assert padded["input_ids"].dtype == padded["attention_mask"].dtype == torch.long
    assert padded["input_ids"].tolist() == [s + [99] * (7 - len(s)) for s in sequences]
    assert padded["attention_mask"].tolist() == [[1] * len(s) + [0] * (7 - len(s)) for s in sequences]


@pytest.mark.parametrize("cached", [False, True])
def test_mined_rows_without_negatives_train_through_the_recipe(tmp_path, tiny_model_dir, cached):
    """Only every 4th row has a hard negative, so some batches have none at all: every batch must train."""
    from nlp_contrastive.train import main as train_main

    rows = [{"query": f"claim {i}", "positive": f"abstract {i} topic {i % 3}",
             "negatives": [f"other abstract {i + 1}"] if i % 4 == 0 else [],
             "known_positives": [f"abstract {i} topic {i % 3}"]} for i in range(16)]
    data = tmp_path / "mined.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"model": {"model_name_or_path": str(tiny_model_dir), "max_seq_length": 16},
              "data": {"train_data": [{"dataset": str(data), "columns": {
                  "anchor": "query", "positive": "positive", "negatives": "negatives",
                  "known_positives": "known_positives"}}], "batch_sampler": "no_duplicates"},
              "loss": {"loss": "info_nce", "cached": cached, "cache_mini_batch_size": 2, "single_forward": False},
              "eval": {"eval_tasks": [], "final_eval_tasks": []},
              "training": {"output_dir": str(tmp_path / "out"), "num_train_epochs": 2,
                           "per_device_train_batch_size": 4, "bf16": False, "report_to": "none",
                           "save_strategy": "no", "logging_steps": 1}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert train_main([str(path)]) == 0
    run = json.loads((tmp_path / "out" / "training_run.json").read_text())
    assert run["train_rows"] == 16 and math.isfinite(run["final_train_loss"])


def test_agreed_roles_run_a_placeholder_forward_for_a_missing_role_that_changes_nothing(tiny_encoder):
    """Per-role forwards over the roles the processes agreed on: a batch without negatives still makes the
    negatives' forward call (3 calls, as the process with negatives), and loss and gradients are unchanged."""
    collate = BatchCollator(pad_token_id=0)
    batch = Batch.from_inputs(collate([_row([101, 5000, 102], [101, 6000, 7000, 102], []),
                                       _row([101, 5100, 5200, 102], [101, 6100, 102], [])]))
    calls = []

    def model(**inputs):
        calls.append(inputs["input_ids"].shape)
        return tiny_encoder(**inputs)

    loss = InfoNCELoss()
    results = []
    for roles in (None, ("anchor", "positive", "negatives")):
        calls.clear()
        tiny_encoder.zero_grad(set_to_none=True)
        value = loss(**batch.loss_kwargs(batch.embed(model, False, roles), loss))
        value.backward()
        results.append((value.detach(), {k: p.grad.clone() for k, p in tiny_encoder.named_parameters()
                                         if p.grad is not None}, len(calls)))
    (plain, plain_grads, plain_calls), (agreed, agreed_grads, agreed_calls) = results
    assert (plain_calls, agreed_calls) == (2, 3) and calls[-1] == (1, 1)  # the placeholder: one token
    assert torch.equal(plain, agreed) and plain_grads.keys() == agreed_grads.keys()
    assert all(torch.equal(plain_grads[k], agreed_grads[k]) for k in plain_grads)
    assert batch.forward_plan(False) == (False, None) and batch.forward_plan(None) == (None, None)  # 1 process
