"""LoRA adapters through peft (an optional extra): loading a saved adapter folder over its base model."""

from __future__ import annotations

from transformers import AutoModel, PreTrainedModel

LORA_ADAPTER_CONFIG = "adapter_config.json"


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
