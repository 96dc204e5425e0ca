"""The loss modules as a trainer and model cards see them: registry, roles, config round-trip, citations."""

from __future__ import annotations

import inspect

import pytest
import torch

import nlp_contrastive.losses as losses
from nlp_contrastive.losses import LOSSES

ROLES = {"anchor", "positive", "negative", "negatives", "score", "label", "teacher_embedding", "teacher_scores"}
EXPECTED = {"info_nce", "cosine_similarity", "cosent", "triplet", "batch_hard_triplet", "batch_all_triplet",
            "n_tuple", "contrastive", "online_contrastive", "pairwise_hinge", "bpr",
            "log_loss", "angle", "mse_distillation", "margin_mse", "matryoshka"}
IN_BATCH = {"info_nce", "matryoshka"}  # matryoshka wraps info_nce by default


def _batch_for(module) -> dict:
    g = torch.Generator().manual_seed(0)
    values = {
        "anchor": torch.randn(6, 4, generator=g), "positive": torch.randn(6, 4, generator=g),
        "negative": torch.randn(6, 4, generator=g), "negatives": torch.randn(6, 2, 4, generator=g),
        "score": torch.rand(6, generator=g), "label": torch.tensor([1.0, 0, 1, 0, 1, 0]),
        "teacher_embedding": torch.randn(6, 4, generator=g), "teacher_scores": torch.randn(6, 2, generator=g),
    }
    return {role: values[role] for role in module.roles}


def test_registry_names_the_contract():
    assert set(LOSSES) == EXPECTED
    for name, cls in LOSSES.items():
        assert cls.__name__ in losses.__all__ and getattr(losses, cls.__name__) is cls, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_module_contract(name):
    cls = LOSSES[name]
    module = cls(dims=[4, 2]) if name == "matryoshka" else cls()
    assert set(module.roles) <= ROLES and set(module.optional_roles) <= ROLES and module.roles
    assert module.requires_in_batch_negatives is (name in IN_BATCH)
    assert cls.citation.lstrip().startswith("@") and "title=" in cls.citation and "year=" in cls.citation
    # Hyperparameters only, no parameters or buffers; the config re-creates an equal module.
    assert list(module.parameters()) == [] and list(module.buffers()) == []
    config = module.get_config_dict()
    assert cls(**config).get_config_dict() == config
    # forward takes each role by keyword, so a trainer can call loss(**embeddings_by_role).
    accepted = inspect.signature(module.forward).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    assert takes_any or all(role in accepted for role in module.roles + module.optional_roles)
    loss = module(**_batch_for(module))
    assert loss.dim() == 0 and torch.isfinite(loss)


# Non-default hyperparameters for each module, and the pure function it must equal (roles passed in order).
NON_DEFAULT = {
    "info_nce": (losses.info_nce, {"temperature": 0.2, "symmetric": True, "similarity": "dot"}),
    "cosine_similarity": (losses.cosine_similarity_loss, {"reduction": "sum"}),
    "cosent": (losses.cosent, {"temperature": 0.3}),
    "triplet": (losses.triplet, {"margin": 0.3, "distance": "cosine", "reduction": "sum"}),
    "batch_hard_triplet": (losses.batch_hard_triplet, {"margin": 0.4, "distance": "cosine"}),
    "batch_all_triplet": (losses.batch_all_triplet, {"margin": 3.0, "distance": "euclidean", "reduction": "sum"}),
    "n_tuple": (losses.n_tuple, {"temperature": 0.5, "similarity": "cosine"}),
    "contrastive": (losses.contrastive, {"margin": 2.5, "distance": "manhattan"}),
    "online_contrastive": (losses.online_contrastive, {"margin": 2.5, "distance": "cosine", "reduction": "sum"}),
    "pairwise_hinge": (losses.pairwise_hinge, {"margin": 0.2, "similarity": "cosine"}),
    "bpr": (losses.bpr, {"similarity": "euclidean", "reduction": "sum"}),
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_module_is_the_pure_function_with_its_config(name):
    """The module stores exactly the hyperparameters it was given, rebuilds from its config, and forward calls
    the pure function with them (a dropped or renamed hyperparameter changes the value)."""
    function, kwargs = NON_DEFAULT[name]
    module = LOSSES[name](**kwargs)
    config = module.get_config_dict()
    assert {k: config[k] for k in kwargs} == kwargs
    assert LOSSES[name](**config).get_config_dict() == config
    batch = _batch_for(module)
    expected = function(*(batch[role] for role in module.roles), **kwargs)
    torch.testing.assert_close(module(**batch), expected, rtol=0, atol=0)
    default = LOSSES[name]()(**batch)
    assert not torch.isclose(expected, default), "these hyperparameters do not change the loss: pick others"
