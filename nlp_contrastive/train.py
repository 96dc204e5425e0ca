"""`python -m nlp_contrastive.train RECIPE.yaml [--key value ...]` (also under `accelerate launch`)."""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from nlp_contrastive import config, engines, student, teacher
from nlp_contrastive.data import loading, multi_dataset, sampling, stream_sources, streaming, train_data
from nlp_contrastive.data.batch import SOURCE_COLUMN
from nlp_contrastive.losses.build import build_recipe_loss
from nlp_contrastive.modeling import Encoder
from nlp_contrastive.retrieval import recipe_mining
from nlp_contrastive.run_record import CURVES_FILE, build_run_record, plot_training_curves, write_results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path = argv.pop(0) if argv and not argv[0].startswith("--") else None
    try:
        return train(recipe_path, argv)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder, ... while writing checkpoints or outputs
        where = f" '{exc.filename}'" if exc.filename else ""
        fix = "free disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
        print(f"error: could not write{where}: {exc.strerror or exc}: {fix} or choose another output_dir; "
              "checkpoints written before are complete (resume with --resume_from_checkpoint true)", file=sys.stderr)
        return 2


def train(recipe_path: str | None, overrides: list[str], callbacks: list | None = None) -> int:
    """Run a recipe end to end; `callbacks` are extra transformers TrainerCallbacks (tests, integrations)."""
    from nlp_contrastive.evaluation.suite import training_evaluator
    from nlp_contrastive.trainer import ContrastiveTrainer

    started = time.time()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = config.load_recipe(recipe_path, overrides)
    args = recipe.training
    engines.check_requested_engine(args)
    config.check_output_dir(args)
    set_seed(args.seed)  # LoRA adapters are initialised randomly when built (Trainer seeds again later)
    output_dir_existed = Path(args.output_dir).exists()
    encoder = build_encoder(recipe.model)
    loss = build_recipe_loss(recipe)  # one loss, or one per train_data source (losses.build.SourceLosses)
    encoder.matryoshka_dims = check_matryoshka_dims(loss, encoder.dimension)
    encoder.prompts.update(saved_prompts(recipe.data.prompts))
    # With evaluation on, its data is loaded first (a bad dev split fails before any mining) and cut with the
    # starting model where a task asks (corpus_subset_top_n).
    evaluates = str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "no"
    evaluator = training_evaluator(with_prompts(recipe.eval.eval_tasks, recipe.data.prompts),
                                   recipe.eval.eval_batch_size, starting_encoder=encoder if evaluates else None)
    streamed = recipe.data.streams()  # read, batched and tokenized on the fly (nlp_contrastive.data.streaming)
    if streamed:
        train_ds, sources, batch_sampler_factory = _streamed_train_data(recipe, encoder), [], None
    else:  # a failure while mining (the first thing written) leaves no half-made output_dir either
        with _tidy_on_failure(Path(args.output_dir), created=not output_dir_existed, main_process=args.should_save):
            train_ds, sources, batch_sampler_factory = _in_memory_train_data(recipe, encoder)
    push_requested, args.push_to_hub = args.push_to_hub, False  # pushed by nlp_contrastive.hub at the end
    trainer = ContrastiveTrainer(
        encoder, args, loss, train_dataset=train_ds,
        evaluator=evaluator, batch_sampler_factory=batch_sampler_factory,
        single_forward=recipe.loss.single_forward, callbacks=callbacks,
    )
    with _tidy_on_failure(Path(args.output_dir), created=not output_dir_existed, main_process=args.should_save):
        train_output = trainer.train(resume_from_checkpoint=_checkpoint_to_resume(args))
    if trainer.signal_stop.received is not None:
        _leave_process_group(trainer)
        return _report_interrupted(trainer)
    if recipe.model.lora_merge:  # adapters folded into the weights: the output is a plain model folder
        encoder.merge_lora()
    trainer.save_model(args.output_dir)  # every rank: FSDP / DeepSpeed gather the full weights collectively
    _leave_process_group(trainer)  # the last collective: what follows runs on rank 0 alone
    sharded = engines.weights_are_sharded(trainer.accelerator)
    if sharded:
        engines.stop_zero3_model_loading()
    if not trainer.is_world_process_zero():
        return 0
    output_dir = Path(args.output_dir)
    if sharded:  # FSDP / ZeRO-3: the live model is sharded, evaluate the saved full one
        encoder = Encoder.from_pretrained(output_dir)
    final_evaluation(recipe, encoder, output_dir)
    rows = train_ds.rows_read() if streamed else [len(s) for s in sources]
    record = build_run_record(recipe, loss, rows, sum(rows) if streamed else len(train_ds), train_output,
                              trainer.state.log_history, started)
    record.write(output_dir)
    plot_training_curves(record.log_history, output_dir / CURVES_FILE)
    from nlp_contrastive import card

    card.write_model_card(output_dir)
    if push_requested:
        push(output_dir, args)
    return 0


