"""Per-source losses: a train_data entry's own `loss` trains the batches of that source (multi_dataset_sampling),
through the trainer, with GradCache, learnable loss parameters, and 2 processes; bad settings fail in one line."""

import functools
import json
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import TrainerCallback

from nlp_contrastive.config import load_recipe
from nlp_contrastive.data import train_data
from nlp_contrastive.data.batch import BatchCollator
from nlp_contrastive.losses.build import SourceLosses, build_recipe_loss
from nlp_contrastive.losses.info_nce import InfoNCELoss
from nlp_contrastive.losses.log_loss import LogLoss
from nlp_contrastive.losses.pairwise import CosineSimilarityLoss
from nlp_contrastive.train import main, train
from tests.conftest import REPO_ROOT, TWO_PROCESSES
from tests.test_trainer import KillAt, tiny_overrides

INFONCE = str(REPO_ROOT / "recipes" / "paraphrase-infonce.yaml")  # info_nce (temperature 0.05, not symmetric)
SCORED = ("{dataset: stsb, split: train, max_rows: 24, columns: {anchor: sentence1, positive: sentence2, score: score}, "
          "score_range: [0, 5], prompts: {anchor: 'alpha '}, loss: cosine_similarity}")
PAIRS = ("{dataset: msrp, split: train, filter: 'label == 1', max_rows: 16, columns: {anchor: sentence1, "
         "positive: sentence2}, prompts: {anchor: 'beta '}}")
LABELLED = ("{dataset: msrp, split: test, max_rows: 16, columns: {anchor: sentence1, positive: sentence2, "
            "label: label}, prompts: {anchor: 'gamma '}, loss: log_loss, "
            "loss_kwargs: {temperature: 0.05, bias: -15.0, learnable: true}}")
TWO_LOSSES = f"[{SCORED}, {PAIRS}]"
THREE_LOSSES = f"[{SCORED}, {PAIRS}, {LABELLED}]"


def per_source_overrides(model_dir, out, train_data_value=TWO_LOSSES, *extra):
    return tiny_overrides(str(model_dir), out, "--train_data", train_data_value, "--max_train_rows", "null",
                          "--multi_dataset_sampling", "round_robin", "--batch_sampler", "no_duplicates",
                          "--per_device_train_batch_size", "8", *extra)


def cosine_by_hand(anchor, positive, score, **_):
    return ((F.cosine_similarity(anchor, positive) - score) ** 2).mean()


def info_nce_by_hand(anchor, positive, **_):
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T / 0.05
    return F.cross_entropy(logits, torch.arange(len(anchor)))


HAND = {CosineSimilarityLoss: cosine_by_hand, InfoNCELoss: info_nce_by_hand}


def spy_on_losses(monkeypatch) -> list[dict]:
    """Each training step: the source prompt of its anchors, the loss classes called (with their value and the
    value computed by hand from the same embeddings), and the loss compute_loss returned."""
    from nlp_contrastive.data.batch import Batch
    from nlp_contrastive.trainer import ContrastiveTrainer

    steps: list[dict] = []
    for cls in (CosineSimilarityLoss, InfoNCELoss, LogLoss):
        original = cls.forward

        @functools.wraps(original)  # keeps the signature Batch.loss_kwargs reads
        def forward(self, *args, _original=original, _cls=cls, **kwargs):
            value = _original(self, *args, **kwargs)
            hand = HAND.get(_cls)
            expected = hand(*args, **kwargs).item() if hand else None
            steps[-1]["calls"].append((_cls.__name__, value.item(), expected, sorted(kwargs)))
            return value

        monkeypatch.setattr(cls, "forward", forward)
    original_compute = ContrastiveTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        ids = Batch.from_inputs(inputs).features["anchor"]["input_ids"]
        words = self.accelerator.unwrap_model(model).tokenizer.batch_decode(ids, skip_special_tokens=True)
        steps.append({"prompts": sorted({w.split()[0] for w in words}), "calls": []})
        loss = original_compute(self, model, inputs, *args, **kwargs)
        steps[-1]["returned"] = float(loss.detach())
        return loss

    monkeypatch.setattr(ContrastiveTrainer, "compute_loss", compute_loss)
    return steps


EXPECTED_LOSS = {"alpha": "CosineSimilarityLoss", "beta": "InfoNCELoss", "gamma": "LogLoss"}


def check_each_batch_used_its_sources_loss(steps, count):
    assert len(steps) == count
    for step in steps:
        assert len(step["prompts"]) == 1, step  # one source per batch
        (name, value, expected, roles), = step["calls"]  # exactly one loss call per step
        assert name == EXPECTED_LOSS[step["prompts"][0]]
        assert value == pytest.approx(step["returned"], rel=1e-6)
        if expected is not None:  # the hand formula on the embeddings the loss got
            assert value == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert ("score" in roles) == (name == "CosineSimilarityLoss")  # a batch has its own source's roles only


