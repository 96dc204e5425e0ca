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
