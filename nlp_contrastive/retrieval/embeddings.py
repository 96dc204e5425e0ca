"""Chunked corpus encoding into embedding shards: on disk (resumable, shared by processes) or in memory.

The corpus is cut into chunks of `chunk_size` rows; chunk i becomes `shard-0000i.npz` (its ids, their id hashes
and the vectors, float32 or float16), each written to a temp name and renamed, so a shard that exists is whole:
a killed run or a full disk leaves finished shards plus nothing, and the rerun encodes only the missing
chunks. `meta.json` holds the cache key — the model's weights (sha256 over its state dict), the texts (sha256
over every id and text), max_seq_length, the prompt, the chunk size and the dtype — so mining and then
evaluating the same model on the same corpus read one set of shards, and a folder written with anything else
is refused with the field that differs instead of being mixed in. Under `accelerate launch` /
torch.distributed, process r encodes chunks r, r + W, r + 2W, ...; all meet at a barrier, then every process
reads every shard.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nlp_contrastive.files import write_atomic, write_json_atomic
from nlp_contrastive.retrieval.corpus import Corpus
from nlp_contrastive.retrieval.encoding import encode, truncate

DTYPES = {"float32": np.float32, "float16": np.float16}
DEFAULT_CHUNK_SIZE = 8192  # mining's and evaluation's default alike: the chunk size is part of the cache key
META = "meta.json"


@dataclass(frozen=True)
class CacheKey:
    """Everything the vectors depend on; two runs with equal keys may share shards."""

    model: str
    max_seq_length: int | None
    prompt: str
    texts: str
    documents: int
    chunk_size: int
    dtype: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def model_fingerprint(encoder) -> str:
    """sha256 over the encoder's state dict (names, dtypes, shapes, bytes) and its pooling settings."""
    state_dict = getattr(encoder, "state_dict", None)
    if state_dict is None:
        raise ValueError(f"cannot key an embeddings cache on {type(encoder).__name__}: it has no state_dict; "
                         "encode without a cache folder")
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    settings = [getattr(encoder, a, None) for a in ("pooling", "normalize", "include_prompt")]
    digest.update(repr(settings).encode())
    return digest.hexdigest()


