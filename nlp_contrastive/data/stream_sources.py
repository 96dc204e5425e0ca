"""Which streamed source gives the next batch (`multi_dataset_sampling` over several streamed `train_data` sources):
each source's share of the batches, and the row counts that `proportional` / `temperature` need, found without
reading a row.

A streamed source's row count: for parquet shards the sum of their footers' `num_rows`; for anything else
(jsonl / jsonl.gz / csv / tsv, a hub stream) the source key `num_rows: N` the user gives. A `num_rows` given for
parquet shards must equal their footers' count (a different number is a stale one, refused); with a `filter` the
footers count rows before it, so such a source needs `num_rows` (its rows after the filter, at most the footers').
`max_rows` caps the count. The shares themselves come from `multi_dataset.source_probabilities`, the in-memory
formula (proportional ∝ rows, temperature ∝ rows ** (1 / T), weighted ∝ source_weights); round_robin takes
turns, so each source has 1 / n of the batches while none has run out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nlp_contrastive.data.multi_dataset import source_probabilities
from nlp_contrastive.data.shards import find_shards, parquet_rows, shard_format

DRAWN = ("weighted", "proportional", "temperature")  # each batch's source drawn with the planner's seeded rng
NEEDS_ROWS = ("proportional", "temperature")


def check_num_rows(value, where: str) -> None:
    """The `num_rows` source key: a positive integer (or absent)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{where}: num_rows must be the source's row count, a positive integer; got {value!r}")


def stream_rows(spec: Mapping, position: int) -> int | None:
    """The row count of streamed `train_data[position]` without reading its rows (None: unknown), capped by its
    `max_rows`; a `num_rows` that contradicts the parquet footers is an error."""
    where = f"train_data[{position}]"
    given = spec.get("num_rows")
    check_num_rows(given, where)
    shards = find_shards(str(spec.get("dataset")), str(spec.get("split", "train")), where)
    footers = sum(parquet_rows(s) for s in shards) if all(shard_format(s) == "parquet" for s in shards) else None
    filtered = spec.get("filter") is not None
    if given is not None and footers is not None and filtered and given > footers:
        raise ValueError(f"{where}: num_rows is {given}, more than the {footers} rows its parquet footers count "
                         "before the filter: correct num_rows (the rows left after the filter)")
    if given is not None and footers is not None and not filtered and given != footers:
        raise ValueError(f"{where}: num_rows is {given} but its parquet footers count {footers} rows (a stale "
                         "number?): correct num_rows or leave it out (read from the footers)")
    count = given if given is not None else (None if filtered else footers)
    max_rows = spec.get("max_rows")
    return min(count, max_rows) if count is not None and max_rows is not None else count


def known_rows(specs: Sequence[Mapping], sampling: str) -> list[int]:
    """Every source's row count (`stream_rows`), which `sampling` (proportional / temperature) needs: a source whose
    count is unknown is a one-line error naming the fix."""
    rows = [stream_rows(spec, i) for i, spec in enumerate(specs)]
    unknown = next((i for i, n in enumerate(rows) if n is None), None)
    if unknown is not None:
        filtered = " (the rows left after its filter)" if specs[unknown].get("filter") else ""
        raise ValueError(f"train_data[{unknown}]: multi_dataset_sampling: {sampling} on a stream needs the source's "
                         f"row count{filtered}: give num_rows: N on train_data[{unknown}], or use round_robin / "
                         "weighted")
    return rows


def stream_shares(specs: Sequence[Mapping], sampling: str | None, weights: Sequence[float] | None = None,
                  temperature: float = 1.0) -> list[float] | None:
    """Each source's share of the batches (None with one source or no multi_dataset_sampling); proportional /
    temperature need every row count (`known_rows`)."""
    if len(specs) < 2 or sampling is None:
        return None
    if sampling == "round_robin":
        return [1.0 / len(specs)] * len(specs)
    rows = known_rows(specs, sampling) if sampling in NEEDS_ROWS else [1] * len(specs)  # weighted: weights alone
    return [float(p) for p in source_probabilities(rows, sampling, weights, temperature)]
