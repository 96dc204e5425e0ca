import json

import numpy as np
import pytest
import torch

from nlp_contrastive.modeling import Encoder, pool, resolve_model_path
from tests.conftest import make_tiny_encoder

TEXTS = ["A man is playing a guitar.", "Short.", "The quick brown fox jumps over the lazy dog near the river bank.",
         "Two dogs run.", "A woman slices an onion on a wooden board."]


def test_pooling_modes_ignore_padding():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(pool(tokens, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(pool(tokens, mask, "max"), torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(pool(tokens, mask, "cls"), torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(pool(tokens, mask, "last_token"), torch.tensor([[3.0, 4.0]]))
    left_padded = torch.tensor([[0, 1, 1]])
    assert torch.allclose(pool(tokens, left_padded, "last_token"), torch.tensor([[100.0, 100.0]]))
    with pytest.raises(ValueError, match="unknown pooling 'sum'"):
        pool(tokens, mask, "sum")


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last_token"])
def test_encode_matches_unbatched_forward_and_keeps_order(pooling):
    encoder = make_tiny_encoder(pooling=pooling, normalize=True)
    batched = encoder.encode(TEXTS, batch_size=2)
    for i, text in enumerate(TEXTS):
        single = encoder.encode(text)
        np.testing.assert_allclose(batched[i], single, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert isinstance(encoder.encode(TEXTS, convert_to="torch"), torch.Tensor)


def test_encode_restores_training_mode(tiny_encoder):
    tiny_encoder.train()
    tiny_encoder.encode(TEXTS)
    assert tiny_encoder.training


def test_encode_rejects_non_strings(tiny_encoder):
    with pytest.raises(TypeError, match="text #1 is NoneType"):
        tiny_encoder.encode(["ok", None])


def test_save_load_round_trip_and_sentence_transformers_loads_it(tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder = make_tiny_encoder(pooling="cls", normalize=True)
    encoder.save_pretrained(tmp_path / "model")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left behind"
    reloaded = Encoder.from_pretrained(str(tmp_path / "model"))
    assert (reloaded.pooling, reloaded.normalize, reloaded.max_seq_length) == ("cls", True, 64)
    np.testing.assert_allclose(reloaded.encode(TEXTS), encoder.encode(TEXTS), atol=1e-6)
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), encoder.encode(TEXTS), atol=1e-5)


def test_save_into_existing_folder_keeps_other_files(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-5").mkdir(parents=True)
    (out / "checkpoint-5" / "keep.txt").write_text("x")
    make_tiny_encoder().save_pretrained(out)
    assert (out / "checkpoint-5" / "keep.txt").exists()
    assert json.loads((out / "modules.json").read_text())[1]["path"] == "1_Pooling"
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_not_a_model_path_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a model folder"):
        Encoder.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is not a model folder"):
        Encoder.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="could not load model"):
        Encoder.from_pretrained("nobody/no-such-model-offline")


def test_unsupported_sentence_transformers_module(tmp_path):
    make_tiny_encoder().save_pretrained(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense.*not supported"):
        Encoder.from_pretrained(str(tmp_path / "m"))


def test_default_model_id_resolves_to_bundled_copy(minilm_path):
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == minilm_path


@pytest.mark.slow
def test_real_model_interop_both_ways(minilm_path, data_dir, tmp_path):
    """Ours == sentence-transformers on 100 STS-B sentences, loading each other's saves."""
    from sentence_transformers import SentenceTransformer

    rows = [json.loads(line) for line in (data_dir / "stsb" / "test.jsonl").open()][:50]
    texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
    ours = Encoder.from_pretrained(minilm_path)
    original = SentenceTransformer(minilm_path, device="cpu")
    assert np.abs(ours.encode(texts) - original.encode(texts)).max() < 1e-5
    ours.save_pretrained(tmp_path / "saved")
    reloaded_by_st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert np.abs(reloaded_by_st.encode(texts) - original.encode(texts)).max() < 1e-5
