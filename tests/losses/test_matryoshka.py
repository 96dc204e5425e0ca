"""Matryoshka wrapper: the weighted sum over truncated (re-normalised) embeddings, order-free dims, checks, trainer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from nlp_contrastive.losses import (
    LOSSES,
    CoSENTLoss,
    InfoNCELoss,
    MatryoshkaLoss,
    MSEDistillationLoss,
    info_nce,
    matryoshka,
    prefix_similarity_loss,
)
from nlp_contrastive.train import main
from tests.conftest import REPO_ROOT
from tests.losses.naive_losses import assert_close_scaled

B, K, D = 6, 2, 12


def _embeddings(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, generator=g, dtype=dtype), torch.randn(B, D, generator=g, dtype=dtype),
            torch.randn(B, K, D, generator=g, dtype=dtype))


def _by_hand(a, p, n, dims, weights):
    """sum_d w_d * info_nce on the first d dims, each row re-normalised: written without the wrapper."""
    total = 0
    for d, w in zip(dims, weights, strict=True):
        cut = [F.normalize(x[..., :d], dim=-1) for x in (a, p, n)]
        total = total + w * info_nce(*cut, temperature=0.05)
    return total


def test_equals_weighted_sum_over_truncated_dims_in_value_and_gradient():
    a, p, n = (x.requires_grad_() for x in _embeddings())
    dims, weights = [12, 8, 4, 2], [1.0, 0.5, 2.0, 1.0]
    ours = MatryoshkaLoss(InfoNCELoss(temperature=0.05), dims=dims, weights=weights)(anchor=a, positive=p, negatives=n)
    expected = _by_hand(a, p, n, dims, weights)
    assert_close_scaled(ours, expected)
    for g_ours, g_ref in zip(torch.autograd.grad(ours, (a, p, n)), torch.autograd.grad(expected, (a, p, n)),
                             strict=True):
        assert_close_scaled(g_ours, g_ref)
    assert torch.autograd.gradcheck(
        lambda x, y, z: MatryoshkaLoss(InfoNCELoss(temperature=0.5), dims=[12, 5, 3])(anchor=x, positive=y, negatives=z),
        (a, p, n))


def test_order_of_dims_does_not_matter_and_duplicates_are_merged():
    a, p, n = _embeddings()
    inner = InfoNCELoss(temperature=0.05)
    reference = MatryoshkaLoss(inner, dims=[12, 8, 4], weights=[3.0, 2.0, 1.0])(anchor=a, positive=p, negatives=n)
    shuffled = MatryoshkaLoss(inner, dims=[4, 12, 8], weights=[1.0, 3.0, 2.0])
    assert shuffled.dims == (12, 8, 4) and shuffled.weights == (3.0, 2.0, 1.0)
    torch.testing.assert_close(shuffled(anchor=a, positive=p, negatives=n), reference)
    assert MatryoshkaLoss(inner, dims=[4, 8, 4, 12]).dims == (12, 8, 4)
    torch.testing.assert_close(MatryoshkaLoss(inner, dims=[4, 8, 4, 12])(anchor=a, positive=p, negatives=n),
                               MatryoshkaLoss(inner, dims=[12, 8, 4])(anchor=a, positive=p, negatives=n))


def test_passes_scores_masks_ids_unchanged_and_truncates_teacher_embeddings():
    a, p, n = _embeddings()
    score = torch.linspace(0, 1, B, dtype=torch.float64)
    wrapped = MatryoshkaLoss(CoSENTLoss(), dims=[12, 6])
    expected = sum(CoSENTLoss()(anchor=F.normalize(a[:, :d], dim=-1), positive=F.normalize(p[:, :d], dim=-1),
                                score=score) for d in (12, 6))
    # Extra inputs the wrapped loss does not take (ids, a stray negatives tensor) are dropped, as the trainer does.
    torch.testing.assert_close(wrapped(anchor=a, positive=p, score=score, anchor_ids=torch.arange(B)), expected)
    teacher = torch.randn(B, D, dtype=torch.float64)
    distil = MatryoshkaLoss(MSEDistillationLoss(), dims=[12, 4])
    expected = sum(F.mse_loss(F.normalize(a[:, :d], dim=-1), teacher[:, :d]) for d in (12, 4))
    torch.testing.assert_close(distil(anchor=a, teacher_embedding=teacher), expected)
    mask = torch.tensor([[True, False]] * B)
    torch.testing.assert_close(
        MatryoshkaLoss(InfoNCELoss(), dims=[8])(anchor=a, positive=p, negatives=n, negatives_mask=mask),
        info_nce(*(F.normalize(x[..., :8], dim=-1) for x in (a, p, n)), negatives_mask=mask))


def test_normalize_false_truncates_only():
    a, p, _ = _embeddings()
    wrapped = MatryoshkaLoss(InfoNCELoss(similarity="dot", scale=1.0), dims=[6], normalize=False)
    torch.testing.assert_close(wrapped(anchor=a, positive=p), info_nce(a[:, :6], p[:, :6], similarity="dot", scale=1.0))


def _prefix_similarity_by_hand(rows, dims, weights):
    """The self-distillation term written as loops over pairs (full-size cosines as plain numbers)."""
    n, full = rows.shape
    target = [[F.cosine_similarity(rows[i], rows[j], dim=0).item() for j in range(n)] for i in range(n)]
    total = 0
    for d, w in zip(dims, weights, strict=True):
        if d == full:
            continue
        terms = [(F.cosine_similarity(rows[i, :d], rows[j, :d], dim=0) - target[i][j]) ** 2
                 for i in range(n) for j in range(n) if i != j]
        total = total + w * sum(terms) / len(terms)
    return total


def test_self_distill_adds_the_prefix_similarity_term_with_the_full_size_target_held_fixed():
    a, p, n = (x.requires_grad_() for x in _embeddings())
    dims, weights = [12, 8, 4], [1.0, 2.0, 0.5]
    inner = InfoNCELoss(temperature=0.05)
    ours = MatryoshkaLoss(inner, dims=dims, weights=weights, self_distill=0.7)(anchor=a, positive=p, negatives=n)
    rows = torch.cat([a, p, n.reshape(-1, D)])
    term = _prefix_similarity_by_hand(rows, dims, weights)
    expected = _by_hand(a, p, n, dims, weights) + 0.7 * term
    assert_close_scaled(ours, expected)
    for g_ours, g_ref in zip(torch.autograd.grad(ours, (a, p, n)), torch.autograd.grad(expected, (a, p, n)),
                             strict=True):
        assert_close_scaled(g_ours, g_ref)  # no gradient through the full-size similarities
    assert_close_scaled(prefix_similarity_loss({"anchor": a, "positive": p, "negatives": n}, [4, 12, 8],
                                               [0.5, 1.0, 2.0]), term)
    # Off (the default) it is sentence-transformers' MatryoshkaLoss; one row has no pair to compare.
    torch.testing.assert_close(MatryoshkaLoss(inner, dims=dims, self_distill=0)(anchor=a, positive=p),
                               MatryoshkaLoss(inner, dims=dims)(anchor=a, positive=p))
    assert prefix_similarity_loss({"anchor": a[:1]}, [12, 4]).item() == 0.0
    # Padded negatives (negatives_mask False) are not texts of the batch: left out.
    mask = torch.tensor([[True, False], [True, True], [False, False], [True, False], [False, True], [True, True]])
    real = torch.cat([a, p, n[mask]])
    assert_close_scaled(prefix_similarity_loss({"anchor": a, "positive": p, "negatives": n, "negatives_mask": mask},
                                               dims, weights), _prefix_similarity_by_hand(real, dims, weights))
    # Only the prefixes move: an embedding whose 4-dim prefix already ranks like the full vector costs nothing.
    aligned = torch.cat([torch.randn(5, 4, dtype=torch.float64), torch.zeros(5, 8, dtype=torch.float64)], dim=1)
    assert prefix_similarity_loss({"anchor": aligned}, [12, 4]).item() == pytest.approx(0.0, abs=1e-12)


def test_roles_registry_name_and_config_round_trip():
    wrapped = LOSSES["matryoshka"](loss="info_nce", loss_kwargs={"temperature": 0.1}, dims=[8, 4])
    assert isinstance(wrapped.loss, InfoNCELoss) and wrapped.loss.get_config_dict()["temperature"] == 0.1
    assert wrapped.roles == ("anchor", "positive") and wrapped.optional_roles == ("negative", "negatives")
    assert wrapped.requires_in_batch_negatives
    assert not MatryoshkaLoss(CoSENTLoss(), dims=[4]).requires_in_batch_negatives
    config = wrapped.get_config_dict()
    assert config["loss"] == "info_nce" and config["dims"] == [8, 4] and config["weights"] == [1.0, 1.0]
    assert config["self_distill"] == 0.0
    assert MatryoshkaLoss(**config).get_config_dict() == config
    assert MatryoshkaLoss.citation.startswith("@") and "Matryoshka" in MatryoshkaLoss.citation


@pytest.mark.parametrize("kwargs, message", [
    ({"dims": []}, "non-empty list"),
    ({"dims": 64}, "non-empty list"),
    ({"dims": [64, 0]}, "positive integers"),
    ({"dims": [64, 32.5]}, "positive integers"),
    ({"dims": [64, 32], "weights": [1.0]}, "one number per dimension"),
    ({"dims": [64, 32], "weights": [1.0, -1.0]}, "finite numbers > 0"),
    ({"dims": [64, 64], "weights": [1.0, 2.0]}, r"lists \[64\] more than once"),
    ({"loss": "no_such_loss"}, "wraps a loss module or one of"),
    ({"loss": "matryoshka"}, "wraps a loss module or one of"),
    ({"loss": "info_nce", "loss_kwargs": {"temprature": 0.1}}, "bad loss_kwargs for 'info_nce'"),
    ({"loss": InfoNCELoss(), "loss_kwargs": {"temperature": 0.1}}, "loss_kwargs are for a loss given by name"),
    ({"self_distill": -1.0}, "self_distill must be a finite number >= 0"),
    ({"self_distill": float("nan")}, "self_distill must be a finite number >= 0"),
    ({"self_distill": "yes"}, "self_distill must be a finite number >= 0"),
])
def test_bad_settings_fail_with_the_problem_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatryoshkaLoss(**kwargs)


def test_dims_larger_than_the_model_fail_naming_its_dimension():
    a, p, _ = _embeddings()
    wrapped = MatryoshkaLoss(InfoNCELoss(), dims=[16, 8])
    with pytest.raises(ValueError, match="exceed the model's embedding dimension 12: use dims <= 12"):
        wrapped(anchor=a, positive=p)
    with pytest.raises(ValueError, match="embedding dimension 12"):
        wrapped.check_embedding_dim(12)
    with pytest.raises(ValueError, match="exceed the model's embedding dimension 12"):
        matryoshka(InfoNCELoss(), {"anchor": a, "positive": p}, [13])


TINY = ["--max_train_rows", "48", "--per_device_train_batch_size", "8", "--eval_tasks", "[]",
        "--final_eval_tasks", "[]", "--logging_steps", "1", "--use_cpu", "true", "--report_to", "none",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false", "--max_steps", "2"]


@pytest.mark.parametrize("cached", ["false", "true"])
def test_trains_from_a_recipe_plain_and_cached(cached, tiny_model_dir, tmp_path, data_dir):
    """loss: matryoshka over info_nce through the CLI entry point, with and without GradCache (hidden size 32)."""
    kwargs = "{loss: info_nce, loss_kwargs: {temperature: 0.05}, dims: [8, 32, 16], self_distill: 1.0}"
    out = tmp_path / "o"
    assert main([str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml"), "--model_name_or_path", str(tiny_model_dir),
                 "--output_dir", str(out), "--loss", "matryoshka", "--loss_kwargs", kwargs, "--cached", cached,
                 "--cache_mini_batch_size", "3", *TINY]) == 0
    run = json.loads((out / "training_run.json").read_text())
    assert run["final_train_loss"] > 0
    assert run["loss"]["name"] == "MatryoshkaLoss" and run["loss"]["config"]["dims"] == [32, 16, 8]
    assert run["loss"]["config"]["self_distill"] == 1.0


def test_recipe_with_dims_above_the_model_size_fails_with_one_line(tiny_model_dir, tmp_path, data_dir, capsys):
    kwargs = "{loss: info_nce, dims: [64, 32]}"
    code = main([str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml"), "--model_name_or_path", str(tiny_model_dir),
                 "--output_dir", str(tmp_path / "o"), "--loss", "matryoshka", "--loss_kwargs", kwargs, *TINY])
    assert code == 2 and "embedding dimension 32" in capsys.readouterr().err
