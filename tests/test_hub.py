"""Model card generation and `push` against the real huggingface_hub client talking to a fake hub on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import time
from pathlib import Path

import pytest
import yaml
from _fake_hub import FakeHub, front_matter, validate_model_index

from nlp_contrastive import card as card_module
from nlp_contrastive import cli
from nlp_contrastive.card import MODEL_ID_PLACEHOLDER, PLACEHOLDER_NOTE, build_model_card, write_model_card
from nlp_contrastive.hub import HubPushError, push_to_hub

TOKEN = "hf_fake_write_token_0123456789"
BIBTEX = "@inproceedings{reimers-2019-sentence-bert,\n  title = {Sentence-BERT},\n  year = {2019}\n}"
RESULTS = {
    "stsb-test": {"pearson_cosine": 0.8512345678, "spearman_cosine": 0.8499123456},
    "sickr-test": {"pearson_cosine": 0.80004, "spearman_cosine": 0.7712},
}
RESULTS_META = {
    "stsb-test": {"type": "sts", "dataset": "stsb", "split": "test", "primary_metric": "spearman_cosine"},
    "sickr-test": {"type": "sts", "dataset": "RobZamp/sick", "split": "test", "primary_metric": "spearman_cosine"},
}
RUN = {
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "datasets": [{"name": "stsb", "split": "train", "rows": 5749,
                  "columns": {"anchor": "sentence1", "positive": "sentence2", "score": "score"}}],
    "loss": {"name": "CosineSimilarityLoss", "config": {"loss_fct": "MSELoss", "similarity": "cosine"},
             "citation": BIBTEX},
    "recipe": {"model": {"name_or_path": "sentence-transformers/all-MiniLM-L6-v2"},
               "loss": {"name": "cosine_similarity"}, "training": {"learning_rate": 2e-5, "num_train_epochs": 1}},
    "hardware": {"device": "cpu", "num_processes": 1},
    "train_runtime_seconds": 3723.4,
    "train_samples_per_second": 12.5,
    "library_versions": {"nlp_contrastive": "0.1.0", "transformers": "5.23.0", "torch": "2.13.0"},
    "final_train_loss": 0.0321,
}
MODEL_INFO = {"name": "stsb-model", "dimension": 384, "max_seq_length": 256, "pooling": "mean", "normalize": False,
              "similarity_fn_name": "cosine"}
MODEL_FILES = {"config.json", "model.safetensors", "modules.json", "sentence_bert_config.json",
               "config_sentence_transformers.json", "1_Pooling/config.json", "tokenizer.json",
               "tokenizer_config.json"}


def card_sections(card: str) -> dict[str, str]:
    """Markdown body split at '### ' headings."""
    parts = re.split(r"^### (.+)$", card, flags=re.MULTILINE)
    return {title.strip(): text for title, text in zip(parts[1::2], parts[2::2], strict=True)}


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", text, flags=re.DOTALL)


def table_values(section: str) -> dict[str, str]:
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, flags=re.MULTILINE)
    return {k.strip("*"): v.strip("*") for k, v in rows if k not in ("Metric",) and not k.startswith(":")}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_run_files(folder: Path, run=RUN, results=RESULTS, results_meta=RESULTS_META) -> None:
    for name, data in (("training_run.json", run), ("results.json", results), ("results_meta.json", results_meta)):
        (folder / name).write_text(json.dumps(data))


# ============================================================================================ model card
def test_front_matter_has_hub_metadata_and_a_model_index_the_hub_parses():
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = build_model_card(RUN, RESULTS, RESULTS_META, MODEL_INFO, model_id="alice/stsb-model")
    metadata = front_matter(card)
    assert metadata["library_name"] == "sentence-transformers"
    assert metadata["pipeline_tag"] == "sentence-similarity"
    assert metadata["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert metadata["datasets"] == ["sentence-transformers/stsb"]  # the named set's hub copy
    assert "loss:CosineSimilarityLoss" in metadata["tags"]
    assert metadata["metrics"] == ["pearson_cosine", "spearman_cosine"]
    assert validate_model_index(metadata) == []

    name, eval_results = model_index_to_eval_results(metadata["model-index"])
    assert name == "stsb-model"
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in eval_results}
    assert got == {(task, m): v for task, metrics in RESULTS.items() for m, v in metrics.items()}  # unrounded
    stsb = [r for r in eval_results if r.dataset_name == "stsb-test"]
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in stsb} == {
        ("semantic-similarity", "sentence-transformers/stsb", "test")}
    # huggingface_hub's own card parser accepts the whole front matter
    assert len(ModelCard(card).data.eval_results) == 4


def test_results_table_shows_results_json_rounded_to_4_decimals_with_primary_metric_bold():
    card = build_model_card(RUN, RESULTS, RESULTS_META, MODEL_INFO)
    sections = card_sections(card)
    for task, metrics in RESULTS.items():
        section = sections[f"{task} (Semantic Similarity)"]
        assert table_values(section) == {m: f"{v:.4f}" for m, v in metrics.items()}
        assert "| **spearman_cosine** | **" in section
    assert "`test`" in sections["stsb-test (Semantic Similarity)"]


def test_card_carries_loss_config_recipe_hardware_versions_and_citation():
    card = build_model_card(RUN, RESULTS, RESULTS_META, MODEL_INFO)
    sections = card_sections(card)
    assert json.loads(code_blocks(sections["Loss"], "json")[0]) == RUN["loss"]["config"]
    assert yaml.safe_load(code_blocks(sections["Recipe"], "yaml")[0]) == RUN["recipe"]
    assert "1:02:03" in sections["Hardware and time"] and "12.5 samples/s" in sections["Hardware and time"]
    assert "- transformers: 5.23.0" in sections["Framework versions"]
    assert code_blocks(card, "bibtex") == [BIBTEX]
    assert "5,749 rows" in card and "384" in card and "256 tokens" in card


def test_card_renders_the_trainers_run_info_and_never_a_secret():
    run = {**RUN, "datasets": [{"name": "stsb", "split": "train", "columns": {"anchor": "sentence1"},
                                "filter": "score >= 0"}],
           "train_rows": 5700, "loss": {**RUN["loss"], "cached": True},
           "hardware": {"device": "cpu", "num_processes": 2, "cuda": None},
           "recipe": {"training": {"hub_token": "hf_secret_value", "hub_model_id": "alice/m", "max_tokens": 5}}}
    card = build_model_card(run, {}, {}, MODEL_INFO)
    assert "hf_secret_value" not in card and "hub_token: <redacted>" in card and "max_tokens: 5" in card
    assert "Training rows after loading and filtering: 5,700" in card and "- Filter: `score >= 0`" in card
    assert "GradCache" in card and "- Num processes: 2" in card and "Cuda" not in card


def test_usage_snippets_use_the_model_id_or_a_placeholder():
    card = build_model_card(RUN, RESULTS, RESULTS_META, MODEL_INFO, model_id="alice/stsb-model")
    st_code, tf_code = code_blocks(card, "python")
    assert 'SentenceTransformer("alice/stsb-model")' in st_code
    assert 'AutoModel.from_pretrained("alice/stsb-model")' in tf_code and "max_length=256" in tf_code
    recipe_id = build_model_card({**RUN, "recipe": {"training": {"hub_model_id": "bob/m"}}}, {}, {}, MODEL_INFO)
    assert 'SentenceTransformer("bob/m")' in recipe_id
    placeholder = build_model_card(RUN, RESULTS, RESULTS_META, MODEL_INFO)
    assert f'SentenceTransformer("{MODEL_ID_PLACEHOLDER}")' in placeholder


@pytest.mark.parametrize("run, results, results_meta, model_info", [
    ({}, {}, {}, {}),
    (None, None, None, None),
    ({"datasets": "oops", "loss": {"name": "X"}, "hardware": None}, {"t": "not-a-dict"}, {"t": 3}, {"dimension": 8}),
    (RUN, {"t": {"acc": float("nan"), "ok": 0.5, "note": "text"}}, {}, MODEL_INFO),
])
def test_partial_or_malformed_inputs_still_give_a_valid_card(run, results, results_meta, model_info):
    card = build_model_card(run, results, results_meta, model_info)
    metadata = front_matter(card)
    assert metadata["library_name"] == "sentence-transformers"
    assert validate_model_index(metadata) == []
    assert "## Usage" in card
    for metrics in (results or {}).values():
        if isinstance(metrics, dict) and "ok" in metrics:
            assert [m["type"] for m in metadata["model-index"][0]["results"][0]["metrics"]] == ["ok"]


def test_local_paths_are_not_published_as_hub_ids(tmp_path):
    local_model, local_data = tmp_path / "alice" / "base-model", tmp_path / "alice" / "pairs.jsonl"
    local_model.mkdir(parents=True)
    local_data.write_text("{}\n")
    run = {"base_model": str(local_model), "datasets": [{"name": str(local_data), "split": "train", "rows": 1}]}
    card = build_model_card(run, {}, {}, MODEL_INFO)
    metadata = front_matter(card)
    assert "base_model" not in metadata and "datasets" not in metadata
    assert str(tmp_path) not in card
    assert "`base-model` (local)" in card and "`pairs.jsonl`" in card


def test_bundled_default_model_is_named_by_its_hub_id(minilm_path):
    card = build_model_card({"base_model": minilm_path}, {}, {}, MODEL_INFO)
    assert front_matter(card)["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_write_model_card_reads_the_trainer_files_and_the_saved_model(tiny_model_dir):
    write_run_files(tiny_model_dir)
    path = write_model_card(tiny_model_dir)
    assert path == tiny_model_dir / "README.md"
    card = path.read_text()
    assert "**Output dimensionality:** 32" in card and "**Maximum sequence length:** 64 tokens" in card
    assert "**Pooling:** mean" in card
    assert table_values(card_sections(card)["stsb-test (Semantic Similarity)"]) == {
        m: f"{v:.4f}" for m, v in RESULTS["stsb-test"].items()}
    assert not [p for p in tiny_model_dir.iterdir() if p.name.startswith(".")]  # no temp file left behind
    # a rerun replaces our own card
    (tiny_model_dir / "results.json").write_text(json.dumps({"stsb-test": {"spearman_cosine": 0.5}}))
    assert "| **spearman_cosine** | **0.5000** |" in write_model_card(tiny_model_dir).read_text()


def test_write_model_card_never_raises(tiny_model_dir, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="nlp_contrastive.hub")
    assert write_model_card(tmp_path / "does-not-exist") is None
    assert "model card not written" in caplog.text

    (tiny_model_dir / "results.json").write_text("{not json")  # a crash mid-write by someone else
    (tiny_model_dir / "training_run.json").write_text(json.dumps(RUN))
    card = write_model_card(tiny_model_dir).read_text()
    assert "ignoring results.json" in caplog.text
    assert "## Evaluation" not in card and "CosineSimilarityLoss" in card

    monkeypatch.setattr(card_module, "build_model_card", lambda *a, **k: 1 / 0)
    assert write_model_card(tiny_model_dir) is None
    assert "ZeroDivisionError" in caplog.text


def test_write_model_card_leaves_a_hand_written_readme_alone(tiny_model_dir, caplog):
    (tiny_model_dir / "README.md").write_text("# My own card\n")
    assert write_model_card(tiny_model_dir) is None
    assert (tiny_model_dir / "README.md").read_text() == "# My own card\n"
    assert "not generated by nlp-contrastive" in caplog.text


# ================================================================================================== push
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Start a FakeHub and point the real huggingface_hub client at it (online, with a token in HF_TOKEN)."""
    import huggingface_hub
    from huggingface_hub import constants

    started: list[FakeHub] = []

    def start(**kwargs) -> FakeHub:
        server = FakeHub(TOKEN, **kwargs).__enter__()
        started.append(server)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)  # read once at import time
        return server

    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported; the client checks the constant per request
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    if hasattr(constants, "AGENT_HARNESSES_PATH"):  # a cache huggingface_hub 2.x writes under HF_HOME
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
    yield start
    for server in started:
        server.__exit__(None, None, None)
    huggingface_hub.close_session()


