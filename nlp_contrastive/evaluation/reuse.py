"""An encoder wrapper that remembers its last few encode calls, so one task run at several Matryoshka
dimensions (`task`, `task@256`, `task@64`, ...) encodes its texts once and cuts prefixes, instead of once per dim.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import numpy as np


class RecentEncodings:
    """`encode` as the wrapped encoder's (same signature, so evaluators treat it alike), replayed for a repeat call.

    Keeps the `size` most recent distinct calls (texts + arguments): the dims of one task run back to back, so a
    handful is enough and memory stays that of one task's embeddings. Results are copies (callers may modify).
    """

    def __init__(self, encoder: Any, size: int = 4) -> None:
        self._encoder = encoder
        self._size = size
        self._recent: OrderedDict[tuple, Any] = OrderedDict()
        self.calls = 0  # encodes that reached the wrapped encoder

        @functools.wraps(encoder.encode)  # its signature: evaluators read it to pass prompt / convert_to
        def encode(texts, *args, **kwargs):
            return self._encode(texts, *args, **kwargs)

        self.encode = encode

    def _encode(self, texts, *args, **kwargs):
        key = (tuple(texts), args, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key in self._recent:
            self._recent.move_to_end(key)
        else:
            self.calls += 1
            self._recent[key] = self._encoder.encode(list(texts), *args, **kwargs)
            while len(self._recent) > self._size:
                self._recent.popitem(last=False)
        result = self._recent[key]
        return result.copy() if isinstance(result, np.ndarray) else result.clone()

    def __getattr__(self, name: str) -> Any:  # prompts, max_seq_length, device, ... of the wrapped encoder
        return getattr(self._encoder, name)
