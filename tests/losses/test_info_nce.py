"""info_nce against a loop over the formula, analytic fixtures, duplicate masking, half precision, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from naive_losses import assert_value_and_grad, log_sum_exp, sim

from nlp_contrastive.losses import InfoNCELoss, info_nce


def _id(ids, *index):
    return None if ids is None else int(ids[index])


def _row_loss(query, target, candidates, own_texts, own_key, tau, name):
    """-log softmax of the target among candidates (vector, text id, owner key), masking per the docstring rule."""
    seen, logits = set(), []
    for c, (vector, text, owner) in enumerate(candidates):
        repeat = text is not None and text in seen
        if text is not None:
            seen.add(text)
        if c != target and (repeat or (text is not None and text in own_texts)
                            or (owner is not None and owner == own_key)):
            continue
        logits.append(sim(query, vector, name) / tau)
    return log_sum_exp(logits) - sim(query, candidates[target][0], name) / tau


def naive_info_nce(anchor, positive, negatives=None, negatives_mask=None, *, tau=0.05, name="cosine",
                   symmetric=False, anchor_ids=None, positive_ids=None, negative_ids=None):
    """Per-row losses [B] by explicit loops: candidates = all positives, then all real hard negatives."""
    batch = len(anchor)
    candidates = [(positive[j], _id(positive_ids, j), _id(anchor_ids, j)) for j in range(batch)]
    if negatives is not None:
        negs = negatives if negatives.dim() == 3 else negatives.unsqueeze(1)
        neg_ids = negative_ids if negative_ids is None or negative_ids.dim() == 2 else negative_ids.unsqueeze(1)
        for j in range(batch):
            for k in range(negs.shape[1]):
                if negatives_mask is None or bool(negatives_mask[j, k]):
                    candidates.append((negs[j, k], _id(neg_ids, j, k), None))
    rows = []
    for i in range(batch):
        own = {t for t in (_id(positive_ids, i), _id(anchor_ids, i)) if t is not None}
        loss = _row_loss(anchor[i], i, candidates, own, _id(anchor_ids, i), tau, name)
        if symmetric:
            anchors = [(anchor[j], _id(anchor_ids, j), _id(positive_ids, j)) for j in range(batch)]
            back = _row_loss(positive[i], i, anchors, own, _id(positive_ids, i), tau, name)
            loss = (loss + back) / 2
        rows.append(loss)
    return torch.stack(rows)


def _batch(seed=0, batch=5, dim=6, k=3):
    g = torch.Generator().manual_seed(seed)
    return {"anchor": torch.randn(batch, dim, generator=g), "positive": torch.randn(batch, dim, generator=g),
            "negatives": torch.randn(batch, k, dim, generator=g)}


def _duplicates():
    """Texts repeated across roles: shared positives, a shared anchor, negatives equal to positives and each other."""
    data = _batch(seed=3, batch=5, k=2)
    a, p, n = data["anchor"], data["positive"], data["negatives"]
    p[3] = p[1]  # rows 1 and 3 share a positive text
    a[4] = a[0]  # rows 0 and 4 share an anchor text
    n[2, 0] = p[0]  # a hard negative that is another row's positive
    n[0, 1] = n[1, 0]  # the same hard negative twice
    n[3, 1] = a[3]  # a hard negative equal to its own anchor
    data.update(
        anchor_ids=torch.tensor([10, 11, 12, 13, 10]),
        positive_ids=torch.tensor([20, 21, 22, 21, 24]),
        negative_ids=torch.tensor([[30, 31], [31, 33], [20, 35], [36, 13], [38, 39]]),
        negatives_mask=torch.tensor([[True, True], [True, True], [True, False], [True, True], [False, False]]),
    )
    return data


CASES = {
    "in-batch only, cosine": (dict(negatives=None), dict(tau=0.05, name="cosine")),
    "one negative per row, dot": ("one", dict(tau=1.0, name="dot")),
    "K negatives with padding, euclidean": ("mask", dict(tau=0.5, name="euclidean")),
    "symmetric, manhattan, padding": ("mask", dict(tau=0.7, name="manhattan", symmetric=True)),
    "symmetric with negatives, cosine": ({}, dict(tau=0.05, name="cosine", symmetric=True)),
}


def _case_inputs(spec):
    data = _batch()
    if spec == "one":
        data["negatives"] = data["negatives"][:, 0]
    elif spec == "mask":
        data["negatives_mask"] = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [1, 0, 1]]).bool()
    elif isinstance(spec, dict):
        data.update(spec)
    return data


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_naive_loop(case, dtype):
    spec, params = CASES[case]
    inputs = _case_inputs(spec)
    ours = lambda **x: info_nce(**x, temperature=params["tau"], similarity=params["name"],  # noqa: E731
                                symmetric=params.get("symmetric", False), reduction="none")
    naive = lambda **x: naive_info_nce(**x, **params)  # noqa: E731
    assert_value_and_grad(ours, naive, inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("symmetric", [False, True])
def test_duplicate_masking_matches_naive_loop(symmetric, dtype):
    inputs = _duplicates()
    ours = lambda **x: info_nce(**x, temperature=0.1, symmetric=symmetric, reduction="none")  # noqa: E731
    naive = lambda **x: naive_info_nce(**x, tau=0.1, symmetric=symmetric)  # noqa: E731
    assert_value_and_grad(ours, naive, inputs, dtype)


def test_reductions_and_scale_alias():
    data = _batch()
    rows = info_nce(**data, reduction="none")
    assert rows.shape == (5,)
    torch.testing.assert_close(info_nce(**data), rows.mean())
    torch.testing.assert_close(info_nce(**data, reduction="sum"), rows.sum())
    torch.testing.assert_close(info_nce(**data, scale=20.0), info_nce(**data, temperature=0.05))
    assert not torch.allclose(info_nce(**data, scale=10.0), info_nce(**data))


def test_gradcheck_float64():
    data = {k: v[:3, ...].double().requires_grad_(True) for k, v in _batch(batch=3, dim=4, k=2).items()}
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    for similarity in ("cosine", "dot", "euclidean", "manhattan"):
        assert torch.autograd.gradcheck(
            lambda a, p, n, s=similarity: info_nce(a, p, n, negatives_mask=mask, similarity=s, temperature=0.5,
                                                   symmetric=True),
            (data["anchor"], data["positive"], data["negatives"]))
    dup = {k: (v.double().requires_grad_(True) if v.is_floating_point() else v) for k, v in _duplicates().items()}
    assert torch.autograd.gradcheck(
        lambda a, p, n: info_nce(a, p, n, negatives_mask=dup["negatives_mask"], anchor_ids=dup["anchor_ids"],
                                 positive_ids=dup["positive_ids"], negative_ids=dup["negative_ids"], symmetric=True),
        (dup["anchor"], dup["positive"], dup["negatives"]))


# ------------------------------------------------------------------------------------------ analytic fixtures
def test_analytic_two_orthogonal_pairs():
    # cos(a_i, p_i) = 1, cos(a_i, p_j) = 0: each row is -log(e^{1/t} / (e^{1/t} + e^0)) = log(1 + e^{-1/t}).
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for t in (1.0, 0.5, 0.2):
        assert math.isclose(info_nce(a, a.clone(), temperature=t).item(), math.log1p(math.exp(-1 / t)), rel_tol=1e-6)


def test_analytic_with_hard_negatives():
    # Row 1 (a=(1,0)) scores p1: 1, p2: 0, n1=(-1,0): -1, n2=(0,-1): 0 (t = 1); row 2 is the mirror image.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    n = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    expected = math.log(1 + math.exp(-1) + math.exp(-2) + math.exp(-1))
    assert math.isclose(info_nce(a, a.clone(), n, temperature=1.0).item(), expected, rel_tol=1e-6)
    # The symmetric direction sees only anchors: log(1 + e^{-1}); the loss averages both directions.
    symmetric = info_nce(a, a.clone(), n, temperature=1.0, symmetric=True).item()
    assert math.isclose(symmetric, (expected + math.log1p(math.exp(-1))) / 2, rel_tol=1e-6)


def test_analytic_dot_product_on_paper():
    # a1=(2,0), p1=(1,0), p2=(0,1): dot scores 2 and 0 -> log(1 + e^{-2}); a2=(0,1): scores 0 and 1 -> log(1 + e^{-1}).
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rows = info_nce(a, p, similarity="dot", temperature=1.0, reduction="none")
    torch.testing.assert_close(rows, torch.tensor([math.log1p(math.exp(-2)), math.log1p(math.exp(-1))]))


# ------------------------------------------------------------------------------------------- duplicate masking
def test_shared_positive_equals_loss_without_the_duplicate():
    """Rows 0 and 2 share a positive text: each row's loss is the loss with the other copy absent."""
    g = torch.Generator().manual_seed(7)
    a, p = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    p[2] = p[0]  # same text, same embedding
    ids = torch.tensor([100, 101, 100, 103])
    masked = info_nce(a, p, positive_ids=ids, reduction="none")

    def without(drop: int, row: int) -> torch.Tensor:
        keep = [i for i in range(4) if i != drop]
        return info_nce(a[keep], p[keep], reduction="none")[keep.index(row)]

    expected = torch.stack([without(2, 0), without(2, 1), without(0, 2), without(2, 3)])
    torch.testing.assert_close(masked, expected)
    torch.testing.assert_close(info_nce(a, p, positive_ids=ids), expected.mean())
    # Without ids the duplicate acts as a negative (and the loss differs): the test can fail.
    assert not torch.allclose(info_nce(a, p, reduction="none"), expected)