@contextlib.contextmanager
def _tidy_on_failure(output_dir: Path, *, created: bool, main_process: bool) -> Iterator[None]:
    """A failed run leaves no half-made output: staging folders of an unfinished checkpoint go, and so does an
    output_dir this run created if it holds no complete checkpoint to resume from."""
    try:
        yield
    except BaseException:
        if main_process and output_dir.is_dir():
            for staging in output_dir.glob(".staging-*"):
                shutil.rmtree(staging, ignore_errors=True)
            if created and get_last_checkpoint(str(output_dir)) is None:
                shutil.rmtree(output_dir, ignore_errors=True)
        raise


def _leave_process_group(trainer) -> None:
    """Every rank waits for the others, then destroys the process group: one left to interpreter exit can abort a
    rank after a complete run (gloo: "terminate called without an active exception")."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # finishes trackers; destroys the group on recent accelerate
    if dist.is_initialized():
        dist.destroy_process_group()


def _report_interrupted(trainer) -> int:
    """SIGINT/SIGTERM: the trainer saved checkpoint-N and stopped; say how to resume, exit 128 + signal number."""
    signum = trainer.signal_stop.received
    if trainer.is_world_process_zero():
        name = signal.Signals(signum).name
        checkpoint = get_last_checkpoint(trainer.args.output_dir)
        print(f"stopped by {name} at step {trainer.state.global_step}: saved {checkpoint}; resume with the same "
              "command plus --resume_from_checkpoint true", file=sys.stderr, flush=True)
    return 128 + int(signum)


def build_encoder(cfg: config.ModelConfig) -> Encoder:
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    encoder = Encoder.from_pretrained(cfg.model_name_or_path, pooling=cfg.pooling, normalize=cfg.normalize,
                                      max_seq_length=cfg.max_seq_length, **kwargs)
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        # transformers' ZeRO-3 loading keeps every known key renaming, used or not, and save_pretrained reverts them
        # all (BERT's LayerNorm weight/bias saved as legacy gamma/beta): keep only the model's own, as elsewhere.
        encoder.model._weight_conversions = None
    if cfg.include_prompt is not None:
        encoder.include_prompt = cfg.include_prompt
    if cfg.keep_layers is not None:
        student.keep_layers(encoder.model, cfg.keep_layers)
    if cfg.lora is not None:
        encoder.add_lora(**cfg.lora)
    return encoder


def saved_prompts(prompts: dict) -> dict[str, str]:
    """The recipe's prompts under the names sentence-transformers users pass as `prompt_name`: each role's own
    name, plus "query" (anchor) and "document" (positive)."""
    saved = dict(prompts)
    for role, alias in (("anchor", "query"), ("positive", "document")):
        if role in prompts:
            saved.setdefault(alias, prompts[role])
    return saved


def with_prompts(tasks: list[dict], prompts: dict) -> list[dict]:
    """Eval tasks without their own `prompts` get the training prompts: query/sentence1 the anchor's,
    document/sentence2 the positive's — the texts are embedded as in training."""
    if not prompts:
        return tasks
    by_type = {"sts": ("sentence1", "sentence2"), "pair_classification": ("sentence1", "sentence2"),
               "reranking": ("query", "document"), "retrieval": ("query", "document")}
    out = []
    for task in tasks:
        roles = by_type.get(task.get("type"))
        if "prompts" in task or roles is None:
            out.append(task)
            continue
        mapped = {role: prompts[source] for role, source in zip(roles, ("anchor", "positive"), strict=True)
                  if source in prompts}
        out.append({**task, "prompts": mapped} if mapped else task)
    return out


def check_matryoshka_dims(loss, dimension: int) -> list[int] | None:
    """The Matryoshka dims the model is trained at (every Matryoshka loss in it: inside GradCache, and each
    source's own under per-source losses), each checked against the encoder's size; None if there is none."""
    from nlp_contrastive.losses.matryoshka import MatryoshkaLoss

    wrappers = [m for m in loss.modules() if isinstance(m, MatryoshkaLoss)]
    if not wrappers:
        return None
    for wrapper in wrappers:
        wrapper.check_embedding_dim(dimension)
    return sorted({d for wrapper in wrappers for d in wrapper.dims}, reverse=True)


