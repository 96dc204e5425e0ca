"""The batch contract: which roles a row may have, how rows are collated, and how a batch feeds a loss.

Data sources map columns onto roles by name (`nlp_contrastive.data.loading`); tokenization adds one token column per
text role (`token_column(role)`); `BatchCollator` pads those per role and hashes each text's tokens (so
duplicate texts can be masked as false negatives); `Batch` is the typed view of a collated batch, whose
`loss_kwargs()` is the one place that turns embeddings + batch into a loss's keyword arguments — for the plain
path (`Batch.embed` then the loss) and for GradCache (`CachedLoss`) alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch
from torch import nn

from nlp_contrastive import distributed

# Texts that are embedded; "negatives" is a list of texts per row, flattened for the encoder.
EMBEDDED_ROLES = ("anchor", "positive", "negative", "negatives")
# Texts that are only compared, never embedded: every known positive of the row's query, so that none of them
# is used as a negative for that row (a query with several relevant documents).
MASKING_ROLES = ("known_positives",)
TEXT_ROLES = EMBEDDED_ROLES + MASKING_ROLES
LIST_ROLES = ("negatives", "known_positives")
VALUE_ROLES = ("score", "label")
# A vector of floats per row, the teacher's view for distillation: its scores [1 + K] (positive first, then each
# negative) or its embedding [D] of the anchor text. Collated as [B, L] float32; shorter rows padded with 0 (the
# loss masks slots of padded negatives).
VECTOR_ROLES = ("teacher_scores", "teacher_embedding")
ROLES = TEXT_ROLES + VALUE_ROLES + VECTOR_ROLES

# Loss arguments that are hints (duplicate / false-negative masking): given to a loss only if it takes them.
_TEXT_ID_ARGUMENTS = {"anchor": "anchor_ids", "positive": "positive_ids", "negative": "negative_ids",
                      "negatives": "negative_ids", "known_positives": "known_positive_ids"}
_OPTIONAL_ARGUMENTS = frozenset(_TEXT_ID_ARGUMENTS.values())

Features = dict[str, torch.Tensor]
# Optional dataset column with each row's index; collated as the batch's `row_ids` so errors can name the rows.
ROW_ID = "row_id"
# With multi_dataset_sampling: the train_data index of each row, collated as the batch's `source` ([B], one value
# per batch) so the trainer can use that source's loss. A role a source does not map is None ([] for list roles)
# in its rows, and left out of its batches.
SOURCE_COLUMN = "source"


def token_column(role: str) -> str:
    """The dataset column holding a text role's token ids (written once by tokenization)."""
    return f"{role}_input_ids"


def prompt_length_column(role: str) -> str:
    """The dataset column holding how many leading tokens of a text role are its prompt (written with the prompts
    when the model leaves prompt tokens out of the pooling, `include_prompt: false`; one int per row)."""
    return f"{role}_prompt_length"


