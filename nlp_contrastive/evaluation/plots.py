"""Cosine-vs-gold scatter plots for STS tasks (the CLI's --plot), drawn with the Agg canvas.

Uses `matplotlib.figure.Figure` + `FigureCanvasAgg` directly instead of pyplot, so plotting never changes
the global backend of a notebook or training process that imports us.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nlp_contrastive.files import write_atomic


def plot_filename(task: str) -> str:
    return re.sub(r"[^\w.-]+", "_", task).strip("_") + ".png"


def write_sts_scatter(path: str | Path, gold: Sequence[float], cosine: Sequence[float], *, title: str,
                      score_range: Sequence[float] | None = None) -> Path:
    """Write a PNG scatter (x: gold score, y: cosine similarity) atomically; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.scatter(gold, cosine, s=6, alpha=0.35, linewidths=0)
    if score_range is not None:
        axes.set_xlim(score_range[0] - 0.1, score_range[1] + 0.1)
    axes.set_xlabel("gold score")
    axes.set_ylabel("cosine similarity")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png"))
