"""The pieces `nlp_contrastive.train` assembles: encoder, loss, data, evaluator, run outputs."""

from __future__ import annotations

import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from nlp_contrastive import data as data_lib
from nlp_contrastive.config import Recipe, recipe_as_dict
from nlp_contrastive.files import write_atomic, write_json_atomic
from nlp_contrastive.modeling import Encoder, library_versions

logger = logging.getLogger(__name__)

def check_output_dir(args) -> None:
    """Refuse to mix a new run into a used folder unless asked (resuming from it is fine)."""
    out = Path(args.output_dir)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise ValueError(f"output_dir '{out}' exists and is not empty: set overwrite_output_dir: true, "
                         "choose another output_dir, or resume with --resume_from_checkpoint true")


def check_eval_settings(recipe: Recipe) -> None:
    """Evaluation during training needs tasks; say so before the Trainer's own, vaguer error."""
    if str(getattr(recipe.training.eval_strategy, "value", recipe.training.eval_strategy)) != "no" \
            and not recipe.eval.eval_tasks:
        raise ValueError(f"eval_strategy is '{recipe.training.eval_strategy.value}' but eval_tasks is empty: add "
                         "eval_tasks (e.g. [{name: stsb-validation, type: sts, dataset: stsb, split: validation}]) "
                         "or set eval_strategy: 'no' (and load_best_model_at_end: false)")


def build_encoder(recipe: Recipe) -> Encoder:
    cfg = recipe.model
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    return Encoder.from_pretrained(cfg.model_name_or_path, pooling=cfg.pooling, normalize=cfg.normalize,
                                   max_seq_length=cfg.max_seq_length, **kwargs)


def build_loss(recipe: Recipe) -> nn.Module:
    """The loss module named in the recipe, wrapped in GradCache when `cached` is set."""
    from nlp_contrastive.losses import LOSSES

    cfg = recipe.loss
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss '{cfg.loss}': choose one of {', '.join(sorted(LOSSES))}")
    loss_kwargs = dict(cfg.loss_kwargs)
    try:
        loss = LOSSES[cfg.loss](**loss_kwargs)
    except TypeError as exc:
        raise ValueError(f"bad loss_kwargs for '{cfg.loss}': {exc}") from None
    if cfg.cached:
        from nlp_contrastive.cached import CachedLoss

        loss = CachedLoss(loss, mini_batch_size=cfg.cache_mini_batch_size, max_tokens_per_mini_batch=cfg.cache_max_tokens)
    return loss


def base_loss(loss: nn.Module) -> nn.Module:
    from nlp_contrastive.cached import CachedLoss

    return loss.loss if isinstance(loss, CachedLoss) else loss


def check_loss_against_data(loss: nn.Module, ds: datasets.Dataset, recipe: Recipe) -> None:
    """Fail before training when the data lacks a role the loss needs, or the batch can't give negatives."""
    inner = base_loss(loss)
    name = recipe.loss.loss
    roles = set(ds.column_names)
    if "negatives" in roles:
        roles.add("negative")  # a list of negatives serves wherever one negative is expected
    for role in getattr(inner, "roles", ()):
        alternatives = {"negative": {"negative", "negatives"}, "negatives": {"negative", "negatives"}}.get(role, {role})
        if not alternatives & roles:
            hint = (" (a loss for unscored pairs such as info_nce fits this data)" if role == "score" else "")
            raise ValueError(f"loss '{name}' needs a '{role}' column but train_data maps only "
                             f"{sorted(ds.column_names)}: add {role}: <column> to columns{hint}")
    if getattr(inner, "requires_in_batch_negatives", False):
        args = recipe.training
        batch = args.per_device_train_batch_size * (args.world_size if recipe.loss_gathers() else 1)
        if batch < 2 and "negative" not in roles:
            raise ValueError(f"loss '{name}' uses in-batch negatives, so per_device_train_batch_size must be >= 2 "
                             f"(got {args.per_device_train_batch_size}): raise it, or add hard negatives")


def build_train_dataset(recipe: Recipe) -> datasets.Dataset:
    return data_lib.build_train_dataset(recipe.data.train_data, max_rows=recipe.data.max_train_rows)


def tokenize(recipe: Recipe, ds: datasets.Dataset, encoder: Encoder) -> datasets.Dataset:
    return data_lib.tokenize_roles(ds, encoder.tokenizer, encoder.max_seq_length, num_proc=recipe.data.tokenize_num_proc)


def build_batch_sampler_factory(recipe: Recipe):
    """None for the Trainer's own random sampler; otherwise a rank-aware batch sampler factory."""
    from nlp_contrastive import sampling

    kind = recipe.data.batch_sampler
    if kind not in sampling.BATCH_SAMPLERS:
        raise ValueError(f"unknown batch_sampler '{kind}': choose {', '.join(sampling.BATCH_SAMPLERS)}")
    if kind == "random":
        return None
    return lambda dataset, batch_size, args: sampling.build_batch_sampler(kind, dataset, batch_size, args)


def build_evaluator(tasks: list[dict], batch_size: int):
    """A callable encoder -> {task_metric: value, "score": primary of the first task}, or None."""
    if not tasks:
        return None
    from nlp_contrastive.evaluation.suite import load_suite

    suite = load_suite({"tasks": tasks, "batch_size": batch_size})

    def evaluate(encoder: Encoder) -> dict[str, float]:
        results = suite(encoder)
        flat = {f"{task}_{metric}": value for task, metrics in results.items() for metric, value in metrics.items()}
        first = next(iter(results))
        flat["score"] = results[first][suite.primary_metrics[first]]
        return flat

    return evaluate