@pytest.mark.parametrize("cached", ["false", "true"])
def test_each_batch_goes_through_its_sources_loss(tiny_model_dir, tmp_path, data_dir, monkeypatch, capsys, cached):
    steps = spy_on_losses(monkeypatch)
    out = tmp_path / "o"
    assert main([INFONCE, *per_source_overrides(tiny_model_dir, out, TWO_LOSSES, "--num_train_epochs", "2",
                                                "--cached", cached, "--cache_mini_batch_size", "3")]) == 0
    check_each_batch_used_its_sources_loss(steps, 10)  # 2 epochs x (24/8 + 16/8), round robin
    assert [s["prompts"][0] for s in steps[:4]] == ["alpha", "beta", "alpha", "beta"]
    printed = capsys.readouterr().out
    assert "loss_per_source:" in printed and "train_data[0]: cosine_similarity" in printed
    assert "train_data[1]: info_nce (temperature=0.05, symmetric=False)" in printed
    record = json.loads((out / "training_run.json").read_text())
    assert [d["loss"] for d in record["datasets"]] == ["cosine_similarity",
                                                       "info_nce (temperature=0.05, symmetric=False)"]
    assert record["loss"]["name"] == "CosineSimilarityLoss + InfoNCELoss" and record["loss"]["cached"] == (cached == "true")
    card = (out / "README.md").read_text()
    assert "- Loss for its batches: `cosine_similarity`" in card and "loss:InfoNCELoss" in card


def test_cached_per_source_losses_give_the_uncached_losses(tiny_model_dir, tmp_path, data_dir):
    """GradCache picks the same loss per batch and gives the same values and (so) the same next steps."""
    def losses(cached):
        out = tmp_path / f"cached-{cached}"
        assert main([INFONCE, *per_source_overrides(tiny_model_dir, out, TWO_LOSSES, "--max_steps", "5",
                                                    "--learning_rate", "1e-3", "--cached", cached,
                                                    "--cache_mini_batch_size", "3")]) == 0
        history = json.loads((out / "training_run.json").read_text())["log_history"]
        return [entry["loss"] for entry in history if "loss" in entry]

    plain, cached = losses("false"), losses("true")
    assert len(plain) == 5 and plain == pytest.approx(cached, rel=1e-4)


class LossParameterGroup(TrainerCallback):
    """The optimizer's last group (the loss's own parameters) at the first step and at the end."""

    def __init__(self):
        self.start = self.end = self.group = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.start is None:
            self.group = optimizer.param_groups[-1]
            self.start = [p.detach().clone() for p in self.group["params"]]

    def on_train_end(self, args, state, control, **kwargs):
        self.end = [p.detach().clone() for p in self.group["params"]]


def test_learnable_parameters_of_a_source_loss_train_and_resume(tiny_model_dir, tmp_path, data_dir, monkeypatch):
    steps = spy_on_losses(monkeypatch)
    grab = LossParameterGroup()
    common = ("--max_steps", "6", "--learning_rate", "0.05", "--save_strategy", "steps", "--save_steps", "3")
    train(INFONCE, per_source_overrides(tiny_model_dir, tmp_path / "straight", THREE_LOSSES, *common),
          callbacks=[grab])
    check_each_batch_used_its_sources_loss(steps, 6)
    assert grab.group["weight_decay"] == 0.0 and len(grab.start) == 2  # LogLoss's log_scale and bias
    assert all(a.item() != pytest.approx(b.item()) for a, b in zip(grab.start, grab.end, strict=True))
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(INFONCE, per_source_overrides(tiny_model_dir, out, THREE_LOSSES, *common), callbacks=[KillAt(3)])
    saved = load_file(out / "checkpoint-3" / "loss_parameters.safetensors")
    assert sorted(saved) == ["losses.2.bias", "losses.2.log_scale"]
    resumed = LossParameterGroup()
    train(INFONCE, per_source_overrides(tiny_model_dir, out, THREE_LOSSES, *common, "--resume_from_checkpoint",
                                        "true"), callbacks=[resumed])
    assert [v.item() for v in resumed.start] == [saved["losses.2.log_scale"].item(), saved["losses.2.bias"].item()]


def test_sources_with_the_same_settings_share_one_loss(tmp_path):
    recipe = load_recipe(INFONCE, ["--train_data", f"[{SCORED}, {PAIRS}, {PAIRS}]", "--multi_dataset_sampling",
                                   "proportional", "--output_dir", str(tmp_path / "o")])
    loss = build_recipe_loss(recipe)
    assert isinstance(loss, SourceLosses) and loss.of_source == [0, 1, 1]
    assert isinstance(loss.for_source(0), CosineSimilarityLoss) and isinstance(loss.for_source(2), InfoNCELoss)
    with pytest.raises(ValueError, match="a batch mixes sources"):
        loss.for_batch(torch.tensor([0, 1]))
    plain = load_recipe(INFONCE, ["--output_dir", str(tmp_path / "o")])
    assert isinstance(build_recipe_loss(plain), InfoNCELoss)  # no source loss: the one loss as before