def test_padded_negative_slots_are_no_candidates_for_any_row():
    data = _batch(batch=3, k=2)
    negatives = data["negatives"].clone()
    negatives[1, 1] = data["positive"][0] * 3  # garbage in a padded slot, close to row 0's positive
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    padded = info_nce(data["anchor"], data["positive"], negatives, negatives_mask=mask, reduction="none")
    # Same as feeding the real negatives only, through a layout where every slot is real.
    flat = [negatives[0, 0], negatives[0, 1], negatives[1, 0], negatives[2, 0], negatives[2, 1]]
    candidates_row_layout = torch.stack([torch.stack(flat[:2]), torch.stack([flat[2], flat[3]]), torch.stack([flat[4], flat[4]])])
    duplicate_mask = torch.tensor([[True, True], [True, True], [True, False]])
    reference = info_nce(data["anchor"], data["positive"], candidates_row_layout, negatives_mask=duplicate_mask,
                         reduction="none")
    torch.testing.assert_close(padded, reference)
    assert not torch.allclose(padded, info_nce(data["anchor"], data["positive"], negatives, reduction="none"))


# ------------------------------------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_no_overflow_at_low_temperature(dtype):
    data = _batch(seed=1, batch=8, dim=16, k=2)
    half = {k: v.to(dtype).requires_grad_(True) for k, v in data.items()}
    loss = info_nce(**half, temperature=0.01, symmetric=True)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() for t in half.values())
    # Similarities are taken in float32 from the half inputs: equal to float32 on the same (rounded) values.
    reference = info_nce(**{k: v.detach().float() for k, v in half.items()}, temperature=0.01, symmetric=True)
    torch.testing.assert_close(loss, reference)
    # Dot products of large vectors: s/t = 9e4 would overflow fp16 (max 65504) if divided before the upcast.
    big = {k: (30 * torch.nn.functional.normalize(v, dim=-1)).to(dtype) for k, v in data.items()}
    assert torch.isfinite(info_nce(**big, temperature=0.01, similarity="dot"))


