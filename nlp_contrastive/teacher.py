"""The teacher's side of distillation as dataset columns: its embeddings of the anchor texts (computed once, cached
with the dataset) and its scores of (query, positive, negatives) rows (read from the data, e.g. a mined file).

Teacher embeddings (`loss: {loss: mse_distillation, teacher: <model>}`) are computed before training by
`add_teacher_embeddings`: the teacher encodes each distinct anchor text once (length-sorted batches, fp32 unless
the device has native bf16) inside `datasets.map`, whose output is cached under a fingerprint of the teacher's
files, the anchor texts and max_seq_length. A second run (and every epoch) reads the cached column and never
loads the teacher; under several processes the main process computes while the others wait, then read the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nlp_contrastive.data.loading import first_bad_row

TEACHER_CACHE_ENV = "NLPC_TEACHER_CACHE"
TEACHER_ROLE = "teacher_embedding"
SCORES_ROLE = "teacher_scores"
_CACHE_VERSION = "1"  # bump when the way embeddings are computed changes


# ------------------------------------------------------------------------------------ recipe-load checks
def distillation_roles(columns: Mapping[str, str], spec: Mapping, teacher: str | None) -> list[str]:
    """The roles a source gives the loss: its mapped columns, teacher_scores from the source's `teacher_scores`
    key, teacher_embedding from the recipe's `teacher`."""
    roles = list(columns)
    if spec.get(SCORES_ROLE) is not None:
        roles.append(SCORES_ROLE)
    if teacher:
        roles.append(TEACHER_ROLE)
    return roles


def check_distillation(recipe, loss) -> None:
    """At recipe load: the student's keep_layers, and the teacher settings (see `check_teacher_settings`)."""
    if recipe.model.keep_layers is not None:
        from nlp_contrastive.student import check_keep_layers

        check_keep_layers(recipe.model.keep_layers)
    check_teacher_settings(recipe.loss.teacher, loss, recipe.loss.loss, recipe.data.train_data)


def check_teacher_settings(teacher: str | None, loss, loss_name: str, specs: Sequence[Mapping]) -> None:
    """`teacher` only with a loss that takes teacher embeddings, and not next to a mapped teacher_embedding column."""
    if not teacher:
        return
    if not isinstance(teacher, str):
        raise ValueError(f"teacher must be a model folder or hub id, got {teacher!r}")
    from nlp_contrastive.losses.build import base_loss

    inner = base_loss(loss)
    if TEACHER_ROLE not in (*getattr(inner, "roles", ()), *getattr(inner, "optional_roles", ())):
        raise ValueError(f"teacher is set but loss '{loss_name}' does not use teacher embeddings: use loss: "
                         "mse_distillation (or matryoshka around it), or drop teacher")
    for i, spec in enumerate(specs):
        if TEACHER_ROLE in (spec.get("columns") or {}):
            raise ValueError(f"train_data[{i}] maps a teacher_embedding column and teacher is set: keep one (the "
                             "column of precomputed embeddings, or the teacher that computes them)")


def check_scores_key(value, where: str) -> list[str]:
    """A source's `teacher_scores`: the columns joined, in order, into each row's [1 + K] teacher scores."""
    columns = [value] if isinstance(value, str) else value
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"{where}: teacher_scores must name the score columns in order (positive first), e.g. "
                         f"[positive_score, negative_scores] for a file from `nlp-contrastive mine`, got {value!r}")
    return columns