@pytest.fixture
def model_dir(tiny_model_dir):
    """A trained output folder as the trainer leaves it, with the clutter a push must skip."""
    write_run_files(tiny_model_dir)
    (tiny_model_dir / "checkpoint-5").mkdir()
    (tiny_model_dir / "checkpoint-5" / "optimizer.pt").write_bytes(b"optimizer")
    (tiny_model_dir / "runs" / "Jan01").mkdir(parents=True)
    (tiny_model_dir / "runs" / "Jan01" / "events.out.tfevents.1").write_bytes(b"events")
    (tiny_model_dir / ".README.md.abc.tmp").write_text("half-written")
    return tiny_model_dir


def test_push_uploads_the_model_and_a_generated_card_and_reads_the_folder_only(fake_hub, model_dir):
    server = fake_hub()
    before = snapshot(model_dir)
    url = push_to_hub(model_dir, "alice/tiny")
    assert url == f"{server.url}/alice/tiny"
    uploaded = server.files("alice/tiny")
    assert set(uploaded) == {f for f in before if not f.startswith(("checkpoint-", "runs/", "."))} | {"README.md"}
    assert MODEL_FILES | {"README.md", "training_run.json", "results.json", "results_meta.json"} <= set(uploaded)
    for name, content in uploaded.items():
        if name != "README.md":
            assert content == before[name]
    card = uploaded["README.md"].decode()
    metadata = front_matter(card)
    assert validate_model_index(metadata) == [] and metadata["model-index"][0]["results"]
    assert 'SentenceTransformer("alice/tiny")' in card
    assert server.yaml_validations == [metadata]  # the client had the hub validate the card's metadata
    assert [c for c, _ in server.calls if c != "agent_harnesses"] == ["create", "validate_yaml", "preupload", "commit"]
    assert len(server.commits) == 1
    assert snapshot(model_dir) == before  # untouched: no README written locally either


