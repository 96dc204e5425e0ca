"""CachedLoss (GradCache): the same loss and parameter gradients as the uncached step, in every setting we claim.

With dropout on, "the uncached step" is the same forward passes with grad, from the same random state, in the
same row chunks as CachedLoss's mini-batches (dropout masks depend on tensor shapes, so no cached scheme can
match one full-batch forward). Without dropout the reference is one plain full-batch forward.
"""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlp_contrastive.losses import InfoNCELoss
from nlp_contrastive.losses import cached as cached_module
from nlp_contrastive.losses.cached import CachedLoss, RandomStateSnapshot
from tests.conftest import make_tiny_encoder

torch.set_num_threads(1)  # 2 shared cores: keep each test's footprint small


class LearnableScaleLoss(nn.Module):
    """Any in-batch loss works, including one with its own parameter (CLIP-style learnable logit scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, anchor, positive):
        scores = F.normalize(anchor.float(), dim=-1) @ F.normalize(positive.float(), dim=-1).T
        return F.cross_entropy(scores * self.log_scale.exp(), torch.arange(len(anchor)))


# ------------------------------------------------------------------------------------------------- helpers
def tokens(rows: int, width: int, seed: int, varied: bool = True) -> dict[str, torch.Tensor]:
    """Random token ids; with `varied`, right-padded to random lengths (so mini-batches get trimmed)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 8000, (rows, width), generator=g)
    lengths = torch.randint(2, width + 1, (rows,), generator=g) if varied else torch.full((rows,), width)
    attention_mask = (torch.arange(width) < lengths[:, None]).long()
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


def batch_with_negatives(rows: int = 12, width: int = 10, varied: bool = True, seed: int = 0):
    """anchor/positive + 0-2 hard negatives per row: flattened inputs and a padded [B, 2] index."""
    counts = [i % 3 for i in range(rows)]
    index = torch.full((rows, 2), -1, dtype=torch.long)
    start = 0
    for i, count in enumerate(counts):
        index[i, :count] = torch.arange(start, start + count)
        start += count
    features = {"anchor": tokens(rows, width, seed, varied), "positive": tokens(rows, width, seed + 1, varied),
                "negatives": tokens(start, width, seed + 2, varied)}
    return features, index


def reference_loss(encoder, features, loss, negatives_index=None, chunk: int | None = None, **loss_kwargs):
    """Uncached: embed every role with grad (in `chunk`-row pieces, role by role, if given), then the loss."""
    embeddings = {}
    for role, inputs in features.items():
        rows = inputs["input_ids"].shape[0]
        step = chunk or rows
        embeddings[role] = torch.cat([encoder(**{k: v[i:i + step] for k, v in inputs.items()})
                                      for i in range(0, rows, step)])
    if negatives_index is not None:
        negatives = embeddings.pop("negatives")
        loss_kwargs.update(negatives=negatives[negatives_index.clamp(min=0)], negatives_mask=negatives_index >= 0)
    return loss(**embeddings, **loss_kwargs)


def gradients(*modules: nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for m, module in enumerate(modules):
        for name, p in module.named_parameters():
            if p.grad is not None:
                grads[f"{m}.{name}"] = p.grad.detach().clone()
                p.grad = None
    return grads


def max_relative_error(actual: dict, expected: dict) -> float:
    """Largest max|a - e| / max|e| over parameter tensors (elementwise rtol is meaningless near zero).

    Tensors whose true gradient is analytically zero (attention key biases: softmax ignores a per-query shift)
    hold rounding noise only, so the denominator never drops below 1e-4 of the largest gradient.
    """
    assert actual.keys() == expected.keys() and len(expected) > 30
    floor = 1e-4 * max(e.abs().max().item() for e in expected.values())
    return max(((actual[k] - e).abs().max() / max(e.abs().max().item(), floor)).item() for k, e in expected.items())


def run_both(encoder, features, loss, cached: CachedLoss, *, seed=0, chunk=None, negatives_index=None, scale=3.0,
             **loss_kwargs):
    """(cached loss, cached grads, reference loss, reference grads), both backpropagating `scale * loss`."""
    torch.manual_seed(seed)
    reference = reference_loss(encoder, features, loss, negatives_index, chunk, **loss_kwargs)
    (reference * scale).backward()
    reference_grads = gradients(encoder, loss)
    torch.manual_seed(seed)
    value = cached(encoder, features, negatives_index=negatives_index, **loss_kwargs)
    (value * scale).backward()  # the Trainer scales the loss (grad accumulation) before backward
    return value.detach(), gradients(encoder, loss), reference.detach(), reference_grads


# --------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("mini_batch_size, max_tokens", [(4, None), (None, 40), (3, 25), (64, None)])
def test_matches_one_full_batch_without_dropout(mini_batch_size, max_tokens):
    """Mini-batching, padding trimming and token budgets don't change loss or gradients (hard negatives, ids)."""
    encoder = make_tiny_encoder(dropout=0.1).eval()
    features, index = batch_with_negatives()
    ids = torch.arange(12)
    ids[5] = ids[2]  # a duplicate anchor text: exercises the loss's masking through the cache
    loss = InfoNCELoss(temperature=0.05)
    cached = CachedLoss(loss, mini_batch_size=mini_batch_size, max_tokens_per_mini_batch=max_tokens)
    value, grads, ref_value, ref_grads = run_both(encoder, features, loss, cached, negatives_index=index,
                                                  anchor_ids=ids)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=0)
    assert max_relative_error(grads, ref_grads) < 1e-5