def test_autocast_does_not_lower_logit_precision():
    """Inside a Trainer's bf16 autocast the loss still equals the float32 one (bf16 cosines would be off ~4e-3)."""
    data = _batch(seed=2, batch=8, dim=16, k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = info_nce(**data, temperature=0.01, symmetric=True)
    torch.testing.assert_close(inside, info_nce(**data, temperature=0.01, symmetric=True))


# ------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("call, message", [
    (lambda a, p, n: info_nce(a, p, temperature=0.0), "temperature must be > 0"),
    (lambda a, p, n: info_nce(a, p, temperature=-1), "temperature must be > 0"),
    (lambda a, p, n: info_nce(a, p, temperature=0.05, scale=20), "both temperature"),
    (lambda a, p, n: info_nce(a, p, scale=0), "scale must be > 0"),
    (lambda a, p, n: info_nce(a, p[:3]), "mismatched shapes"),
    (lambda a, p, n: info_nce(a, p[:, :2]), "mismatched shapes"),
    (lambda a, p, n: info_nce(a[0], p[0]), "2-D"),
    (lambda a, p, n: info_nce(a[:1], p[:1]), "batch of 1"),
    (lambda a, p, n: info_nce(a[:1], p[:1], n[:1], symmetric=True), r"symmetric=True\) needs >= 2"),
    (lambda a, p, n: info_nce(a, p, n[:, :0]), "negatives is empty"),
    (lambda a, p, n: info_nce(a, p, n[:3]), "negatives must be"),
    (lambda a, p, n: info_nce(a, p, n, negatives_mask=torch.ones(4, 2, dtype=torch.bool)), "negatives_mask must be"),
    (lambda a, p, n: info_nce(a, p, negatives_mask=torch.ones(4, 3, dtype=torch.bool)), "without negatives"),
    (lambda a, p, n: info_nce(a, p, similarity="cos"), "unknown similarity 'cos'"),
    (lambda a, p, n: info_nce(a, p, reduction="avg"), "unknown reduction"),
    (lambda a, p, n: info_nce(a, p, positive_ids=torch.arange(3)), "positive_ids must have shape"),
    (lambda a, p, n: info_nce(a, p, anchor_ids=torch.rand(4)), "integer tensor"),
    (lambda a, p, n: info_nce(a, p, n, negative_ids=torch.arange(4)), "negative_ids must have shape"),
])
def test_bad_inputs_raise_one_line_value_errors(call, message):
    a, p, n = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 3, 6)
    with pytest.raises(ValueError, match=message) as info:
        call(a, p, n)
    assert "\n" not in str(info.value)


