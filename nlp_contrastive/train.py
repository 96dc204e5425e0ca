"""`python -m nlp_contrastive.train RECIPE.yaml [--key value ...]` (also under `accelerate launch`)."""

from __future__ import annotations

import logging
import sys
import time

from transformers.trainer_utils import get_last_checkpoint

from nlp_contrastive import pipeline
from nlp_contrastive.config import load_recipe
from nlp_contrastive.modeling import Encoder
from nlp_contrastive.trainer import ContrastiveTrainer


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path = argv.pop(0) if argv and not argv[0].startswith("--") else None
    try:
        return train(recipe_path, argv)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def train(recipe_path: str | None, overrides: list[str], callbacks: list | None = None) -> int:
    """Run a recipe end to end; `callbacks` are extra transformers TrainerCallbacks (tests, integrations)."""
    started = time.time()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = load_recipe(recipe_path, overrides)
    args = recipe.training
    pipeline.check_output_dir(args)
    pipeline.check_eval_settings(recipe)
    encoder = pipeline.build_encoder(recipe)
    loss = pipeline.build_loss(recipe)
    train_ds = pipeline.build_train_dataset(recipe)
    pipeline.check_loss_against_data(loss, train_ds, recipe)
    train_ds = pipeline.tokenize(recipe, train_ds, encoder)
    if args.should_log:
        pipeline.print_resolved(recipe, pipeline.derived_numbers(recipe, train_ds))
    push_requested, args.push_to_hub = args.push_to_hub, False  # pushed by nlp_contrastive.hub at the end
    trainer = ContrastiveTrainer(
        encoder, args, loss, train_dataset=train_ds,
        evaluator=pipeline.build_evaluator(recipe.eval.eval_tasks, recipe.eval.eval_batch_size),
        batch_sampler_factory=pipeline.build_batch_sampler_factory(recipe),
        single_forward=recipe.loss.single_forward, callbacks=callbacks,
    )
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = get_last_checkpoint(args.output_dir)
        if resume is None:
            raise FileNotFoundError(f"no checkpoint-N folder in '{args.output_dir}' to resume from")
    train_output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)  # every rank: FSDP / DeepSpeed gather the full weights collectively
    if not trainer.is_world_process_zero():
        return 0
    if trainer.is_fsdp_enabled:  # the live model is sharded: evaluate the saved full one on rank 0 alone
        encoder = Encoder.from_pretrained(args.output_dir)
    pipeline.finish_run(recipe, encoder, loss, train_ds, train_output, trainer.state.log_history, started,
                        push_requested)
    return 0


if __name__ == "__main__":
    sys.exit(main())
