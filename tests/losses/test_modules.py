"""The loss modules as a trainer and model cards see them: registry, roles, config round-trip, citations."""

from __future__ import annotations

import inspect

import pytest
import torch

import nlp_contrastive.losses as losses
from nlp_contrastive.losses import LOSSES

ROLES = {"anchor", "positive", "negative", "negatives", "score", "label"}
EXPECTED = {"info_nce", "cosine_similarity", "cosent", "triplet", "batch_hard_triplet", "batch_all_triplet",
            "n_tuple", "contrastive", "online_contrastive", "pairwise_hinge", "bpr"}


def _batch_for(module) -> dict:
    g = torch.Generator().manual_seed(0)
    values = {
        "anchor": torch.randn(6, 4, generator=g), "positive": torch.randn(6, 4, generator=g),
        "negative": torch.randn(6, 4, generator=g), "negatives": torch.randn(6, 2, 4, generator=g),
        "score": torch.rand(6, generator=g), "label": torch.tensor([1.0, 0, 1, 0, 1, 0]),
    }
    return {role: values[role] for role in module.roles}


def test_registry_names_the_contract():
    assert set(LOSSES) == EXPECTED | {"log_loss", "angle", "mse_distillation", "margin_mse", "matryoshka"}
    for name, cls in LOSSES.items():
        assert cls.__name__ in losses.__all__ and getattr(losses, cls.__name__) is cls, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_module_contract(name):
    cls = LOSSES[name]
    module = cls()
    assert set(cls.roles) <= ROLES and set(cls.optional_roles) <= ROLES and cls.roles
    assert cls.requires_in_batch_negatives is (name == "info_nce")
    assert cls.citation.lstrip().startswith("@") and "title=" in cls.citation and "year=" in cls.citation
    # Hyperparameters only, no parameters or buffers; the config re-creates an equal module.
    assert list(module.parameters()) == [] and list(module.buffers()) == []
    config = module.get_config_dict()
    assert cls(**config).get_config_dict() == config
    # forward takes each role by keyword, so a trainer can call loss(**embeddings_by_role).
    accepted = inspect.signature(module.forward).parameters
    assert all(role in accepted for role in cls.roles + cls.optional_roles)
    loss = module(**_batch_for(module))
    assert loss.dim() == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_public_docstrings_say_formula_inputs_use_and_reference(name):
    function = {"cosine_similarity": losses.cosine_similarity_loss}.get(name) or getattr(losses, name)
    doc = inspect.getdoc(function)
    assert "Inputs" in doc and "When to use" in doc and "Reference" in doc, name
    assert any(symbol in doc for symbol in ("=", "max(0", "log")), name  # a formula
