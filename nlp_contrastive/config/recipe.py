"""Recipes: YAML (flat or sectioned) + `--key value` overrides -> dataclasses, via HfArgumentParser.

Keys are the dataclass field names (TrainingArguments' own names for training settings). Unknown keys and
values of the wrong type fail before anything is loaded, with the list of valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from nlp_contrastive.config.checks import check_recipe
from nlp_contrastive.config.schema import (
    CONFIG_CLASSES,
    OUR_TRAINING_KEYS,
    SECTIONS,
    Recipe,
    TrainingArguments,
    valid_keys,
)
from nlp_contrastive.config.value_types import coerce_number, describe, field_type, matches
from nlp_contrastive.config.variables import VARS_KEY, apply_variables, check_vars, split_var_overrides
from nlp_contrastive.data.sources import check_known_keys, yaml_problem
from nlp_contrastive.data.streaming import stream_options
from nlp_contrastive.precision import AUTO, PrecisionChoice, resolve_bf16, warn_if_emulated


def load_recipe(path: str | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `--key value` overrides, substitute its `${variables}` (config.variables), check
    keys and types, build the dataclasses."""
    values: dict[str, Any] = {}
    declared: dict[str, Any] = {}
    if path is not None:
        recipe_path = Path(path)
        if not recipe_path.is_file():
            raise FileNotFoundError(f"recipe '{path}' does not exist: give a YAML file such as recipes/stsb-cosine.yaml")
        try:
            loaded = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"recipe '{path}' is not valid YAML: {yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"recipe '{path}' must be a mapping of keys to values, got {type(loaded).__name__}")
        declared = check_vars(loaded.pop(VARS_KEY, None), str(path))
        values = flatten_sections(loaded, source=str(path))
    given = parse_overrides(overrides or [])
    var_overrides = split_var_overrides(given, declared)
    values.update(given)
    variables = apply_variables(values, declared, var_overrides)
    precision = _resolve_precision(values)
    check_keys_and_types(values)
    _bf16_on_cpu_only_machines(values)
    parser = HfArgumentParser(CONFIG_CLASSES)
    try:
        model, data, loss, evaluation, training = parser.parse_dict(values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid recipe value: {str(exc).splitlines()[0]}") from None
    recipe = Recipe(model, data, loss, evaluation, training, source=path, precision=precision, variables=variables)
    check_recipe(recipe)
    warn_if_emulated(precision)
    return recipe


def _resolve_precision(values: dict[str, Any]) -> PrecisionChoice:
    """`bf16: auto` (also when the key is absent) -> the bool TrainingArguments takes: on where the device computes
    bf16 natively (see nlp_contrastive.precision); the choice and its reason go on the Recipe."""
    use_cpu = values.get("use_cpu") is True or str(values.get("use_cpu")).lower() == "true"
    fp16 = values.get("fp16") is True
    choice = resolve_bf16(values.get("bf16", AUTO), use_cpu=use_cpu, fp16=fp16)
    values["bf16"] = choice.bf16
    return choice


def _bf16_on_cpu_only_machines(values: dict[str, Any]) -> None:
    """`bf16: true` means bf16 autocast wherever we run: on a machine with no bf16 GPU, transformers insists on
    `use_cpu: true`, so set it there (printed with the resolved recipe) and the same recipe stays GPU-ready."""
    if values.get("bf16") and "use_cpu" not in values:
        from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

        if not is_torch_bf16_gpu_available() and not is_torch_xla_available():
            values["use_cpu"] = True


def flatten_sections(loaded: dict, source: str = "recipe") -> dict[str, Any]:
    """Accept both `{model: {...}, training: {...}}` and flat `{key: value}`; sections must hold mappings."""
    flat: dict[str, Any] = {}
    for key, value in loaded.items():
        if key in SECTIONS and (isinstance(value, dict) or key not in valid_keys()):
            if not isinstance(value, dict):
                raise ValueError(f"section '{key}' in {source} must be a mapping of keys to values")
            for inner_key, inner_value in value.items():
                _set_once(flat, inner_key, inner_value, source)
        else:
            _set_once(flat, key, value, source)
    return flat


def _set_once(flat: dict, key: str, value: Any, source: str) -> None:
    if key in flat:
        raise ValueError(f"key '{key}' is set twice in {source}: keep one")
    flat[key] = value


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`--key value`, `--key=value` or a bare `--flag` (true); values are read as YAML (numbers, lists, dicts)."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument '{token}': overrides are --key value (e.g. --learning_rate 3e-5)")
        key, eq, raw = token[2:].partition("=")
        if not key.startswith("vars."):  # a variable's name is kept as written
            key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                raw = argv[i + 1]
                i += 1
            else:
                raw = "true"
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ValueError(f"--{key} value {raw!r} is not valid YAML ({yaml_problem(exc)}): quote it, "
                             "e.g. --key \"'text'\"") from None
        if isinstance(value, bool) and raw.lower() not in ("true", "false"):
            value = raw  # YAML 1.1 reads no/off/yes/on as booleans; `--eval_strategy no` means the string
        values[key] = value
        i += 1
    return values


def check_keys_and_types(values: dict[str, Any]) -> None:
    keys = valid_keys()
    ours = sorted(k for k, cls in keys.items() if cls is not TrainingArguments or k in OUR_TRAINING_KEYS)
    check_known_keys(values, keys, "recipe", listed=f"{', '.join(ours)} and any TrainingArguments field")
    for key, value in values.items():
        expected = field_type(keys[key], key)
        value = values[key] = coerce_number(value, expected)
        if expected is not None and not matches(value, expected):
            raise ValueError(f"recipe key '{key}' must be {describe(expected)}, got {value!r} "
                             f"({type(value).__name__})")


