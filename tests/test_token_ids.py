import pytest
from transformers import AutoTokenizer

from nlp_contrastive.data import token_ids as ids_module
from nlp_contrastive.data.token_ids import encode_texts, token_ids
from nlp_contrastive.modeling import bundled_default_model_path

TEXTS = ["A man is playing a guitar.", "Ünïcödé tèxt, with 中文 and emoji 🙂", "word " * 300, "  spaced   out  ",
         "don't stop-believing!!"]


@pytest.fixture
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_default_model_path())


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [8, 128])
def test_ids_equal_the_transformers_call(tokenizer, side, max_length):
    tokenizer.truncation_side = side
    expected = tokenizer(TEXTS, truncation=True, max_length=max_length)["input_ids"]
    assert token_ids(TEXTS, tokenizer, max_length) == expected
    assert token_ids(TEXTS[::-1], tokenizer, max_length) == expected[::-1]  # after the first-call check too
    assert ids_module._DIRECT[tokenizer][max_length] is not None  # the Rust path was taken


def test_list_roles_keep_their_rows_and_an_empty_list(tokenizer):
    columns = encode_texts({"anchor": TEXTS[:2], "negatives": [TEXTS[2:4], []]}, tokenizer, 16)
    call = tokenizer(TEXTS[:4], truncation=True, max_length=16)["input_ids"]
    assert columns["anchor_input_ids"] == call[:2]
    assert columns["negatives_input_ids"] == [call[2:4], []]


class _AddsAnId:
    """A fast tokenizer whose transformers call adds an id the Rust tokenizer does not (as a Python-side rule would)."""

    is_fast, truncation_side = True, "right"

    def __init__(self, real):
        self.backend_tokenizer = real.backend_tokenizer
        self.real = real

    def __call__(self, texts, **kwargs):
        return {"input_ids": [ids + [7] for ids in self.real(texts, **kwargs)["input_ids"]]}


class _Slow(_AddsAnId):
    is_fast = False


@pytest.mark.parametrize("kind", [_AddsAnId, _Slow])
def test_a_tokenizer_whose_rust_ids_differ_or_that_is_slow_keeps_the_transformers_call(tokenizer, kind):
    odd = kind(tokenizer)
    assert token_ids(TEXTS, odd, 32) == odd(TEXTS, truncation=True, max_length=32)["input_ids"]
    assert token_ids(TEXTS[:1], odd, 32)[0][-1] == 7
    assert ids_module._DIRECT[odd][32] is None


HOSTILE = ["", "   ", "a\x0bb\x0cc\x00d\x7fe\x1f", "tab\there\nnew\rline", "[MASK] is [mask] or [Mask]",
           "a [SEP] b", "[CLS]", "Hello,World!! (ok) #1 $2.50 100% a_b c-d e/f", "x " * 200, "MiXeD CaSe",
           "café au lait", "naïve — “quoted”", "漢字 and ascii", "[M\x01ASK] hidden"]


def _cased(tokenizer):
    """The bundled tokenizer with a cased BertNormalizer (no lowercasing, no accent stripping, no text cleaning)."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["normalizer"].update(lowercase=False, strip_accents=False, clean_text=False)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), cls_token="[CLS]",
                                   sep_token="[SEP]", unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")


@pytest.mark.parametrize("kind", ["uncased", "cased"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_the_ascii_shortcut_gives_the_transformers_ids_on_real_and_hostile_texts(tokenizer, data_dir, kind, side):
    """BertNormalizer tokenizers take the ASCII shortcut; ids equal the transformers call on every ASCII sentence
    of STS-B / SICK / MSRP train, on control characters, added tokens in any case, and mixed batches."""
    from nlp_contrastive.data.loading import load_split

    tok = _cased(tokenizer) if kind == "cased" else tokenizer
    tok.truncation_side = side
    real = list(dict.fromkeys(row[c] for name in ("stsb", "sickr", "msrp") for row in load_split(name, "train")
                              for c in ("sentence1", "sentence2")))
    texts = HOSTILE + real
    assert sum(t.isascii() for t in texts) > 20_000 and any(not t.isascii() for t in real)
    for max_length in (128, 9):
        expected = tok(texts, truncation=True, max_length=max_length)["input_ids"]
        assert token_ids(HOSTILE, tok, max_length) == expected[:len(HOSTILE)]  # the first call checks HOSTILE
        assert ids_module._DIRECT[tok][max_length].ascii is not None  # the shortcut passed that check
        assert token_ids(texts, tok, max_length) == expected
        assert token_ids(texts[::-1], tok, max_length) == expected[::-1]


def test_a_normalizer_other_than_bert_gets_no_ascii_shortcut(tokenizer):
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["normalizer"] = {"type": "Lowercase"}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="[UNK]")
    assert token_ids(HOSTILE, tok, 32) == tok(HOSTILE, truncation=True, max_length=32)["input_ids"]
    assert ids_module._DIRECT[tok][32].ascii is None


def test_a_shortcut_that_would_differ_is_dropped_and_the_full_rust_path_kept(tokenizer, monkeypatch):
    """If the shortcut's ids ever differ on the first texts (here: its normalization made wrong on purpose), the
    pair keeps the full Rust tokenizer, whose ids are right."""
    monkeypatch.setattr(ids_module.RustIds, "_normalized", lambda self, text: text.upper() if text.isascii() else None)
    expected = tokenizer(HOSTILE, truncation=True, max_length=32)["input_ids"]
    assert token_ids(HOSTILE, tokenizer, 32) == expected
    assert ids_module._DIRECT[tokenizer][32] is not None and ids_module._DIRECT[tokenizer][32].ascii is None
