"""Teacher embeddings under 2 processes: only the main process encodes, the other reads its cache.

Run as a module under `accelerate launch` (see `__main__` below), it is the real train entry point plus a record of
which rank loaded the teacher.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from nlp_contrastive import teacher as teacher_module
from nlp_contrastive.teacher import check_teacher_scores, join_score_columns
from tests.conftest import REPO_ROOT, make_tiny_encoder
from tests.test_ddp_training import launch_command, run

RECIPE = str(REPO_ROOT / "recipes" / "stsb-distill.yaml")


def test_joined_scores_and_their_checks():
    import datasets

    ds = datasets.Dataset.from_dict({"anchor": ["q1", "q2"], "positive": ["p1", "p2"],
                                     "negatives": [["a", "b"], ["c"]], "pos": [0.9, 0.8],
                                     "neg": [[0.5, 0.4], [0.3]]})
    joined, column = join_score_columns(ds, ["pos", "neg"], "src")
    assert joined[column] == [pytest.approx([0.9, 0.5, 0.4]), pytest.approx([0.8, 0.3])]
    check_teacher_scores(joined, "src")
    bad = joined.map(lambda row, i: {"teacher_scores": row["teacher_scores"] if i == 0 else [0.8, float("nan")]},
                     with_indices=True)
    with pytest.raises(ValueError, match=r"src: teacher_scores in row 1 contain NaN"):
        check_teacher_scores(bad, "src")
    with pytest.raises(ValueError, match=r"teacher_scores column\(s\) \['missing'\] not found"):
        join_score_columns(ds, ["pos", "missing"], "src")


def test_fingerprint_follows_teacher_texts_and_length(tmp_path):
    make_tiny_encoder(seed=1).save_pretrained(tmp_path / "t1")
    make_tiny_encoder(seed=2).save_pretrained(tmp_path / "t2")
    base = teacher_module.teacher_fingerprint(str(tmp_path / "t1"), ["a", "b"], 64)
    assert base == teacher_module.teacher_fingerprint(str(tmp_path / "t1"), ["a", "b"], 64)
    assert base != teacher_module.teacher_fingerprint(str(tmp_path / "t2"), ["a", "b"], 64)
    assert base != teacher_module.teacher_fingerprint(str(tmp_path / "t1"), ["a", "c"], 64)
    assert base != teacher_module.teacher_fingerprint(str(tmp_path / "t1"), ["a", "b"], 32)


@pytest.mark.slow
def test_two_processes_encode_with_the_teacher_once(tmp_path, data_dir, monkeypatch):
    student, teacher = tmp_path / "student", tmp_path / "teacher"
    make_tiny_encoder().save_pretrained(student)
    make_tiny_encoder(seed=1).save_pretrained(teacher)
    record = tmp_path / "loads"
    env_cache = tmp_path / "cache"
    monkeypatch.setenv(teacher_module.TEACHER_CACHE_ENV, str(env_cache))  # passed on to the launched processes
    args = [RECIPE, "--model_name_or_path", str(student), "--teacher", str(teacher), "--keep_layers", "null",
            "--output_dir", str(tmp_path / "out"), "--max_train_rows", "32", "--per_device_train_batch_size", "4",
            "--num_train_epochs", "2", "--final_eval_tasks", "[]", "--use_cpu", "true", "--bf16", "false",
            "--report_to", "none", "--logging_steps", "1"]
    cmd = launch_command(*args)
    module = cmd.index("tests.ddp_train")
    cmd[module:module + 1] = ["tests.test_teacher", str(record)]
    run(cmd)
    loads = [json.loads(line) for line in record.read_text().splitlines()]
    assert [entry["rank"] for entry in loads] == [0]  # rank 1 waited and read rank 0's cache
    assert len(list(env_cache.glob("teacher-*.arrow"))) == 1
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _main(argv: list[str]) -> int:
    """`python -m tests.test_teacher RECORD RECIPE [--key value ...]`: train, logging each teacher load."""
    from nlp_contrastive import train

    record, argv = Path(argv[0]), argv[1:]
    load = teacher_module.load_teacher

    def recording(name, max_seq_length):
        with open(record, "a") as f:
            f.write(json.dumps({"rank": int(os.environ.get("RANK", 0))}) + "\n")
        return load(name, max_seq_length)

    teacher_module.load_teacher = recording
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