def recipe_as_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The resolved recipe by section (and its `vars`, already substituted into the sections), only
    JSON/YAML-friendly values (for printing and model cards)."""
    out: dict[str, dict[str, Any]] = {VARS_KEY: dict(recipe.variables)} if recipe.variables else {}
    for section, obj in zip(SECTIONS, (recipe.model, recipe.data, recipe.loss, recipe.eval, recipe.training),
                            strict=True):
        if section == "training":
            # Defaults from the field declarations: building a TrainingArguments here would reset accelerate's
            # process state on this rank only (and hang DDP).
            defaults = {f.name: f.default for f in dataclasses.fields(obj) if f.default is not dataclasses.MISSING}
            always = ("output_dir", "num_train_epochs", "per_device_train_batch_size", "learning_rate",
                      "warmup_steps", "weight_decay", "seed", "bf16", "fp16", "gradient_accumulation_steps",
                      "max_steps", "lr_scheduler_type")
            entries = {k: v for k, v in obj.to_dict().items() if k in always or v != defaults.get(k, v)}
        else:
            entries = dataclasses.asdict(obj)
        out[section] = {k: plain_values(v) for k, v in entries.items()}
    return out


SECRET_KEY_RE = re.compile(r"(^|_)(token|password|secret|api_key)$", re.IGNORECASE)
REDACTED = "<redacted>"


def plain_values(value: Any, *, redact: bool = False) -> Any:
    """JSON/YAML-friendly copy (dict keys -> str, tuples -> lists, other objects -> str), for printing the
    recipe and for model cards; `redact` replaces the value of any set secret-looking key (hub_token, ...) at
    any depth, so a published card never carries a credential."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): REDACTED if redact and v is not None and SECRET_KEY_RE.search(str(k))
                else plain_values(v, redact=redact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v, redact=redact) for v in value]
    return str(value)


# ------------------------------------------------------------------------------------ printed at start
def derived_numbers(recipe: Recipe, train_rows: int, batches_per_epoch: int, hard_negatives_per_row: int,
                    source_rows: list[int] | None = None) -> dict[str, Any]:
    """What the recipe implies: processes, global batch, optimizer steps (from the sampler's real number of
    batches per epoch, rounded as the Trainer rounds it), negatives per query (InfoNCE), and with
    multi_dataset_sampling the expected batches per epoch from each source (`source_rows`: rows of each
    train_data entry; the steps still come from the real count)."""
    args = recipe.training
    world = args.world_size
    per_step = args.train_batch_size * world  # train_batch_size: per device x GPUs of an nn.DataParallel process
    global_batch = per_step * args.gradient_accumulation_steps
    per_source = None
    if recipe.data.multi_dataset_sampling and source_rows:
        from nlp_contrastive.data.multi_dataset import batches_per_source

        per_source = batches_per_source(source_rows, per_step, recipe.data.multi_dataset_sampling,
                                        weights=recipe.data.source_weights,
                                        temperature=recipe.data.sampling_temperature,
                                        drop_last=args.dataloader_drop_last, num_replicas=world)
    updates_per_epoch = max(math.ceil(batches_per_epoch / args.gradient_accumulation_steps), 1)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(updates_per_epoch * args.num_train_epochs)
    numbers = {"processes": world, "train_rows": train_rows, "global_batch_size": global_batch,
               "optimizer_steps": steps}
    if recipe.data.streams():
        numbers.update(train_rows="unknown (streamed)", optimizer_steps=f"{steps} (max_steps: a stream's length "
                       "is unknown; the learning-rate schedule follows max_steps)",
                       stream=stream_options(recipe.data.stream))
    if per_source is not None:
        numbers["batches_per_epoch_per_source"] = {f"train_data[{i}]": n for i, n in enumerate(per_source)}
    gathers = recipe.loss_gathers() if recipe.loss.loss == "info_nce" else None  # None: no info_nce loss
    if recipe.has_source_losses():
        settings = [recipe.source_loss(i) for i in range(len(recipe.data.train_data))]
        numbers["loss_per_source"] = {f"train_data[{i}]": describe_loss(name, kwargs)
                                      for i, (name, kwargs) in enumerate(settings)}
        gathers = next((recipe.loss_gathers(i) for i, (name, _) in enumerate(settings) if name == "info_nce"), None)
    if gathers is not None:  # with per-source losses: of the first info_nce source
        in_batch = per_step if gathers else args.per_device_train_batch_size
        hard = hard_negatives_per_row
        numbers["negatives_per_query"] = f"{in_batch - 1} in-batch + up to {hard} hard x {in_batch} rows" if hard \
            else in_batch - 1
    return numbers


def describe_loss(name: str, kwargs: dict) -> str:
    """`info_nce (temperature=0.05)`: a loss and its kwargs on one line."""
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{name} ({settings})" if settings else name


def print_resolved(recipe: Recipe, numbers: dict[str, Any]) -> None:
    precision = recipe.precision.to_dict() if recipe.precision else {}
    text = yaml.safe_dump({"recipe": recipe.source, **recipe_as_dict(recipe), "derived": numbers,
                           "precision": precision},
                          sort_keys=False, width=120)
    print("=== resolved recipe ===\n" + text.rstrip() + "\n=======================", flush=True)

