"""Atomic file writes for everything we hand to users (results, run info, cards, plots): write a sibling temp
file, then os.replace — never half a file."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then move it over `path`; the temp file honours the umask (unlike mkstemp)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_json(path: str | os.PathLike, data) -> None:
    """Plain write, for files inside a folder that is itself staged and renamed into place."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    return write_atomic(path, lambda tmp: write_json(tmp, data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