# ------------------------------------------------------------------------------------------ teacher scores
def join_score_columns(ds: datasets.Dataset, columns: Sequence[str], where: str) -> tuple[datasets.Dataset, str]:
    """Concatenate number and number-list columns per row into one `teacher_scores` list column."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: teacher_scores column(s) {missing} not found: available columns are "
                         f"{ds.column_names}")
    if SCORES_ROLE in ds.column_names and list(columns) != [SCORES_ROLE]:
        raise ValueError(f"{where}: the data already has a '{SCORES_ROLE}' column: map it (teacher_scores: "
                         f"{SCORES_ROLE}) instead of joining {list(columns)}")

    def join(batch):
        rows = []
        for i in range(len(batch[columns[0]])):
            row: list = []
            for c in columns:
                value = batch[c][i]
                row.extend(value if isinstance(value, (list, tuple)) else [value])
            rows.append(row)
        return {SCORES_ROLE: rows}

    return ds.map(join, batched=True, desc="Joining teacher scores"), SCORES_ROLE


def check_teacher_scores(ds: datasets.Dataset, where: str) -> None:
    """Each row's teacher_scores: numbers, finite, exactly 1 + its number of negatives (positive's score first)."""
    if SCORES_ROLE not in ds.column_names:
        return
    table = ds.with_format("arrow")[:] if ds._indices is not None else ds.data.table
    scores = table.column(SCORES_ROLE)
    if not pa.types.is_list(scores.type) and not pa.types.is_large_list(scores.type):
        raise ValueError(f"{where}: teacher_scores must hold a list of numbers per row ([positive, negative 1, ...]),"
                         f" got {scores.type}: join a positive and a negatives score column with teacher_scores: "
                         "[positive_score, negative_scores]")
    first_bad_row(scores, pc.is_null(scores), SCORES_ROLE, where, "is missing (null)")
    flat = pc.list_flatten(scores)
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type) or pa.types.is_null(flat.type)):
        raise ValueError(f"{where}: teacher_scores holds {flat.type}, not numbers: map a column of score lists")
    lengths = np.asarray(pc.list_value_length(scores).to_numpy(zero_copy_only=False))
    if "negatives" in ds.column_names:
        expected = 1 + np.asarray(pc.list_value_length(table.column("negatives")).to_numpy(zero_copy_only=False))
        what = "1 + its negatives"
    elif "negative" in ds.column_names:
        expected, what = np.full(len(lengths), 2), "2 (positive, negative)"
    else:
        expected, what = None, ""
    if expected is not None and (lengths != expected).any():
        row = int(np.flatnonzero(lengths != expected)[0])
        raise ValueError(f"{where}: row {row} has {lengths[row]} teacher_scores but {what} = {expected[row]}: give "
                         "the positive's score first, then one score per negative, or fix that row")
    values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float64)
    if not np.isfinite(values).all():
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        row = int(np.searchsorted(offsets, int(np.flatnonzero(~np.isfinite(values))[0]), side="right") - 1)
        raise ValueError(f"{where}: teacher_scores in row {row} contain NaN, inf or null: fix or drop that row")


# -------------------------------------------------------------------------------------- teacher embeddings
def teacher_dimension(teacher: str) -> int:
    """The teacher's embedding size from its config alone (no weights loaded): its transformer's hidden_size."""
    from transformers import AutoConfig

    from nlp_contrastive.modeling import resolve_model_path
    from nlp_contrastive.st_layout import read_sentence_transformers_layout

    path = resolve_model_path(teacher)
    layout = read_sentence_transformers_layout(path) if os.path.isdir(path) else {}
    try:
        config = AutoConfig.from_pretrained(os.path.join(path, layout.get("transformer_path", "")))
    except OSError as exc:
        raise ValueError(f"could not read teacher '{teacher}': {str(exc).splitlines()[0]}: give a model folder or "
                         "a hub id in the local cache") from None
    return int(config.hidden_size)


def check_dimensions(teacher_dim: int, student_dim: int, teacher: str, student: str) -> None:
    if teacher_dim != student_dim:
        raise ValueError(f"teacher '{teacher}' gives {teacher_dim}-dim embeddings but student '{student}' gives "
                         f"{student_dim}-dim ones: mse_distillation needs equal sizes (no projection); choose a "
                         "student of the teacher's width (model: keep_layers keeps the width)")


def teacher_fingerprint(teacher: str, texts: Sequence[str], max_seq_length: int) -> str:
    """Changes with the teacher's files (config contents; weight file sizes and times), the texts, the length."""
    from nlp_contrastive.modeling import resolve_model_path

    digest = hashlib.sha256(f"v{_CACHE_VERSION}\0{max_seq_length}\0".encode())
    path = resolve_model_path(teacher)
    if os.path.isdir(path):
        for file in sorted(Path(path).rglob("*")):
            if not file.is_file():
                continue
            digest.update(str(file.relative_to(path)).encode())
            if file.suffix in (".json", ".txt", ".model"):
                digest.update(file.read_bytes())
            else:
                stat = file.stat()
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        digest.update(path.encode())  # a hub id: its cached snapshot is fixed by the name
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:32]


