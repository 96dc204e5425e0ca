"""The sentence-transformers folder layout: module types, Pooling config keys, and reading a saved folder's
modules (Transformer / Pooling / Normalize) into the settings an `Encoder` needs."""

from __future__ import annotations

import json
import os

POOLING_MODES = ("mean", "cls", "max", "last_token", "mean_sqrt_len")

# sentence-transformers' Pooling config keys (classic format) <-> our pooling names.
ST_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last_token",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_ST_NEW_POOLING_NAMES = {"mean": "mean", "cls": "cls", "max": "max", "lasttoken": "last_token",
                         "last_token": "last_token", "mean_sqrt_len_tokens": "mean_sqrt_len"}
ST_TRANSFORMER = "sentence_transformers.models.Transformer"
ST_POOLING = "sentence_transformers.models.Pooling"
ST_NORMALIZE = "sentence_transformers.models.Normalize"


def read_sentence_transformers_layout(path: str) -> dict:
    """Read modules.json + module configs of a sentence-transformers folder; {} for a plain transformers one."""
    modules_file = os.path.join(path, "modules.json")
    if not os.path.exists(modules_file):
        return {}
    with open(modules_file, encoding="utf-8") as f:
        modules = json.load(f)
    layout: dict = {}
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        module_dir = os.path.join(path, module.get("path", ""))
        if kind == "Transformer":
            layout["transformer_path"] = module.get("path", "")
            for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
                config_file = os.path.join(module_dir, name)
                if os.path.exists(config_file):
                    with open(config_file, encoding="utf-8") as f:
                        layout["max_seq_length"] = json.load(f).get("max_seq_length")
        elif kind == "Pooling":
            layout["pooling"] = _pooling_from_st_config(os.path.join(module_dir, "config.json"))
            with open(os.path.join(module_dir, "config.json"), encoding="utf-8") as f:
                layout["include_prompt"] = bool(json.load(f).get("include_prompt", True))
        elif kind == "Normalize":
            layout["normalize"] = True
        else:
            raise ValueError(
                f"sentence-transformers module '{module['type']}' in {modules_file} is not supported: "
                "only Transformer, Pooling and Normalize models can be loaded as an Encoder"
            )
    st_config_file = os.path.join(path, "config_sentence_transformers.json")
    if os.path.exists(st_config_file):
        with open(st_config_file, encoding="utf-8") as f:
            st_config = json.load(f)
        layout["prompts"] = st_config.get("prompts") or {}
        layout["matryoshka_dims"] = st_config.get("matryoshka_dims")
    return layout


def _pooling_from_st_config(config_file: str) -> str:
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    if "pooling_mode" in config and isinstance(config["pooling_mode"], str):
        modes = [_ST_NEW_POOLING_NAMES.get(config["pooling_mode"], config["pooling_mode"])]
    else:
        modes = [name for key, name in ST_POOLING_KEYS.items() if config.get(key)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValueError(
            f"pooling {modes} in {config_file} is not supported: use exactly one of {', '.join(POOLING_MODES)}"
        )
    return modes[0]
