"""Token ids of training texts: the one tokenization, ahead (`loading.tokenize_roles`) or on the fly
(`data.streaming`), where its CPU cost is paid inside every training step.

The ids are exactly `tokenizer(texts, truncation=True, max_length=L)["input_ids"]`. A fast tokenizer is asked
through its Rust tokenizer's own batch call on a private copy set to truncate at L (`encode_batch_fast`: no
offsets, no per-text Python dicts), about 30% less CPU per text than the transformers call. The two are compared on
the first texts a (tokenizer, L) pair sees; if they ever differ (a tokenizer whose transformers class adds ids in
Python), that pair keeps the transformers call.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping, Sequence

from nlp_contrastive.data.batch import LIST_ROLES, token_column

logger = logging.getLogger(__name__)

_DIRECT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {max_length: Rust copy or None}
_LOCK = threading.Lock()


def encode_texts(texts: Mapping[str, list], tokenizer, max_length: int) -> dict[str, list]:
    """{role: texts of each row} -> {token column: token ids of each row} (a list role: a list per row)."""
    out = {}
    for role, values in texts.items():
        if role in LIST_ROLES:
            ids = iter(token_ids([t for row in values for t in row], tokenizer, max_length))
            out[token_column(role)] = [[next(ids) for _ in row] for row in values]
        else:
            out[token_column(role)] = token_ids(values, tokenizer, max_length)
    return out


def token_ids(texts: Sequence[str], tokenizer, max_length: int) -> list[list[int]]:
    """`tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]`, at less CPU where possible."""
    if not texts:
        return []
    direct = _direct_tokenizer(tokenizer, max_length, texts)
    if direct is None:
        return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    encode = getattr(direct, "encode_batch_fast", direct.encode_batch)
    return [e.ids for e in encode(list(texts))]


def _direct_tokenizer(tokenizer, max_length: int, sample: Sequence[str]):
    """The tokenizer's Rust copy truncating at `max_length`, once it gave the transformers call's ids on
    `sample`; None for a slow tokenizer or one whose ids differ."""
    with _LOCK:
        known = _DIRECT.setdefault(tokenizer, {})
        if max_length in known:
            return known[max_length]
        direct = None
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        if backend is not None:
            from tokenizers import Tokenizer

            direct = Tokenizer.from_str(backend.to_str())
            direct.no_padding()
            direct.enable_truncation(max_length, direction=getattr(tokenizer, "truncation_side", "right"))
            expected = tokenizer(list(sample), truncation=True, max_length=max_length)["input_ids"]
            if [e.ids for e in direct.encode_batch(list(sample))] != expected:
                logger.info("%s: the Rust tokenizer's ids differ from the transformers call's; tokenizing "
                            "through transformers", type(tokenizer).__name__)
                direct = None
        known[max_length] = direct
        return direct
