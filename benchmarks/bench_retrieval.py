"""SciFact retrieval fine-tuning, the same work through sentence-transformers and through nlp-contrastive, one run.

    python benchmarks/bench_retrieval.py [--corpus-sample N] [--skip-training] [--epochs 2] ...

0. The data and budget of `make scifact`: the same dev split (`nlp-contrastive beir-split`, 10% of the train
   claims, seed 0) is carved first and both pipelines train on its train part for the recipe's epochs (2); the
   dev claims are not used here (neither side selects a checkpoint: the last epoch is evaluated, whereas
   `make scifact` keeps the best dev epoch). `--dev-fraction 0` trains on every train claim.

1. Mining, same model, corpus, options (num_negatives, range_max, relative_margin, sampling, batch, max length):
   sentence-transformers' `mine_hard_negatives` (faiss when installed, as ours) vs `nlp-contrastive mine`.
   Each runs in its own process and reports its own peak RSS (VmHWM; benchlib.run_measured), with seconds.
2. Training on each side's mined file, same epochs, batch, lr, warmup, weight decay, max length, seed, fp32,
   no-duplicates batches: SentenceTransformerTrainer + MultipleNegativesRankingLoss(scale=20) vs
   `nlp-contrastive train recipes/scifact-hardneg.yaml` (InfoNCE, temperature 0.05 = scale 20). Throughput is
   texts/s = (query + positive + hard negatives) of every row x epochs / wall seconds of the training process:
   sentence-transformers drops queries without a surviving negative, ours keeps them (cheaper rows), so rows/s
   alone would flatter us; both are printed.
3. SciFact test nDCG@10 of base / ST / ours, all by the same evaluator (equal to MTEB's numbers).
`--corpus-sample N` mines over N documents (all train positives kept) for a quick mining-only comparison;
evaluation always uses the full corpus. The machine may be shared: compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("NLPC_DATA_DIR", ROOT.parent / "shared" / "data"))
RECIPE = yaml.safe_load((ROOT / "recipes" / "scifact-hardneg.yaml").read_text())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    add("--data", default=str(DATA_DIR / "scifact"))
    add("--num-negatives", type=int, default=1)
    add("--range-max", type=int, default=30)
    add("--relative-margin", type=float, default=0.05)
    add("--sampling", choices=("top", "random"), default="top")
    add("--batch-size", type=int, default=64, help="encoding batch size (both sides)")
    add("--max-seq-length", type=int, default=256)
    add("--epochs", type=float, default=RECIPE["training"]["num_train_epochs"], help="default: the recipe's")
    add("--dev-fraction", type=float, default=0.1,
        help="carve this share of the train claims as dev (not trained on by either side), as make scifact does")
    add("--train-batch-size", type=int, default=32)
    add("--learning-rate", type=float, default=3e-5)
    add("--corpus-sample", type=int, default=0, help="mine over this many documents (0 = all)")
    add("--skip-training", action="store_true", help="mining comparison only")
    add("--work-dir", default=None, help="where mined files and models go (default: a temp dir)")
    add("--child", choices=("mine-st", "train-st"), help=argparse.SUPPRESS)
    add("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def model_path(args) -> str:
    from nlp_contrastive.modeling import resolve_model_path

    return resolve_model_path(args.model or "sentence-transformers/all-MiniLM-L6-v2")


# ------------------------------------------------------------------------------------------ children
def child_mine_st(args) -> None:
    """sentence-transformers' mine_hard_negatives with the shared options; n-tuple rows as JSON Lines."""
    import datasets
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from nlp_contrastive.retrieval.mining import load_positives

    data = load_positives(args.data, "train")
    model = SentenceTransformer(model_path(args), device="cpu")
    model.max_seq_length = args.max_seq_length
    corpus = dict(zip(data.corpus.ids(0, len(data.corpus)), data.corpus.texts(0, len(data.corpus)), strict=True))
    pairs = [(data.queries[q], corpus[d]) for q, docs in data.positives.items() for d in docs]
    ds = datasets.Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    mined = mine_hard_negatives(ds, model, corpus=list(corpus.values()), range_max=args.range_max,
                                relative_margin=args.relative_margin, num_negatives=args.num_negatives,
                                sampling_strategy=args.sampling, batch_size=args.batch_size,
                                output_format="n-tuple", use_faiss=importlib.util.find_spec("faiss") is not None)
    mined.to_json(args.out, lines=True)