def test_batch_of_one_with_negatives_is_fine():
    a, p, n = torch.randn(1, 6), torch.randn(1, 6), torch.randn(1, 2, 6)
    assert torch.isfinite(info_nce(a, p, n))


# ------------------------------------------------------------------------------------------- module
def test_module_calls_function_with_roles():
    data = _duplicates()
    module = InfoNCELoss(scale=10.0, symmetric=True)
    assert module.get_config_dict() == {"temperature": 0.1, "similarity": "cosine", "symmetric": True,
                                        "gather_across_devices": False, "reduction": "mean"}
    by_role = module(anchor=data["anchor"], positive=data["positive"], negatives=data["negatives"],
                     negatives_mask=data["negatives_mask"], anchor_ids=data["anchor_ids"],
                     positive_ids=data["positive_ids"], negative_ids=data["negative_ids"])
    torch.testing.assert_close(by_role, info_nce(**data, temperature=0.1, symmetric=True))
    one = module(anchor=data["anchor"], positive=data["positive"], negative=data["negatives"][:, 0],
                 negative_ids=data["negative_ids"][:, 0])
    torch.testing.assert_close(one, info_nce(data["anchor"], data["positive"], data["negatives"][:, :1],
                                             negative_ids=data["negative_ids"][:, :1], temperature=0.1, symmetric=True))
    with pytest.raises(ValueError, match="both temperature"):
        InfoNCELoss(temperature=0.1, scale=10)
    with pytest.raises(ValueError, match="not both|both negative"):
        module(anchor=data["anchor"], positive=data["positive"], negative=data["negatives"][:, 0],
               negatives=data["negatives"])