def test_push_with_a_bare_name_goes_to_the_tokens_namespace(fake_hub, model_dir):
    server = fake_hub()
    assert push_to_hub(model_dir, "tiny") == f"{server.url}/alice/tiny"
    assert 'SentenceTransformer("alice/tiny")' in server.files("alice/tiny")["README.md"].decode()


def test_push_refuses_to_upload_a_file_holding_the_token(fake_hub, model_dir):
    server = fake_hub()
    (model_dir / "training_run.json").write_text(json.dumps({"recipe": {"training": {"hub_token": TOKEN}}}))
    with pytest.raises(HubPushError, match="training_run.json .* contain.* your hub token") as info:
        push_to_hub(model_dir, "alice/tiny")
    assert TOKEN not in str(info.value)
    assert [c for c, _ in server.calls if c != "agent_harnesses"] == []


def test_push_to_a_private_repo_branch_with_logs(fake_hub, model_dir):
    server = fake_hub()
    url = push_to_hub(model_dir, "alice/tiny", private=True, revision="v1", include_logs=True,
                      commit_message="first version")
    assert url == f"{server.url}/alice/tiny/tree/v1"
    assert server.repos["alice/tiny"]["private"] is True
    assert "runs/Jan01/events.out.tfevents.1" in server.files("alice/tiny", "v1")
    assert server.files("alice/tiny", "main") == {}
    assert server.commits[0]["summary"] == "first version"
    # pushing again to the existing repo and branch works (create_repo / create_branch with exist_ok)
    push_to_hub(model_dir, "alice/tiny", revision="v1")
    assert len(server.commits) == 2