def cache_dir() -> Path:
    """$NLPC_TEACHER_CACHE, else a folder in the datasets cache."""
    configured = os.environ.get(TEACHER_CACHE_ENV)
    return Path(configured) if configured else Path(datasets.config.HF_DATASETS_CACHE) / "nlp_contrastive_teacher"


def load_teacher(teacher: str, max_seq_length: int):
    from nlp_contrastive.modeling import Encoder

    return Encoder.from_pretrained(teacher, max_seq_length=max_seq_length)


def add_teacher_embeddings(ds: datasets.Dataset, teacher: str, *, max_seq_length: int, batch_size: int = 64,
                           main_process_first: Callable | None = None) -> datasets.Dataset:
    """`ds` plus a `teacher_embedding` column: the teacher's embedding of each row's anchor text, from the cache
    when the same teacher already encoded the same texts (the teacher is then not even loaded).

    `main_process_first`: e.g. TrainingArguments.main_process_first, so that under several processes only the
    main one computes and writes the cache and the others read it.
    """
    if "anchor" not in ds.column_names:
        raise ValueError(f"teacher embeddings are of the anchor texts, but the data maps only {ds.column_names}: "
                         "map anchor: <column>")
    anchors = ds.select_columns(["anchor"])
    fingerprint = teacher_fingerprint(teacher, anchors["anchor"], max_seq_length)
    folder = cache_dir()
    loaded: list = []

    def encode(batch):
        if not loaded:
            loaded.append(load_teacher(teacher, max_seq_length))
        vectors = loaded[0].encode(batch["anchor"], batch_size=batch_size, convert_to="numpy", bf16=None)  # auto
        return {TEACHER_ROLE: vectors.astype(np.float32)}

    guard = main_process_first(desc="Teacher embeddings") if main_process_first else contextlib.nullcontext()
    with guard:
        folder.mkdir(parents=True, exist_ok=True)
        vectors = anchors.map(encode, batched=True, batch_size=4096, remove_columns=["anchor"],
                              new_fingerprint=fingerprint, load_from_cache_file=True,
                              cache_file_name=str(folder / f"teacher-{fingerprint}.arrow"),
                              desc=f"Teacher embeddings ({teacher})")
    _write_note(folder, fingerprint, teacher, len(ds), max_seq_length)
    return datasets.concatenate_datasets([ds.flatten_indices() if ds._indices is not None else ds, vectors], axis=1)


def _write_note(folder: Path, fingerprint: str, teacher: str, rows: int, max_seq_length: int) -> None:
    """What a cache file holds, next to it (for people cleaning the cache)."""
    note = folder / f"teacher-{fingerprint}.json"
    if not note.exists():
        with contextlib.suppress(OSError):
            from nlp_contrastive.files import write_json_atomic

            write_json_atomic(note, {"teacher": teacher, "rows": rows, "max_seq_length": max_seq_length})


def column_dimension(ds: datasets.Dataset) -> int | None:
    """The length of the teacher_embedding vectors (all rows equal, finite), or None without the column."""
    if TEACHER_ROLE not in ds.column_names:
        return None
    column = ds.with_format("arrow")[:].column(TEACHER_ROLE)
    lengths = np.unique(np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False)))
    if len(lengths) != 1:
        raise ValueError(f"teacher_embedding vectors have different lengths {lengths.tolist()[:5]}: recompute them "
                         "with one teacher")
    if not np.isfinite(np.asarray(pc.list_flatten(column).to_numpy(zero_copy_only=False), dtype=np.float64)).all():
        raise ValueError("teacher_embedding contains NaN, inf or null: recompute the teacher embeddings")
    return int(lengths[0])


def prepare_teacher_embeddings(ds: datasets.Dataset, teacher: str | None, *, student_dim: int, student: str,
                               max_seq_length: int, main_process_first: Callable | None = None) -> datasets.Dataset:
    """The training-run step: sizes checked before anything is encoded, then the column added (or the mapped
    column of precomputed embeddings checked)."""
    if teacher:
        check_dimensions(teacher_dimension(teacher), student_dim, teacher, student)
        ds = add_teacher_embeddings(ds, teacher, max_seq_length=max_seq_length,
                                    main_process_first=main_process_first)
    dim = column_dimension(ds)
    if dim is not None:
        check_dimensions(dim, student_dim, teacher or "teacher_embedding column", student)
    return ds
