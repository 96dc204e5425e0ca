"""LoRA adapters through peft (an optional extra): loading a saved adapter folder over its base model."""

from __future__ import annotations

import os

from transformers import AutoModel, PreTrainedModel

LORA_ADAPTER_CONFIG = "adapter_config.json"
LORA_ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what peft writes (safe_serialization)


def import_peft():
    try:
        import peft
    except ImportError:
        raise ValueError("LoRA needs the peft package: pip install 'nlp-contrastive[lora]' (or pip install peft)"
                         ) from None
    return peft


def load_lora_model(folder: str, **model_kwargs) -> PreTrainedModel:
    """The base model named in the adapter's config with the saved adapter on top (still trainable as LoRA)."""
    peft = import_peft()
    base_path = peft.PeftConfig.from_pretrained(folder).base_model_name_or_path
    base = AutoModel.from_pretrained(base_path, **model_kwargs)
    return peft.PeftModel.from_pretrained(base, folder)


def load_adapter_weights(model, folder: str) -> None:
    """Copy a saved adapter's weights (adapter_model.safetensors) into this peft model's adapters in place.

    In place, so an optimizer built over the adapter parameters keeps pointing at them (resuming a checkpoint
    and loading the best one at the end). Raises ValueError when the adapter does not fit (another r or targets).
    """
    import safetensors.torch

    peft = import_peft()
    path = os.path.join(folder, LORA_ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{folder}' has no {LORA_ADAPTER_WEIGHTS}: resume from a complete "
                                "checkpoint-N folder written by a run with the same lora settings")
    state = safetensors.torch.load_file(path, device=str(next(model.parameters()).device))
    try:
        result = peft.set_peft_model_state_dict(model, state)
    except RuntimeError as exc:  # shape mismatches: another r, or another base model size
        problem = next((line.strip() for line in str(exc).splitlines() if "mismatch" in line), str(exc))
        raise ValueError(f"checkpoint '{folder}' does not match the model's LoRA adapters ({problem[:200]}): resume "
                         "with the same model_name_or_path and lora settings") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"checkpoint '{folder}' does not match the model's LoRA adapters (missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}): resume with the same lora settings "
                         "(r, target_modules)")
