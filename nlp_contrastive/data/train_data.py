"""A recipe's `train_data`: each source checked (at recipe load), loaded, filtered, grouped, prompted and
role-mapped (`nlp_contrastive.data.loading`), then the sources joined into the one training dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import datasets

from nlp_contrastive.data.batch import (
    EMBEDDED_ROLES,
    LIST_ROLES,
    ROLES,
    SOURCE_COLUMN,
    prompt_length_column,
    role_prompts,
)
from nlp_contrastive.data.loading import filter_rows, group_pairs, load_split, parse_condition, select_roles
from nlp_contrastive.data.sources import Source, is_beir_folder
from nlp_contrastive.data.stream_sources import check_num_rows
from nlp_contrastive.teacher import check_scores_key, check_teacher_scores, join_score_columns

# Besides the common source keys (nlp_contrastive.data.sources): `group_pairs`, `prompts`, and `layout: beir` for a
# BEIR dataset (corpus, queries, qrels) given as a hub id; a local BEIR folder is recognised by itself;
# `teacher_scores: [positive_score, negative_scores]` joins score columns into each row's teacher scores [1 + K];
# with multi_dataset_sampling, `loss` / `loss_kwargs` train that source's batches with its own loss; `streaming: true`
# streams the run (nlp_contrastive.data.streaming), and `num_rows: N` gives a streamed source's row count
# (nlp_contrastive.data.stream_sources); `mine: {num_negatives, range_max, ...}` on a BEIR folder mines hard
# negatives with the starting model before training (nlp_contrastive.retrieval.recipe_mining).
TRAIN_KEYS = ("group_pairs", "layout", "prompts", "teacher_scores", "loss", "loss_kwargs", "streaming", "num_rows",
              "mine")
# Roles a source may lack next to sources that map them (with multi_dataset_sampling): its rows get None ([] for a
# list) and its batches leave the role out. A single text role cannot be left empty (every text is tokenized).
FILLABLE_ROLES = tuple(r for r in ROLES if r not in EMBEDDED_ROLES or r in LIST_ROLES)
PROMPT_ROLES = EMBEDDED_ROLES  # texts that are embedded take prompts


def train_source(spec: Mapping, position: int) -> Source:
    """Check one `train_data` entry (at recipe load, before anything is read)."""
    where = f"train_data[{position}]"
    source = Source.from_dict(spec, where=where, roles=ROLES, extra_keys=TRAIN_KEYS)
    if spec.get("layout") not in (None, "beir"):
        raise ValueError(f"{where}: layout {spec['layout']!r} is not known: use layout: beir (or leave it out)")
    if source.filter:
        try:
            parse_condition(source.filter)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if "mine" in spec:  # the mined rows' columns are known (recipe_mining.MINED_COLUMNS)
        from nlp_contrastive.retrieval.recipe_mining import check_mine_spec

        check_mine_spec(spec, where)
    elif not source.columns:
        raise ValueError(f"{where} needs 'columns' ({{role: column}}), e.g. {{anchor: sentence1, positive: sentence2}}")
    check_prompts(spec.get("prompts"), f"{where} prompts")
    if not isinstance(spec.get("streaming", False), bool):
        raise ValueError(f"{where}: streaming must be true or false, got {spec['streaming']!r}")
    check_num_rows(spec.get("num_rows"), where)
    if "loss" in spec and not (isinstance(spec["loss"], str) and spec["loss"]):
        raise ValueError(f"{where}: loss must be a loss name such as info_nce, got {spec['loss']!r}")
    if not isinstance(spec.get("loss_kwargs", {}), Mapping):
        raise ValueError(f"{where}: loss_kwargs must be a mapping, e.g. {{temperature: 0.05}}, "
                         f"got {spec['loss_kwargs']!r}")
    if spec.get("teacher_scores") is not None:
        check_scores_key(spec["teacher_scores"], where)
        if "teacher_scores" in source.columns:
            raise ValueError(f"{where} sets teacher_scores both as a source key and in columns: keep one")
    return source


def check_prompts(prompts, where: str = "prompts") -> dict[str, str]:
    """{role: prompt} for embedded text roles, e.g. {anchor: "query: ", positive: "passage: "}."""
    if not prompts:
        return {}
    if not isinstance(prompts, Mapping) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{where} must map text roles to prompt strings, e.g. {{anchor: 'query: ', positive: "
                         f"'passage: '}}, got {prompts!r}")
    unknown = [r for r in prompts if r not in PROMPT_ROLES]
    if unknown:
        raise ValueError(f"{where} names role(s) {unknown}: prompts apply to {', '.join(PROMPT_ROLES)}")
    return dict(prompts)


def apply_prompts(ds: datasets.Dataset, prompts: Mapping[str, str],
                  prompt_length: Callable[[str], int] | None = None) -> datasets.Dataset:
    """Prepend each role's prompt to its texts (before tokenization, as sentence-transformers' encode does).

    With `prompt_length` (the encoder's token count of a prompt; given when the pooling leaves prompt tokens out)
    every embedded role also gets its `batch.prompt_length_column` (0 where the role has no prompt), which the
    collator hands to the encoder, as sentence-transformers' collator does for Pooling(include_prompt=False).
    """
    roles = [r for r in prompts if r in ds.column_names]
    if roles:
        def prepend(batch):
            return {role: [[prompts[role] + t for t in texts] if role in LIST_ROLES else prompts[role] + texts
                           for texts in batch[role]] for role in roles}

        ds = ds.map(prepend, batched=True, batch_size=1000, desc="Adding prompts")
    if prompt_length is not None:
        for role in (r for r in EMBEDDED_ROLES if r in ds.column_names):
            length = prompt_length(prompts[role]) if role in prompts else 0
            ds = ds.add_column(prompt_length_column(role), [length] * len(ds))
    return ds


def build_train_sources(specs: Sequence[Mapping], *, prompts: Mapping[str, str] | None = None,
                        prompt_length: Callable[[str], int] | None = None) -> list[datasets.Dataset]:
    """Load, filter, group and role-map every source of a recipe's `train_data`, with the recipe's `prompts` (and
    each source's own) prepended to the texts (and their token counts recorded, given `prompt_length`; see
    `apply_prompts`). Their roles are checked when they are joined (`concatenate`)."""
    if not specs:
        raise ValueError("train_data is empty: add at least one source, e.g. "
                         "[{dataset: stsb, columns: {anchor: sentence1, positive: sentence2, score: score}}]")
    return [apply_prompts(_build_source(spec, i), role_prompts(prompts, spec.get("prompts")), prompt_length)
            for i, spec in enumerate(specs)]


def check_source_roles(roles: Sequence[Sequence[str]], *, one_source_per_batch: bool) -> None:
    """Mixed batches need the same roles in every source; with one source per batch (multi_dataset_sampling) a
    source may lack a value or list role (score, label, negatives, ...) that another maps, not a single text."""
    if not one_source_per_batch:
        first = set(roles[0])
        for i, own in enumerate(roles[1:], start=1):
            if set(own) != first:
                raise ValueError(f"train_data[{i}] maps roles {sorted(own)} but train_data[0] maps {sorted(first)}: "
                                 "give every source the same roles, or set multi_dataset_sampling: proportional "
                                 "(every batch from one source)")
        return
    every = set().union(*map(set, roles))
    for i, own in enumerate(roles):
        lacking = sorted(r for r in every - set(own) if r not in FILLABLE_ROLES)
        if lacking:
            raise ValueError(f"train_data[{i}] lacks text role(s) {lacking} that another source maps: map the same "
                             "single-text roles in every source (hard negatives can be a `negatives` list, "
                             "which a source without them leaves empty)")


def beir_pairs(source: str, split: str) -> datasets.Dataset:
    """A BEIR dataset's judged (query, relevant document) pairs of `split` as rows with columns query_id, query,
    positive, known_positives (map them: {anchor: query, positive: positive, known_positives: known_positives})."""
    from nlp_contrastive.retrieval.mining import beir_positives, positive_pairs

    return datasets.Dataset.from_dict(positive_pairs(beir_positives(source, split)))


def hard_negatives_per_row(ds: datasets.Dataset) -> int:
    """From the data itself: 1 for a `negative` column, the longest list for `negatives`, else 0."""
    if "negatives" in ds.column_names:
        return max(len(texts) for texts in ds["negatives"])
    return int("negative" in ds.column_names)


def concatenate(parts: Sequence[datasets.Dataset], *, max_rows: int | None = None,
                keep_sources: bool = False) -> datasets.Dataset:
    """One dataset of all sources; `keep_sources` adds a `source` column (the train_data index of each row) for
    samplers that draw each batch from one source, and then a role only some sources map is filled in the others
    (None, or [] for a list role), which their batches leave out."""
    check_source_roles([part.column_names for part in parts], one_source_per_batch=keep_sources)
    if keep_sources:
        parts = [part.add_column(SOURCE_COLUMN, [i] * len(part)) for i, part in enumerate(parts)]
        parts = _with_every_role(parts)
    ds = datasets.concatenate_datasets(list(parts)) if len(parts) > 1 else parts[0]
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds


def _with_every_role(parts: Sequence[datasets.Dataset]) -> list[datasets.Dataset]:
    """Each source with every column of any source (missing ones empty, typed as where they exist), same order."""
    features: dict = {}
    for part in parts:
        for name, feature in part.features.items():
            features.setdefault(name, feature)
    out = []
    for part in parts:
        for name in features:
            if name not in part.column_names:
                empty = [[] if name in LIST_ROLES else None] * len(part)
                part = part.add_column(name, empty, feature=features[name])
        part = part.select_columns(list(features))
        out.append(part if part.features == datasets.Features(features) else part.cast(datasets.Features(features)))
    return out


def build_train_dataset(specs: Sequence[Mapping], *, max_rows: int | None = None) -> datasets.Dataset:
    """All sources of `train_data`, concatenated (and cut to `max_rows`)."""
    return concatenate(build_train_sources(specs), max_rows=max_rows)


def _build_source(spec: Mapping, position: int) -> datasets.Dataset:
    source = train_source(spec, position)
    if spec.get("layout") == "beir" or is_beir_folder(source.dataset):
        ds = beir_pairs(source.dataset, source.split)
    else:
        ds = load_split(source.dataset, source.split, config_name=source.config_name)
    if source.filter:
        ds = filter_rows(ds, source.filter)
    if spec.get("group_pairs"):
        ds = group_pairs(ds, **spec["group_pairs"])
    where = f"train_data[{position}] ({source.dataset}:{source.split})"
    columns = dict(source.columns)
    if spec.get("teacher_scores") is not None:
        ds, columns["teacher_scores"] = join_score_columns(ds, check_scores_key(spec["teacher_scores"], where), where)
    ds = select_roles(ds, columns, score_range=source.score_range, label_map=source.label_map, source=where)
    check_teacher_scores(ds, where)
    if source.max_rows is not None:
        ds = ds.select(range(min(source.max_rows, len(ds))))
    return ds
