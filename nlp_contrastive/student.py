"""A smaller student from a teacher-sized model: keep only some of its transformer layers.

`model: {keep_layers: [0, 2, 4]}` starts the student from the model with layers 0, 2 and 4 (sentence-transformers'
distillation example builds its student this way): same width, so the teacher's embeddings are valid targets;
fewer layers, so it runs faster. The config's num_hidden_layers is updated, so the saved student is a plain
model of that depth that transformers and sentence-transformers load as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

# Where the layer stack of common encoders lives (BERT/RoBERTa/XLM-R/MPNet/ELECTRA: encoder.layer; DistilBERT:
# transformer.layer; ModernBERT and decoder-style models: layers).
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "layers", "encoder.layers", "layer")


def layer_stack(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer layers of a transformers model."""
    for path in _LAYER_PATHS:
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"keep_layers: no layer list found in {type(model).__name__} (looked for "
                     f"{', '.join(_LAYER_PATHS)}): this architecture is not supported for layer dropping")


def check_keep_layers(layers) -> list[int]:
    """At recipe load: a non-empty list of distinct layer indices >= 0."""
    if (not isinstance(layers, (list, tuple)) or not layers
            or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers)):
        raise ValueError(f"keep_layers must be a non-empty list of layer indices >= 0, e.g. [0, 2, 4], got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"keep_layers lists a layer twice: {list(layers)}: list each layer once")
    return sorted(layers)


def keep_layers(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Drop every transformer layer of `model` (in place) but `layers` (kept in their original order)."""
    wanted = check_keep_layers(list(layers))
    stack = layer_stack(model)
    if wanted[-1] >= len(stack):
        raise ValueError(f"keep_layers {list(layers)} names layer {wanted[-1]} but the model has {len(stack)} layers "
                         f"(0..{len(stack) - 1})")
    kept = [stack[i] for i in wanted]
    for new_index, layer in enumerate(kept):  # attention modules that number themselves (caches, layer types)
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    for i in reversed(range(len(stack))):
        del stack[i]
    stack.extend(kept)
    config = model.config
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) > max(wanted):
        config.layer_types = [layer_types[i] for i in wanted]
    return model
