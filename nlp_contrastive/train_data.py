"""A recipe's `train_data`: each source checked (at recipe load), loaded, filtered, grouped, prompted and
role-mapped (`nlp_contrastive.data`), then the sources joined into the one training dataset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets

from nlp_contrastive.batch import EMBEDDED_ROLES, LIST_ROLES, ROLES
from nlp_contrastive.data import filter_rows, group_pairs, load_split, parse_condition, select_roles
from nlp_contrastive.sources import Source, is_beir_folder
from nlp_contrastive.teacher import check_scores_key, check_teacher_scores, join_score_columns

# Besides the common source keys (nlp_contrastive.sources): `group_pairs`, `prompts`, and `layout: beir` for a
# BEIR dataset (corpus, queries, qrels) given as a hub id; a local BEIR folder is recognised by itself;
# `teacher_scores: [positive_score, negative_scores]` joins score columns into each row's teacher scores [1 + K].
TRAIN_KEYS = ("group_pairs", "layout", "prompts", "teacher_scores")
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
    if not source.columns:
        raise ValueError(f"{where} needs 'columns' ({{role: column}}), e.g. {{anchor: sentence1, positive: sentence2}}")
    check_prompts(spec.get("prompts"), f"{where} prompts")
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


def apply_prompts(ds: datasets.Dataset, prompts: Mapping[str, str]) -> datasets.Dataset:
    """Prepend each role's prompt to its texts (before tokenization, as sentence-transformers' encode does)."""
    roles = [r for r in prompts if r in ds.column_names]
    if not roles:
        return ds

    def prepend(batch):
        return {role: [[prompts[role] + t for t in texts] if role in LIST_ROLES else prompts[role] + texts
                       for texts in batch[role]] for role in roles}

    return ds.map(prepend, batched=True, batch_size=1000, desc="Adding prompts")


def build_train_sources(specs: Sequence[Mapping], *, prompts: Mapping[str, str] | None = None
                        ) -> list[datasets.Dataset]:
    """Load, filter, group and role-map every source of a recipe's `train_data` (same roles in each), with the
    recipe's `prompts` (and each source's own) prepended to the texts."""
    if not specs:
        raise ValueError("train_data is empty: add at least one source, e.g. "
                         "[{dataset: stsb, columns: {anchor: sentence1, positive: sentence2, score: score}}]")
    parts = [apply_prompts(_build_source(spec, i), role_prompts(prompts, spec.get("prompts")))
             for i, spec in enumerate(specs)]
    roles = set(parts[0].column_names)
    for i, part in enumerate(parts[1:], start=1):
        if set(part.column_names) != roles:
            raise ValueError(f"train_data[{i}] maps roles {sorted(part.column_names)} but train_data[0] maps "
                             f"{sorted(roles)}: give every source the same roles")
    return parts


def beir_pairs(source: str, split: str) -> datasets.Dataset:
    """A BEIR dataset's judged (query, relevant document) pairs of `split` as rows with columns query_id, query,
    positive, known_positives (map them: {anchor: query, positive: positive, known_positives: known_positives})."""
    from nlp_contrastive.mining import beir_positives, positive_pairs

    return datasets.Dataset.from_dict(positive_pairs(beir_positives(source, split)))


def hard_negatives_per_row(ds: datasets.Dataset) -> int:
    """From the data itself: 1 for a `negative` column, the longest list for `negatives`, else 0."""
    if "negatives" in ds.column_names:
        return max(len(texts) for texts in ds["negatives"])
    return int("negative" in ds.column_names)


def concatenate(parts: Sequence[datasets.Dataset], *, max_rows: int | None = None,
                keep_sources: bool = False) -> datasets.Dataset:
    """One dataset of all sources; `keep_sources` adds a `source` column (the train_data index of each row) for
    samplers that draw each batch from one source."""
    if keep_sources:
        parts = [part.add_column("source", [i] * len(part)) for i, part in enumerate(parts)]
    ds = datasets.concatenate_datasets(list(parts)) if len(parts) > 1 else parts[0]
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds


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
