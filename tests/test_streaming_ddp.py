"""A streamed run through the CLI under `accelerate launch` with 2 gloo processes: every row used exactly once
per epoch across the ranks (the row ids each rank trains on are logged by tests/ddp_train.py --record), a new
order each epoch, and a run killed at step N then resumed with --resume_from_checkpoint trains on the same row
ids from step N + 1 and ends with the same weights (atol 1e-6); two sources under temperature sampling give both
ranks the planner's batches, one source per step."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from nlp_contrastive.data.batch import ROW_ID
from nlp_contrastive.data.shards import ROW_ID_SOURCE
from nlp_contrastive.data.stream_sources import stream_shares
from tests.conftest import make_tiny_encoder
from tests.test_ddp_training import launch_command, recorded, run
from tests.test_streaming import INFONCE, make_planner, one_epoch, pair_rows, stream_overrides, write_shards
from tests.test_trainer import assert_same_tensors

ROWS, PER_DEVICE, STEPS, KILL_AT = 60, 4, 20, 9  # an epoch is ~8 global batches of 8: 20 steps cross 2 epochs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-ddp")
    make_tiny_encoder(dropout=0.1).save_pretrained(root / "tiny")
    # 2 shards for 2 ranks would let a shard split hide; 3 shards of mixed formats, 45 distinct questions
    write_shards(root / "shards", pair_rows(ROWS, distinct_anchors=45))

    def launch(name, *hooks, extra=(), expect=0):
        overrides = stream_overrides(root / "tiny", root / name, root / "shards", "--max_steps", str(STEPS),
                                     "--learning_rate", "1e-3", "--save_strategy", "steps", "--save_steps", "4",
                                     *extra, per_device=PER_DEVICE)
        return run(launch_command("--record", str(root / f"rows-{name}"), *hooks, INFONCE, *overrides),
                   expect=expect)

    launch("straight")
    assert "simulated kill" in launch("killed", "--kill-after-step", str(KILL_AT), expect=1).stderr
    launch("killed", extra=("--resume_from_checkpoint", "true"))
    return root


def test_every_row_once_per_epoch_across_ranks_and_a_new_order_each_epoch(runs):
    straight = recorded(runs / "rows-straight")
    assert sorted(straight[0]) == sorted(straight[1]) == list(range(STEPS))  # every step, both ranks
    for step in range(STEPS):
        assert len(straight[0][step]) == len(straight[1][step])  # equal parts
        assert not set(straight[0][step]) & set(straight[1][step])
    # the epochs as the planner draws them (same shards, seed 42, 2 processes): the ranks' parts are its batches
    planner = make_planner([runs / "shards"], processes=2, per_device=PER_DEVICE, buffer=16, seed=42)
    epochs = [one_epoch(planner) for _ in range(3)]
    expected = [[row[ROW_ID] for row in batch] for epoch in epochs for batch in epoch][:STEPS]
    assert [straight[0][s] + straight[1][s] for s in range(STEPS)] == expected
    per_epoch = [[row[ROW_ID] for batch in epoch for row in batch] for epoch in epochs[:2]]
    for ids in per_epoch:
        assert len(ids) == len(set(ids)) == ROWS  # each row exactly once in the epoch, over both ranks
    assert per_epoch[0] != per_epoch[1]
    assert len(epochs[0]) + len(epochs[1]) < STEPS  # the run crossed two epoch ends


def test_killed_run_resumes_with_the_same_rows_and_weights(runs):
    straight, resumed = recorded(runs / "rows-straight"), recorded(runs / "rows-killed")
    for rank in range(2):
        assert [resumed[rank][s] for s in range(STEPS)] == [straight[rank][s] for s in range(STEPS)]
    assert (runs / "killed" / "checkpoint-8" / "stream_state.json").is_file()
    assert_same_tensors(load_file(runs / "straight" / "model.safetensors"),
                        load_file(runs / "killed" / "model.safetensors"))


def test_two_sources_with_temperature_under_two_processes_draw_the_planner_batches(tmp_path):
    """Both ranks train each step on parts of one global batch of one source, the batches the planner draws with
    temperature sampling (so the ranks agree on every source draw), and both sources are used."""
    from tests.test_streaming_sampling import two_source_run

    make_tiny_encoder().save_pretrained(tmp_path / "tiny")
    folders = (write_shards(tmp_path / "big", pair_rows(120), kinds=("parquet",)),
               write_shards(tmp_path / "small", pair_rows(30, start=10_000), kinds=("jsonl", "jsonl.gz")))
    steps = 10
    run(launch_command("--record", str(tmp_path / "rows"),
                       *two_source_run(tmp_path, tmp_path / "tiny", folders, "--max_steps", str(steps),
                                       small_keys="num_rows: 30")))
    got = recorded(tmp_path / "rows")
    shares = stream_shares([{"dataset": str(folders[0])}, {"dataset": str(folders[1]), "num_rows": 30}],
                           "temperature", temperature=2.0)
    planner = make_planner(list(folders), processes=2, per_device=PER_DEVICE, buffer=16, seed=42,
                           sampling="temperature", weights=shares, exhaustion="cycle")
    expected = [[row[ROW_ID] for row in batch] for _ in range(3) for batch in one_epoch(planner)][:steps]
    assert [got[0][s] + got[1][s] for s in range(steps)] == expected
    sources = [{row // ROW_ID_SOURCE for row in got[0][s] + got[1][s]} for s in range(steps)]
    assert all(len(s) == 1 for s in sources) and set().union(*sources) == {0, 1}
