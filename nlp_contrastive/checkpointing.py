"""Checkpoints of ContrastiveTrainer: written in sentence-transformers format, atomically, and resumed on every engine.

`CheckpointHooks` overrides the transformers.Trainer hooks that save and load: `_save` (any checkpoint is a usable
model folder), `_save_checkpoint` (staging folder, then one rename), `_load_from_checkpoint` (the encoder's
weights or LoRA adapters, in place; full tensors are scattered into FSDP shards) and `_load_optimizer_and_scheduler`.
The last one is the hook Trainer calls on EVERY resume path: DeepSpeed restores the model from its own checkpoint
and never calls `_load_from_checkpoint`, so the loss's learnable parameters (`loss_parameters.safetensors`) and
the optimizer that trains them beside a DeepSpeed engine (`loss_optimizer.pt`) are read there.
"""

from __future__ import annotations

import logging
import os
import shutil

import safetensors.torch
import torch
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from nlp_contrastive.engines import load_full_state_dict
from nlp_contrastive.lora import LORA_ADAPTER_CONFIG, load_adapter_weights
from nlp_contrastive.modeling import Encoder

LOSS_PARAMETERS_NAME = "loss_parameters.safetensors"  # in checkpoints: learnable loss scale/bias
LOSS_OPTIMIZER_NAME = "loss_optimizer.pt"  # in checkpoints under DeepSpeed: state of the loss parameters' optimizer
logger = logging.getLogger(__name__)


class CheckpointHooks:
    """Save/load hooks for a transformers.Trainer subclass holding `self.loss` (an nn.Module whose trainable
    parameters are saved with each checkpoint) and `self.loss_optimizer` (None, or the optimizer of those
    parameters when they are trained beside the engine's, see ContrastiveTrainer.create_optimizer)."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Checkpoints in sentence-transformers format, so any checkpoint is a usable model.

        Under FSDP / DeepSpeed, `save_model` gathers the full `state_dict` on every rank first (a collective);
        it is what gets written, since the local parameters are only this rank's shards.
        """
        if not self.args.should_save:
            return
        if state_dict is not None and not state_dict:  # transformers' fallback when ZeRO-3 cannot gather
            raise ValueError("DeepSpeed ZeRO-3 did not gather the full weights to save: set zero3_save_16bit_model: "
                             "true in the accelerate config (recipes/accelerate/deepspeed-zero3.yaml)")
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
            if self.loss_optimizer is not None:
                torch.save(self.loss_optimizer.state_dict(), os.path.join(output_dir, LOSS_OPTIMIZER_NAME))
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
        """Copy a checkpoint's weights (the full encoder, or its LoRA adapters) into the live ones, in place: the
        optimizer built over them keeps its references. The loss's parameters are read by the hook every resume
        path runs (`_load_optimizer_and_scheduler`), and by `_load_best_model`."""
        encoder: Encoder = self.accelerator.unwrap_model(model or self.model, keep_torch_compile=False)
        load_encoder_weights(encoder, resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Trainer's, then the loss's parameters and their own optimizer: this hook runs on every resume path
        (DDP, FSDP and DeepSpeed, which skips `_load_from_checkpoint`)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        self._load_loss_parameters(checkpoint)
        path = os.path.join(checkpoint, LOSS_OPTIMIZER_NAME)
        if self.loss_optimizer is not None and os.path.isfile(path):
            self.loss_optimizer.load_state_dict(torch.load(path, map_location=self.args.device, weights_only=True))

    def _load_loss_parameters(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, LOSS_PARAMETERS_NAME)
        if os.path.isfile(path):
            with torch.no_grad():
                for name, value in safetensors.torch.load_file(path).items():
                    self.loss.get_parameter(name).copy_(value)

    def _load_best_model(self) -> None:
        logger.info("Loading best model from %s (score: %s)", self.state.best_model_checkpoint, self.state.best_metric)
        if self.is_deepspeed_enabled:  # DeepSpeed reads its own (possibly sharded) checkpoint of the best step
            super()._load_best_model()
        else:
            self._load_from_checkpoint(self.state.best_model_checkpoint)
        self._load_loss_parameters(self.state.best_model_checkpoint)


def load_encoder_weights(encoder: Encoder, checkpoint: str) -> None:
    """A checkpoint's full weights (or LoRA adapters) into `encoder`, whose parameters may be FSDP shards."""
    adapter = os.path.isfile(os.path.join(checkpoint, LORA_ADAPTER_CONFIG))
    if adapter != encoder.is_lora:
        held, wanted = ("LoRA adapters", "a full model") if adapter else ("a full model", "LoRA adapters")
        raise ValueError(f"checkpoint '{checkpoint}' holds {held} but this run trains {wanted}: "
                         "resume with the recipe's own lora settings, or start a new output_dir")
    if adapter:
        load_adapter_weights(encoder.model, checkpoint)
        return
    weights = os.path.join(checkpoint, "model.safetensors")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint '{checkpoint}' has no model.safetensors: resume from a "
                                "complete checkpoint-N folder written by this trainer")
    state = safetensors.torch.load_file(weights, device=str(encoder.device))
    try:
        missing, unexpected = load_full_state_dict(encoder.model, state)
    except RuntimeError as exc:  # shape mismatches: a checkpoint of another model size
        problem = next((line.strip() for line in str(exc).splitlines() if "mismatch" in line), str(exc))
        raise ValueError(f"checkpoint '{checkpoint}' does not match the model ({problem[:200]}): "
                         "resume with the same model_name_or_path, or start a new output_dir") from None
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ValueError(f"checkpoint '{checkpoint}' does not match the model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}): resume with the same model_name_or_path")