def test_dropout_is_replayed_exactly_and_random_stream_continues():
    encoder = make_tiny_encoder(dropout=0.1).train()
    features, index = batch_with_negatives(varied=False)
    loss = InfoNCELoss(temperature=0.05)
    cached = CachedLoss(loss, mini_batch_size=4)
    value, grads, ref_value, ref_grads = run_both(encoder, features, loss, cached, chunk=4, negatives_index=index)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=0)
    assert max_relative_error(grads, ref_grads) < 1e-5
    # The re-run in backward restores the caller's random state: the stream is where one forward leaves it.
    after_cached = torch.rand(3)
    torch.manual_seed(0)
    with torch.no_grad():
        reference_loss(encoder, features, loss, index, chunk=4)
    torch.testing.assert_close(after_cached, torch.rand(3))


def test_without_random_state_replay_dropout_gradients_are_wrong(monkeypatch):
    """Control for the test above: the replay is what makes it pass."""
    monkeypatch.setattr(RandomStateSnapshot, "restore", lambda self: None)
    encoder = make_tiny_encoder(dropout=0.1).train()
    features, index = batch_with_negatives(varied=False)
    loss = InfoNCELoss(temperature=0.05)
    _, grads, _, ref_grads = run_both(encoder, features, loss, CachedLoss(loss, mini_batch_size=4), chunk=4,
                                      negatives_index=index)
    assert max_relative_error(grads, ref_grads) > 1e-2


def test_loss_with_its_own_parameter():
    encoder = make_tiny_encoder(dropout=0.1).train()
    features = {"anchor": tokens(10, 8, 0, varied=False), "positive": tokens(10, 8, 1, varied=False)}
    loss = LearnableScaleLoss()
    value, grads, ref_value, ref_grads = run_both(encoder, features, loss, CachedLoss(loss, mini_batch_size=3),
                                                  chunk=3)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=0)
    assert "1.log_scale" in grads and max_relative_error(grads, ref_grads) < 1e-5


class ProjectedEncoder(nn.Module):
    """Encoder + a linear head (like sentence-transformers' Dense): its embeddings are bf16 under autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = make_tiny_encoder(dropout=0.1)
        self.head = nn.Linear(32, 16)

    def forward(self, **inputs):
        return self.head(self.encoder(**inputs))


def _bf16_run(cache_enabled: bool = True):
    encoder = ProjectedEncoder().train()
    features, index = batch_with_negatives(varied=False)
    loss = InfoNCELoss(temperature=0.05)
    cached = CachedLoss(loss, mini_batch_size=4)
    autocast = {"device_type": "cpu", "dtype": torch.bfloat16, "cache_enabled": cache_enabled}
    with torch.autocast(**autocast):
        torch.manual_seed(0)
        assert encoder(**features["anchor"]).dtype == torch.bfloat16  # bf16 embeddings get bf16 gradients
        torch.manual_seed(0)
        reference = reference_loss(encoder, features, loss, index, chunk=4)
    (reference * 3).backward()  # backward outside autocast, as the Trainer does
    ref_grads = gradients(encoder)
    with torch.autocast(**autocast):
        torch.manual_seed(0)
        value = cached(encoder, features, negatives_index=index)
    (value * 3).backward()
    grads = gradients(encoder)
    assert all(g.dtype == torch.float32 for g in grads.values())
    return value, reference, max_relative_error(grads, ref_grads)


def test_bf16_autocast_matches_uncached():
    value, reference, error = _bf16_run()
    torch.testing.assert_close(value, reference.detach(), rtol=1e-2, atol=0)
    assert error < 3e-2  # bf16 resolution: the uncached step sums its bf16 weight-cast gradients in bf16


def test_bf16_autocast_is_exact_when_the_cast_cache_is_off():
    """Without autocast's weight-cast cache both sides run identical bf16 ops: equal up to fp32 rounding."""
    value, reference, error = _bf16_run(cache_enabled=False)
    torch.testing.assert_close(value, reference.detach(), rtol=1e-5, atol=0)
    assert error < 1e-5