def derived_numbers(recipe: Recipe, train_ds: datasets.Dataset) -> dict[str, Any]:
    args = recipe.training
    train_rows = len(train_ds)
    world = args.world_size
    per_step = args.per_device_train_batch_size * world
    global_batch = per_step * args.gradient_accumulation_steps
    from nlp_contrastive import sampling

    batches_per_epoch = sampling.batches_per_epoch(recipe.data.batch_sampler, train_ds,
                                                   args.per_device_train_batch_size, args)
    updates_per_epoch = max(math.ceil(batches_per_epoch / args.gradient_accumulation_steps), 1)  # as the Trainer
    steps = args.max_steps if args.max_steps > 0 else math.ceil(updates_per_epoch * args.num_train_epochs)
    numbers = {"processes": world, "train_rows": train_rows, "global_batch_size": global_batch,
               "optimizer_steps": steps}
    if recipe.loss.loss == "info_nce":
        in_batch = per_step if recipe.loss_gathers() else args.per_device_train_batch_size
        hard = _hard_negatives_per_row(train_ds)
        numbers["negatives_per_query"] = f"{in_batch - 1} in-batch + up to {hard} hard x {in_batch} rows" if hard \
            else in_batch - 1
    return numbers


def _hard_negatives_per_row(train_ds: datasets.Dataset) -> int:
    """From the data itself: 1 for a `negative` column, the longest list for `negatives`, else 0."""
    if "negatives" in train_ds.column_names:
        return max(len(texts) for texts in train_ds["negatives"])
    return int("negative" in train_ds.column_names)


def print_resolved(recipe: Recipe, numbers: dict[str, Any]) -> None:
    import yaml

    text = yaml.safe_dump({"recipe": recipe.source, **recipe_as_dict(recipe), "derived": numbers},
                          sort_keys=False, width=120)
    print("=== resolved recipe ===\n" + text.rstrip() + "\n=======================", flush=True)


# ----------------------------------------------------------------------------------------------- outputs
def run_info(recipe: Recipe, loss: nn.Module, train_ds: datasets.Dataset, train_output, started: float) -> dict:
    inner = base_loss(loss)
    sources = []
    for spec in recipe.data.train_data:
        sources.append({"name": str(spec.get("dataset")), "split": spec.get("split", "train"),
                        "columns": dict(spec.get("columns", {})), "filter": spec.get("filter")})
    metrics = getattr(train_output, "metrics", {}) or {}
    return {
        "base_model": recipe.model.model_name_or_path,
        "datasets": sources,
        "train_rows": len(train_ds),
        "loss": {"name": type(inner).__name__, "config": _call_or(inner, "get_config_dict", {}),
                 "citation": getattr(inner, "citation", None), "cached": recipe.loss.cached},
        "recipe": recipe_as_dict(recipe),
        "hardware": {"device": str(recipe.training.device), "num_processes": recipe.training.world_size,
                     "cpu": platform.processor() or platform.machine(),
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "train_runtime_seconds": metrics.get("train_runtime", time.time() - started),
        "train_samples_per_second": metrics.get("train_samples_per_second"),
        "final_train_loss": metrics.get("train_loss"),
        "library_versions": library_versions() | {"datasets": datasets.__version__},
    }


def _call_or(obj, method: str, default):
    try:
        return getattr(obj, method)()
    except Exception:  # a model card must not kill a finished run
        return default


def plot_training_curves(log_history: list[dict], path: Path) -> Path | None:
    """Loss per step and the eval score per evaluation, in one PNG; never fails the run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
        scores = [(e["step"], e["eval_score"]) for e in log_history if "eval_score" in e]
        fig, ax = plt.subplots(figsize=(7, 4))
        if losses:
            ax.plot(*zip(*losses, strict=True), label="train loss", color="tab:blue")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if scores:
            ax2 = ax.twinx()
            ax2.plot(*zip(*scores, strict=True), "o-", label="eval score", color="tab:orange")
            ax2.set_ylabel("eval score (primary metric)")
        ax.set_title("training curves")
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)
        return path
    except Exception as exc:
        logger.warning("could not plot training curves: %s", exc)
        return None


def finish_run(recipe: Recipe, encoder: Encoder, loss: nn.Module, train_ds: datasets.Dataset, train_output,
               log_history: list[dict], started: float, push_requested: bool) -> dict:
    """After the model is saved: final evaluation, results/run files, curves, model card, optional push."""
    output_dir = Path(recipe.training.output_dir)
    results: dict = {}
    if recipe.eval.final_eval_tasks:
        from nlp_contrastive.evaluation.suite import format_table, load_suite

        suite = load_suite({"tasks": recipe.eval.final_eval_tasks, "batch_size": recipe.eval.eval_batch_size})
        results = suite(encoder)
        write_json_atomic(output_dir / "results.json", results)
        write_json_atomic(output_dir / "results_meta.json", suite.describe())
        print(format_table(results), flush=True)
    info = run_info(recipe, loss, train_ds, train_output, started)
    info["log_history"] = log_history
    write_json_atomic(output_dir / "training_run.json", info)
    plot_training_curves(log_history, output_dir / "training_curves.png")
    from nlp_contrastive import hub

    hub.write_model_card(output_dir)
    if push_requested:
        repo_id = recipe.training.hub_model_id or output_dir.name
        try:
            print(hub.push_to_hub(output_dir, repo_id, private=bool(recipe.training.hub_private_repo),
                                  token=recipe.training.hub_token))
        except hub.HubPushError as exc:
            print(f"error: {exc} Push again later with `nlp-contrastive push {output_dir} --repo-id {repo_id}`.")
    return results
