"""Batch.embed(single_forward=None) picks one stacked forward or one per role from the padded-token count."""

from __future__ import annotations

import torch

from nlp_contrastive.batch import Batch


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
