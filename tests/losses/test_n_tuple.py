"""n_tuple against a loop over the formula, on paper, with variable negatives per row, and on bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from naive_losses import assert_value_and_grad, log_sum_exp, sim

from nlp_contrastive.losses import NTupleLoss, bpr, info_nce, n_tuple

MASK = torch.tensor([[True, True, False], [True, False, False], [False, False, False], [True, True, True]])


def _tuples(seed=0, batch=4, dim=5, k=3):
    g = torch.Generator().manual_seed(seed)
    return {"anchor": torch.randn(batch, dim, generator=g), "positive": torch.randn(batch, dim, generator=g),
            "negatives": torch.randn(batch, k, dim, generator=g)}


def naive_n_tuple(anchor, positive, negatives, negatives_mask=None, *, tau=1.0, name="dot"):
    negs = negatives if negatives.dim() == 3 else negatives.unsqueeze(1)
    rows = []
    for i in range(len(anchor)):
        logits = [sim(anchor[i], positive[i], name) / tau]
        logits += [sim(anchor[i], negs[i, k], name) / tau for k in range(negs.shape[1])
                   if negatives_mask is None or bool(negatives_mask[i, k])]
        rows.append(log_sum_exp(logits) - logits[0])
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("similarity, tau, masked", [("dot", 1.0, False), ("cosine", 0.05, True),
                                                     ("euclidean", 0.5, True), ("manhattan", 2.0, False)])
def test_matches_loop(dtype, similarity, tau, masked):
    inputs = _tuples()
    inputs["negatives_mask"] = MASK if masked else None
    assert_value_and_grad(lambda **x: n_tuple(**x, temperature=tau, similarity=similarity, reduction="none"),
                          lambda **x: naive_n_tuple(**x, tau=tau, name=similarity), inputs, dtype)


def test_no_in_batch_sharing_and_rows_without_negatives():
    data = _tuples()
    rows = n_tuple(**data, negatives_mask=MASK, reduction="none")
    assert rows[2] == 0  # only the positive is left: -log 1
    # Another row's positive is never a candidate: moving it changes nothing for row 0.
    moved = dict(data, positive=data["positive"].clone())
    moved["positive"][1] = data["anchor"][0] * 5
    assert rows[0] == n_tuple(**moved, negatives_mask=MASK, reduction="none")[0]
    # Batch of 1 is fine (no in-batch negatives needed), unlike info_nce.
    assert torch.isfinite(n_tuple(data["anchor"][:1], data["positive"][:1], data["negatives"][:1]))


def test_relations_to_bpr_and_info_nce():
    data = _tuples()
    # K = 1, t = 1, dot: -log sigmoid(s_p - s_n) = softplus(s_n - s_p) = BPR.
    torch.testing.assert_close(n_tuple(data["anchor"], data["positive"], data["negatives"][:, 0]),
                               bpr(data["anchor"], data["positive"], data["negatives"][:, 0]))
    # Batch of 1: info_nce's candidates are exactly the row's own positive and negatives.
    one = {k: v[:1] for k, v in data.items()}
    torch.testing.assert_close(n_tuple(**one, temperature=0.05, similarity="cosine"), info_nce(**one))


def test_analytic():
    # a=(1,0), p=(2,0), n=(0,3): dot scores 2 and 0 -> log(1 + e^{-2}); with a second negative (1,0): + e^{1-2}.
    a, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    n = torch.tensor([[[0.0, 3.0], [1.0, 0.0]]])
    assert math.isclose(n_tuple(a, p, n[:, :1]).item(), math.log1p(math.exp(-2)), rel_tol=1e-6)
    assert math.isclose(n_tuple(a, p, n).item(), math.log(1 + math.exp(-2) + math.exp(-1)), rel_tol=1e-6)


def test_gradcheck_float64():
    data = {k: v.double().requires_grad_(True) for k, v in _tuples(batch=3, dim=3, k=2).items()}
    mask = MASK[:3, :2]
    for similarity in ("dot", "cosine", "euclidean", "manhattan"):
        assert torch.autograd.gradcheck(
            lambda a, p, n, s=similarity: n_tuple(a, p, n, negatives_mask=mask, similarity=s, temperature=0.5),
            (data["anchor"], data["positive"], data["negatives"]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_low_temperature(dtype):
    data = {k: v.to(dtype).requires_grad_(True) for k, v in _tuples().items()}
    loss = n_tuple(**data, similarity="cosine", temperature=0.01)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() for t in data.values())


@pytest.mark.parametrize("call, message", [
    (lambda d: n_tuple(d["anchor"], d["positive"], d["negatives"][:, :0]), "negatives is empty"),
    (lambda d: n_tuple(d["anchor"], d["positive"][:2], d["negatives"]), "mismatched shapes"),
    (lambda d: n_tuple(**d, temperature=-0.1), "temperature must be > 0"),
    (lambda d: n_tuple(**d, temperature=1.0, scale=1.0), "both temperature"),
    (lambda d: n_tuple(**d, similarity="l1"), "unknown similarity"),
    (lambda d: n_tuple(**d, negatives_mask=MASK[:2]), "negatives_mask must be"),
])
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call(_tuples())


def test_module():
    data = _tuples()
    module = NTupleLoss(scale=2.0, similarity="cosine")
    assert module.get_config_dict() == {"temperature": 0.5, "similarity": "cosine", "reduction": "mean"}
    torch.testing.assert_close(module(**data, negatives_mask=MASK),
                               n_tuple(**data, negatives_mask=MASK, temperature=0.5, similarity="cosine"))
    torch.testing.assert_close(module(anchor=data["anchor"], positive=data["positive"], negative=data["negatives"][:, 0]),
                               n_tuple(data["anchor"], data["positive"], data["negatives"][:, :1], temperature=0.5,
                                       similarity="cosine"))