# ------------------------------------------------------------------------------ known positives (multi-positive)
def _multi_positive_batch():
    """Rows 0 and 1 are the same query with two relevant documents (ids 10, 11); row 2 is another query whose
    hard negative is document 11 and whose own positive is 12. Row 0 also knows document 14 as relevant (row 1's
    hard negative: a positive the miner didn't know of for row 1's copy), so it is masked for row 0 only."""
    g = torch.Generator().manual_seed(0)
    anchor, positive, negatives = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, 1, 8, generator=g)
    negatives[2, 0] = positive[1]  # the same text as row 1's positive
    return dict(anchor=anchor, positive=positive, negatives=negatives,
                positive_ids=torch.tensor([10, 11, 12]), negative_ids=torch.tensor([[13], [14], [11]]),
                known_positive_ids=torch.tensor([[10, 11, 14], [11, 10, -1], [12, -1, -1]]))


def test_known_positives_are_never_negatives_on_paper():
    data = _multi_positive_batch()
    tau = 0.05
    s = lambda x, y: torch.nn.functional.cosine_similarity(x, y, dim=0) / tau  # noqa: E731
    a, p, n = data["anchor"], data["positive"], data["negatives"][:, 0]
    candidates = [p[0], p[1], p[2], n[0], n[1], n[2]]  # ids 10, 11, 12, 13, 14, 11
    allowed = {0: [0, 2, 3], 1: [1, 2, 3, 4], 2: [0, 1, 2, 3, 4]}  # candidate 5 repeats id 11: masked for all
    expected = torch.stack([torch.logsumexp(torch.stack([s(a[i], candidates[c]) for c in allowed[i]]), 0)
                            - s(a[i], p[i]) for i in range(3)])
    losses = info_nce(**data, reduction="none")
    torch.testing.assert_close(losses, expected)
    without = info_nce(**{k: v for k, v in data.items() if k != "known_positive_ids"}, reduction="none")
    assert (without[:2] > losses[:2]).all() and torch.isclose(without[2], losses[2])  # only rows 0, 1 change
    module = InfoNCELoss()(data["anchor"], data["positive"], data["negatives"], positive_ids=data["positive_ids"],
                           negative_ids=data["negative_ids"], known_positive_ids=data["known_positive_ids"])
    torch.testing.assert_close(module, losses.mean())


def test_known_positive_ids_need_the_candidate_ids():
    data = _multi_positive_batch()
    with pytest.raises(ValueError, match="known_positive_ids needs positive_ids"):
        info_nce(data["anchor"], data["positive"], known_positive_ids=data["known_positive_ids"])
    with pytest.raises(ValueError, match=r"known_positive_ids must have shape \[3, P\]"):
        info_nce(data["anchor"], data["positive"], positive_ids=data["positive_ids"],
                 known_positive_ids=torch.tensor([10, 11, 12]))


def _known_positive_worker(rank: int, port: int, data: dict, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rows = slice(0, 1) if rank == 0 else slice(1, 3)  # uneven halves: the multi-positive query is split
        local = {k: v[rows].clone() for k, v in data.items()}
        local["anchor"].requires_grad_(True)
        losses = info_nce(**local, gather_across_devices=True, reduction="none")
        torch.save(losses.detach(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_known_positives_are_masked_across_devices(tmp_path):
    """Row 0 on rank 0 must not see row 1's positive, which lives on rank 1 (gathered candidates)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = _multi_positive_batch()
    torch.multiprocessing.spawn(_known_positive_worker, args=(port, data, str(tmp_path)), nprocs=2)
    gathered = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)])
    torch.testing.assert_close(gathered, info_nce(**data, reduction="none"))