def test_sources_with_different_roles_collate_their_own(tiny_encoder, data_dir):
    """A scored source next to one with hard-negative lists: each batch carries only its source's roles."""
    from nlp_contrastive.data.loading import tokenize_roles

    scored = train_data.build_train_sources([{"dataset": "stsb", "max_rows": 4, "score_range": [0, 5], "columns": {
        "anchor": "sentence1", "positive": "sentence2", "score": "score"}}])[0]
    import datasets

    listed = datasets.Dataset.from_dict({"anchor": ["q1", "q2"], "positive": ["d1", "d2"],
                                         "negatives": [["n1", "n2"], ["n3"]]})
    ds = train_data.concatenate([scored, listed], keep_sources=True)
    assert ds["score"][4:] == [None, None] and ds["negatives"][:4] == [[]] * 4
    ds = tokenize_roles(ds, tiny_encoder.tokenizer, 32)
    collate = BatchCollator(0)
    first, second = collate([ds[i] for i in range(4)]), collate([ds[4], ds[5]])
    assert "score" in first and "negatives" not in first["features"] and first["source"].tolist() == [0] * 4
    assert "score" not in second and second["negatives_index"].tolist() == [[0, 1], [2, -1]]
    assert train_data.hard_negatives_per_row(ds) == 2
    with pytest.raises(ValueError, match="give every source the same roles"):
        train_data.concatenate([scored, listed])


SCRIPT = """
import json, os, sys
import pytest
from tests.test_per_source_loss import spy_on_losses
from nlp_contrastive.train import train
from transformers import TrainerCallback

class LastGroup(TrainerCallback):
    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        self.values = [p.item() for p in optimizer.param_groups[-1]["params"]]

mp = pytest.MonkeyPatch()
steps = spy_on_losses(mp)
last = LastGroup()
train(sys.argv[1], sys.argv[3:], callbacks=[last])
with open(sys.argv[2] + f".{os.environ['RANK']}", "w") as f:  # the process group is gone after train()
    json.dump({"steps": steps, "loss_parameters": last.values}, f)
"""


@pytest.mark.slow
def test_two_processes_use_the_same_sources_loss_each_step(tiny_model_dir, tmp_path, data_dir):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    record = tmp_path / "seen"
    cmd = [*TWO_PROCESSES, str(script), INFONCE,
           str(record), *per_source_overrides(tiny_model_dir, tmp_path / "o", THREE_LOSSES, "--num_train_epochs", "2",
                                              "--per_device_train_batch_size", "4", "--learning_rate", "0.05",
                                              "--multi_dataset_sampling", "proportional")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"seen.{r}").read_text()) for r in (0, 1))
    for steps in (rank0["steps"], rank1["steps"]):
        check_each_batch_used_its_sources_loss(steps, 14)  # 2 epochs x (24/8 + 16/8 + 16/8) global batches
    assert [s["prompts"] for s in rank0["steps"]] == [s["prompts"] for s in rank1["steps"]]
    assert {s["prompts"][0] for s in rank0["steps"]} == {"alpha", "beta", "gamma"}
    assert rank0["loss_parameters"] == rank1["loss_parameters"]  # LogLoss's gradients averaged over ranks
    assert rank0["loss_parameters"][1] != pytest.approx(-15.0)


@pytest.mark.parametrize("train_data_value,extra,message", [
    (TWO_LOSSES, ["--multi_dataset_sampling", "null"],
     "train_data[0] sets its own loss, which needs every batch from one source: set multi_dataset_sampling"),
    (f"[{PAIRS}, {PAIRS.replace('}}', '}, loss: cosine_similarity}')}]", [],
     "loss 'cosine_similarity' needs a 'score' column but train_data[1] maps only ['anchor', 'positive']"),
    (f"[{SCORED}, {PAIRS.replace('}}', '}, loss: cosine_simlarity}')}]", [],
     "train_data[1]: unknown loss 'cosine_simlarity': choose one of"),
    (f"[{SCORED}, {PAIRS.replace('}}', '}, loss_kwargs: {temprature: 0.1}}')}]", [],
     "train_data[1]: loss_kwargs for 'info_nce': unknown key(s) ['temprature']"),
    (f"[{SCORED}, {PAIRS.replace('}}', '}, loss: 7}')}]", [], "train_data[1]: loss must be a loss name"),
    (f"[{SCORED}, {PAIRS}]".replace("score: score}", "score: score, negative: sentence2}"), [],
     "train_data[1] lacks text role(s) ['negative'] that another source maps"),
    (f"[{SCORED.replace(', loss: cosine_similarity', '')}, {PAIRS}]", ["--multi_dataset_sampling", "null"],
     "train_data[1] maps roles ['anchor', 'positive'] but train_data[0] maps ['anchor', 'positive', 'score']"),
])
def test_bad_per_source_settings_fail_in_one_line(tiny_model_dir, tmp_path, capsys, train_data_value, extra, message):
    code = main([INFONCE, *per_source_overrides(tiny_model_dir, tmp_path / "o", train_data_value, *extra)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "o").exists()
