"""Hard-negative mining inside a recipe: a `train_data` source over a BEIR folder with `mine: {...}`.

    train_data:
      - dataset: outputs/scifact-split
        split: train
        mine: {num_negatives: 1, range_max: 30, relative_margin: 0.05, sampling: top}

Before training, the starting model (its prompts and max_seq_length set, no weight changed yet) mines the
source's split over the folder's corpus with `retrieval.mining.mine_hard_negatives` (the `mine` keys are its
MiningOptions: the names `nlp-contrastive mine` takes, e.g. range_max, relative_margin; `index` is a search name
or a mapping of IndexOptions). Under accelerate every process encodes its share of the corpus. The rows go to
`<output_dir>/mined/<i>.jsonl` (written whole, then renamed), the corpus embeddings to `<output_dir>/mined/
embeddings` (mining's cache_dir), and the source then reads the mined rows: columns anchor=query,
positive=positive, negatives=negatives, known_positives=known_positives unless it maps its own. A resumed run
(`--resume_from_checkpoint`) reads the mined file it finds instead of mining again.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nlp_contrastive.data.sources import FILE_SUFFIXES, check_known_keys, is_beir_folder

MINED_DIR = "mined"
MINED_COLUMNS = {"anchor": "query", "positive": "positive", "negatives": "negatives",
                 "known_positives": "known_positives"}


def check_mine_spec(spec: Mapping[str, Any], where: str) -> None:
    """At recipe load (no data read: the folder may be written by a command before the run): the `mine` options, as
    mining checks them, on a source that is not a file (whether it is a BEIR folder is checked when mining)."""
    mining_options(spec["mine"], where)
    dataset = spec.get("dataset", "")
    if spec.get("layout") not in (None, "beir") or Path(dataset).suffix.lower() in FILE_SUFFIXES:
        raise ValueError(f"{where}: mine needs a local BEIR folder as dataset, got {dataset!r}: {_BEIR_FIX}")


_BEIR_FIX = ("point dataset at a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv (e.g. written by "
             "nlp-contrastive beir-split), or drop mine")


def mining_options(raw: Any, where: str, *, prompts: Mapping[str, str] | None = None):
    """MiningOptions from a source's `mine` mapping; the query / document prompts default to the source's anchor /
    positive prompts (the texts are mined as they are trained)."""
    from nlp_contrastive.retrieval.mining import MiningOptions
    from nlp_contrastive.retrieval.search import IndexOptions

    names = [f.name for f in dataclasses.fields(MiningOptions)]
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: mine must be a mapping of mining options ({', '.join(names)}), e.g. "
                         "{num_negatives: 1, range_max: 30, relative_margin: 0.05}")
    check_known_keys(raw, names, f"{where} mine", noun="option")
    kwargs = dict(raw)
    index = kwargs.pop("index", "exact")
    if isinstance(index, Mapping):
        check_known_keys(index, [f.name for f in dataclasses.fields(IndexOptions)], f"{where} mine index",
                         noun="option")
        index = IndexOptions(**index)
    elif isinstance(index, str):
        index = IndexOptions(index=index)
    else:
        raise ValueError(f"{where} mine: index must be a search name (exact, hnsw, ...) or a mapping of its options, "
                         f"got {index!r}")
    prompts = prompts or {}
    kwargs.setdefault("query_prompt", prompts.get("anchor", ""))
    kwargs.setdefault("document_prompt", prompts.get("positive", ""))
    try:
        return MiningOptions(**kwargs, index=index)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} mine: {exc}") from None


def mined_path(output_dir: str | Path, position: int) -> Path:
    return Path(output_dir) / MINED_DIR / f"{position}.jsonl"


def mine_train_data(specs: Sequence[Mapping], encoder, output_dir: str | Path, *, resume: bool = False,
                    prompts: Mapping[str, str] | None = None) -> list[dict]:
    """`specs` with every source that has `mine` replaced by one reading its mined rows (mined here, or found
    when resuming); the others unchanged. Every process calls this (the corpus encoding is collective)."""
    from nlp_contrastive.data.batch import role_prompts

    out = []
    for i, spec in enumerate(specs):
        if "mine" not in spec:
            out.append(dict(spec))
            continue
        path = mined_path(output_dir, i)
        if not is_beir_folder(spec["dataset"]):
            raise FileNotFoundError(f"train_data[{i}]: mine needs a BEIR folder, and {spec['dataset']!r} is not one "
                                    f"(no corpus.jsonl): {_BEIR_FIX}")
        if resume and path.is_file():
            _log(f"train_data[{i}]: reusing the rows mined before the checkpoint, {path}")
        else:
            source_prompts = role_prompts(prompts, spec.get("prompts"))
            options = mining_options(spec["mine"], f"train_data[{i}]", prompts=source_prompts)
            mine_source(encoder, spec["dataset"], str(spec.get("split", "train")), options, path)
        out.append(mined_spec(spec, path))
    return out


def mined_spec(spec: Mapping, path: Path) -> dict:
    """The source reading its mined rows: the spec without mine / layout, its split the file's."""
    kept = {k: v for k, v in spec.items() if k not in ("mine", "layout", "split", "dataset")}
    return {**kept, "dataset": str(path), "split": "train", "columns": dict(spec.get("columns") or MINED_COLUMNS)}


def mine_source(encoder, folder: str, split: str, options, path: Path) -> None:
    """Mine one BEIR split into `path` (rank 0 writes; every rank returns once it is there)."""
    from nlp_contrastive.retrieval.embeddings import (
        _all_succeeded,
        chunk_size_for_processes,
        distributed_rank,
    )
    from nlp_contrastive.retrieval.mining import beir_positives, mine_hard_negatives, mined_rows, write_rows

    rank, world = distributed_rank()
    data = beir_positives(folder, split)
    options = dataclasses.replace(options, corpus_chunk_size=chunk_size_for_processes(options.corpus_chunk_size,
                                                                                       len(data.corpus)))
    mined, stats = mine_hard_negatives(encoder, data, options, cache_dir=path.parent / "embeddings",
                                       show_progress=rank == 0)
    failure = None
    if rank == 0:
        try:
            write_rows(path, mined_rows(mined, "negatives"))
        except BaseException as exc:  # the others must hear of it, not wait for the file
            failure = exc
    _all_succeeded(failure, world)
    if rank == 0:
        _log(f"mined {folder} ({split}) with the starting model into {path}:\n{stats.summary(options.num_negatives)}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
