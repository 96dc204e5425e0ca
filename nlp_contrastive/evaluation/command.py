"""`nlp-contrastive eval`: load a model, run a suite (and/or local STS files), print a table, write JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE
from nlp_contrastive.evaluation.plots import plot_filename, write_sts_scatter
from nlp_contrastive.evaluation.sts import STSEvaluator
from nlp_contrastive.evaluation.suite import Suite, TaskSpec, default_suite, format_table, load_suite
from nlp_contrastive.files import write_json_atomic
from nlp_contrastive.modeling import DEFAULT_MODEL


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model folder or hub id (default: {DEFAULT_MODEL}, the bundled copy offline)")
    parser.add_argument("--suite", help="suite YAML (default: eval/sts.yaml; STS-B + SICK-R test when absent)")
    parser.add_argument("--sts", nargs="+", action="extend", default=[], metavar="FILE",
                        help="local STS files with sentence1, sentence2, score columns; task name = file stem")
    parser.add_argument("--tasks", nargs="+", metavar="NAME",
                        help="run only these tasks; their data must be available (no silent skip)")
    parser.add_argument("--output", metavar="FILE.json", help="write {task: {metric: value}} here")
    parser.add_argument("--plot", metavar="DIR", help="write a cosine-vs-gold scatter PNG per STS task into DIR")
    parser.add_argument("--batch-size", type=int,
                        help=f"encoding batch size (default: the suite's batch_size, else {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def run_eval(args: argparse.Namespace) -> int:
    try:
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        suite = suite_from_args(args)
        evaluators = suite.evaluators()  # load and check all data before spending time on the model
        encoder = _load_encoder(args.model, args.device)
        print(f"evaluating {args.model} on {len(evaluators)} task(s): {', '.join(e.name for e in evaluators)}",
              file=sys.stderr)
        results = suite(encoder, on_predictions=_plotter(args.plot) if args.plot else None)
        if args.output:
            write_json_atomic(args.output, results)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"nlp-contrastive eval: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def suite_from_args(args: argparse.Namespace) -> Suite:
    """--suite and/or --sts files; the default suite when neither is given; --tasks selects."""
    base = None
    if args.suite:
        base = load_suite(args.suite, batch_size=args.batch_size)
    elif not args.sts:
        base = default_suite(batch_size=args.batch_size)
    tasks: list[TaskSpec] = list(base.tasks) if base else []
    for file in args.sts:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"--sts file '{file}' does not exist: give a JSONL/CSV/TSV/parquet file with "
                                    "sentence1, sentence2 and score columns")
        tasks.append(TaskSpec(name=path.stem, type="sts", dataset=str(path), split="test"))
    suite = Suite(tasks, batch_size=args.batch_size or (base.batch_size if base else DEFAULT_BATCH_SIZE))
    return suite.select(args.tasks) if args.tasks else suite


def _load_encoder(model: str, device: str | None):
    import torch

    from nlp_contrastive.modeling import Encoder

    encoder = Encoder.from_pretrained(model)
    return encoder.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))


def _plotter(folder: str):
    def plot(evaluator, predictions, metrics) -> None:
        if isinstance(evaluator, STSEvaluator) and "cosine" in predictions:
            title = f"{evaluator.name}: Spearman (cosine) = {100 * metrics['spearman_cosine']:.2f}"
            write_sts_scatter(Path(folder) / plot_filename(evaluator.name), evaluator.scores, predictions["cosine"],
                              title=title, score_range=evaluator.score_range)
    return plot
