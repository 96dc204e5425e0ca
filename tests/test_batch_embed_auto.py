"""Batch.embed(single_forward=None) picks one stacked forward or one per role from the padded-token count."""

from __future__ import annotations

import torch

from nlp_contrastive.data.batch import Batch


def features(n: int, width: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.ones(n, width, dtype=torch.long), "attention_mask": torch.ones(n, width, dtype=torch.long)}


class CountingModel:
    def __init__(self):
        self.widths = []

    def __call__(self, input_ids, attention_mask):
        self.widths.append(input_ids.shape[1])
        return attention_mask.sum(1, keepdim=True).float()  # embedding = real length, so padding would show


def test_similar_lengths_use_one_forward_and_different_lengths_one_per_role():
    similar = Batch(features={"anchor": features(4, 10), "positive": features(4, 11)})
    model = CountingModel()
    out = similar.embed(model, single_forward=None)
    assert model.widths == [11] and out["anchor"].squeeze(1).tolist() == [10] * 4
    skewed = Batch(features={"anchor": features(4, 8), "positive": features(4, 40)})
    model = CountingModel()
    out = skewed.embed(model, single_forward=None)
    assert model.widths == [8, 40] and out["positive"].squeeze(1).tolist() == [40] * 4
    model = CountingModel()
    skewed.embed(model, single_forward=True)  # an explicit choice is kept
    assert model.widths == [40]


def test_recipe_key_single_forward_takes_auto_true_false_and_rejects_other_values():
    import pytest

    from nlp_contrastive.config import load_recipe
    from tests.conftest import REPO_ROOT

    recipe = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")
    assert load_recipe(recipe, ["--bf16", "false"]).loss.single_forward == "auto"  # the recipe's (measured, issue 13)
    assert load_recipe(recipe, ["--bf16", "false", "--single_forward", "true"]).loss.single_forward == "true"
    assert load_recipe(recipe, ["--bf16", "false", "--single_forward", "auto"]).loss.single_forward == "auto"
    assert load_recipe(recipe, ["--bf16", "false", "--single_forward", "false"]).loss.single_forward == "false"
    assert load_recipe(recipe, ["--bf16", "false", "--single_forward", "true"]).loss.single_forward == "true"
    with pytest.raises(ValueError, match="single_forward must be one of auto, true, false, got 'maybe'"):
        load_recipe(recipe, ["--bf16", "false", "--single_forward", "maybe"])


def test_trainer_embeds_as_the_recipe_says(tiny_model_dir, tmp_path, data_dir, monkeypatch):
    """Through train(): `single_forward` reaches Batch.embed as None (auto) / True / False."""
    from nlp_contrastive.train import train
    from tests.conftest import REPO_ROOT

    seen = []
    embed = Batch.embed

    def recording_embed(self, model, single_forward=True, roles=None):
        seen.append(single_forward)
        return embed(self, model, single_forward, roles)

    monkeypatch.setattr(Batch, "embed", recording_embed)
    for value, expected in (("auto", None), ("true", True), ("false", False)):
        seen.clear()
        overrides = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / value),
                     "--max_train_rows", "32", "--per_device_train_batch_size", "8", "--max_steps", "2",
                     "--single_forward", value, "--bf16", "false", "--use_cpu", "true", "--eval_tasks", "[]",
                     "--final_eval_tasks", "[]", "--report_to", "none", "--save_strategy", "no"]
        assert train(str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml"), overrides) == 0
        assert seen and set(seen) == {expected}, value
