"""Streamed training data (nlp_contrastive.data.streaming): the planner's batches (every row once per epoch, no
repeated text in a global batch, a new order per epoch, exact continuation from a saved state), several sources
and their exhaustion rules, bad input as one-line errors (exit 2), and a killed 1-process run resumed to the
same weights. The 2-process run through `accelerate launch`: tests/test_streaming_ddp.py."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from nlp_contrastive.data.batch import ROW_ID
from nlp_contrastive.data.shards import SourceStream
from nlp_contrastive.data.streaming import StreamPlanner, row_texts
from nlp_contrastive.data.train_data import train_source
from nlp_contrastive.train import main
from tests.conftest import REPO_ROOT
from tests.test_trainer import KillAt, assert_same_tensors

INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")


def pair_rows(n: int, *, distinct_anchors: int | None = None, start: int = 0) -> list[dict]:
    """Rows {id, q, p}: anchors repeat (only `distinct_anchors` different ones), positives are unique."""
    distinct = distinct_anchors or n
    return [{"id": i, "q": f"question {i % distinct} about {'thing ' * (i % 5)}".strip(), "p": f"answer {i}"}
            for i in range(start, start + n)]


def write_shards(folder: Path, rows: list[dict], shards: int = 3, kinds=("parquet", "jsonl.gz", "jsonl")) -> Path:
    """Rows dealt round-robin into shards of mixed formats (parquet with small row groups, gzipped and plain
    JSON lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        part, kind = rows[k::shards], kinds[k % len(kinds)]
        path = folder / f"part-{k:03d}.{kind}"
        if kind == "parquet":
            pq.write_table(pa.Table.from_pylist(part), path, row_group_size=7)
        else:
            text = "".join(json.dumps(r) + "\n" for r in part)
            if kind.endswith(".gz"):
                with gzip.open(path, "wt", encoding="utf-8") as f:
                    f.write(text)
            else:
                path.write_text(text, encoding="utf-8")
    return folder


def make_planner(folders, *, processes=2, per_device=4, buffer=16, sampler="no_duplicates", seed=0,
                 sampling=None, exhaustion="stop", bad_rows="stop", weights=None) -> StreamPlanner:
    streams = [SourceStream(i, train_source({"dataset": str(f), "columns": {"anchor": "q", "positive": "p"}}, i),
                            bad_rows=bad_rows, seed=seed) for i, f in enumerate(folders)]
    return StreamPlanner(streams, global_batch_size=per_device * processes, processes=processes,
                         batch_sampler=sampler, buffer_size=buffer, sampling=sampling, weights=weights,
                         exhaustion=exhaustion, seed=seed)


def one_epoch(planner: StreamPlanner) -> list[list[dict]]:
    batches = []
    while (batch := planner.next_batch()) is not None:
        batches.append(batch)
    planner.start_epoch(planner.epoch + 1)
    return batches


def ids(batches) -> list[int]:
    return [row[ROW_ID] for batch in batches for row in batch]


@pytest.fixture
def shards(tmp_path) -> Path:
    return write_shards(tmp_path / "shards", pair_rows(100, distinct_anchors=60))


@pytest.mark.parametrize("sampler", ["no_duplicates", "no_duplicates_by_length"])
def test_every_row_once_per_epoch_no_repeated_text_new_order_each_epoch(shards, sampler):
    planner = make_planner([shards], sampler=sampler)
    epochs = [one_epoch(planner) for _ in range(2)]
    for batches in epochs:
        assert sorted(ids(batches)) == sorted(set(ids(batches))) and len(ids(batches)) == 100  # once each
        for batch in batches:
            assert len(batch) % 2 == 0 and len(batch) >= 4  # equal rank parts of >= 2 rows
            texts = [t for row in batch for t in row_texts(row)]
            assert len(texts) == len(set(texts)), "a text repeats inside a global batch"
    assert ids(epochs[0]) != ids(epochs[1])
    assert planner.counts is not None and sum(len(b) for b in epochs[0][:-2]) == 8 * (len(epochs[0]) - 2)


def test_repeated_texts_are_deferred_and_counted_not_dropped(tmp_path):
    """40 distinct anchors in 120 rows: many rows meet their anchor in the batch being drawn."""
    planner = make_planner([write_shards(tmp_path / "s", pair_rows(120, distinct_anchors=40))], per_device=8,
                           buffer=40)
    batches = []
    while (batch := planner.next_batch()) is not None:
        batches.append(batch)
    assert planner.counts["deferred"] > 0
    assert len(ids(batches)) + planner.counts["left_at_pass_end"] == 120
    assert len(set(ids(batches))) == len(ids(batches))


def test_random_sampler_repeats_texts_the_no_duplicates_one_does_not(tmp_path):
    folder = write_shards(tmp_path / "s", pair_rows(120, distinct_anchors=20))
    repeated = []
    for sampler in ("random", "no_duplicates"):
        batches = one_epoch(make_planner([folder], sampler=sampler, per_device=4, buffer=40))
        repeated.append(sum(len([t for r in b for t in row_texts(r)]) - len({t for r in b for t in row_texts(r)})
                            for b in batches))
    assert repeated[0] > 0 and repeated[1] == 0


def assert_resumes_exactly(make: Callable[[], StreamPlanner], stop_after: int) -> None:
    """A planner stopped after `stop_after` batches, its state saved through JSON and loaded into a new planner,
    draws the same batches as one that never stopped (over two epochs)."""
    straight = make()
    expected = [ids([b]) for b in one_epoch(straight) + one_epoch(straight)]
    first = make()
    for _ in range(stop_after):
        first.next_batch()
    state = json.loads(json.dumps(first.state()))  # through JSON, as in the checkpoint
    resumed = make()
    resumed.load(state)
    got = []
    for _ in range(len(expected) - stop_after):
        batch = resumed.next_batch()
        if batch is None:
            resumed.start_epoch(resumed.epoch + 1)
            batch = resumed.next_batch()
        got.append(ids([batch]))
    assert got == expected[stop_after:]


@pytest.mark.parametrize("stop_after", [0, 3, 12, 13])  # 13: exactly at the epoch's end
def test_a_restored_state_continues_with_the_same_batches(shards, stop_after):
    assert_resumes_exactly(lambda: make_planner([shards]), stop_after)


def test_several_sources_stop_at_the_first_exhausted_or_cycle_until_all_ran_out(tmp_path):
    big = write_shards(tmp_path / "big", pair_rows(96))
    small = write_shards(tmp_path / "small", pair_rows(24, start=1000))
    stop = one_epoch(make_planner([big, small], sampling="round_robin", exhaustion="stop"))
    sources = [{row[ROW_ID] // 10**15 for row in b} for b in stop]
    assert all(len(s) == 1 for s in sources)  # one source per batch
    assert [s.pop() for s in sources][:6] == [0, 1, 0, 1, 0, 1]
    assert len(stop) == 6 + 1  # 3 batches of the small source, then its exhaustion ends the epoch
    cycle = one_epoch(make_planner([big, small], sampling="round_robin", exhaustion="cycle"))
    per_source = [[row[ROW_ID] for b in cycle for row in b if row[ROW_ID] // 10**15 == s] for s in (0, 1)]
    assert sorted(per_source[0]) == sorted(set(per_source[0])) and len(per_source[0]) == 96  # the big one once
    assert len(per_source[1]) == 96 and len(set(per_source[1])) == 24  # the small one cycled 4 times


def test_weighted_sources_follow_their_weights(tmp_path):
    a = write_shards(tmp_path / "a", pair_rows(400))
    b = write_shards(tmp_path / "b", pair_rows(400, start=1000))
    batches = one_epoch(make_planner([a, b], sampling="weighted", weights=[3, 1], exhaustion="stop", buffer=32))
    share = sum(1 for batch in batches if batch[0][ROW_ID] // 10**15 == 0) / len(batches)
    assert 0.6 < share < 0.9


# ------------------------------------------------------------------------------------------- bad input (CLI)
def run_cli(tmp_path, model_dir, data, *extra, expect=2, capsys=None):
    out = tmp_path / "out"
    code = main([INFONCE, *stream_overrides(model_dir, out, data, *extra)])
    assert code == expect
    return out


def stream_overrides(model_dir, out, data, *extra, per_device=4) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--train_data",
            f"[{{dataset: '{data}', columns: {{anchor: q, positive: p}}, streaming: true}}]",
            "--per_device_train_batch_size", str(per_device), "--max_steps", "4", "--stream", "{buffer_size: 16}",
            "--batch_sampler", "no_duplicates", "--eval_tasks", "[]", "--final_eval_tasks", "[]",
            "--logging_steps", "1", "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
            "--save_strategy", "no", *extra]


def one_line_error(capsys) -> str:
    err = [line[line.index("error: "):] for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("case,extra,expected", [
    ("glob", (), "matches no shard"),
    ("schema", (), "has columns"),
    ("buffer", ("--stream", "{buffer_size: 3}"), "smaller than the global batch"),
    ("max_steps", ("--max_steps", "-1"), "set max_steps"),
    ("hub", (), "hub dataset 'someone/not-here' (split train) cannot be streamed"),  # offline in the tests
])
def test_bad_input_before_training_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_model_dir, capsys, case,
                                                                         extra, expected):
    folder = write_shards(tmp_path / "s", pair_rows(40))
    data = str(folder)
    if case == "glob":
        data = str(folder / "*.csv")
    elif case == "hub":
        data = "someone/not-here"
    elif case == "schema":
        (folder / "part-009.jsonl").write_text(json.dumps({"id": 1, "q": "x", "answer": "y"}) + "\n")
    out = run_cli(tmp_path, tiny_model_dir, data, *extra)
    assert expected in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("corrupt", ["json", "parquet"])
def test_bad_data_mid_stream_stops_naming_shard_and_line_or_is_skipped_and_counted(tmp_path, tiny_model_dir, capsys,
                                                                                   corrupt, caplog):
    folder = write_shards(tmp_path / "s", pair_rows(60), shards=2, kinds=("jsonl", "parquet"))
    if corrupt == "json":
        lines = (folder / "part-000.jsonl").read_text().splitlines()
        lines[6] = '{"id": 6, "q": "broken'
        (folder / "part-000.jsonl").write_text("\n".join(lines) + "\n")
        where = "part-000.jsonl line 7: not valid JSON"
    else:
        path = folder / "part-001.parquet"
        data = bytearray(path.read_bytes())
        data[200:260] = b"\x00" * 60  # inside the first row group's pages
        path.write_bytes(bytes(data))
        where = "part-001.parquet"
    fast = ("--max_steps", "3", "--stream", "{buffer_size: 40}")  # the first fill reads every shard's first 7 rows
    out = run_cli(tmp_path, tiny_model_dir, str(folder), *fast)
    line = one_line_error(capsys)
    assert where in line and "stream: {bad_rows: skip}" in line
    print(line)
    assert not out.exists()
    caplog.set_level("WARNING")
    run_cli(tmp_path, tiny_model_dir, str(folder), *fast[:2], "--stream", "{buffer_size: 40, bad_rows: skip}",
            expect=0)
    assert "skipped (stream bad_rows: skip, 1 so far)" in caplog.text


def test_killed_streaming_run_resumes_to_the_same_weights(tmp_path, dropout_model_dir, capsys):
    from nlp_contrastive.train import train

    folder = write_shards(tmp_path / "s", pair_rows(50, distinct_anchors=30))
    common = ("--max_steps", "16", "--save_strategy", "steps", "--save_steps", "5", "--learning_rate", "1e-3")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train(INFONCE, stream_overrides(dropout_model_dir, straight, folder, *common)) == 0
    assert "train_rows: unknown (streamed)" in capsys.readouterr().out
    with pytest.raises(KeyboardInterrupt):
        train(INFONCE, stream_overrides(dropout_model_dir, killed, folder, *common), callbacks=[KillAt(10)])
    assert (killed / "checkpoint-10" / "stream_state.json").is_file()
    assert train(INFONCE, stream_overrides(dropout_model_dir, killed, folder, *common,
                                           "--resume_from_checkpoint", "true")) == 0
    assert_same_tensors(load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors"))
    runs = [json.loads((d / "training_run.json").read_text()) for d in (straight, killed)]
    assert runs[0]["log_history"][-2]["loss"] == runs[1]["log_history"][-2]["loss"]
