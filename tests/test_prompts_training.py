"""Prompts through the trainer: prepended at training, used at evaluation, saved so sentence-transformers'
`encode(prompt_name=...)` gives our embeddings exactly; include_prompt saved in the Pooling config."""

import json

import numpy as np
import pytest

from nlp_contrastive.batch import Batch
from nlp_contrastive.modeling import Encoder
from nlp_contrastive.train import main, with_prompts
from nlp_contrastive.train_data import apply_prompts, role_prompts
from tests.conftest import REPO_ROOT, make_tiny_encoder
from tests.test_trainer import tiny_overrides

INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")
TEXTS = ["a man is playing a guitar", "the cat sleeps on the mat", "query about proteins"]


def test_training_sees_prompted_texts_and_st_reproduces_our_embeddings(tiny_model_dir, tmp_path, data_dir, capsys):
    seen = []
    out = tmp_path / "run"
    from transformers import TrainerCallback

    class CatchBatch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            loader = kwargs["train_dataloader"]
            if not seen:
                batch = Batch.from_inputs(next(iter(loader)))
                seen.append(batch)

    from nlp_contrastive.train import train

    train(INFONCE, tiny_overrides(str(tiny_model_dir), out, "--max_steps", "2", "--prompts",
                                  "{anchor: 'query: ', positive: 'passage: '}", "--final_eval_tasks",
                                  "[{name: sts, type: sts, dataset: stsb, split: test, max_rows: 50}]"),
          callbacks=[CatchBatch()])
    tokenizer = make_tiny_encoder().tokenizer
    anchors = tokenizer.batch_decode(seen[0].features["anchor"]["input_ids"], skip_special_tokens=True)
    positives = tokenizer.batch_decode(seen[0].features["positive"]["input_ids"], skip_special_tokens=True)
    assert all(a.startswith("query :") for a in anchors) and all(p.startswith("passage :") for p in positives)

    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"anchor": "query: ", "positive": "passage: ", "query": "query: ",
                                    "document": "passage: "}
    assert st_config["default_prompt_name"] is None
    meta = json.loads((out / "results_meta.json").read_text())
    assert meta["sts"]["prompts"] == {"sentence1": "query: ", "sentence2": "passage: "}

    from sentence_transformers import SentenceTransformer

    ours = Encoder.from_pretrained(str(out))
    st = SentenceTransformer(str(out), device="cpu")
    for name, prompt in (("query", "query: "), ("document", "passage: ")):
        expected = ours.encode(TEXTS, prompt=prompt)
        np.testing.assert_allclose(st.encode(TEXTS, prompt_name=name), expected, atol=1e-6)
        np.testing.assert_allclose(ours.encode(TEXTS, prompt_name=name), expected, atol=0)
        np.testing.assert_allclose(ours.encode([prompt + t for t in TEXTS]), expected, atol=1e-6)


@pytest.mark.parametrize("include_prompt", [True, False])
def test_include_prompt_is_saved_and_matches_sentence_transformers(tmp_path, include_prompt):
    encoder = make_tiny_encoder()
    encoder.include_prompt = include_prompt
    encoder.prompts = {"query": "query: "}
    encoder.save_pretrained(tmp_path / "m")
    pooling = json.loads((tmp_path / "m" / "1_Pooling" / "config.json").read_text())
    assert pooling["include_prompt"] is include_prompt
    loaded = Encoder.from_pretrained(str(tmp_path / "m"))
    assert loaded.include_prompt is include_prompt

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    ours = loaded.encode(TEXTS, prompt_name="query")
    np.testing.assert_allclose(st.encode(TEXTS, prompt_name="query"), ours, atol=1e-5)
    with_prompt_tokens = loaded.encode(["query: " + t for t in TEXTS])
    assert np.allclose(ours, with_prompt_tokens, atol=1e-6) is include_prompt


def test_role_prompts_source_overrides_and_documents_share_the_positive_prompt(data_dir):
    prompts = role_prompts({"anchor": "q: ", "positive": "d: "}, {"anchor": "question: "})
    assert prompts == {"anchor": "question: ", "positive": "d: ", "negative": "d: ", "negatives": "d: ",
                       "known_positives": "d: "}
    import datasets

    ds = datasets.Dataset.from_dict({"anchor": ["x"], "positive": ["y"], "negatives": [["n1", "n2"]]})
    row = apply_prompts(ds, prompts)[0]
    assert row == {"anchor": "question: x", "positive": "d: y", "negatives": ["d: n1", "d: n2"]}


def test_eval_tasks_inherit_training_prompts_unless_they_set_their_own():
    tasks = [{"name": "a", "type": "retrieval", "dataset": "x"}, {"name": "b", "type": "sts", "dataset": "y",
                                                                  "prompts": {"sentence1": "s: "}}]
    out = with_prompts(tasks, {"anchor": "query: ", "positive": "passage: "})
    assert out[0]["prompts"] == {"query": "query: ", "document": "passage: "}
    assert out[1]["prompts"] == {"sentence1": "s: "}


@pytest.mark.parametrize("extra,message", [
    (["--prompts", "{anchor: 3}"], "prompts must map text roles to prompt strings"),
    (["--prompts", "{score: 'x'}"], r"prompts names role\(s\) \['score'\]"),
    (["--prompts", "{anchor: 'q: '}", "--include_prompt", "false"], "include_prompt: false"),
])
def test_bad_prompt_settings_fail_in_one_line(tiny_model_dir, tmp_path, data_dir, capsys, extra, message):
    import re

    code = main([INFONCE, *tiny_overrides(str(tiny_model_dir), tmp_path / "o"), *extra])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and re.search(message, errors[0]), errors
