"""Encoder.encode speed changes (dedup + token-length sorting) keep results and input order exact."""

from __future__ import annotations

import numpy as np
import torch


def test_dedup_and_sorting_preserve_each_texts_embedding(tiny_encoder):
    texts = ["short", "a much longer sentence with many more tokens in it", "short", "mid length text",
             "x", "a much longer sentence with many more tokens in it", "yet another one here"]
    tiny_encoder.train()
    batched = tiny_encoder.encode(texts, batch_size=2)
    assert tiny_encoder.training  # mode restored
    one_by_one = np.stack([tiny_encoder.encode(t, batch_size=1) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert np.array_equal(batched[0], batched[2]) and np.array_equal(batched[1], batched[5])
    as_torch = tiny_encoder.encode(texts, batch_size=3, convert_to="torch", normalize=True)
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (7, tiny_encoder.dimension)
    np.testing.assert_allclose(as_torch.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_small_token_window_still_orders_rows(tiny_encoder):
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(50)]
    rows = [r for batch_rows, _ in tiny_encoder._sorted_batches(texts, 4, window_batches=2) for r in batch_rows]
    assert sorted(int(r) for r in rows) == list(range(50))
    np.testing.assert_allclose(tiny_encoder.encode(texts, batch_size=4),
                               tiny_encoder.encode(texts[::-1], batch_size=16)[::-1], atol=1e-5)


def test_empty_input(tiny_encoder):
    assert tiny_encoder.encode([], batch_size=4).shape == (0, tiny_encoder.dimension)
