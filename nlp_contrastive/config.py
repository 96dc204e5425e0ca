"""Recipes: YAML (flat or sectioned) + `--key value` overrides -> dataclasses, via HfArgumentParser.

Keys are the dataclass field names (TrainingArguments' own names for training settings). Unknown keys and
values of the wrong type fail before anything is loaded, with the list of valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
import yaml
from transformers import HfArgumentParser

from nlp_contrastive.modeling import DEFAULT_MODEL
from nlp_contrastive.precision import AUTO, PrecisionChoice, resolve_bf16, warn_if_emulated
from nlp_contrastive.recipe_types import coerce_number, describe, field_type, matches
from nlp_contrastive.sources import check_known_keys, yaml_problem

SECTIONS = ("model", "data", "loss", "eval", "training")


@dataclass
class ContrastiveTrainingArguments(transformers.TrainingArguments):
    """TrainingArguments plus the one guard transformers 5 dropped: refuse to train into a used output dir."""

    overwrite_output_dir: bool = field(default=False, metadata={"help": "allow a non-empty output_dir"})
    nan_policy: str = field(default="stop", metadata={
        "help": "on a NaN/inf loss: stop (error naming the step and rows; checkpoints kept) or skip the batch"})
    # DDP broadcasts module buffers at every forward call by default: a collective per call, so ranks that embed a
    # batch in different numbers of forwards (single_forward: auto, a batch without negatives) would wait on each
    # other forever. Text encoders' buffers (position ids) never change, so there is nothing to broadcast.
    ddp_broadcast_buffers: bool | None = field(default=False, metadata={
        "help": "DDP: broadcast module buffers from rank 0 at each forward (only for models whose buffers change)"})


_OUR_TRAINING_KEYS = ("overwrite_output_dir", "nan_policy")
NAN_POLICIES = ("stop", "skip")


TrainingArguments = ContrastiveTrainingArguments


@dataclass
class ModelConfig:
    """Which encoder to start from and how it turns tokens into one vector."""

    model_name_or_path: str = DEFAULT_MODEL
    pooling: str | None = None  # None: as saved with the model (mean for a plain transformers model)
    normalize: bool | None = None  # None: as saved with the model
    max_seq_length: int | None = None
    attn_implementation: str | None = None  # e.g. "sdpa", "eager"; None lets transformers choose
    include_prompt: bool | None = None  # pool prompt tokens too (sentence-transformers' default); None: as saved
    # LoRA adapters (peft, `pip install 'nlp-contrastive[lora]'`): {r, alpha, dropout, target_modules}; only the
    # adapters train; the output is an adapter folder, or the merged model with lora_merge: true.
    lora: dict | None = None
    lora_merge: bool = False
    keep_layers: list[int] | None = None  # a smaller student: only these transformer layers (nlp_contrastive.student)


@dataclass
class DataConfig:
    """Training data: one or more sources, each mapped to roles by column name.

    Each entry of `train_data` is a dict with keys: dataset (named set, local file or hub id), split,
    config_name, columns ({role: column}), filter ("column OP value"), score_range ([low, high] -> [0, 1]),
    label_map ({value: 0/1}), group_pairs ({anchor, text, positive_if, negative_if, as_list,
    max_negatives}), max_rows.
    """

    train_data: list[dict] = field(default_factory=list)
    # {role: prompt} prepended to every source's texts (a source's own `prompts` win), e.g. {anchor: "query: ",
    # positive: "passage: "}; saved with the model (anchor's as "query", positive's as "document").
    prompts: dict = field(default_factory=dict)
    batch_sampler: str = "random"  # random | no_duplicates | group_by_length | no_duplicates_by_length (per source)
    # Several sources: null mixes their rows (as one dataset); proportional | round_robin | weighted | temperature
    # makes every batch come from one source (nlp_contrastive.multi_dataset.MultiDatasetBatchSampler).
    multi_dataset_sampling: str | None = None
    source_weights: list[float] | None = None  # weighted: one per train_data entry
    sampling_temperature: float = 1.0  # temperature: source s drawn with probability ∝ rows_s ** (1 / T)
    max_train_rows: int | None = None
    tokenize_num_proc: int | None = None


SINGLE_FORWARD_CHOICES = ("auto", "true", "false")


@dataclass
class LossConfig:
    """Which loss, its hyperparameters, and how the batch is embedded (GradCache, cross-device negatives)."""

    loss: str = "cosine_similarity"
    loss_kwargs: dict = field(default_factory=dict)
    cached: bool = False  # GradCache: any batch size in bounded memory, same gradients
    cache_mini_batch_size: int = 32
    cache_max_tokens: int | None = None
    # true: one forward pass over all text columns of a batch, padded to one length; false: one per column; auto:
    # one pass unless padding to one length costs > 10% more tokens than one per column (one_forward_is_cheaper).
    single_forward: str = "true"
    # mse_distillation: the model whose embeddings of the anchor texts are the targets; computed once before
    # training and cached with the dataset (nlp_contrastive.teacher).
    teacher: str | None = None

    def __post_init__(self) -> None:
        if self.single_forward not in SINGLE_FORWARD_CHOICES:
            raise ValueError(f"single_forward must be one of {', '.join(SINGLE_FORWARD_CHOICES)}, "
                             f"got {self.single_forward!r}")


@dataclass
class EvalConfig:
    """Evaluation during training (eval_tasks, run at TrainingArguments' eval_strategy; `eval_score` is the first
    task's primary metric, so `metric_for_best_model: score` picks the best checkpoint) and on the final model
    (final_eval_tasks, written to results.json). Tasks use the evaluation-suite format (eval/sts.yaml)."""

    eval_tasks: list[dict] = field(default_factory=lambda: [
        {"name": "stsb-validation", "type": "sts", "dataset": "stsb", "split": "validation"}])
    final_eval_tasks: list[dict] = field(default_factory=lambda: [
        {"name": "stsb-test", "type": "sts", "dataset": "stsb", "split": "test"},
        {"name": "sickr-test", "type": "sts", "dataset": "sickr", "split": "test"}])
    eval_batch_size: int = 64


CONFIG_CLASSES = (ModelConfig, DataConfig, LossConfig, EvalConfig, TrainingArguments)


@dataclass
class Recipe:
    model: ModelConfig
    data: DataConfig
    loss: LossConfig
    eval: EvalConfig
    training: TrainingArguments
    source: str | None = None
    precision: PrecisionChoice | None = None  # how `bf16` (auto by default) was resolved, and why

    def loss_gathers(self, source: int | None = None) -> bool:
        """Whether in-batch negatives come from all processes (a loss_kwargs switch of info_nce), for the recipe's
        loss or for the loss of train_data[source]."""
        kwargs = self.loss.loss_kwargs if source is None else self.source_loss(source)[1]
        return bool(kwargs.get("gather_across_devices", False))

    def own_loss_sources(self) -> list[int]:
        """The train_data entries that set their own `loss` / `loss_kwargs`."""
        return [i for i, spec in enumerate(self.data.train_data)
                if isinstance(spec, dict) and ("loss" in spec or "loss_kwargs" in spec)]

    def has_source_losses(self) -> bool:
        return bool(self.own_loss_sources())

    def source_loss(self, source: int) -> tuple[str, dict]:
        """(loss name, loss_kwargs) for batches of train_data[source]: its own `loss` with its own `loss_kwargs`
        (none by default); its `loss_kwargs` alone override the recipe's loss_kwargs key by key."""
        spec = self.data.train_data[source]
        if "loss" in spec and spec["loss"] != self.loss.loss:
            return spec["loss"], dict(spec.get("loss_kwargs") or {})
        return self.loss.loss, {**self.loss.loss_kwargs, **(spec.get("loss_kwargs") or {})}


def valid_keys() -> dict[str, type]:
    """Every recipe key and the dataclass it belongs to."""
    keys: dict[str, type] = {}
    for cls in CONFIG_CLASSES:
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                keys[f.name] = cls
    return keys


def load_recipe(path: str | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `--key value` overrides, check keys and types, build the dataclasses."""
    values: dict[str, Any] = {}
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
        values = flatten_sections(loaded, source=str(path))
    values.update(parse_overrides(overrides or []))
    precision = _resolve_precision(values)
    check_keys_and_types(values)
    _bf16_on_cpu_only_machines(values)
    parser = HfArgumentParser(CONFIG_CLASSES)
    try:
        model, data, loss, evaluation, training = parser.parse_dict(values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid recipe value: {str(exc).splitlines()[0]}") from None
    recipe = Recipe(model, data, loss, evaluation, training, source=path, precision=precision)
    check_recipe(recipe)
    warn_if_emulated(precision)
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """Every check that needs no model and no data: sources, sampler, loss and its kwargs against the roles the
    sources map, evaluation settings."""
    from nlp_contrastive.evaluation.suite import check_tasks
    from nlp_contrastive.losses.build import build_loss
    from nlp_contrastive.multi_dataset import check_multi_dataset_sampling
    from nlp_contrastive.sampling import check_batch_sampler
    from nlp_contrastive.teacher import check_distillation
    from nlp_contrastive.train_data import check_prompts, train_source

    args = recipe.training
    check_numbers(recipe)
    sources = [train_source(spec, i) for i, spec in enumerate(recipe.data.train_data)]
    check_lora(recipe.model)
    check_prompts(recipe.data.prompts)
    check_batch_sampler(recipe.data.batch_sampler)
    check_multi_dataset_sampling(recipe.data.multi_dataset_sampling, recipe.data.source_weights,
                                 recipe.data.sampling_temperature, len(sources))
    check_loss_kwargs(recipe.loss.loss, recipe.loss.loss_kwargs)
    loss = build_loss(recipe.loss.loss, recipe.loss.loss_kwargs)
    check_distillation(recipe, loss)
    check_source_losses(recipe, sources, loss)
    eval_strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if eval_strategy != "no" and not recipe.eval.eval_tasks:
        raise ValueError(f"eval_strategy is '{eval_strategy}' but eval_tasks is empty: add "
                         "eval_tasks (e.g. [{name: stsb-validation, type: sts, dataset: stsb, split: validation}]) "
                         "or set eval_strategy: 'no' (and load_best_model_at_end: false)")
    check_tasks(recipe.eval.eval_tasks, "eval_tasks")
    check_tasks(recipe.eval.final_eval_tasks, "final_eval_tasks")


def check_source_losses(recipe: Recipe, sources: list, loss) -> None:
    """Each source's loss (`loss`, the recipe's, or the source's own `loss` / `loss_kwargs`, which need batches of
    one source each) exists with valid kwargs and finds the roles it needs in that source; with one source per
    batch, sources may map different value / list roles."""
    from nlp_contrastive.losses.build import build_loss, check_loss_roles
    from nlp_contrastive.teacher import distillation_roles
    from nlp_contrastive.train_data import check_source_roles

    own_loss_sources = recipe.own_loss_sources()
    own_losses = bool(own_loss_sources)
    if own_losses and recipe.data.multi_dataset_sampling is None:
        raise ValueError(f"train_data[{own_loss_sources[0]}] sets its own loss, which needs every batch from one source: set "
                         "multi_dataset_sampling: proportional (or round_robin, weighted, temperature)")
    roles = [distillation_roles(source.columns, spec, recipe.loss.teacher)
             for source, spec in zip(sources, recipe.data.train_data, strict=True)]
    if roles:
        check_source_roles(roles, one_source_per_batch=recipe.data.multi_dataset_sampling is not None)
    for i, own in enumerate(roles):
        name, kwargs = recipe.source_loss(i)
        source_loss = loss
        if own_losses:
            try:
                check_loss_kwargs(name, kwargs)
                source_loss = build_loss(name, kwargs)
            except ValueError as exc:
                raise ValueError(f"train_data[{i}]: {exc}") from None
        elif i and set(own) == set(roles[0]):
            continue  # the same loss on the same roles: checked once
        batch = recipe.training.per_device_train_batch_size * (
            recipe.training.world_size if recipe.loss_gathers(i) else 1)
        check_loss_roles(source_loss, name, own, batch_size=batch,
                         where=f"train_data[{i}]" if len(roles) > 1 else "train_data")


def check_numbers(recipe: Recipe) -> None:
    """Sizes and rates the type check lets through but training cannot use (a batch of 0 divides by zero deep
    inside Trainer; a negative learning rate fails only when the optimizer is built, after the model loaded)."""
    args = recipe.training
    at_least_one = {"per_device_train_batch_size": args.per_device_train_batch_size,
                    "gradient_accumulation_steps": args.gradient_accumulation_steps,
                    "eval_batch_size": recipe.eval.eval_batch_size,
                    "cache_mini_batch_size": recipe.loss.cache_mini_batch_size,
                    "max_seq_length": recipe.model.max_seq_length, "max_train_rows": recipe.data.max_train_rows}
    for key, value in at_least_one.items():
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if args.learning_rate < 0:
        raise ValueError(f"learning_rate must be >= 0, got {args.learning_rate}: use e.g. 2e-5")
    if args.max_steps <= 0 and not args.num_train_epochs > 0:
        raise ValueError(f"num_train_epochs must be > 0 (or set max_steps), got {args.num_train_epochs}")
    if args.nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {args.nan_policy!r}")


def check_loss_kwargs(name: str, loss_kwargs: dict) -> None:
    """Numeric hyperparameters are numbers and margins are not negative (a negative margin silently turns a
    hinge loss into one that is satisfied by any embedding); unknown names are build_loss's check."""
    import inspect

    from nlp_contrastive.losses import LOSSES

    if name not in LOSSES:
        return
    defaults = {p.name: p.default for p in inspect.signature(LOSSES[name].__init__).parameters.values()}
    for key, value in loss_kwargs.items():
        default = defaults.get(key)
        numeric = key in ("temperature", "scale", "margin") or (
            isinstance(default, (int, float)) and not isinstance(default, bool))
        if numeric and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"loss_kwargs for '{name}': {key} must be a number, got {value!r}")
        if key == "margin" and value is not None and value < 0:
            raise ValueError(f"loss_kwargs for '{name}': margin must be >= 0, got {value}")


LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


def check_lora(cfg: ModelConfig) -> None:
    if cfg.lora is None:
        if cfg.lora_merge:
            raise ValueError("lora_merge: true needs lora: {r: 8, alpha: 16, ...}: set lora or drop lora_merge")
        return
    check_known_keys(cfg.lora, LORA_KEYS, "lora")
    r, alpha, dropout = cfg.lora.get("r", 8), cfg.lora.get("alpha", 16), cfg.lora.get("dropout", 0.0)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"lora r must be a positive integer (the adapter rank, e.g. 8), got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"lora alpha must be a number > 0 (e.g. 16), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout!r}")
    from nlp_contrastive.lora import import_peft

    import_peft()


def check_output_dir(args: TrainingArguments) -> None:
    """Refuse to mix a new run into a used folder unless asked (resuming from it is fine), and an output_dir that
    could not be created or written, before the model loads (os.access alone says yes to root: check the layout)."""
    import os

    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir '{out}' is a file, not a folder: choose another output_dir")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir '{out}' cannot be written: '{ancestor}' is "
                         f"{'a file' if not ancestor.is_dir() else 'not writable'}: make it a writable folder or "
                         "choose another output_dir")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise ValueError(f"output_dir '{out}' exists and is not empty: set overwrite_output_dir: true, "
                         "choose another output_dir, or resume with --resume_from_checkpoint true")


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
    ours = sorted(k for k, cls in keys.items() if cls is not TrainingArguments or k in _OUR_TRAINING_KEYS)
    check_known_keys(values, keys, "recipe", listed=f"{', '.join(ours)} and any TrainingArguments field")
    for key, value in values.items():
        expected = field_type(keys[key], key)
        value = values[key] = coerce_number(value, expected)
        if expected is not None and not matches(value, expected):
            raise ValueError(f"recipe key '{key}' must be {describe(expected)}, got {value!r} "
                             f"({type(value).__name__})")


def recipe_as_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The resolved recipe by section, only JSON/YAML-friendly values (for printing and model cards)."""
    out: dict[str, dict[str, Any]] = {}
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
        from nlp_contrastive.multi_dataset import batches_per_source

        per_source = batches_per_source(source_rows, per_step, recipe.data.multi_dataset_sampling,
                                        weights=recipe.data.source_weights,
                                        temperature=recipe.data.sampling_temperature,
                                        drop_last=args.dataloader_drop_last)
    updates_per_epoch = max(math.ceil(batches_per_epoch / args.gradient_accumulation_steps), 1)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(updates_per_epoch * args.num_train_epochs)
    numbers = {"processes": world, "train_rows": train_rows, "global_batch_size": global_batch,
               "optimizer_steps": steps}
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