def test_push_points_our_card_at_the_repo_and_keeps_a_hand_written_one(fake_hub, model_dir):
    server = fake_hub()
    write_model_card(model_dir)  # written at the end of training, before the repo id was known
    local_card = (model_dir / "README.md").read_text()
    push_to_hub(model_dir, "alice/tiny")
    pushed = server.files("alice/tiny")["README.md"].decode()
    assert MODEL_ID_PLACEHOLDER not in pushed and pushed.count('"alice/tiny"') == 3
    assert pushed.replace("alice/tiny", MODEL_ID_PLACEHOLDER) == local_card.replace(PLACEHOLDER_NOTE, "")
    assert (model_dir / "README.md").read_text() == local_card

    (model_dir / "README.md").write_text("---\nlicense: mit\n---\n# Mine\n")
    push_to_hub(model_dir, "alice/tiny")
    assert server.files("alice/tiny")["README.md"] == b"---\nlicense: mit\n---\n# Mine\n"


@pytest.fixture
def short_client_timeout():
    """huggingface_hub's HTTP client has no timeout by default; configure one the documented way."""
    import huggingface_hub
    from huggingface_hub.utils._http import default_client_factory

    def factory():
        client = default_client_factory()
        client.timeout = 0.5
        return client

    huggingface_hub.set_client_factory(factory)
    yield
    huggingface_hub.set_client_factory(default_client_factory)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case, expected", [
    ("bad_token", ["HTTP 401", "hf auth login", "HF_TOKEN"]),
    ("server_error", ["HTTP 500", "retry later"]),
    ("read_only", ["HTTP 403", "write access"]),
    ("timeout", ["timed out", "retry"]),
    ("refused", ["could not connect", "network"]),
    ("offline", ["HF_HUB_OFFLINE"]),
    ("no_token", ["no Hugging Face token", "hf auth login"]),
])
def test_push_failures_say_what_to_do_and_leave_the_model_untouched(case, expected, fake_hub, model_dir,
                                                                     monkeypatch, capsys, caplog, request):
    from huggingface_hub import constants

    caplog.set_level(logging.DEBUG)
    token = TOKEN
    server = fake_hub(**{"server_error": {"fail": {"create": 500}}, "read_only": {"read_only": True},
                         "timeout": {"delay": {"create": 5.0}}}.get(case, {}))
    if case == "bad_token":
        token = "hf_wrong_token_abcdefghij"
        monkeypatch.setenv("HF_TOKEN", token)
    elif case == "timeout":
        request.getfixturevalue("short_client_timeout")
    elif case == "refused":
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    elif case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    elif case == "no_token":
        monkeypatch.delenv("HF_TOKEN")
    before = snapshot(model_dir)
    start = time.monotonic()
    with pytest.raises(HubPushError) as info:
        push_to_hub(model_dir, "alice/tiny")
    message = str(info.value)
    assert "\n" not in message and all(part in message for part in expected), message
    assert "local model" in message or case == "no_token"
    assert time.monotonic() - start < 4
    assert snapshot(model_dir) == before
    assert server.commits == []
    out = capsys.readouterr()
    assert token not in message + out.out + out.err + caplog.text
    if case == "no_token":
        assert [c for c, _ in server.calls if c != "agent_harnesses"] == []


