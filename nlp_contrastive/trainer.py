"""ContrastiveTrainer: a transformers.Trainer whose compute_loss embeds each role's texts, then calls a loss.

The model is an `Encoder`; the loss is any module from `nlp_contrastive.losses` (or `CachedLoss` around
one). Checkpoints and the final model are written in sentence-transformers format.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from nlp_contrastive import engines
from nlp_contrastive.checkpointing import CheckpointHooks
from nlp_contrastive.data.batch import ROW_ID, SOURCE_COLUMN, Batch, BatchCollator
from nlp_contrastive.distributed import average_gradients_across_ranks
from nlp_contrastive.losses.build import SourceLosses
from nlp_contrastive.losses.cached import CachedLoss, accelerator_sync
from nlp_contrastive.modeling import Encoder
from nlp_contrastive.precision import fp32_evaluation

__all__ = ["ContrastiveTrainer", "NonFiniteLossError"]
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
    """After each optimizer step: step the loss parameters' own optimizer if they have one (under DeepSpeed / FSDP,
    at the learning rate the encoder's step used), then clear their gradients, as Trainer's `model.zero_grad()`
    does for the encoder's: they live outside the model, so without this they would accumulate over every step
    (and a resumed run, whose gradients restart from zero, would diverge from an uninterrupted one)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        side = self.trainer.loss_optimizer
        if side is not None:
            for group in side.param_groups:
                group["lr"] = self.trainer.optimizer.param_groups[0]["lr"]
            side.step()
        for parameter in self.trainer.loss.parameters():
            parameter.grad = None


class ContrastiveTrainer(CheckpointHooks, Trainer):
    """Trainer for an `Encoder` and a loss over role embeddings; evaluation through the evaluation suite."""

    # Our losses return a batch mean, so Trainer must divide by gradient_accumulation_steps itself (it would
    # assume otherwise because Encoder.forward takes **inputs).
    loss_is_scaled_for_ga = False

    def __init__(self, model: Encoder, args: TrainingArguments, loss: nn.Module, *, train_dataset,
                 evaluator: Callable[[Encoder], dict[str, float]] | None = None, batch_sampler_factory=None,
                 single_forward: bool | str | None = True, **kwargs) -> None:
        self.loss = loss
        self.loss_optimizer: torch.optim.Optimizer | None = None  # see create_optimizer
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
        engines.check_checkpointing(args, self.accelerator)
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
        scale and bias) without weight decay — decaying a temperature or a bias toward 0 is wrong.

        With DDP they are a group of that optimizer. Under DeepSpeed / FSDP they get an optimizer of the same kind
        of their own (`self.loss_optimizer`, stepped with the engine's steps by ZeroLossGradients): ZeRO takes
        only parameters of the module it wraps (and no 0-dim ones), FSDP's optimizer holds sharded tensors."""
        optimizer = super().create_optimizer(model)
        loss_parameters = [p for p in self.loss.parameters() if p.requires_grad]
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if self.loss_optimizer is not None:
            known.update(id(p) for group in self.loss_optimizer.param_groups for p in group["params"])
        if not loss_parameters or any(id(p) in known for p in loss_parameters):
            return optimizer
        self.loss.to(self.args.device)
        group = {"params": loss_parameters, "weight_decay": 0.0}
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.loss_optimizer = optimizer_cls([group], **optimizer_kwargs)
        else:
            optimizer.add_param_group(group)
        average_gradients_across_ranks(loss_parameters)  # the engines average only the model's gradients
        return optimizer

    # --------------------------------------------------------------------------------------------- loss
    def loss_for(self, inputs: dict) -> nn.Module:
        """The batch's loss: the one loss, or with per-source losses the one of the batch's source."""
        if isinstance(self.loss, SourceLosses):
            return self.loss.for_batch(inputs.get(SOURCE_COLUMN))
        return self.loss

    def forward_plan(self, batch: Batch) -> tuple[bool, tuple[str, ...] | None]:
        """(single forward?, roles embedded one by one) for this batch, agreed by every process
        (`Batch.forward_plan`): each forward call may be a collective (ZeRO-3 / FSDP parameter gathers, DDP's
        buffer broadcast), so every rank makes the same number of them whatever its batch holds."""
        return batch.forward_plan(self.single_forward)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = Batch.from_inputs(inputs)
        loss_fn = self.loss_for(inputs)
        if isinstance(loss_fn, CachedLoss):  # embeds by itself, in mini-batches
            loss = loss_fn(model, batch, gradient_sync=accelerator_sync(self.accelerator, model))
        else:
            loss = loss_fn(**batch.loss_kwargs(batch.embed(model, *self.forward_plan(batch)), loss_fn))
        if model.training:
            loss = self.nonfinite_guard(loss, inputs)
        return (loss, {}) if return_outputs else loss

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
        # Every rank evaluates (same data, same weights), so best-model decisions agree across processes.
        with fp32_evaluation(encoder):
            results = self.evaluator(encoder)
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in results.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
