"""Encoder.encode batches by token budget: bounded padded tokens per batch, same embeddings as row batches."""

from __future__ import annotations

import numpy as np
import pytest

TEXTS = ["a", "a much longer sentence with quite a few more words in it than the others", "short one",
         "medium length sentence here", "a", "x " * 40, "tiny", "another medium sized sentence for the test"]


def test_token_budget_bounds_each_batch_and_keeps_every_row(tiny_encoder):
    seen, budget = [], 24
    for rows, features in tiny_encoder._sorted_batches(TEXTS, batch_size=3, max_tokens=budget):
        n, width = features["input_ids"].shape
        assert n <= 3 and (n == 1 or n * width <= budget)
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(TEXTS)))
    widths = [f["input_ids"].shape[1] for _, f in tiny_encoder._sorted_batches(TEXTS, 3, budget)]
    assert widths == sorted(widths, reverse=True)  # longest first


def test_token_budget_gives_the_same_embeddings_as_row_batches(tiny_encoder):
    by_rows = tiny_encoder.encode(TEXTS, batch_size=4, max_tokens=10**6)
    by_tokens = tiny_encoder.encode(TEXTS, batch_size=64, max_tokens=16)
    one_by_one = np.stack([tiny_encoder.encode(t) for t in TEXTS])
    np.testing.assert_allclose(by_tokens, by_rows, atol=1e-5)
    np.testing.assert_allclose(by_tokens, one_by_one, atol=1e-5)


def test_cpu_default_budget_applies(tiny_encoder, monkeypatch):
    from nlp_contrastive import modeling

    budgets = []
    original = modeling.Encoder._sorted_batches
    monkeypatch.setattr(modeling.Encoder, "_sorted_batches",
                        lambda self, texts, bs, mt=None: budgets.append(mt) or original(self, texts, bs, mt))
    tiny_encoder.encode(TEXTS)
    assert budgets == [modeling.CPU_ENCODE_MAX_TOKENS]


def test_bad_budget_is_a_one_line_error(tiny_encoder):
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        tiny_encoder.encode(TEXTS, max_tokens=0)
