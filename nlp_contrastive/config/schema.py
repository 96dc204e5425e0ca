"""The recipe schema: one dataclass per concern (model, data, loss, eval) plus TrainingArguments, whose field
names are the recipe keys (flat or in the sections below)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import transformers

from nlp_contrastive.modeling import DEFAULT_MODEL
from nlp_contrastive.precision import PrecisionChoice

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


OUR_TRAINING_KEYS = ("overwrite_output_dir", "nan_policy")


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
    # makes every batch come from one source (nlp_contrastive.data.multi_dataset.MultiDatasetBatchSampler).
    multi_dataset_sampling: str | None = None
    source_weights: list[float] | None = None  # weighted: one per train_data entry
    sampling_temperature: float = 1.0  # temperature: source s drawn with probability ∝ rows_s ** (1 / T)
    max_train_rows: int | None = None
    tokenize_num_proc: int | None = None
    # Stream the sources (every one; `streaming: true` on one entry streams the run): shards read and tokenized
    # on the fly, duplicate-free batches from a look-ahead buffer, exact resume (nlp_contrastive.data.streaming).
    streaming: bool = False
    # Streaming options: buffer_size (rows each source holds ahead, >= the global batch; 10000), bad_rows (a malformed
    # row or corrupt shard part: stop (default, error naming shard and line) | skip), exhaustion (several sources:
    # stop (default, the epoch ends at the first exhausted source) | cycle).
    stream: dict = field(default_factory=dict)

    def streams(self) -> bool:
        return self.streaming or any(isinstance(s, dict) and s.get("streaming") for s in self.train_data)


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
    variables: dict = field(default_factory=dict)  # the recipe's `vars` after --vars.NAME overrides (substituted)

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
