"""`nlp-contrastive train|eval|mine|beir-split|push`: argument parsing and dispatch; the work lives in the library modules."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from nlp_contrastive.evaluation.base import DEFAULT_BATCH_SIZE
from nlp_contrastive.modeling import DEFAULT_MODEL


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="nlp-contrastive", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train from a YAML recipe (extra --key value pairs override it)", add_help=False)
    add_eval_arguments(sub.add_parser("eval", help="evaluate a model on STS / retrieval / reranking suites"))
    add_push_arguments(sub.add_parser("push", help="push a trained output folder to the Hugging Face hub"))
    add_mine_arguments(sub.add_parser("mine", help="mine hard negatives for (query, positive) data over a corpus"))
    add_beir_split_arguments(sub.add_parser("beir-split", help="carve a dev split from a BEIR folder's train qrels"))
    if argv[:1] == ["train"]:  # train parses its own flags (recipe keys are open-ended)
        from nlp_contrastive.train import main as train_main

        return train_main(argv[1:])
    args = parser.parse_args(argv)
    commands = {"eval": run_eval, "mine": run_mine, "beir-split": run_beir_split, "push": run_push}
    return commands[args.command](args) or 0


# ------------------------------------------------------------------------------------------------ eval
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
    parser.add_argument("--truncate-dim", type=int, nargs="+", metavar="D",
                        help="cut embeddings to their first D dimensions (Matryoshka); several values run every task "
                             "at each D, named TASK@D")


def run_eval(args: argparse.Namespace) -> int:
    from nlp_contrastive.evaluation.suite import format_table
    from nlp_contrastive.files import write_json_atomic

    try:
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        check_writable(args.output, "--output", folder=False)
        check_writable(args.plot, "--plot", folder=True)
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


def check_writable(path: str | None, flag: str, *, folder: bool) -> None:
    """Fail before the (long) evaluation when its output could not be written at the end."""
    if path is None:
        return
    target = Path(path)
    if target.exists() and target.is_dir() != folder:
        raise ValueError(f"cannot write {flag} '{path}': it exists and is a {'file' if folder else 'folder'}: choose "
                         f"{'a folder' if folder else 'a file'} path")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {flag} '{path}': '{parent}' is not a writable folder; choose another path")


def suite_from_args(args: argparse.Namespace):
    """--suite and/or --sts files; the default suite when neither is given; --tasks selects."""
    from nlp_contrastive.evaluation.suite import Suite, TaskSpec, default_suite, load_suite

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
    suite = suite.select(args.tasks) if args.tasks else suite
    dims = getattr(args, "truncate_dim", None)
    if dims:
        bad = [d for d in dims if d < 1]
        if bad:
            raise ValueError(f"--truncate-dim must be positive integers, got {bad}")
        if len(dims) == 1:
            suite = Suite([dataclasses.replace(t, truncate_dim=dims[0]) for t in suite.tasks],
                          batch_size=suite.batch_size, required=suite.required)
        else:
            suite = suite.at_dimensions(dims)
    return suite


def _load_encoder(model: str, device: str | None):
    import torch

    from nlp_contrastive.modeling import Encoder

    encoder = Encoder.from_pretrained(model)
    return encoder.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))


def _plotter(folder: str):
    from nlp_contrastive.evaluation.plots import plot_filename, write_sts_scatter
    from nlp_contrastive.evaluation.sts import STSEvaluator

    def plot(evaluator, predictions, metrics) -> None:
        if isinstance(evaluator, STSEvaluator) and "cosine" in predictions:
            title = f"{evaluator.name}: Spearman (cosine) = {100 * metrics['spearman_cosine']:.2f}"
            write_sts_scatter(Path(folder) / plot_filename(evaluator.name), evaluator.scores, predictions["cosine"],
                              title=title, score_range=evaluator.score_range)
    return plot


# ------------------------------------------------------------------------------------------------ mine
def add_mine_arguments(parser: argparse.ArgumentParser) -> None:
    """`nlp-contrastive mine` flags (argparse). Options named as in sentence-transformers' mine_hard_negatives mean
    what they mean there (see nlp_contrastive.retrieval.mining)."""
    from nlp_contrastive.retrieval.mining import OUTPUT_FORMATS, SAMPLING, SIMILARITIES, MiningOptions
    from nlp_contrastive.retrieval.search import INDEXES, IndexOptions

    parser.description = ("Mine hard negatives. --num-negatives, --range-min, --range-max, --absolute-margin, "
                          "--relative-margin, --max-score, --min-score and --sampling (ST: sampling_strategy) mean "
                          "what sentence-transformers' mine_hard_negatives means by them; a corpus entry equal to "
                          "the query is never its negative. Run under `accelerate launch` with --cache-dir or "
                          "--embeddings to split the corpus encoding over processes.")
    add = parser.add_argument
    add("--model", default=DEFAULT_MODEL, help=f"model folder or hub id (default: {DEFAULT_MODEL})")
    add("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) or a pairs "
                                      "file (query, positive columns; the corpus is its distinct positives)")
    add("--split", default="train", help="qrels split (BEIR) or split label of the pairs file (default: train)")
    add("--output", required=True, help="where to write the mined rows (.jsonl, or .parquet)")
    add("--overwrite", action="store_true", help="replace --output when it exists (default: refuse)")
    add("--output-format", choices=OUTPUT_FORMATS, default="negatives",
        help="negatives: one row per (query, positive) with a negatives list and scores; triplets: one row per "
             "(query, positive, negative)")
    add("--num-negatives", type=int, default=MiningOptions.num_negatives)
    add("--range-min", type=int, default=MiningOptions.range_min,
        help="skip this many of the best candidates that survive the positive / margin / score filters (as ST)")
    add("--range-max", type=int, default=MiningOptions.range_max,
        help="keep survivors ranked below this; the search fetches range_max + most positives + 1 (as ST)")
    add("--absolute-margin", type=float, help="keep a candidate only if score <= positive score - m (as ST)")
    add("--relative-margin", type=float,
        help="keep a candidate only if score <= positive - |positive| x m (as ST; NV-Retriever TopK-PercPos: 0.05)")
    add("--max-score", type=float, help="drop candidates scoring above this (as ST)")
    add("--min-score", type=float, help="drop candidates scoring below this (as ST)")
    add("--sampling", choices=SAMPLING, default="top",
        help="ST's sampling_strategy: top = the best survivors; random = a sample seeded by --seed")
    add("--seed", type=int, default=MiningOptions.seed)
    add("--similarity", choices=SIMILARITIES,
        help="score function (default: the model's similarity_fn_name, else cosine; on normalized embeddings, as ST)")
    add("--query-prompt", default="", help="prefix added to every query before encoding")
    add("--document-prompt", default="", help="prefix added to every document before encoding")
    add("--query-column", default="query", help="pairs file: the query column")
    add("--positive-column", default="positive", help="pairs file: the positive column")
    add("--batch-size", type=int, default=MiningOptions.batch_size)
    add("--corpus-chunk-size", type=int, default=MiningOptions.corpus_chunk_size,
        help="documents per embedding shard (bounds memory; the unit a rerun resumes from and processes split)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cache-dir", help="keep the corpus embeddings under this folder, one subfolder per model + "
                                           "texts + settings (evaluation with the same cache_dir reuses them)")
    where.add_argument("--embeddings", help="keep the corpus embeddings in exactly this folder (resumed by a "
                                            "rerun; refused if written by another model or setting)")
    add("--embedding-dtype", choices=("float32", "float16"), default="float32", help="shard precision on disk")
    add("--index", default="exact", help=f"search: {', '.join(INDEXES)} or a faiss index_factory string; an "
                                         "approximate index prints its recall vs exact on sampled queries")
    add("--nlist", type=int, help="IVF cells (default 4 x sqrt(documents))")
    add("--nprobe", type=int, help="IVF cells searched per query (default nlist / 8, at least 16)")
    add("--ef-search", type=int, help="HNSW efSearch (default max(16 x candidates, 512))")
    add("--recall-sample", type=int, default=IndexOptions.recall_sample,
        help="queries the approximate index's recall is measured on (0: skip)")
    add("--max-seq-length", type=int, help="truncate texts to this many tokens (default: the model's own)")
    add("--device", help="cpu, cuda, ... (default: cuda when available)")


def run_mine(args: argparse.Namespace) -> int:
    from nlp_contrastive.retrieval.mining import (
        MiningOptions,
        load_positives,
        mine_hard_negatives,
        mined_rows,
        saved_similarity,
        write_rows,
    )
    from nlp_contrastive.retrieval.search import IndexOptions

    state = _distributed_state()
    try:
        options = MiningOptions(
            num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
            absolute_margin=args.absolute_margin, relative_margin=args.relative_margin, max_score=args.max_score,
            min_score=args.min_score, sampling=args.sampling, seed=args.seed, query_prompt=args.query_prompt,
            document_prompt=args.document_prompt, batch_size=args.batch_size,
            corpus_chunk_size=args.corpus_chunk_size, similarity=args.similarity or saved_similarity(args.model),
            embedding_dtype=args.embedding_dtype,
            index=IndexOptions(index=args.index, nlist=args.nlist, nprobe=args.nprobe, ef_search=args.ef_search,
                               recall_sample=args.recall_sample))
        if not Path(args.data).exists():
            raise FileNotFoundError(f"--data '{args.data}' does not exist: give a BEIR folder or a pairs file")
        check_writable(args.output, "--output", folder=False)
        if Path(args.output).exists() and not args.overwrite:
            raise ValueError(f"--output '{args.output}' exists: pass --overwrite to replace it, or choose another path")
        data = load_positives(args.data, args.split, query_column=args.query_column,
                              positive_column=args.positive_column)
        encoder = _load_encoder(args.model, args.device)
        if args.max_seq_length:
            encoder.max_seq_length = args.max_seq_length
        mined, stats = mine_hard_negatives(encoder, data, options, cache_dir=args.cache_dir,
                                           embeddings_dir=args.embeddings, show_progress=state == 0)
        rows = mined_rows(mined, args.output_format)
        if not rows:
            raise ValueError("no query kept any negative: loosen the margins / score filters or widen the range")
        if state == 0:
            try:
                write_rows(args.output, rows)
            except OSError as exc:
                raise OSError(f"could not write --output '{args.output}': {exc.strerror or exc}: free space or make "
                              f"'{Path(args.output).parent}' writable, or choose another path") from exc
    except (ValueError, FileNotFoundError, ImportError, OSError) as exc:
        print(f"nlp-contrastive mine: error: {exc}", file=sys.stderr)
        return 2
    if state == 0:
        print(stats.summary(options.num_negatives), file=sys.stderr)
        print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    return 0


def _distributed_state() -> int:
    """This process's rank under `accelerate launch` / torchrun (the gloo process group is set up here), else 0.
    (accelerate's PartialState reports every CPU process as process 0 without GPUs.)"""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist.get_rank()
    return 0


# ------------------------------------------------------------------------------------------------ beir-split
def add_beir_split_arguments(parser: argparse.ArgumentParser) -> None:
    """`nlp-contrastive beir-split --data DIR --output OUT`: the rule is nlp_contrastive.retrieval.beir_split's."""
    parser.description = ("Write OUT: the BEIR folder DIR with a dev split carved from its train qrels (ids = "
                          "sorted query ids, perm = numpy.random.default_rng(seed).permutation(len(ids)), dev = the "
                          "first round(len(ids) x fraction) of ids[perm]); other qrels copied, corpus.jsonl and "
                          "queries.jsonl linked (relative symlinks), split.json records the settings and counts.")
    add = parser.add_argument
    add("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv)")
    add("--output", required=True, help="the folder to write (outside --data)")
    add("--dev-fraction", type=float, default=0.1, help="share of the train queries that become dev (default 0.1)")
    add("--seed", type=int, default=0, help="seed of the permutation (default 0)")
    add("--from-split", default="train", help="the qrels split the dev queries come from (default train)")
    add("--overwrite", action="store_true", help="replace --output when it exists (default: refuse)")


def run_beir_split(args: argparse.Namespace) -> int:
    from nlp_contrastive.retrieval.beir_split import split_beir_folder

    try:
        counts = split_beir_folder(args.data, args.output, dev_fraction=args.dev_fraction, seed=args.seed,
                                   from_split=args.from_split, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"nlp-contrastive beir-split: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {counts.dev_queries} dev queries ({counts.dev_rows} qrels rows), "
          f"{counts.train_queries} {args.from_split} queries ({counts.train_rows} rows)", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ push
def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """`nlp-contrastive push OUTPUT_DIR --repo-id user/name ...` (no --token flag: it would land in shell history)."""
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="output folder of a training run")
    parser.add_argument("--repo-id", required=True, help="hub repo to push to, e.g. your-name/my-model")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing); default main")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument("--include-logs", action="store_true", help="also upload tensorboard logs (runs/)")
    parser.add_argument("--dry-run", action="store_true", help="print the file list and model card, upload nothing")


def run_push(args: argparse.Namespace) -> int:
    """A one-line error (no traceback) when the push cannot happen: exit code 2 for bad input (as train and eval),
    1 when the hub failed (the same command may work later)."""
    from nlp_contrastive.hub import HubInputError, HubPushError, push_to_hub

    try:
        result = push_to_hub(args.output_dir, args.repo_id, private=args.private, revision=args.revision,
                             commit_message=args.commit_message, dry_run=args.dry_run,
                             include_logs=args.include_logs)
    except HubPushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, HubInputError) else 1
    print(result if args.dry_run else f"Pushed {args.output_dir} to {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