@dataclass
class Batch:
    """A collated batch.

    features: role -> {input_ids, attention_mask} for every embedded role (+ prompt_length [B] when prompt tokens
        are left out of the pooling); "negatives" is flattened to [M, T].
    negatives_index: [B, K] row of the flattened negatives holding row b's k-th negative, -1 = padding.
    text_hashes: role -> int64 hash of each text's token ids ([B]; [M] for negatives; [B, P] for
        known_positives with -1 padding) — equal texts have equal hashes, for false-negative masking.
    values: "score" / "label" -> [B] float32; "teacher_scores" / "teacher_embedding" -> [B, L] float32.
    extras: further keyword arguments passed to the loss as they are (e.g. from a user calling CachedLoss).
    """

    features: dict[str, Features]
    negatives_index: torch.Tensor | None = None
    text_hashes: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    @classmethod
    def from_inputs(cls, inputs: Mapping) -> Batch:
        """The Batch behind a collated dict (the Trainer moves dicts, not dataclasses, to the device)."""
        return cls(features=inputs["features"], negatives_index=inputs.get("negatives_index"),
                   text_hashes=dict(inputs.get("text_hashes", {})),
                   values={k: inputs[k] for k in VALUE_ROLES + VECTOR_ROLES if k in inputs})

    def as_inputs(self) -> dict:
        inputs: dict = {"features": self.features, "text_hashes": self.text_hashes, **self.values}
        if self.negatives_index is not None:
            inputs["negatives_index"] = self.negatives_index
        return inputs

    def check(self) -> None:
        if not self.features:
            raise ValueError("the batch has no texts: pass {role: tokenized inputs} for at least one role")
        if ("negatives" in self.features) != (self.negatives_index is not None):
            raise ValueError("role 'negatives' (flattened [B*K, T] inputs) and negatives_index [B, K] go together: "
                             f"got roles {sorted(self.features)} and negatives_index="
                             f"{'set' if self.negatives_index is not None else None}")

    def embed(self, model: Callable[..., torch.Tensor], single_forward: bool | None = True,
              roles: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Embed every role; with `single_forward`, one forward pass over all roles padded to one length.

        `single_forward=None` chooses from the lengths: one forward unless padding every role to the longest one
        would add more than 10% padded tokens (e.g. short anchors with long positives), then one per role.
        `roles` (per-role forwards only): the roles to run, in order, agreed by every process (`forward_plan`);
        a role this batch lacks runs a one-token placeholder forward whose output counts zero, so every process
        makes the same number of forward calls (see `nlp_contrastive.distributed`).
        """
        if single_forward is None:
            single_forward = self.one_forward_is_cheaper()
        if single_forward and len(self.features) > 1:
            return self._embed_stacked(model, list(self.features))
        embeddings, zero = {}, None
        for role in roles if roles is not None else self.features:
            if role in self.features:
                embeddings[role] = model(**self.features[role])
            else:
                placeholder = placeholder_forward(model, self.features).sum() * 0
                zero = placeholder if zero is None else zero + placeholder
        if zero is not None:  # the placeholders join the graph (so backward runs through them too), adding 0
            first = next(iter(embeddings))
            embeddings[first] = embeddings[first] + zero
        return embeddings

    def _embed_stacked(self, model: Callable[..., torch.Tensor], roles: list[str]) -> dict[str, torch.Tensor]:
        width = max(f["input_ids"].shape[1] for f in self.features.values())
        stacked = {key: torch.cat([nn.functional.pad(self.features[r][key], (0, width - self.features[r][key].shape[1]))
                                   for r in roles])
                   for key in ("input_ids", "attention_mask")}
        if any("prompt_length" in f for f in self.features.values()):  # roles without a prompt: 0 tokens
            stacked["prompt_length"] = torch.cat([
                self.features[r].get("prompt_length", self.features[r]["input_ids"].new_zeros(
                    self.features[r]["input_ids"].shape[0])) for r in roles])
        embeddings = model(**stacked)
        sizes = [self.features[r]["input_ids"].shape[0] for r in roles]
        return dict(zip(roles, torch.split(embeddings, sizes), strict=True))

    def forward_plan(self, single_forward: bool | None) -> tuple[bool, tuple[str, ...] | None]:
        """(single forward?, roles to embed one by one) for this step, the same on every process.

        An explicit `single_forward: true` is one call everywhere and needs no agreement. Otherwise the processes
        agree in one all_reduce: `auto` (None) gives one forward only if every process prefers it, and per-role
        forwards run the union of the processes' roles (a process without hard negatives still makes the
        negatives' forward call, as a placeholder): with ZeRO-3 / FSDP every forward call gathers parameters and
        DDP with broadcast_buffers broadcasts at each, so a process making fewer calls hangs the others.
        """
        _, world = distributed.rank_and_world_size()
        if single_forward or world == 1:
            return single_forward, None
        device = next(iter(self.features.values()))["input_ids"].device
        prefers = self.one_forward_is_cheaper() if single_forward is None else False
        agreed = distributed.agree_max([int(not prefers)] + [int(r in self.features) for r in EMBEDDED_ROLES],
                                       device=device)
        if single_forward is None and agreed[0] == 0:
            return True, None
        return False, tuple(r for r, present in zip(EMBEDDED_ROLES, agreed[1:], strict=True) if present)

    def one_forward_is_cheaper(self, tolerance: float = 0.1) -> bool:
        """Padded tokens of one stacked forward <= (1 + tolerance) x those of one forward per role."""
        shapes = [f["input_ids"].shape for f in self.features.values()]
        stacked = sum(n for n, _ in shapes) * max(width for _, width in shapes)
        return stacked <= (1 + tolerance) * sum(n * width for n, width in shapes)

    def loss_kwargs(self, embeddings: Mapping[str, torch.Tensor], loss: nn.Module) -> dict:
        """Keyword arguments for `loss`: embeddings by role (negatives as [B, K, D] + negatives_mask), score,
        label, teacher_scores / teacher_embedding, extras — all passed; text-hash masking hints only where the loss's forward takes them."""
        arguments: dict = {}
        for role, embedding in embeddings.items():
            if role == "negatives":
                index = self.negatives_index.to(embedding.device)
                arguments["negatives"] = embedding[index.clamp(min=0)]
                arguments["negatives_mask"] = index >= 0
            else:
                arguments[role] = embedding
        arguments.update(self.values)
        for role, hashes in self.text_hashes.items():
            if role == "negatives":
                index = self.negatives_index.to(hashes.device)
                hashes = torch.where(index >= 0, hashes[index.clamp(min=0)], -1)
            arguments[_TEXT_ID_ARGUMENTS[role]] = hashes
        arguments.update(self.extras)
        taken = _accepted(loss)
        if taken is None:
            return arguments
        return {k: v for k, v in arguments.items() if k in taken or k not in _OPTIONAL_ARGUMENTS}


def placeholder_forward(model: Callable[..., torch.Tensor], like: Features | Mapping[str, Features]) -> torch.Tensor:
    """A forward call every process must make to keep collectives in step, on one row of one token (the first
    token of `like`'s first row), leaving the random state as it was (its dropout draws change nothing else).
    Callers multiply its output by zero."""
    if "input_ids" not in like:
        like = next(iter(like.values()))
    input_ids = like["input_ids"][:1, :1]
    device = input_ids.device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))