def test_bf16_without_autocast_replay_gradients_are_wrong(monkeypatch):
    """Control: a re-run outside autocast (GradCache #17) gives fp32 activations for bf16 cached gradients."""
    monkeypatch.setattr(cached_module._AutocastState, "__call__", lambda self: torch.autocast("cpu", enabled=False))
    _, _, error = _bf16_run(cache_enabled=False)
    assert error > 1e-3


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing(use_reentrant):
    encoder = make_tiny_encoder(dropout=0.1).train()
    features, index = batch_with_negatives(varied=False)
    loss = InfoNCELoss(temperature=0.05)
    torch.manual_seed(0)
    (reference_loss(encoder, features, loss, index, chunk=4) * 3).backward()
    ref_grads = gradients(encoder)
    options = {"use_reentrant": use_reentrant}
    if hasattr(encoder.model, "activation_checkpointing_enable"):  # the transformers 5.x name
        encoder.model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        assert encoder.model.is_activation_checkpointing
    else:
        encoder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        assert encoder.model.is_gradient_checkpointing
    torch.manual_seed(0)
    (CachedLoss(loss, mini_batch_size=4)(encoder, features, negatives_index=index) * 3).backward()
    assert max_relative_error(gradients(encoder), ref_grads) < 1e-5


class ShapeRecorder(nn.Module):
    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder, self.shapes = encoder, []

    def forward(self, input_ids, attention_mask):
        self.shapes.append((tuple(input_ids.shape), int(attention_mask.sum(1).max())))
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)


def test_token_budget_and_padding_trim():
    recorder = ShapeRecorder(make_tiny_encoder())
    features = {"anchor": tokens(20, 16, 0), "positive": tokens(20, 16, 1)}
    value = CachedLoss(InfoNCELoss(), mini_batch_size=6, max_tokens_per_mini_batch=48)(recorder, features)
    first_pass = recorder.shapes[:]
    value.backward()
    assert recorder.shapes == first_pass * 2  # the re-run uses exactly the same mini-batches
    assert sum(rows for (rows, _), _ in first_pass) == 40
    for (rows, width), longest in first_pass:
        assert rows <= 6 and (rows * width <= 48 or rows == 1)
        assert width == longest  # all-padding trailing columns are cut off


def test_no_grad_evaluation_and_single_backward():
    encoder = make_tiny_encoder()
    features = {"anchor": tokens(6, 8, 0), "positive": tokens(6, 8, 1)}
    cached = CachedLoss(InfoNCELoss(), mini_batch_size=4)
    with torch.no_grad():
        value = cached(encoder, features)
        torch.testing.assert_close(value, reference_loss(encoder, features, InfoNCELoss()), rtol=1e-5, atol=0)
    assert not value.requires_grad
    value = cached(encoder, features)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        value.backward()
    with pytest.raises(ValueError, match="negatives_index"):
        cached(encoder, {**features, "negatives": tokens(6, 8, 2)})


