"""ContrastiveTrainer: a transformers.Trainer whose compute_loss embeds each role's texts, then calls a loss.

The model is an `Encoder`; the loss is any module from `nlp_contrastive.losses` (or `CachedLoss` around
one). Checkpoints and the final model are written in sentence-transformers format.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator

import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from nlp_contrastive.data.batch import ROW_ID, SOURCE_COLUMN, Batch, BatchCollator
from nlp_contrastive.distributed import average_gradients_across_ranks
from nlp_contrastive.lora import LORA_ADAPTER_CONFIG, load_adapter_weights
from nlp_contrastive.losses.build import SourceLosses
from nlp_contrastive.losses.cached import CachedLoss, accelerator_sync
from nlp_contrastive.modeling import Encoder

LOSS_PARAMETERS_NAME = "loss_parameters.safetensors"  # in checkpoints: learnable loss scale/bias
logger = logging.getLogger(__name__)


class NonFiniteLossError(ValueError):
    """Training stopped before applying a NaN/inf loss: the step, the batch's row ids and the likely cause."""


class NonFiniteLossGuard:
    """Check each training loss before its backward pass (`nan_policy`: stop | skip).

    stop: raise NonFiniteLossError — the weights are still those of the last good step and checkpoints written so
    far stay. skip: the batch gives no gradient (a fresh leaf is back-propagated instead; parameters without a
    gradient are not touched by the optimizer), counted in `skipped` and logged as `skipped_nonfinite_batches`.
    All processes decide together, so none waits in an all-reduce that another skipped.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.skipped = 0

    def __call__(self, loss: torch.Tensor, inputs: dict) -> torch.Tensor:
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=loss.device)
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad, reduction="sum")
        if not bad.item():
            return loss
        policy = getattr(self.trainer.args, "nan_policy", "stop")
        if policy == "skip":
            self.skipped += 1
            logger.warning("skipping batch with non-finite loss at step %d (rows %s); %d skipped so far",
                           self.trainer.state.global_step + 1, _row_ids(inputs), self.skipped)
            return torch.zeros((), device=loss.device, requires_grad=True)
        raise NonFiniteLossError(self.message(loss, inputs))

    def message(self, loss: torch.Tensor, inputs: dict) -> str:
        trainer = self.trainer
        state = trainer.state
        checkpoint = _last_checkpoint(trainer.args.output_dir)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        value = loss.detach().float().item() if loss.numel() == 1 else "non-finite"
        return (f"loss is {value} at step {state.global_step + 1} (epoch {state.epoch or 0:.2f}), batch rows "
                f"{_row_ids(inputs)}: likely cause: {self.likely_cause(inputs)}; {kept}; or set nan_policy: skip "
                "to skip such batches")

    def likely_cause(self, inputs: dict) -> str:
        args = self.trainer.args
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if any(not torch.isfinite(p).all() for p in model.parameters()):
            return (f"the weights are already non-finite (diverged): lower learning_rate ({args.learning_rate:g}) "
                    "or set max_grad_norm")
        if args.fp16:
            return "fp16 overflow: use bf16 or fp32 (fp16: false)"
        short = [i for i, n in _text_lengths(inputs) if n <= 2]
        if short:
            return f"texts with no tokens besides [CLS]/[SEP] in rows {short[:5]}: fix or filter them"
        values = [k for k in ("score", "label") if k in inputs and not torch.isfinite(inputs[k]).all()]
        if values:
            return f"non-finite {', '.join(values)} values in the batch: fix the data"
        return (f"learning_rate ({args.learning_rate:g}) too high, or the loss's settings (e.g. a tiny "
                "temperature): lower it")


def _row_ids(inputs: dict) -> list[int] | str:
    ids = inputs.get("row_ids")
    return ids.tolist() if ids is not None else "unknown (no row_id column)"


def _text_lengths(inputs: dict) -> Iterator[tuple[int, int]]:
    """(row id, token count) of each embedded text of the batch."""
    ids = inputs.get("row_ids")
    for role, features in inputs.get("features", {}).items():
        if role == "negatives":
            continue
        for i, n in enumerate(features["attention_mask"].sum(dim=1).tolist()):
            yield (int(ids[i]) if ids is not None else i), n


def _last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


class SignalStop(TrainerCallback):
    """SIGINT/SIGTERM during `train()`: finish the current step, write a checkpoint, stop (a second signal stops at
    once). The flag is shared across processes at each step end, so all ranks save and stop at the same step."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.received: int | None = None  # the signal number

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None:  # second signal: the user insists
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.received = signum
        logger.warning("%s received: saving a checkpoint at the end of this step, then stopping (send it again to "
                       "stop at once)", signal.Signals(signum).name)

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor(float(self.received is not None), device=self.trainer.accelerator.device)
        if self.trainer.accelerator.num_processes > 1:
            flag = self.trainer.accelerator.reduce(flag, reduction="sum")
        if flag.item():
            self.received = self.received or signal.SIGTERM  # another rank got it
            control.should_save = True
            control.should_training_stop = True
        return control