def test_push_checks_the_folder_before_any_request(fake_hub, model_dir, tmp_path):
    server = fake_hub()
    (model_dir / "model.safetensors").unlink()
    (model_dir / "1_Pooling" / "config.json").unlink()
    with pytest.raises(HubPushError, match=r"missing 1_Pooling/config.json, weights \(model.safetensors"):
        push_to_hub(model_dir, "alice/tiny")
    (model_dir / "modules.json").unlink()
    with pytest.raises(HubPushError, match="missing modules.json"):
        push_to_hub(model_dir, "alice/tiny")
    with pytest.raises(HubPushError, match="not a directory"):
        push_to_hub(tmp_path / "nope", "alice/tiny")
    assert [c for c, _ in server.calls if c != "agent_harnesses"] == []


@pytest.mark.parametrize("repo_id", ["", "alice/", "alice/ti ny", "a/b/c", "alice/x--y", "-x/y", "a" * 97])
def test_push_rejects_bad_repo_ids(repo_id, model_dir):
    with pytest.raises(HubPushError, match="invalid --repo-id"):
        push_to_hub(model_dir, repo_id, dry_run=True)


def push_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nlp-contrastive push")
    cli.add_push_arguments(parser)
    return cli.run_push(parser.parse_args(argv))


def test_dry_run_lists_files_and_prints_the_card_without_network_or_token(model_dir, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = snapshot(model_dir)
    assert push_cli([str(model_dir), "--repo-id", "alice/tiny", "--dry-run"]) == 0  # HF_HUB_OFFLINE=1 here
    out = capsys.readouterr().out
    listing, card = out.split("----- README.md -----\n")
    assert "nothing was uploaded" in listing and "alice/tiny" in listing
    assert re.search(r"README\.md +[\d.]+ kB +\(generated\)", listing)
    assert "model.safetensors" in listing and "checkpoint-5" not in listing and "runs/" not in listing
    assert validate_model_index(front_matter(card)) == [] and 'SentenceTransformer("alice/tiny")' in card
    assert snapshot(model_dir) == before


def test_cli_push_succeeds_and_fails_with_one_line(fake_hub, model_dir, capsys):
    server = fake_hub()
    assert push_cli([str(model_dir), "--repo-id", "alice/tiny", "--private"]) == 0
    assert f"{server.url}/alice/tiny" in capsys.readouterr().out
    server.fail["commit"] = 503
    assert push_cli([str(model_dir), "--repo-id", "alice/tiny"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: push to alice/tiny failed: HTTP 503") and err.count("\n") == 1
    assert "Traceback" not in err


def test_nlp_contrastive_push_entry_point_dispatches_here(model_dir, capsys):
    from nlp_contrastive.cli import main

    assert main(["push", str(model_dir), "--repo-id", "alice/tiny", "--dry-run"]) == 0
    assert "nothing was uploaded" in capsys.readouterr().out