def test_placeholder_passes_keep_pass_counts_and_change_nothing(monkeypatch):
    """A rank with fewer mini-batches than another makes one-token placeholder passes (both in the no-grad pass
    and in the re-run) up to the agreed count; loss, gradients and the random stream are unchanged."""
    encoder = make_tiny_encoder(dropout=0.1).train()
    features, index = batch_with_negatives()
    cached = CachedLoss(InfoNCELoss(), mini_batch_size=4)
    runs = []
    for extra in (0, 2):
        monkeypatch.setattr(cached_module.distributed, "agree_max", lambda values, device, e=extra: (values[0] + e,))
        calls: list[int] = []

        def model(calls=calls, **inputs):
            calls.append(inputs["input_ids"].shape[0])
            return encoder(**inputs)

        torch.manual_seed(0)
        value = cached(model, features, negatives_index=index)
        value.backward()
        runs.append((value.detach(), gradients(encoder), calls, torch.rand(1)))
    (value, grads, calls, after), (padded_value, padded_grads, padded_calls, padded_after) = runs
    assert padded_calls == [1, 1] + calls[:len(calls) // 2] + [1, 1] + calls[len(calls) // 2:]
    torch.testing.assert_close(padded_value, value, rtol=0, atol=0)
    assert max_relative_error(padded_grads, grads) == 0 and torch.equal(after, padded_after)


# ----------------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, halves: list, gather: bool, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    # A mismatch in collectives between ranks must fail the test, not hang it for gloo's default 30 minutes.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        encoder = make_tiny_encoder(dropout=0.1).train()
        model = DistributedDataParallel(encoder, find_unused_parameters=True)  # BERT's pooler gets no gradient
        features, index = halves[rank]
        # Ranks differ in text length, so the token budget gives them different numbers of mini-batches.
        cached = CachedLoss(InfoNCELoss(gather_across_devices=gather), mini_batch_size=None,
                            max_tokens_per_mini_batch=48)
        torch.manual_seed(100 + rank)
        value = cached(model, features, negatives_index=index)
        (value * 3).backward()
        torch.save({"loss": value.detach(), "grads": gradients(encoder)}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("gather", [False, True], ids=["local-negatives", "gathered-negatives"])
def test_ddp_two_processes_match_one_process(tmp_path, gather):
    """2 gloo ranks, each caching half the batch under DDP == 1 process, uncached, on the whole batch."""
    halves = [batch_with_negatives(rows=6, width=12, varied=False, seed=0),  # 4 rows per 48-token mini-batch
              batch_with_negatives(rows=6, width=4, varied=False, seed=10)]  # 12 rows per mini-batch
    torch.multiprocessing.spawn(_ddp_worker, args=(_free_port(), halves, gather, str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    encoder = make_tiny_encoder(dropout=0.1).train()
    loss = InfoNCELoss()
    embeddings: dict[str, list] = {"anchor": [], "positive": [], "negatives": []}
    for rank, ((features, index), chunk) in enumerate(zip(halves, (4, 12), strict=True)):
        torch.manual_seed(100 + rank)  # the rank's random stream, in its mini-batches: same dropout masks
        for role in ("anchor", "positive", "negatives"):
            inputs = features[role]
            embedding = torch.cat([encoder(**{k: v[i:i + chunk] for k, v in inputs.items()})
                                   for i in range(0, len(inputs["input_ids"]), chunk)])
            embeddings[role].append(embedding[index.clamp(min=0)] if role == "negatives" else embedding)
    masks = [index >= 0 for _, index in halves]
    if gather:  # one loss over the global batch
        per_rank = [loss(anchor=torch.cat(embeddings["anchor"]), positive=torch.cat(embeddings["positive"]),
                         negatives=torch.cat(embeddings["negatives"]), negatives_mask=torch.cat(masks))]
    else:  # each rank's own in-batch loss; DDP averages the two ranks' gradients
        per_rank = [loss(anchor=embeddings["anchor"][r], positive=embeddings["positive"][r],
                         negatives=embeddings["negatives"][r], negatives_mask=masks[r]) for r in range(2)]
    reference = torch.stack(per_rank).mean()
    (reference * 3).backward()
    ref_grads = gradients(encoder)

    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), reference.detach(), rtol=1e-5, atol=0)
    for result in results:  # DDP leaves identical (all-reduced) gradients on both ranks
        assert max_relative_error(result["grads"], ref_grads) < 1e-5


# ------------------------------------------------------------------------------------ Matryoshka inside
def test_matryoshka_inside_cached_loss_has_exact_gradients_and_encodes_once(monkeypatch):
    """CachedLoss(MatryoshkaLoss(InfoNCE)): dims cut from the cached embeddings, so the encoder runs exactly as
    often as for CachedLoss(InfoNCE), and loss and gradients equal the uncached MatryoshkaLoss(InfoNCE)."""
    from nlp_contrastive.losses import MatryoshkaLoss

    encoder = make_tiny_encoder(dropout=0.1).train()
    features, index = batch_with_negatives(varied=False)
    loss = MatryoshkaLoss(InfoNCELoss(temperature=0.05), dims=[8, 32, 16], weights=[0.5, 1.0, 1.0])
    # self_distill compares all rows of the batch with each other: under GradCache too (the cached full batch).
    for wrapped in (loss, MatryoshkaLoss(InfoNCELoss(temperature=0.05), dims=[8, 32, 16], self_distill=2.0)):
        value, grads, ref_value, ref_grads = run_both(encoder, features, wrapped,
                                                      CachedLoss(wrapped, mini_batch_size=4), chunk=4,
                                                      negatives_index=index)
        torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=0)
        assert max_relative_error(grads, ref_grads) < 1e-5

    calls = []
    original = type(encoder).forward
    monkeypatch.setattr(type(encoder), "forward", lambda self, **kw: calls.append(1) or original(self, **kw))
    counts = {}
    for name, wrapped in (("matryoshka", loss), ("plain", loss.loss)):
        calls.clear()
        CachedLoss(wrapped, mini_batch_size=4)(encoder, features, negatives_index=index).backward()
        counts[name] = len(calls)
    assert counts == {"matryoshka": 18, "plain": 18}  # 36 rows / 4 = 9 mini-batches, each no-grad + re-run
