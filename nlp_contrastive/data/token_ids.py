"""Token ids of training texts: the one tokenization, ahead (`loading.tokenize_roles`) or on the fly
(`data.streaming`), where its CPU cost is paid inside every training step.

The ids are exactly `tokenizer(texts, truncation=True, max_length=L)["input_ids"]`. A fast tokenizer is asked
through its Rust tokenizer's own batch call on a private copy set to truncate at L (`encode_batch_fast`: no
offsets, no per-text Python dicts), about 30% less CPU per text than the transformers call.

BERT-style tokenizers (a `BertNormalizer`: all-MiniLM, BGE, E5, ...) spend about a third of that in the normalizer,
which tracks every character's alignment. On an ASCII text its whole effect is known: drop control characters,
turn tab / newline / carriage return into spaces, lowercase (accent stripping and CJK spacing change no ASCII
character). Such texts are normalized with `str.translate` / `str.lower` and encoded by a copy without the
normalizer, ~25% less CPU again; any other text (non-ASCII, or holding an added token such as `[MASK]`, which the
tokenizer matches before normalizing) takes the full Rust tokenizer.

Both shortcuts are compared with the transformers call on the first texts a (tokenizer, L) pair sees; one that
ever differs (a tokenizer whose transformers class adds ids in Python) is not used for that pair.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Mapping, Sequence

from nlp_contrastive.data.batch import LIST_ROLES, token_column

logger = logging.getLogger(__name__)

_DIRECT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {max_length: RustIds or None}
_LOCK = threading.Lock()
# BertNormalizer's clean_text on ASCII: control characters dropped, tab / newline / carriage return become spaces
_CLEAN_ASCII = str.maketrans({**{c: None for c in [*range(32), 127]}, **{ord(c): " " for c in "\t\n\r"}})


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
    return direct.ids(texts)


class RustIds:
    """A fast tokenizer's Rust copy truncating at L, and for a BertNormalizer the ASCII shortcut beside it."""

    def __init__(self, backend, max_length: int, side: str):
        from tokenizers import Tokenizer

        spec = backend.to_str()
        self.full = Tokenizer.from_str(spec)
        self.full.no_padding()
        self.full.enable_truncation(max_length, direction=side)
        self.ascii, self.lowercase, self.clean, self.added = None, False, False, None
        normalizer = json.loads(spec).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            self.ascii = Tokenizer.from_str(self.full.to_str())
            self.ascii.normalizer = None
            self.lowercase, self.clean = bool(normalizer.get("lowercase")), bool(normalizer.get("clean_text"))
            contents = [t.content for t in backend.get_added_tokens_decoder().values() if t.content]
            self.added = re.compile("|".join(map(re.escape, contents)), re.IGNORECASE) if contents else None

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, in order: shortcut texts and the others encoded as two batches."""
        if self.ascii is None:
            return self.encode(self.full, texts)
        out: list = [None] * len(texts)
        plain, rest = [], []
        for i, text in enumerate(texts):
            normalized = self._normalized(text)
            if normalized is None:
                rest.append(i)
            else:
                plain.append((i, normalized))
        for (i, _), ids in zip(plain, self.encode(self.ascii, [t for _, t in plain]), strict=True):
            out[i] = ids
        for i, ids in zip(rest, self.encode(self.full, [texts[i] for i in rest]), strict=True):
            out[i] = ids
        return out

    def _normalized(self, text: str) -> str | None:
        """What the BertNormalizer makes of an ASCII text with no added token in it; None for any other text."""
        if not text.isascii() or (self.added is not None and self.added.search(text)):
            return None
        normalized = text.translate(_CLEAN_ASCII) if self.clean else text
        normalized = normalized.lower() if self.lowercase else normalized
        return None if self.added is not None and self.added.search(normalized) else normalized

    @staticmethod
    def encode(tokenizer, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        return [e.ids for e in encode(list(texts))]


def _direct_tokenizer(tokenizer, max_length: int, sample: Sequence[str]) -> RustIds | None:
    """The tokenizer's Rust path truncating at `max_length`, once it gave the transformers call's ids on `sample`
    (and its ASCII shortcut, once that did too); None for a slow tokenizer or one whose ids differ."""
    with _LOCK:
        known = _DIRECT.setdefault(tokenizer, {})
        if max_length in known:
            return known[max_length]
        direct = None
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        if backend is not None:
            direct = RustIds(backend, max_length, getattr(tokenizer, "truncation_side", "right"))
            expected = tokenizer(list(sample), truncation=True, max_length=max_length)["input_ids"]
            if RustIds.encode(direct.full, sample) != expected:
                logger.info("%s: the Rust tokenizer's ids differ from the transformers call's; tokenizing "
                            "through transformers", type(tokenizer).__name__)
                direct = None
            elif direct.ascii is not None and direct.ids(sample) != expected:
                logger.info("%s: the ASCII shortcut's ids differ from the transformers call's; not using it",
                            type(tokenizer).__name__)
                direct.ascii = None
        known[max_length] = direct
        return direct