class ZeroLossGradients(TrainerCallback):
    """Clear the loss's own parameter gradients after each optimizer step, as Trainer's `model.zero_grad()` does
    for the encoder's: they live outside the model, so without this they would accumulate over every step (and a
    resumed run, whose gradients restart from zero, would diverge from an uninterrupted one)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        for parameter in self.trainer.loss.parameters():
            parameter.grad = None


class ContrastiveTrainer(Trainer):
    """Trainer for an `Encoder` and a loss over role embeddings; evaluation through the evaluation suite."""

    # Our losses return a batch mean, so Trainer must divide by gradient_accumulation_steps itself (it would
    # assume otherwise because Encoder.forward takes **inputs).
    loss_is_scaled_for_ga = False

    def __init__(self, model: Encoder, args: TrainingArguments, loss: nn.Module, *, train_dataset,
                 evaluator: Callable[[Encoder], dict[str, float]] | None = None, batch_sampler_factory=None,
                 single_forward: bool | str | None = True, **kwargs) -> None:
        self.loss = loss
        self.evaluator = evaluator
        # True / False, or None = chosen per batch from the lengths (a recipe's "auto" | "true" | "false")
        self.single_forward = {"auto": None, "true": True, "false": False}.get(single_forward, single_forward) \
            if isinstance(single_forward, str) else single_forward
        self.batch_sampler_factory = batch_sampler_factory
        collator = BatchCollator(model.tokenizer.pad_token_id or 0)
        if hasattr(train_dataset, "add_column") and ROW_ID not in train_dataset.column_names:
            train_dataset = train_dataset.add_column(ROW_ID, list(range(len(train_dataset))))  # errors name rows
        # Trainer insists on an eval_dataset when eval_strategy != "no"; our evaluator brings its own data.
        eval_dataset = ["suite"] if evaluator is not None else None
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         data_collator=collator, processing_class=None, **kwargs)
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None) if self.is_deepspeed_enabled else None
        cached = any(isinstance(m, CachedLoss) for m in loss.modules())
        if cached and plugin is not None and plugin.zero_stage >= 2:
            raise ValueError(f"cached: true (GradCache) cannot run under DeepSpeed ZeRO stage {plugin.zero_stage}: "
                             "ZeRO >= 2 reduces each gradient once per backward, GradCache backpropagates once per "
                             "mini-batch; use zero_stage: 1, DDP (recipes/accelerate/ddp.yaml) or FSDP")
        self.nonfinite_guard = NonFiniteLossGuard(self)
        self.signal_stop = SignalStop(self)
        self.add_callback(self.signal_stop)
        self.add_callback(ZeroLossGradients(self))

    def train(self, *args, **kwargs):
        """Trainer.train with SIGINT/SIGTERM turned into "save a checkpoint at the end of this step, then stop"
        (`self.signal_stop.received` tells the caller)."""
        with self.signal_stop.installed():
            return super().train(*args, **kwargs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.nonfinite_guard.skipped:
            logs["skipped_nonfinite_batches"] = self.nonfinite_guard.skipped
        super().log(logs, *args, **kwargs)

    # --------------------------------------------------------------------------------------------- data
    def _remove_unused_columns(self, dataset, description=None):
        return dataset  # the collator reads role columns by name; nothing to strip

    def get_train_dataloader(self) -> DataLoader:
        if getattr(self.train_dataset, "is_stream", False):  # rank-aware batches already (data.streaming)
            return self.train_dataset.data_loader(self.data_collator)
        if self.batch_sampler_factory is None:
            return super().get_train_dataloader()
        sampler = self.batch_sampler_factory(self.train_dataset, self._train_batch_size, self.args)
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        # Our samplers give every rank the same number of batches; accelerate < 1.2 refuses a batch sampler
        # without batch_size (see nlp_contrastive.data.sampling) unless even_batches is off.
        even_batches, self.accelerator.even_batches = self.accelerator.even_batches, False
        try:
            prepared = self.accelerator.prepare(loader)
        finally:
            self.accelerator.even_batches = even_batches
        # Our batch samplers are already rank-aware: make accelerate's shard wrapper a pass-through.
        shard = getattr(prepared, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
            shard.num_processes, shard.process_index = 1, 0
        # set_epoch does not reach a sampler inside BatchSamplerShard (accelerate < 1.2, transformers < 5), nor
        # inside the loader skip_first_batches rebuilds when resuming mid-epoch: the sampler reads the Trainer's epoch.
        sampler.epoch_source = lambda: int(self.state.epoch or 0)  # epoch e + k/steps_in_epoch -> e
        return prepared

    # ---------------------------------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Trainer's optimizer for the encoder, plus the loss's own trainable parameters (e.g. LogLoss's learnable
        scale and bias) in a group without weight decay — decaying a temperature or a bias toward 0 is wrong."""
        optimizer = super().create_optimizer(model)
        loss_parameters = [p for p in self.loss.parameters() if p.requires_grad]
        if loss_parameters and not any(p is q for group in optimizer.param_groups for p in group["params"]
                                       for q in loss_parameters):
            self.loss.to(self.args.device)
            optimizer.add_param_group({"params": loss_parameters, "weight_decay": 0.0})
            average_gradients_across_ranks(loss_parameters)  # DDP averages only the model's gradients
        return optimizer

    # --------------------------------------------------------------------------------------------- loss
    def loss_for(self, inputs: dict) -> nn.Module:
        """The batch's loss: the one loss, or with per-source losses the one of the batch's source."""
        if isinstance(self.loss, SourceLosses):
            return self.loss.for_batch(inputs.get(SOURCE_COLUMN))
        return self.loss

    def forward_plan(self, batch: Batch) -> bool | None:
        """single_forward for this batch. `auto` is decided here, by every process together (one forward only if
        all prefer it): with ZeRO-3 / FSDP each forward call gathers parameters, so ranks must make the same
        number of calls."""
        if self.single_forward is not None or self.accelerator.num_processes == 1:
            return self.single_forward
        votes = torch.tensor(float(batch.one_forward_is_cheaper()), device=self.accelerator.device)
        return bool(self.accelerator.reduce(votes, reduction="sum").item() == self.accelerator.num_processes)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = Batch.from_inputs(inputs)
        loss_fn = self.loss_for(inputs)
        if isinstance(loss_fn, CachedLoss):  # embeds by itself, in mini-batches
            loss = loss_fn(model, batch, gradient_sync=accelerator_sync(self.accelerator, model))
        else:
            loss = loss_fn(**batch.loss_kwargs(batch.embed(model, self.forward_plan(batch)), loss_fn))
        if model.training:
            loss = self.nonfinite_guard(loss, inputs)
        return (loss, {}) if return_outputs else loss

    # ------------------------------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Checkpoints in sentence-transformers format, so any checkpoint is a usable model.

        Under FSDP / DeepSpeed, `save_model` gathers the full `state_dict` on every rank first (a collective);
        it is what gets written, since the local parameters are only this rank's shards.
        """
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        encoder: Encoder = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        encoder.save_pretrained(output_dir, state_dict=state_dict)
        if os.path.abspath(output_dir) != os.path.abspath(self.args.output_dir):
            # Checkpoints carry the arguments as transformers' do; the final folder is the model alone (it is
            # what gets pushed, and the pickled arguments may hold a hub token).
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
            loss_state = {name: p.detach().cpu().contiguous() for name, p in self.loss.named_parameters()
                          if p.requires_grad}
            if loss_state:  # learnable loss parameters resume with the encoder (the optimizer state alone would not)
                safetensors.torch.save_file(loss_state, os.path.join(output_dir, LOSS_PARAMETERS_NAME))
            if getattr(self.train_dataset, "is_stream", False):  # the stream position, for an exact resume
                self.train_dataset.save_state(output_dir)

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_checkpoint_staging_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write checkpoint-N in a hidden staging folder, then rename it into place: a crash mid-save never leaves
        a half-written checkpoint-N for `--resume_from_checkpoint true` to pick up."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f".staging-{name}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()  # no rank writes its rng_state_{r}.pth before the old staging is gone
        self._checkpoint_staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging_dir = None
        final = os.path.join(run_dir, name)
        if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging):
            self.state.best_model_checkpoint = final  # on every rank: all of them may load the best model
        self.accelerator.wait_for_everyone()  # every rank's files are in staging before rank 0 renames it
        if self.args.should_save:
            if self.state.best_model_checkpoint == final:
                self.state.save_to_json(os.path.join(staging, name, TRAINER_STATE_NAME))
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()  # checkpoint-N is in place for every rank (e.g. to load the best)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Copy a checkpoint's weights (the full encoder, or its LoRA adapters) and the loss's learnable parameters
        into the live ones, in place: the optimizer built over them keeps its references."""
        encoder: Encoder = self.accelerator.unwrap_model(model or self.model, keep_torch_compile=False)
        self._load_loss_parameters(resume_from_checkpoint)
        adapter = os.path.isfile(os.path.join(resume_from_checkpoint, LORA_ADAPTER_CONFIG))
        if adapter != encoder.is_lora:
            held, wanted = ("LoRA adapters", "a full model") if adapter else ("a full model", "LoRA adapters")
            raise ValueError(f"checkpoint '{resume_from_checkpoint}' holds {held} but this run trains {wanted}: "
                             "resume with the recipe's own lora settings, or start a new output_dir")
        if adapter:
            load_adapter_weights(encoder.model, resume_from_checkpoint)
            return
        weights = os.path.join(resume_from_checkpoint, "model.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"checkpoint '{resume_from_checkpoint}' has no model.safetensors: resume from a "
                                    "complete checkpoint-N folder written by this trainer")
        state = safetensors.torch.load_file(weights, device=str(encoder.device))
        try:
            missing, unexpected = encoder.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches: a checkpoint of another model size
            problem = next((line.strip() for line in str(exc).splitlines() if "mismatch" in line), str(exc))
            raise ValueError(f"checkpoint '{resume_from_checkpoint}' does not match the model ({problem[:200]}): "
                             "resume with the same model_name_or_path, or start a new output_dir") from None
        if unexpected or [k for k in missing if "position_ids" not in k]:
            raise ValueError(f"checkpoint '{resume_from_checkpoint}' does not match the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}): resume with the same model_name_or_path")

    def _load_loss_parameters(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, LOSS_PARAMETERS_NAME)
        if os.path.isfile(path):
            with torch.no_grad():
                for name, value in safetensors.torch.load_file(path).items():
                    self.loss.get_parameter(name).copy_(value)

    def _load_best_model(self) -> None:
        logger.info("Loading best model from %s (score: %s)", self.state.best_model_checkpoint, self.state.best_metric)
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # --------------------------------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Run the evaluator on the unwrapped encoder; `<prefix>_score` is its primary metric.

        Always in fp32, as `nlp-contrastive eval` on the saved model runs: under bf16/fp16 training accelerate
        patches an autocast into the encoder's forward, which is set aside for the evaluation, so results.json,
        the model card and the best-checkpoint choice are the numbers a user reproduces.
        """
        if self.evaluator is None:
            return {}
        encoder = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        autocast_forward = encoder.__dict__.get("forward")
        original_forward = encoder.__dict__.get("_original_forward")
        if autocast_forward is not None and original_forward is not None:
            encoder.forward = original_forward
        try:
            # Every rank evaluates (same data, same weights), so best-model decisions agree across processes.
            with torch.autocast(encoder.device.type, enabled=False):
                results = self.evaluator(encoder)
        finally:
            if autocast_forward is not None and original_forward is not None:
                encoder.forward = autocast_forward
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in results.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
