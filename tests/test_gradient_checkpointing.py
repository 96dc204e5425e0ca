"""Gradient (activation) checkpointing through the trainer: DDP with 2 gloo processes, plain and GradCache.

`gradient_checkpointing: true` recomputes each layer's forward in the backward; with GradCache the encoder is
re-run per mini-batch and checkpointing recomputes inside that re-run (GritLM's GradCache failed there). Dropout is
on, so the recomputed forwards must replay the same dropout masks (torch's checkpoint and our RandomStateSnapshot
both restore the random state). One launch runs all six trainings (tests/engine_train.py): InfoNCE with
gather_across_devices, gradient accumulation 2, plain SGD, on the no-duplicates sampler's batches of 40 rows (global
16, 16 and a short 8), without and with checkpointing (transformers' default, non-reentrant), uncached and cached.
Checkpointed runs must equal the same run without it: weights within 1e-6. Reentrant checkpointing cannot run under
DDP (each layer's backward is its own, DDP marks a parameter ready once): refused with one line.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TWO_PROCESSES, make_tiny_encoder
from tests.engine_train import INFONCE, infonce, launch

pytestmark = pytest.mark.slow
CHECKPOINTING = {"none": (), "on": ("--activation_checkpointing", "true")}  # transformers' default: non-reentrant
REENTRANT = ("--activation_checkpointing", "true", "--activation_checkpointing_kwargs", "{use_reentrant: true}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("checkpointing")
    model = root / "tiny-dropout"
    make_tiny_encoder(dropout=0.1).save_pretrained(model)
    plan = [{"recipe": INFONCE, "args": infonce(model, root / f"{cached}-{mode}", "--cached", cached,
                                                "--cache_mini_batch_size", "3", *options, final_eval="[]")}
            for cached in ("false", "true") for mode, options in CHECKPOINTING.items()]
    plan.append({"recipe": INFONCE, "args": infonce(model, root / "reentrant", *REENTRANT, final_eval="[]")})
    proc = launch(TWO_PROCESSES[3:], plan, root)
    assert proc.returncode != 0, proc.stderr[-4000:]  # the last run is refused
    return root, load_file(model / "model.safetensors"), proc.stderr


@pytest.mark.parametrize("cached", ["false", "true"], ids=["ddp", "ddp-gradcache"])
def test_gradient_checkpointing_gives_the_weights_of_the_run_without_it(runs, cached):
    root, initial, _ = runs
    for mode in ("none", "on"):  # checkpointing was on where asked, on both ranks
        ranks = [json.loads((root / f"{cached}-{mode}" / f"run-rank{r}.json").read_text()) for r in (0, 1)]
        assert [r["activation_checkpointing"] for r in ranks] == [mode == "on"] * 2
    expected, ours = (load_file(root / f"{cached}-{mode}" / "model.safetensors") for mode in ("none", "on"))
    assert any(not torch.equal(expected[k], initial[k]) for k in expected), "training did not change the weights"
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)


def test_reentrant_checkpointing_under_ddp_is_refused_with_one_line(runs):
    """It stopped at the first step with DDP's "Expected to mark a variable ready only once" (uncached and cached)."""
    root, _, stderr = runs
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors and "use_reentrant: true cannot run under DDP" in errors[0], stderr[-3000:]
    assert not (root / "reentrant" / "model.safetensors").exists()
