"""Prompts through the trainer: prepended at training, used at evaluation, saved so sentence-transformers'
`encode(prompt_name=...)` gives our embeddings exactly; include_prompt saved in the Pooling config."""

import json

import numpy as np
import pytest
from transformers import TrainerCallback

from nlp_contrastive.data.batch import Batch, role_prompts
from nlp_contrastive.data.train_data import apply_prompts
from nlp_contrastive.modeling import Encoder
from nlp_contrastive.train import main, train, with_prompts
from tests.conftest import REPO_ROOT, make_tiny_encoder
from tests.test_trainer import tiny_overrides

INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")
TEXTS = ["a man is playing a guitar", "the cat sleeps on the mat", "query about proteins"]


class FirstBatch(TrainerCallback):
    """Keeps the training loader's first batch (as a `Batch`) in `self.batch`."""

    batch: Batch | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.batch is None:
            self.batch = Batch.from_inputs(next(iter(kwargs["train_dataloader"])))


def test_training_sees_prompted_texts_and_st_reproduces_our_embeddings(tiny_model_dir, tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    first = FirstBatch()
    train(INFONCE, tiny_overrides(str(tiny_model_dir), out, "--max_steps", "2", "--prompts",
                                  "{anchor: 'query: ', positive: 'passage: '}", "--final_eval_tasks",
                                  "[{name: sts, type: sts, dataset: stsb, split: test, max_rows: 50}]"),
          callbacks=[first])
    seen = [first.batch]
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


@pytest.mark.parametrize("forward", [("--single_forward", "true"), ("--single_forward", "false"), ("--cached", "true")])
def test_include_prompt_false_trains_on_embeddings_pooled_without_the_prompt_tokens(tiny_model_dir, tmp_path,
                                                                                      data_dir, monkeypatch, forward):
    """`include_prompt: false`: the collator gives each text its prompt's token count, and the loss sees the
    embeddings sentence-transformers' Pooling(include_prompt=False) makes (prompt attended to, not pooled) — in one
    forward over all roles, one per role, and under GradCache; the saved model keeps the setting."""
    from nlp_contrastive.losses.info_nce import InfoNCELoss

    seen = []
    original = InfoNCELoss.forward

    def spy(self, anchor, positive, *args, **kwargs):
        seen.append({"anchor": anchor.detach().clone(), "positive": positive.detach().clone()})
        return original(self, anchor, positive, *args, **kwargs)

    monkeypatch.setattr(InfoNCELoss, "forward", spy)
    first = FirstBatch()
    prompts = {"anchor": "query: ", "positive": "passage: "}
    out = tmp_path / "run"
    train(INFONCE, tiny_overrides(str(tiny_model_dir), out, "--max_steps", "1", "--prompts",
                                  "{anchor: 'query: ', positive: 'passage: '}", "--include_prompt", "false",
                                  "--batch_sampler", "no_duplicates", "--cache_mini_batch_size", "3", *forward),
          callbacks=[first])
    initial = Encoder.from_pretrained(str(tiny_model_dir))  # the weights of step 1's forward (dropout 0)
    initial.include_prompt = False
    batch = first.batch
    for role, prompt in prompts.items():
        features = batch.features[role]
        counted = initial.prompt_length(prompt)
        assert counted >= 3 and features["prompt_length"].tolist() == [counted] * len(features["input_ids"])
        expected = initial(**features)
        np.testing.assert_allclose(seen[0][role].numpy(), expected.detach().numpy(), atol=1e-5)
        with_prompt = initial(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
        assert not np.allclose(expected.detach().numpy(), with_prompt.detach().numpy(), atol=1e-3)
    assert Encoder.from_pretrained(str(out)).include_prompt is False
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["include_prompt"] is False


def test_prompt_lengths_follow_each_source_and_leave_unprompted_roles_at_zero(data_dir):
    import datasets

    from nlp_contrastive.data.batch import BatchCollator, prompt_length_column

    ds = datasets.Dataset.from_dict({"anchor": ["x", "y"], "positive": ["p", "q"], "negatives": [["n1", "n2"], []]})
    counted = apply_prompts(ds, {"anchor": "find: "}, prompt_length=len)
    assert counted[prompt_length_column("anchor")] == [6, 6] and counted[prompt_length_column("positive")] == [0, 0]
    assert counted[prompt_length_column("negatives")] == [0, 0]
    assert prompt_length_column("anchor") not in apply_prompts(ds, {"anchor": "find: "}).column_names
    rows = [{"anchor_input_ids": [1, 5, 2], "negatives_input_ids": [[1, 6, 2], [1, 7, 7, 2]],
             "anchor_prompt_length": 2, "negatives_prompt_length": 3},
            {"anchor_input_ids": [1, 2], "negatives_input_ids": [[1, 8, 2]],
             "anchor_prompt_length": 1, "negatives_prompt_length": 4}]
    features = Batch.from_inputs(BatchCollator(pad_token_id=0)(rows)).features
    assert features["anchor"]["prompt_length"].tolist() == [2, 1]
    assert features["negatives"]["prompt_length"].tolist() == [3, 3, 4]  # one per flattened negative


@pytest.mark.parametrize("extra,message", [
    (["--prompts", "{anchor: 3}"], "prompts must map text roles to prompt strings"),
    (["--prompts", "{score: 'x'}"], r"prompts names role\(s\) \['score'\]"),
])
def test_bad_prompt_settings_fail_in_one_line(tiny_model_dir, tmp_path, data_dir, capsys, extra, message):
    import re

    code = main([INFONCE, *tiny_overrides(str(tiny_model_dir), tmp_path / "o"), *extra])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and re.search(message, errors[0]), errors