def cache_key(encoder, corpus: Corpus, *, prompt: str = "", chunk_size: int = DEFAULT_CHUNK_SIZE, dtype: str = "float32",
              model: str | None = None) -> CacheKey:
    """The key of `corpus` encoded by `encoder`; `model` overrides the weights hash (an encoder without state)."""
    if dtype not in DTYPES:
        raise ValueError(f"embedding dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    if chunk_size < 1:
        raise ValueError(f"the corpus chunk size must be >= 1, got {chunk_size}")
    max_seq_length = getattr(encoder, "max_seq_length", None)
    return CacheKey(model=model or model_fingerprint(encoder), max_seq_length=max_seq_length, prompt=prompt or "",
                    texts=corpus.digest, documents=len(corpus), chunk_size=chunk_size, dtype=dtype)


class EmbeddingShards:
    """The encoded corpus, one chunk at a time: `blocks()` for search, `vectors(rows)` for a few rows."""

    def __init__(self, key: CacheKey, folder: Path) -> None:
        self.key, self.folder = key, folder
        self.num_chunks = -(-key.documents // key.chunk_size)
        self.encoded_chunks: list[int] = []  # chunks this process encoded (the rest came from disk)

    def __len__(self) -> int:
        return self.key.documents

    def rows(self, chunk: int) -> range:
        return range(chunk * self.key.chunk_size, min((chunk + 1) * self.key.chunk_size, self.key.documents))

    def path(self, chunk: int) -> Path:
        return self.folder / f"shard-{chunk:05d}.npz"

    def load(self, chunk: int) -> np.ndarray:
        """Float32 vectors of one chunk."""
        with np.load(self.path(chunk)) as shard:
            return shard["vectors"].astype(np.float32)

    def blocks(self, truncate_dim: int | None = None) -> Iterator[np.ndarray]:
        for chunk in range(self.num_chunks):
            yield truncate(self.load(chunk), truncate_dim)

    def vectors(self, rows: Sequence[int], truncate_dim: int | None = None) -> np.ndarray:
        """Float32 vectors of `rows` (any order), reading only the shards that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        out = None
        for chunk in np.unique(rows // self.key.chunk_size):
            block = truncate(self.load(int(chunk)), truncate_dim)
            if out is None:
                out = np.zeros((len(rows), block.shape[1]), dtype=np.float32)
            mine = rows // self.key.chunk_size == chunk
            out[mine] = block[rows[mine] - chunk * self.key.chunk_size]
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def finished(self, chunk: int, corpus: Corpus) -> bool:
        """A shard that exists, reads, and holds this chunk's ids; anything else is encoded again."""
        try:
            with np.load(self.path(chunk)) as shard:
                id_hashes, count = shard["id_hashes"], len(shard["vectors"])
        except (OSError, ValueError, KeyError, EOFError):
            return False
        rows = self.rows(chunk)
        return count == len(rows) and np.array_equal(id_hashes, corpus.id_hashes[rows.start:rows.stop])


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of torch.distributed when initialized (accelerate launch), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def chunk_size_for_processes(chunk_size: int, documents: int) -> int:
    """`chunk_size`, lowered under several processes so each has a chunk to encode (a corpus smaller than one
    chunk, e.g. a dev split evaluated during distributed training, is shared instead of refused)."""
    _, world = distributed_rank()
    return min(chunk_size, max(1, -(-documents // world))) if world > 1 else chunk_size


def encode_corpus(encoder, corpus: Corpus, *, folder: str | Path | None = None, cache_dir: str | Path | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 64, prompt: str = "", dtype: str = "float32",
                  model_key: str | None = None, show_progress: bool = True) -> EmbeddingShards:
    """Encode `corpus` chunk by chunk into `folder` (resuming its finished shards) or into a subfolder of
    `cache_dir` named by the cache key (so any run with the same key finds it). `model_key` replaces the weights
    hash (a temporary folder nobody else reads, or an encoder without a state dict)."""
    if (folder is None) == (cache_dir is None):
        raise ValueError("encode_corpus needs exactly one of folder / cache_dir (see temporary_folder())")
    rank, world = distributed_rank()
    key = cache_key(encoder, corpus, prompt=prompt, chunk_size=chunk_size, dtype=dtype, model=model_key)
    if folder is None:
        folder = Path(cache_dir) / key.digest()[:24]
    num_chunks = -(-len(corpus) // chunk_size)
    if world > num_chunks:
        raise ValueError(f"{world} processes but only {num_chunks} corpus chunk(s) of {chunk_size} documents: lower "
                         f"the corpus chunk size to <= {max(1, len(corpus) // world)} or launch fewer processes")
    shards = EmbeddingShards(key, Path(folder))
    check_meta(shards.folder, key)
    failure: BaseException | None = None
    try:
        write_json_atomic(shards.folder / META, asdict(key))
        todo = [c for c in range(rank, num_chunks, world) if not shards.finished(c, corpus)]
        for chunk in tqdm(todo, desc="Encoding corpus chunks", disable=not show_progress, unit="chunk"):
            vectors = encode_chunk(encoder, corpus, shards.rows(chunk), batch_size, prompt, dtype)
            rows = shards.rows(chunk)
            write_shard(shards.path(chunk), corpus.ids(rows.start, rows.stop),
                        corpus.id_hashes[rows.start:rows.stop], vectors)
            shards.encoded_chunks.append(chunk)
    except BaseException as exc:  # every process must reach the check below, or the others wait forever
        failure = exc
    _all_succeeded(failure, world)
    missing = [c for c in range(num_chunks) if not shards.path(c).is_file()]
    if missing:
        raise OSError(errno.ENOENT, f"{shards.folder}: shard(s) {missing[:3]} missing after encoding: rerun to "
                                    "encode them")
    return shards


def encode_chunk(encoder, corpus: Corpus, rows: range, batch_size: int, prompt: str, dtype: str) -> np.ndarray:
    texts = corpus.texts(rows.start, rows.stop)
    for row, text in zip(rows, texts, strict=True):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{corpus.source}: document {corpus.ids(row, row + 1)[0]!r} has an empty text: give it "
                             "a text or drop it from the corpus")
    return encode(encoder, texts, batch_size, prompt=prompt or None, quiet=True).astype(DTYPES[dtype])


def write_shard(path: Path, ids: Sequence[str], id_hashes: np.ndarray, vectors: np.ndarray) -> None:
    """One shard, whole or not at all (temp file + os.replace)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.asarray(ids, dtype=str), id_hashes=id_hashes, vectors=vectors)

    write_atomic(path, write)


def check_meta(folder: Path, key: CacheKey) -> None:
    """Refuse a folder written for another model / texts / max_seq_length / prompt / chunking / dtype."""
    path = folder / META
    if not path.is_file():
        return
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(f"{path} is not readable JSON: delete the folder {folder} to encode again") from None
    names = {"model": "model weights", "texts": "corpus texts", "documents": "corpus size"}
    differ = [f"{names.get(k, k)} {str(found.get(k))[:12]} vs {str(v)[:12]} now" for k, v in asdict(key).items()
              if found.get(k) != v]
    if differ:
        raise ValueError(f"embeddings folder {folder} was written with other settings ({'; '.join(differ)}): use "
                         "another folder, or delete this one to encode again")


def _all_succeeded(failure: BaseException | None, world: int) -> None:
    """Raise this process's error, or (after a barrier) another process's, so no rank waits alone."""
    if world > 1:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if failure is not None else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if failure is None and flag.item():
            raise OSError(errno.EIO, "another process failed while encoding the corpus (see its error); finished "
                                     "shards are kept: rerun to continue")
    if failure is not None:
        raise failure


@contextmanager
def temporary_folder() -> Iterator[Path]:
    """A scratch folder for shards nobody keeps, the same for every process (rank 0 makes it and broadcasts its
    name: one machine or a shared file system), removed at the end."""
    rank, world = distributed_rank()
    name = [tempfile.mkdtemp(prefix="nlpc-embeddings-") if rank == 0 else None]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(name, src=0)
    try:
        yield Path(name[0])
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        if rank == 0:
            shutil.rmtree(name[0], ignore_errors=True)