def child_train_st(args) -> None:
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers

    model = SentenceTransformer(model_path(args), device="cpu")
    model.max_seq_length = args.max_seq_length
    ds = datasets.load_dataset("json", data_files=args.data, split="train")
    training = SentenceTransformerTrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=args.train_batch_size,
        learning_rate=args.learning_rate, warmup_steps=0.1, weight_decay=0.01, seed=42, bf16=False, fp16=False,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none", logging_steps=5,
        use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=training, train_dataset=ds,
                                         loss=losses.MultipleNegativesRankingLoss(model, scale=20.0))
    trainer.train()
    model.save(args.out)


# ------------------------------------------------------------------------------------------ parent
def run_child(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of one child process, its own (benchlib.run_measured)."""
    from benchlib import run_measured  # benchmarks/benchlib.py, beside this script

    return run_measured(command, env={**os.environ, "PYTHONPATH": str(ROOT)})


def train_split_folder(args, work: Path) -> str:
    """`make scifact`'s split (beir-split, same fraction and seed) when --dev-fraction, else --data as given."""
    if not args.dev_fraction:
        return args.data
    folder = work / "split"
    subprocess.run([sys.executable, "-m", "nlp_contrastive.cli", "beir-split", "--data", args.data, "--output",
                    str(folder), "--dev-fraction", str(args.dev_fraction), "--overwrite"], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return str(folder)


def sampled_folder(args, work: Path) -> str:
    """A BEIR folder with `corpus_sample` documents: every train positive plus a seeded random rest."""
    if not args.corpus_sample:
        return args.data
    src = Path(args.data)
    folder = work / "scifact-sample"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    positives = {line.split("\t")[1] for line in (src / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    keep = [r for r in rows if str(r["_id"]) in positives]
    rest = [r for r in rows if str(r["_id"]) not in positives]
    keep += random.Random(0).sample(rest, max(0, min(len(rest), args.corpus_sample - len(keep))))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    (folder / "queries.jsonl").write_bytes((src / "queries.jsonl").read_bytes())
    (folder / "qrels" / "train.tsv").write_bytes((src / "qrels" / "train.tsv").read_bytes())
    return str(folder)


def our_recipe(args, mined: Path, output: Path, work: Path) -> Path:
    """recipes/scifact-hardneg.yaml on this run's mined file and settings (final eval done by this script)."""
    recipe = json.loads(json.dumps(RECIPE))
    recipe.pop("vars")  # every path is given below
    recipe["training"].pop("metric_for_best_model")  # no checkpoint selection on either side
    source = recipe["data"]["train_data"][0]
    source.update(dataset=str(mined), split="train")
    source.pop("mine")  # mined above by this script, timed apart from training
    recipe["model"].update(model_name_or_path=model_path(args), max_seq_length=args.max_seq_length)
    recipe["eval"].update(eval_tasks=[], final_eval_tasks=[])
    recipe["training"].update(output_dir=str(output), num_train_epochs=args.epochs, bf16=False,
                              per_device_train_batch_size=args.train_batch_size, learning_rate=args.learning_rate,
                              eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    path = work / "scifact-hardneg.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def scifact_test_ndcg(model: str) -> float:
    from nlp_contrastive.evaluation import build_evaluator
    from nlp_contrastive.modeling import Encoder

    evaluator = build_evaluator({"name": "SciFact", "type": "retrieval", "layout": "beir",
                                 "dataset": str(DATA_DIR / "scifact"), "split": "test"})
    return evaluator(Encoder.from_pretrained(model))["ndcg_at_10"]


def count_rows(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def count_texts(path: Path) -> int:
    """Texts embedded per epoch: query + positive + hard negatives of each row (ST n-tuple or our negatives)."""
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            total += 2 + (len(row["negatives"]) if "negatives" in row else
                          sum(1 for key in row if key.startswith("negative")))
    return total


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child == "mine-st":
        child_mine_st(args)
        return 0
    if args.child == "train-st":
        child_train_st(args)
        return 0
    import torch

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-retrieval-"))
    work.mkdir(parents=True, exist_ok=True)
    args.data = train_split_folder(args, work)
    folder = sampled_folder(args, work)
    shared = ["--model", model_path(args), "--batch-size", str(args.batch_size)]
    st_mined, our_mined = work / "st-mined.jsonl", work / "our-mined.jsonl"
    me = [sys.executable, str(Path(__file__).resolve())]
    options = ["--num-negatives", str(args.num_negatives), "--range-max", str(args.range_max),
               "--relative-margin", str(args.relative_margin), "--sampling", args.sampling]
    st_cmd = [*me, "--child", "mine-st", "--data", folder, "--out", str(st_mined),
              "--max-seq-length", str(args.max_seq_length), *shared, *options]
    ours_cmd = [sys.executable, "-m", "nlp_contrastive.cli", "mine", "--data", folder, "--split", "train",
                "--output", str(our_mined), "--max-seq-length", str(args.max_seq_length), *shared, *options]
    print(f"mining over {folder} (options: {' '.join(options)}, batch {args.batch_size})", flush=True)
    st_mine = run_child(st_cmd)
    our_mine = run_child(ours_cmd)
    from benchlib import cpu_class  # benchmarks/benchlib.py, beside this script

    results = {"cpu_class": cpu_class(), "threads": torch.get_num_threads(),
               "mining_seconds": {"st": st_mine[0], "ours": our_mine[0]},
               "mining_peak_rss_mib": {"st": st_mine[1], "ours": our_mine[1]},
               "mining_cpu_seconds": {"st": st_mine[2], "ours": our_mine[2]},
               "load_average_at_end": os.getloadavg(),
               "mined_rows": {"st": count_rows(st_mined), "ours": count_rows(our_mined)}}
    if not args.skip_training:
        st_out, our_out = work / "st-model", work / "our-model"
        st_train = run_child([*me, "--child", "train-st", "--data", str(st_mined), "--out", str(st_out),
                              "--model", model_path(args), "--max-seq-length", str(args.max_seq_length),
                              "--epochs", str(args.epochs), "--train-batch-size", str(args.train_batch_size),
                              "--learning-rate", str(args.learning_rate)])
        our_train = run_child([sys.executable, "-m", "nlp_contrastive.train",
                               str(our_recipe(args, our_mined, our_out, work))])
        results["training_pairs_per_second"] = {
            "st": results["mined_rows"]["st"] * args.epochs / st_train[0],
            "ours": results["mined_rows"]["ours"] * args.epochs / our_train[0]}
        results["training_texts_per_second"] = {
            "st": count_texts(st_mined) * args.epochs / st_train[0],
            "ours": count_texts(our_mined) * args.epochs / our_train[0]}
        results["training_seconds"] = {"st": st_train[0], "ours": our_train[0]}
        results["training_cpu_seconds"] = {"st": st_train[2], "ours": our_train[2]}
        results["training_peak_rss_mib"] = {"st": st_train[1], "ours": our_train[1]}
        results["scifact_test_ndcg_at_10"] = {"base": scifact_test_ndcg(model_path(args)),
                                              "st": scifact_test_ndcg(str(st_out)),
                                              "ours": scifact_test_ndcg(str(our_out))}
    print_report(results)
    (work / "bench_retrieval.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {work / 'bench_retrieval.json'}")
    return 0


def print_report(results: dict) -> None:
    seconds, rss = results["mining_seconds"], results["mining_peak_rss_mib"]
    print(f"\nload average at the end: {results['load_average_at_end']} (shared machine: compare CPU seconds)")
    print(f"\nmachine: {results['cpu_class']}, torch threads {results['threads']} (this benchmark trains in fp32)")
    print(f"mining   ST {seconds['st']:8.1f} s  peak {rss['st']:7.0f} MiB   rows {results['mined_rows']['st']}")
    print(f"mining ours {seconds['ours']:8.1f} s  peak {rss['ours']:7.0f} MiB   rows {results['mined_rows']['ours']}")
    cpu = results["mining_cpu_seconds"]
    print(f"mining speed-up (ST s / ours s): wall {seconds['st'] / seconds['ours']:.2f}x, CPU "
          f"{cpu['st']:.0f} / {cpu['ours']:.0f} s = {cpu['st'] / cpu['ours']:.2f}x; "
          f"peak memory ours / ST: {rss['ours'] / rss['st']:.2f}")
    if "training_pairs_per_second" in results:
        pps, ndcg = results["training_pairs_per_second"], results["scifact_test_ndcg_at_10"]
        tps, secs = results["training_texts_per_second"], results["training_seconds"]
        print(f"training rows/s  ST {pps['st']:.2f}  ours {pps['ours']:.2f}   texts/s  ST {tps['st']:.2f}  "
              f"ours {tps['ours']:.2f} ({tps['ours'] / tps['st']:.2f}x)   wall s  ST {secs['st']:.0f}  ours {secs['ours']:.0f}"
              f"   CPU s  ST {results['training_cpu_seconds']['st']:.0f}  ours {results['training_cpu_seconds']['ours']:.0f}")
        print(f"SciFact test nDCG@10  base {100 * ndcg['base']:.2f}  ST {100 * ndcg['st']:.2f}  "
              f"ours {100 * ndcg['ours']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
