"""Several streamed sources with proportional / temperature sampling (nlp_contrastive.data.stream_sources and the
planner of nlp_contrastive.data.streaming): row counts from parquet footers or the source's num_rows, each batch's
source drawn with the in-memory probabilities, the stop / cycle exhaustion rules, exact resume, one-line errors for
an unknown or stale count, and a 2-source temperature run through the training entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlp_contrastive.data.batch import ROW_ID
from nlp_contrastive.data.shards import ROW_ID_SOURCE
from nlp_contrastive.data.stream_sources import stream_rows, stream_shares
from nlp_contrastive.data.streaming import StreamPlanner
from nlp_contrastive.train import main
from tests.test_streaming import (
    INFONCE,
    assert_resumes_exactly,
    make_planner,
    one_epoch,
    one_line_error,
    pair_rows,
    stream_overrides,
    write_shards,
)

BIG, SMALL = 400, 80  # rows of the parquet source and of the JSON-lines one
COLUMNS = {"anchor": "q", "positive": "p"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two-sources")
    big = write_shards(root / "big", pair_rows(BIG), kinds=("parquet",))  # counted from the footers
    small = write_shards(root / "small", pair_rows(SMALL, start=10_000), kinds=("jsonl.gz", "jsonl"))
    return big, small


def specs(folders, **small_keys) -> list[dict]:
    big, small = folders
    return [{"dataset": str(big), "columns": COLUMNS}, {"dataset": str(small), "columns": COLUMNS, **small_keys}]


def planner(folders, sampling: str, temperature: float = 1.0, exhaustion: str = "cycle") -> StreamPlanner:
    shares = stream_shares(specs(folders, num_rows=SMALL), sampling, temperature=temperature)
    return make_planner(list(folders), sampling=sampling, weights=shares, exhaustion=exhaustion, buffer=32)


def source_of(batch: list[dict]) -> int:
    (source,) = {row[ROW_ID] // ROW_ID_SOURCE for row in batch}  # one source per batch
    return source


@pytest.mark.parametrize("sampling,temperature,big_share", [
    ("proportional", 1.0, BIG / (BIG + SMALL)),  # 0.833
    ("temperature", 2.0, BIG ** 0.5 / (BIG ** 0.5 + SMALL ** 0.5)),  # 0.691
    ("temperature", 1000.0, 0.5004),  # T -> large: about uniform
])
def test_each_batch_source_is_drawn_with_the_row_count_probabilities(folders, sampling, temperature, big_share):
    shares = stream_shares(specs(folders, num_rows=SMALL), sampling, temperature=temperature)
    assert shares == pytest.approx([big_share, 1 - big_share], abs=1e-4)
    plan, drawn = planner(folders, sampling, temperature), []
    while len(drawn) < 2000:  # over epoch ends (cycle: until both sources ran out once)
        batch = plan.next_batch()
        if batch is None:
            plan.start_epoch(plan.epoch + 1)
            continue
        drawn.append(source_of(batch))
    # 2000 draws: a binomial standard deviation of the share is <= 0.011 (the epoch ends add a little); the three
    # cases' +-0.05 bands are disjoint, so uniform draws (0.5) or proportional ones (0.833) fail the others
    assert drawn.count(0) / len(drawn) == pytest.approx(big_share, abs=0.05)


def test_stop_ends_at_the_first_exhausted_source_cycle_reads_every_source_once(folders):
    """T = 1000: near-uniform draws, so the 80-row source runs out long before the 400-row one."""
    stop = one_epoch(planner(folders, "temperature", 1000.0, exhaustion="stop"))
    rows = [[row[ROW_ID] for batch in stop for row in batch if source_of([row]) == s] for s in (0, 1)]
    assert len(rows[1]) == len(set(rows[1])) == SMALL  # the small source once, then the epoch ended
    assert 0 < len(rows[0]) < BIG / 2 and len(set(rows[0])) == len(rows[0])
    cycle = one_epoch(planner(folders, "temperature", 1000.0, exhaustion="cycle"))
    rows = [[row[ROW_ID] for batch in cycle for row in batch if source_of([row]) == s] for s in (0, 1)]
    assert len(rows[0]) == len(set(rows[0])) == BIG  # the big source exactly once
    assert len(set(rows[1])) == SMALL and len(rows[1]) > 3 * SMALL  # the small one restarted several times
    per_pass = [rows[1][i:i + SMALL] for i in range(0, len(rows[1]) - SMALL + 1, SMALL)]
    assert all(sorted(p) == sorted(per_pass[0]) for p in per_pass)  # each pass every row once...
    assert per_pass[0] != per_pass[1]  # ...reshuffled


@pytest.mark.parametrize("stop_after", [0, 7, 30])
def test_a_restored_temperature_state_continues_with_the_same_batches(folders, stop_after):
    assert_resumes_exactly(lambda: planner(folders, "temperature", 3.0), stop_after)


def test_row_counts_from_parquet_footers_num_rows_and_max_rows(folders):
    big, small = specs(folders)
    assert stream_rows(big, 0) == BIG  # footers, no row read
    assert stream_rows(small, 1) is None  # JSON lines: unknown without num_rows
    assert stream_rows({**small, "num_rows": 70}, 1) == 70  # the user's count
    assert stream_rows({**big, "max_rows": 100}, 0) == 100
    assert stream_rows({**big, "num_rows": BIG, "max_rows": 1000}, 0) == BIG
    assert stream_rows({**big, "filter": "id >= 100"}, 0) is None  # the footers count rows before the filter
    assert stream_rows({**big, "filter": "id >= 100", "num_rows": 300}, 0) == 300
    assert stream_shares(specs(folders), "round_robin") == [0.5, 0.5]
    assert stream_shares(specs(folders), "weighted", [3, 1]) == [0.75, 0.25]
    assert stream_shares(specs(folders)[:1], "temperature") is None  # one source: every batch is its


@pytest.mark.parametrize("keys,expected", [
    ({}, "train_data[1]: multi_dataset_sampling: temperature on a stream needs the source's row count: give "
         "num_rows: N on train_data[1], or use round_robin / weighted"),
    ({"num_rows": 0}, "train_data[1]: num_rows must be the source's row count, a positive integer; got 0"),
])
def test_unknown_row_count_is_a_one_line_error(folders, keys, expected):
    with pytest.raises(ValueError) as err:
        stream_shares(specs(folders, **keys), "temperature", temperature=2.0)
    assert str(err.value) == expected


@pytest.mark.parametrize("keys,expected", [
    ({"num_rows": BIG - 1}, f"num_rows is {BIG - 1} but its parquet footers count {BIG} rows (a stale number?)"),
    ({"num_rows": BIG + 1, "filter": "id >= 5"}, f"more than the {BIG} rows its parquet footers count before"),
    ({"filter": "id >= 5"}, "needs the source's row count (the rows left after its filter): give num_rows"),
])
def test_stale_or_missing_parquet_count_is_refused(folders, keys, expected):
    both = specs(folders, num_rows=SMALL)
    both[0].update(keys)
    with pytest.raises(ValueError, match=r"^train_data\[0\]: ") as err:
        stream_shares(both, "proportional")
    assert expected in str(err.value)


# ------------------------------------------------------------------------------------ through the entry point
def two_source_run(tmp_path, model_dir, folders, *extra, small_keys: str = f"num_rows: {SMALL}") -> list[str]:
    big, small = folders
    args = stream_overrides(model_dir, tmp_path / "out", big, "--multi_dataset_sampling", "temperature",
                            "--sampling_temperature", "2", "--stream", "{buffer_size: 16, exhaustion: cycle}",
                            *extra)
    args[args.index("--train_data") + 1] = (
        f"[{{dataset: '{big}', columns: {{anchor: q, positive: p}}, streaming: true}}, "
        f"{{dataset: '{small}', columns: {{anchor: q, positive: p}}, streaming: true, {small_keys}}}]")
    return [INFONCE, *args]


def test_two_streamed_sources_train_with_temperature_sampling_and_a_source_loss(tmp_path, tiny_model_dir, folders, capsys):
    own_loss = f"num_rows: {SMALL}, loss_kwargs: {{temperature: 0.1}}"  # its batches with their own loss
    assert main(two_source_run(tmp_path, tiny_model_dir, folders, "--max_steps", "12", small_keys=own_loss)) == 0
    printed = capsys.readouterr().out
    assert "batch_share_per_source:\n    train_data[0]: 0.691\n    train_data[1]: 0.309" in printed
    assert "train_data[0]: info_nce (temperature=0.05" in printed and "train_data[1]: info_nce (temperature=0.1" in printed
    record = json.loads((tmp_path / "out" / "training_run.json").read_text())
    read = [source["rows"] for source in record["datasets"]]
    assert read[0] > 0 and read[1] > 0  # both sources gave batches (seed 42; p = 0.309 per batch)


@pytest.mark.parametrize("small_keys,expected", [
    ("num_rows: -3", "train_data[1]: num_rows must be the source's row count, a positive integer; got -3"),
    ("filter: 'id >= 5'", "give num_rows: N on train_data[1], or use round_robin / weighted"),
])
def test_bad_row_count_through_the_entry_point_is_one_line_exit_2(tmp_path, tiny_model_dir, folders, capsys,
                                                                  small_keys, expected):
    assert main(two_source_run(tmp_path, tiny_model_dir, folders, small_keys=small_keys)) == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_num_rows_on_a_run_that_does_not_stream_is_refused(tmp_path, folders):
    from nlp_contrastive.config import load_recipe

    args = two_source_run(tmp_path, "unused-model", folders)[1:]
    at = args.index("--train_data") + 1
    args[at] = args[at].replace("streaming: true", "streaming: false")
    with pytest.raises(ValueError, match=r"^train_data\[1\]: num_rows is a streamed source's row count, but the run "
                                         "does not stream: drop num_rows"):
        load_recipe(INFONCE, args)
