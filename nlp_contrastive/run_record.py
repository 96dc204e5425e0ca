"""What a training run leaves next to the model: the run record (training_run.json), results, curves.

`RunRecord` is written once at the end of training and read back by the model card (`nlp_contrastive.card`):
one dataclass for writer and reader, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlp_contrastive.files import write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

RUN_FILE = "training_run.json"
RESULTS_FILE = "results.json"
RESULTS_META_FILE = "results_meta.json"
CURVES_FILE = "training_curves.png"


@dataclass
class SourceRecord:
    """One `train_data` source as trained on."""

    name: str | None = None
    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    filter: str | None = None
    rows: int | None = None
    loss: str | None = None  # with per-source losses: this source's, e.g. "info_nce (temperature=0.05)"


@dataclass
class LossRecord:
    name: str | None = None  # the loss module's class name
    config: dict[str, Any] = field(default_factory=dict)
    citation: str | None = None
    cached: bool = False


@dataclass
class RunRecord:
    base_model: str | None = None
    datasets: list[SourceRecord] = field(default_factory=list)
    train_rows: int | None = None
    loss: LossRecord = field(default_factory=LossRecord)
    recipe: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)  # config.Recipe.precision: bf16 on/off and why
    train_runtime_seconds: float | None = None
    train_samples_per_second: float | None = None
    final_train_loss: float | None = None
    library_versions: dict[str, str] = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> RunRecord:
        """Tolerant of records from older versions: unknown keys are ignored, missing ones take defaults."""
        raw = dict(raw or {})
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known and v is not None}
        values["datasets"] = [_subrecord(SourceRecord, d) for d in values.get("datasets") or []
                              if isinstance(d, Mapping)]
        values["loss"] = _subrecord(LossRecord, values.get("loss") if isinstance(values.get("loss"), Mapping) else {})
        for name in ("recipe", "hardware", "precision", "library_versions"):
            if not isinstance(values.get(name, {}), Mapping):
                values.pop(name)
        return cls(**values)

    def write(self, output_dir: str | os.PathLike) -> Path:
        return write_json_atomic(Path(output_dir) / RUN_FILE, self.to_dict())

    @classmethod
    def read(cls, output_dir: str | os.PathLike) -> RunRecord:
        """The folder's record; an empty one when the folder has none (e.g. a model not trained here)."""
        return cls.from_dict(read_json(Path(output_dir) / RUN_FILE))


def build_run_record(recipe, loss, source_rows: list[int], train_rows: int, train_output,
                     log_history: list[dict], started: float) -> RunRecord:
    """The record of a finished run (`recipe` is a `config.Recipe`, `loss` the module trained with)."""
    import time

    import datasets

    from nlp_contrastive.config import describe_loss, recipe_as_dict
    from nlp_contrastive.modeling import library_versions

    per_source = recipe.has_source_losses()
    sources = [SourceRecord(name=str(spec.get("dataset")), split=spec.get("split", "train"),
                            columns=dict(spec.get("columns", {})), filter=spec.get("filter"), rows=rows,
                            loss=describe_loss(*recipe.source_loss(i)) if per_source else None)
               for i, (spec, rows) in enumerate(zip(recipe.data.train_data, source_rows, strict=True))]
    metrics = getattr(train_output, "metrics", {}) or {}
    return RunRecord(
        base_model=recipe.model.model_name_or_path, datasets=sources, train_rows=train_rows,
        loss=loss_record(loss, cached=recipe.loss.cached),
        recipe=recipe_as_dict(recipe),
        hardware=hardware_summary(str(recipe.training.device), recipe.training.world_size),
        precision=recipe.precision.to_dict() if recipe.precision else {},
        train_runtime_seconds=metrics.get("train_runtime", time.time() - started),
        train_samples_per_second=metrics.get("train_samples_per_second"),
        final_train_loss=metrics.get("train_loss"),
        library_versions=library_versions() | {"datasets": datasets.__version__},
        log_history=log_history,
    )


def loss_record(loss, *, cached: bool) -> LossRecord:
    """The loss trained with; per-source losses (`SourceLosses`) as their class names joined by " + " (each
    source's own settings are on its SourceRecord) and their citations one after the other."""
    from nlp_contrastive.losses.build import SourceLosses, base_loss

    if isinstance(loss, SourceLosses):
        inners = [base_loss(m) for m in loss.losses]
        names = list(dict.fromkeys(type(m).__name__ for m in inners))
        citations = list(dict.fromkeys(c.strip() for m in inners if (c := getattr(m, "citation", None))))
        return LossRecord(name=" + ".join(names), citation="\n\n".join(citations) or None, cached=cached)
    inner = base_loss(loss)
    config = getattr(inner, "get_config_dict", None)
    return LossRecord(name=type(inner).__name__, config=config() if callable(config) else {},
                      citation=getattr(inner, "citation", None), cached=cached)


def _subrecord(cls, raw: Mapping) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in known and v is not None})


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it does not exist."""
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def hardware_summary(device: str, num_processes: int) -> dict[str, Any]:
    import torch

    return {"device": device, "num_processes": num_processes, "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_results(output_dir: str | os.PathLike, results: dict, results_meta: dict) -> None:
    write_json_atomic(Path(output_dir) / RESULTS_FILE, results)
    write_json_atomic(Path(output_dir) / RESULTS_META_FILE, results_meta)


def plot_training_curves(log_history: list[dict], path: Path) -> Path | None:
    """Loss per step and the eval score per evaluation, in one PNG; never fails the run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
        scores = [(e["step"], e["eval_score"]) for e in log_history if "eval_score" in e]
        fig, ax = plt.subplots(figsize=(7, 4))
        if losses:
            ax.plot(*zip(*losses, strict=True), label="train loss", color="tab:blue")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if scores:
            ax2 = ax.twinx()
            ax2.plot(*zip(*scores, strict=True), "o-", label="eval score", color="tab:orange")
            ax2.set_ylabel("eval score (primary metric)")
        ax.set_title("training curves")
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)
        return path
    except Exception as exc:
        logger.warning("could not plot training curves: %s", exc)
        return None