def _accepted(loss: nn.Module) -> set[str] | None:
    """The loss's keyword parameters, or None when it takes **kwargs (then it gets everything)."""
    parameters = inspect.signature(loss.forward).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)


class BatchCollator:
    """Rows with `<role>_input_ids` token columns (+ score/label, teacher vectors) -> the dict behind a `Batch`."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = Batch(features={})
        for role in TEXT_ROLES:
            column = token_column(role)
            if column not in rows[0] or rows[0].get(role, "") is None:
                continue
            if role == "known_positives":
                if any(row[column] for row in rows):
                    batch.text_hashes[role] = _padded_hashes([row[column] for row in rows])
                continue
            per_text = [len(row[column]) if role == "negatives" else 1 for row in rows]
            if role == "negatives":
                sequences = [ids for row in rows for ids in row[column]]
                if not sequences:
                    continue  # no row of this batch has a hard negative: in-batch negatives only
                batch.negatives_index = _flat_index(per_text)
            else:
                sequences = [row[column] for row in rows]
            batch.features[role] = self.pad(sequences)
            if prompt_length_column(role) in rows[0]:  # each of a row's texts has the row's prompt
                batch.features[role]["prompt_length"] = torch.tensor(
                    [row[prompt_length_column(role)] for row, count in zip(rows, per_text, strict=True)
                     for _ in range(count)], dtype=torch.long)
            batch.text_hashes[role] = torch.tensor([text_hash(s) for s in sequences], dtype=torch.long)
        for name in VALUE_ROLES:
            if rows[0].get(name) is not None:
                batch.values[name] = torch.tensor([float(row[name]) for row in rows], dtype=torch.float32)
        for name in VECTOR_ROLES:
            if rows[0].get(name) is not None:
                batch.values[name] = padded_vectors([row[name] for row in rows])
        inputs = batch.as_inputs()
        for column, key in ((ROW_ID, "row_ids"), (SOURCE_COLUMN, SOURCE_COLUMN)):
            if column in rows[0]:
                inputs[key] = torch.tensor([row[column] for row in rows], dtype=torch.long)
        return inputs

    def pad(self, sequences: list[list[int]]) -> Features:
        input_ids, attention_mask = right_padded(sequences, self.pad_token_id, np.int64)
        return {"input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention_mask.astype(np.int64))}


def right_padded(rows: Sequence[Sequence], fill: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows -> ([B, longest] array padded with `fill` on the right, its bool mask of real values), filled in
    one numpy step: a tensor op per row cost ~10x more, on the training loop's own thread."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    mask = np.arange(lengths.max()) < lengths[:, None]
    out = np.full(mask.shape, fill, dtype=dtype)
    out[mask] = np.fromiter(chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum()))  # row-major order
    return out, mask


def text_hash(token_ids: Sequence[int]) -> int:
    """Equal token sequences give equal ids (used to mask duplicate texts as false negatives)."""
    return hash(tuple(token_ids))


def _flat_index(counts: list[int]) -> torch.Tensor:
    """[B, max count]: row i holds the flat positions of its texts, -1 after them."""
    index, mask = right_padded([range(c) for c in counts], -1, np.int64)
    index[mask] = np.arange(int(mask.sum()))
    return torch.from_numpy(index)


def _padded_hashes(lists: list[list[list[int]]]) -> torch.Tensor:
    return torch.from_numpy(right_padded([[text_hash(ids) for ids in texts] for texts in lists], -1, np.int64)[0])


def padded_vectors(vectors: Sequence[Sequence[float]]) -> torch.Tensor:
    """[B, L] float32 from one float list per row, padded with 0 to the longest (rows with fewer negatives)."""
    return torch.from_numpy(right_padded(vectors, 0.0, np.float32)[0])


def role_prompts(recipe_prompts: Mapping[str, str] | None, source_prompts: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
    """The prompt of every text role of one source: the source's own over the recipe's; negatives and
    known_positives are documents like the positive unless given (known_positives must match positives
    token for token, for false-negative masking)."""
    prompts = {**(recipe_prompts or {}), **(source_prompts or {})}
    if "positive" in prompts:
        prompts.setdefault("negative", prompts["positive"])
        prompts.setdefault("negatives", prompts["positive"])
        prompts["known_positives"] = prompts["positive"]
    return {role: prompt for role, prompt in prompts.items() if prompt}
