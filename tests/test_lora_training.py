"""LoRA through the trainer: only adapter weights change; sentence-transformers loads the output, same embeddings."""


import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nlp_contrastive.modeling import Encoder
from nlp_contrastive.train import main
from tests.conftest import REPO_ROOT
from tests.test_trainer import tiny_overrides

pytest.importorskip("peft")
COSINE = str(REPO_ROOT / "recipes" / "stsb-cosine.yaml")
TEXTS = ["a man is playing a guitar", "the cat sleeps", "two dogs run in the park"]
LORA = "{r: 4, alpha: 8, dropout: 0.0, target_modules: [query, value]}"


def test_only_adapters_train_and_sentence_transformers_loads_the_adapter(tiny_model_dir, tmp_path, data_dir):
    out = tmp_path / "lora"
    assert main([COSINE, *tiny_overrides(str(tiny_model_dir), out, "--max_steps", "3", "--learning_rate", "0.01",
                                         "--lora", LORA)]) == 0
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert any(float(t.abs().sum()) > 0 for n, t in adapter.items() if "lora_B" in n)  # B starts at 0: it trained
    card = (out / "README.md").read_text()
    assert "nlp-contrastive model card" in card and "Model Card for Model ID" not in card  # ours, not peft's

    trained = Encoder.from_pretrained(str(out))
    base = Encoder.from_pretrained(str(tiny_model_dir))
    merged = trained.model.merge_and_unload()
    base_state, merged_state = base.model.state_dict(), merged.state_dict()
    changed = {n for n in base_state if not torch.equal(base_state[n], merged_state[n])}
    assert changed and all(n.endswith(("query.weight", "value.weight")) for n in changed)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu")
    ours = Encoder.from_pretrained(str(out)).encode(TEXTS)
    np.testing.assert_allclose(st.encode(TEXTS), ours, atol=1e-5)
    assert not np.allclose(base.encode(TEXTS), ours, atol=1e-4)


def test_lora_merge_saves_a_plain_model_with_the_same_embeddings(tiny_model_dir, tmp_path, data_dir):
    common = ["--max_steps", "2", "--learning_rate", "0.01", "--lora", LORA]
    assert main([COSINE, *tiny_overrides(str(tiny_model_dir), tmp_path / "a", *common)]) == 0
    assert main([COSINE, *tiny_overrides(str(tiny_model_dir), tmp_path / "m", *common, "--lora_merge", "true")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists() and not (tmp_path / "m" / "adapter_config.json").exists()
    from sentence_transformers import SentenceTransformer

    merged = SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(merged, Encoder.from_pretrained(str(tmp_path / "a")).encode(TEXTS), atol=1e-5)


@pytest.mark.parametrize("extra,message", [
    (["--lora", "{r: 0}"], "lora r must be a positive integer"),
    (["--lora", "{rank: 4}"], r"unknown key\(s\) \['rank'\]"),
    (["--lora_merge", "true"], "lora_merge: true needs lora"),
    (["--lora", "{target_modules: [nope]}"], "lora: "),
])
def test_bad_lora_settings_fail_in_one_line(tiny_model_dir, tmp_path, data_dir, capsys, extra, message):
    import re

    code = main([COSINE, *tiny_overrides(str(tiny_model_dir), tmp_path / "o", "--max_steps", "1"), *extra])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and re.search(message, errors[0]), errors