def _in_memory_train_data(recipe: config.Recipe, encoder: Encoder):
    """The training set loaded, joined, teacher-embedded and tokenized ahead; its sources and batch sampler factory
    (whose sampler, built here for the printed numbers, is the one the trainer then gets)."""
    args = recipe.training
    specs = recipe_mining.mine_train_data(recipe.data.train_data, encoder, args.output_dir, prompts=recipe.data.prompts,
                                          resume=bool(_checkpoint_to_resume(args)))  # sources with `mine` only
    sources = train_data.build_train_sources(  # prompt token counts go with the texts if pooling leaves them out
        specs, prompts=recipe.data.prompts,
        prompt_length=None if encoder.include_prompt else encoder.prompt_length)
    multi = recipe.data.multi_dataset_sampling
    train_ds = train_data.concatenate(sources, max_rows=recipe.data.max_train_rows, keep_sources=multi is not None)
    train_ds = teacher.prepare_teacher_embeddings(train_ds, recipe.loss.teacher, student_dim=encoder.dimension,
                                                  student=recipe.model.model_name_or_path,
                                                  max_seq_length=encoder.max_seq_length,
                                                  main_process_first=args.main_process_first)
    train_ds = loading.tokenize_roles(train_ds, encoder.tokenizer, encoder.max_seq_length,
                                      num_proc=recipe.data.tokenize_num_proc)
    batch_sampler_factory = multi_dataset.batch_sampler_factory(recipe.data.batch_sampler, multi,
                                                                source_weights=recipe.data.source_weights,
                                                                sampling_temperature=recipe.data.sampling_temperature)
    if args.should_log:  # the sampler built here is the one the trainer gets from the factory
        # train_batch_size: per device x GPUs of this process (nn.DataParallel, several GPUs without a launcher),
        # the batch the Trainer's own loader and its sampler are built with.
        batches = sampling.batches_per_epoch(batch_sampler_factory, train_ds, args.train_batch_size, args)
        source_rows = list(np.bincount(train_ds[SOURCE_COLUMN][:], minlength=len(sources))) if multi else None
        config.print_resolved(recipe, config.derived_numbers(recipe, len(train_ds), batches,
                                                             train_data.hard_negatives_per_row(train_ds),
                                                             source_rows=source_rows))
    return train_ds, sources, batch_sampler_factory


def _streamed_train_data(recipe: config.Recipe, encoder: Encoder):
    """The streamed training set, at the checkpoint's stream position when resuming (the Trainer's own batch
    skipping is turned off: it would read the stream from the start again)."""
    args = recipe.training
    sources = [train_data.train_source(spec, i) for i, spec in enumerate(recipe.data.train_data)]
    shares = stream_sources.stream_shares(recipe.data.train_data, recipe.data.multi_dataset_sampling,
                                          recipe.data.source_weights, recipe.data.sampling_temperature)
    stream = streaming.build_stream(
        sources, tokenizer=encoder.tokenizer, max_length=encoder.max_seq_length,
        per_device_batch_size=args.per_device_train_batch_size, processes=args.world_size, rank=args.process_index,
        seed=args.data_seed if args.data_seed is not None else args.seed, batch_sampler=recipe.data.batch_sampler,
        sampling=recipe.data.multi_dataset_sampling, shares=shares, **streaming.stream_options(recipe.data.stream))
    resume = _checkpoint_to_resume(args)
    if resume:
        stream.load_state(resume)
    args.ignore_data_skip = True
    if args.should_log:
        numbers = config.derived_numbers(recipe, 0, 0, 0)
        if shares is not None:  # a stream has no known batches per epoch: each source's share of the batches
            numbers["batch_share_per_source"] = {f"train_data[{i}]": round(p, 4) for i, p in enumerate(shares)}
        config.print_resolved(recipe, numbers)
    return stream


def _checkpoint_to_resume(args) -> str | bool | None:
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if resume is None:
            raise FileNotFoundError(f"no checkpoint-N folder in '{args.output_dir}' to resume from")
    elif isinstance(resume, str) and not Path(resume).is_dir():
        raise FileNotFoundError(f"checkpoint '{resume}' does not exist: give a checkpoint-N folder, or true for the "
                                "last one in output_dir")
    return resume


def final_evaluation(recipe: config.Recipe, encoder: Encoder, output_dir: Path) -> dict:
    """The final eval tasks on the saved model: results.json + results_meta.json, and the table printed."""
    if not recipe.eval.final_eval_tasks:
        return {}
    from nlp_contrastive.evaluation.suite import format_table, load_suite
    from nlp_contrastive.precision import fp32_evaluation

    suite = load_suite({"tasks": with_prompts(recipe.eval.final_eval_tasks, recipe.data.prompts),
                        "batch_size": recipe.eval.eval_batch_size})
    if encoder.matryoshka_dims:  # every task at full size and at each smaller trained dimension
        suite = suite.at_dimensions([None, *(d for d in encoder.matryoshka_dims if d < encoder.dimension)])
    with fp32_evaluation(encoder):  # after bf16 training the live encoder's forward autocasts
        results = suite(encoder)
    write_results(output_dir, results, suite.describe())
    print(format_table(results), flush=True)
    return results


def push(output_dir: Path, args) -> None:
    from nlp_contrastive import hub

    repo_id = args.hub_model_id or output_dir.name
    try:
        print(hub.push_to_hub(output_dir, repo_id, private=bool(args.hub_private_repo), token=args.hub_token))
    except hub.HubPushError as exc:
        print(f"error: {exc} Push again later with `nlp-contrastive push {output_dir} --repo-id {repo_id}`.")


if __name__ == "__main__":
    sys.exit(main())
