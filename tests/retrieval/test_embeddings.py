"""Embedding shards: atomic, resumable, keyed on model / texts / settings; bad input refused in one line."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from nlp_contrastive.retrieval import embeddings
from nlp_contrastive.retrieval.corpus import JsonlCorpus, MemoryCorpus
from nlp_contrastive.retrieval.embeddings import encode_corpus

CORPUS = MemoryCorpus({f"d{i}": f"document {i} about topic {i % 7} and word {i * 13 % 11}" for i in range(50)})


class CountingEncoder:
    """Wraps an encoder and counts the texts it encodes."""

    def __init__(self, encoder) -> None:
        self.encoder, self.texts = encoder, 0

    def __getattr__(self, name):  # state_dict, max_seq_length, pooling, ...: the wrapped encoder's
        return getattr(self.encoder, name)

    def encode(self, texts, batch_size=32, convert_to="numpy", prompt=None):
        self.texts += len(texts)
        return self.encoder.encode(texts, batch_size=batch_size, convert_to=convert_to, prompt=prompt)


def _shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.npz"))}


def test_shards_hold_every_row_once_and_a_rerun_encodes_nothing(tmp_path, tiny_encoder):
    encoder = CountingEncoder(tiny_encoder)
    shards = encode_corpus(encoder, CORPUS, folder=tmp_path / "e", chunk_size=16, show_progress=False)
    assert shards.encoded_chunks == [0, 1, 2, 3] and encoder.texts == 50
    whole = tiny_encoder.encode([CORPUS.texts(0, 50)[i] for i in range(50)], batch_size=16)
    np.testing.assert_allclose(np.concatenate(list(shards.blocks())), whole, atol=1e-5)
    np.testing.assert_array_equal(shards.vectors([49, 3, 17]), np.concatenate(list(shards.blocks()))[[49, 3, 17]])
    again = encode_corpus(encoder, CORPUS, folder=tmp_path / "e", chunk_size=16, show_progress=False)
    assert again.encoded_chunks == [] and encoder.texts == 50


def test_a_killed_run_resumes_from_its_finished_shards_with_identical_bytes(tmp_path, tiny_encoder, monkeypatch):
    straight = encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "straight", chunk_size=16, show_progress=False)
    real_encode_chunk, calls = embeddings.encode_chunk, []

    def killed_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is stopped mid-run
        return real_encode_chunk(*args, **kwargs)

    monkeypatch.setattr(embeddings, "encode_chunk", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "resumed", chunk_size=16, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["meta.json", "shard-00000.npz",
                                                                        "shard-00001.npz"]
    monkeypatch.setattr(embeddings, "encode_chunk", real_encode_chunk)
    encoder = CountingEncoder(tiny_encoder)
    resumed = encode_corpus(encoder, CORPUS, folder=tmp_path / "resumed", chunk_size=16, show_progress=False)
    assert resumed.encoded_chunks == [2, 3] and encoder.texts == 50 - 32  # only the unfinished chunks
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(straight.folder)


def test_a_full_disk_leaves_no_half_shard_and_the_rerun_continues(tmp_path, tiny_encoder, monkeypatch):
    real_savez, writes = np.savez, []

    def disk_fills(file, **arrays):
        writes.append(1)
        if len(writes) == 2:
            file.write(b"PK\x03\x04 half a zip")  # some bytes reached the disk, then it was full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(file, **arrays)

    monkeypatch.setattr(embeddings.np, "savez", disk_fills)
    with pytest.raises(OSError, match="No space left"):
        encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "e", chunk_size=16, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["meta.json", "shard-00000.npz"]  # no temp left
    monkeypatch.setattr(embeddings.np, "savez", real_savez)
    shards = encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "e", chunk_size=16, show_progress=False)
    assert shards.encoded_chunks == [1, 2, 3]


def test_a_corrupt_shard_is_encoded_again(tmp_path, tiny_encoder):
    encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "e", chunk_size=16, show_progress=False)
    (tmp_path / "e" / "shard-00002.npz").write_bytes(b"garbage")
    shards = encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "e", chunk_size=16, show_progress=False)
    assert shards.encoded_chunks == [2]


@pytest.mark.parametrize("change, field", [("model", "model weights"), ("max_seq_length", "max_seq_length"),
                                           ("prompt", "prompt"), ("texts", "corpus texts")])
def test_a_folder_written_with_other_settings_is_refused(tmp_path, tiny_encoder, change, field):
    from tests.conftest import make_tiny_encoder

    encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "e", chunk_size=16, show_progress=False)
    encoder, corpus, prompt = tiny_encoder, CORPUS, ""
    if change == "model":
        encoder = make_tiny_encoder(seed=1)
    elif change == "max_seq_length":
        encoder.max_seq_length = 32
    elif change == "prompt":
        prompt = "passage: "
    else:
        corpus = MemoryCorpus({**{f"d{i}": CORPUS.texts(i, i + 1)[0] for i in range(50)}, "d7": "changed"})
    with pytest.raises(ValueError, match=rf"embeddings folder .* was written with other settings \({field} "):
        encode_corpus(encoder, corpus, folder=tmp_path / "e", chunk_size=16, prompt=prompt, show_progress=False)


def test_float16_shards_on_request(tmp_path, tiny_encoder):
    shards = encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "e", chunk_size=64, dtype="float16",
                           show_progress=False)
    with np.load(tmp_path / "e" / "shard-00000.npz") as shard:
        assert shard["vectors"].dtype == np.float16 and list(shard["ids"][:2]) == ["d0", "d1"]
    assert next(shards.blocks()).dtype == np.float32


def test_more_processes_than_chunks_is_refused_before_any_work(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setattr(embeddings, "distributed_rank", lambda: (0, 8))
    with pytest.raises(ValueError, match=r"8 processes but only 4 corpus chunk\(s\) of 16 documents: lower the "
                                         r"corpus chunk size to <= 6 or launch fewer processes"):
        encode_corpus(tiny_encoder, CORPUS, folder=tmp_path / "e", chunk_size=16, show_progress=False)
    assert not (tmp_path / "e").exists()


def test_repeated_ids_are_refused_naming_both_rows(tmp_path):
    rows = [{"_id": f"d{i}", "text": f"text {i}"} for i in range(20)] + [{"_id": "d3", "text": "again"}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"document id 'd3' repeats \(rows 3 and 20\): give each document its own id"):
        JsonlCorpus(tmp_path / "corpus.jsonl")


def test_jsonl_corpus_reads_rows_by_offset_like_the_dict(tmp_path):
    rows = [{"_id": i, "title": "T" if i % 2 else "", "text": f"text {i}"} for i in range(9)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n\n" for r in rows))  # blank lines between
    lazy = JsonlCorpus(tmp_path / "corpus.jsonl")
    eager = MemoryCorpus({str(r["_id"]): f"{r['title']} {r['text']}".strip() for r in rows})
    assert lazy.digest == eager.digest and lazy.texts(2, 6) == eager.texts(2, 6) and lazy.ids(7, 20) == ["7", "8"]
    assert lazy.text_of([8, 1]) == {1: "T text 1", 8: "text 8"} and lazy.rows_of_ids(["5", "x"]).tolist() == [5, -1]
