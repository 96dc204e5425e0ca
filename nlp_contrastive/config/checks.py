"""Every recipe check that needs no model and no data, run by `config.load_recipe` before anything loads:
numbers, LoRA settings, the batch sampler and multi-dataset settings, each source's loss against the roles it
maps, evaluation tasks, and the output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nlp_contrastive.data.sources import check_known_keys

if TYPE_CHECKING:
    from nlp_contrastive.config.schema import ModelConfig, Recipe, TrainingArguments

NAN_POLICIES = ("stop", "skip")


def check_recipe(recipe: Recipe) -> None:
    """Every check that needs no model and no data: sources, sampler, loss and its kwargs against the roles the
    sources map, evaluation settings."""
    from nlp_contrastive.data.multi_dataset import check_multi_dataset_sampling
    from nlp_contrastive.data.sampling import check_batch_sampler
    from nlp_contrastive.data.train_data import check_prompts, train_source
    from nlp_contrastive.evaluation.suite import check_tasks
    from nlp_contrastive.losses.build import build_loss
    from nlp_contrastive.teacher import check_distillation

    args = recipe.training
    check_numbers(recipe)
    sources = [train_source(spec, i) for i, spec in enumerate(recipe.data.train_data)]
    check_lora(recipe.model)
    check_prompts(recipe.data.prompts)
    check_batch_sampler(recipe.data.batch_sampler)
    check_multi_dataset_sampling(recipe.data.multi_dataset_sampling, recipe.data.source_weights,
                                 recipe.data.sampling_temperature, len(sources))
    given = next((i for i, spec in enumerate(recipe.data.train_data) if spec.get("num_rows") is not None), None)
    if given is not None and not recipe.data.streams():
        raise ValueError(f"train_data[{given}]: num_rows is a streamed source's row count, but the run does not "
                         "stream: drop num_rows (a loaded dataset counts its rows) or set streaming: true")
    if recipe.data.streams():
        from nlp_contrastive.data.streaming import check_streaming

        data = recipe.data
        mined = [i for i, spec in enumerate(data.train_data) if "mine" in spec]
        if mined:
            raise ValueError(f"train_data[{mined[0]}]: mine reads the whole split before training, which streaming "
                             "does not: set streaming: false, or mine first with nlp-contrastive mine")
        check_streaming(batch_sampler=data.batch_sampler, multi_dataset_sampling=data.multi_dataset_sampling,
                        options=data.stream, max_steps=args.max_steps,
                        global_batch_size=args.per_device_train_batch_size * args.world_size,
                        dataloader_num_workers=args.dataloader_num_workers, specs=data.train_data,
                        max_train_rows=data.max_train_rows, teacher=recipe.loss.teacher)
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
    from nlp_contrastive.data.train_data import check_source_roles
    from nlp_contrastive.losses.build import build_loss, check_loss_roles
    from nlp_contrastive.teacher import distillation_roles

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
