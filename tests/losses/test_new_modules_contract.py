"""The module contract of tests/losses/test_modules.py for the losses added with issue 15 (that file's EXPECTED
set lists the older registry; these names join it): registry, roles, config round-trip, citation, docstrings."""

from __future__ import annotations

import inspect

import pytest
import torch

import nlp_contrastive.losses as losses
from nlp_contrastive.losses import LOSSES

ROLES = {"anchor", "positive", "negative", "negatives", "score", "label", "teacher_embedding", "teacher_scores"}
NEW = {"log_loss": losses.log_loss, "angle": losses.angle, "mse_distillation": losses.mse_distillation,
       "margin_mse": losses.margin_mse, "matryoshka": losses.matryoshka}


def _batch_for(module) -> dict:
    g = torch.Generator().manual_seed(0)
    values = {
        "anchor": torch.randn(6, 4, generator=g), "positive": torch.randn(6, 4, generator=g),
        "negative": torch.randn(6, 4, generator=g), "score": torch.rand(6, generator=g),
        "label": torch.tensor([1.0, 0, 1, 0, 1, 0]), "teacher_embedding": torch.randn(6, 4, generator=g),
        "teacher_scores": torch.randn(6, 2, generator=g),
    }
    return {role: values[role] for role in module.roles}


@pytest.mark.parametrize("name", sorted(NEW))
def test_module_contract(name):
    cls = LOSSES[name]
    module = cls(dims=[4, 2]) if name == "matryoshka" else cls()
    assert cls.__name__ in losses.__all__ and getattr(losses, cls.__name__) is cls
    assert set(module.roles) <= ROLES and set(module.optional_roles) <= ROLES and module.roles
    assert module.requires_in_batch_negatives is (name == "matryoshka")  # wraps info_nce by default
    assert cls.citation.lstrip().startswith("@") and "title=" in cls.citation and "year=" in cls.citation
    assert list(module.parameters()) == [] and list(module.buffers()) == []
    config = module.get_config_dict()
    assert cls(**config).get_config_dict() == config
    accepted = inspect.signature(module.forward).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    assert takes_any or all(role in accepted for role in module.roles + module.optional_roles)
    loss = module(**_batch_for(module))
    assert loss.dim() == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(NEW))
def test_public_docstrings_say_formula_inputs_use_and_reference(name):
    doc = inspect.getdoc(NEW[name])
    assert "Inputs" in doc and "When to use" in doc and "Reference" in doc, name
    assert any(symbol in doc for symbol in ("=", "max(0", "log")), name
