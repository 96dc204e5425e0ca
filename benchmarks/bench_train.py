"""Training throughput, memory and quality: sentence-transformers' trainer vs ours, same recipe, one run.

    python benchmarks/bench_train.py [--only cosine|infonce] [--max-rows N] [--set KEY=VALUE ...] [--no-quality]

Each trainer runs in its own subprocess (so peak RSS is its own), in the same precision (fp32; with --bf16
also both in bf16 autocast), with tokenization inside the timed seconds for both (ST tokenizes inside
Trainer.train, ours before it, so ours adds its measured tokenization time). In the order ST, ours, for the recipes
`stsb-cosine` (CosineSimilarityLoss, batch 16) and `paraphrase-infonce` (MultipleNegativesRankingLoss /
info_nce, batch 64, no-duplicates batches). Both models are then scored on STS-B test with our STS
evaluator (identical to MTEB's convention). Prints pairs/s, ratio, the ratio of CPU seconds (steadier than wall
time on a machine shared with other jobs), peak RSS and STS-B test Spearman x 100.

`--set KEY=VALUE` overrides a key of OUR recipe only, to measure one lever (e.g. `--set single_forward=true`,
`--set batch_sampler=group_by_length`). ST keeps its own setup for the recipe (random batches for stsb-cosine,
its NoDuplicatesBatchSampler for paraphrase-infonce): it has no length-grouped sampler, so such a row compares the
two toolkits' recipes, not equal batches — the printed table says which overrides ours ran with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import peak_rss_mib  # benchmarks/benchlib.py, beside this script

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"cosine": REPO / "recipes" / "stsb-cosine.yaml", "infonce": REPO / "recipes" / "paraphrase-infonce.yaml"}


def _train_rows(recipe_path: Path, max_rows: int | None):
    from nlp_contrastive.config import load_recipe
    from nlp_contrastive.data import train_data

    recipe = load_recipe(str(recipe_path))
    return train_data.build_train_dataset(recipe.data.train_data, max_rows=max_rows), recipe


def tokenization_seconds(kind: str, max_rows: int | None) -> tuple[float, float]:
    """Our run tokenizes before Trainer.train (ST tokenizes inside it): time that step alone, uncached, so both
    sides' seconds include tokenization."""
    import datasets

    from nlp_contrastive.data import loading
    from nlp_contrastive.modeling import DEFAULT_MODEL, Encoder

    ds, _ = _train_rows(RECIPES[kind], max_rows)
    encoder = Encoder.from_pretrained(DEFAULT_MODEL)
    datasets.disable_caching()
    start, cpu_start = time.perf_counter(), time.process_time()
    loading.tokenize_roles(ds, encoder.tokenizer, encoder.max_seq_length)
    return time.perf_counter() - start, time.process_time() - cpu_start


def run_sentence_transformers(kind: str, output_dir: str, max_rows: int | None, bf16: bool = False) -> dict:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    from nlp_contrastive.modeling import bundled_default_model_path

    ds, recipe = _train_rows(RECIPES[kind], max_rows)
    model = SentenceTransformer(bundled_default_model_path(), device="cpu")
    args = recipe.training
    if kind == "cosine":
        ds = ds.select_columns(["anchor", "positive", "score"])
        loss = losses.CosineSimilarityLoss(model)
        sampler = BatchSamplers.BATCH_SAMPLER
    else:
        ds = ds.select_columns(["anchor", "positive"])
        loss = losses.MultipleNegativesRankingLoss(model, scale=1.0 / recipe.loss.loss_kwargs.get("temperature", 0.05))
        sampler = BatchSamplers.NO_DUPLICATES
    st_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, seed=args.seed, logging_steps=args.logging_steps, save_strategy="no",
        eval_strategy="no", report_to="none", batch_sampler=sampler, use_cpu=True, bf16=bf16,
    )
    trainer = SentenceTransformerTrainer(model=model, args=st_args, train_dataset=ds, loss=loss)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.save(os.path.join(output_dir, "final"))
    return {"rows": len(ds), "seconds": seconds, "cpu_seconds": cpu_seconds, "model": os.path.join(output_dir, "final")}


def run_ours(kind: str, output_dir: str, max_rows: int | None, bf16: bool = False,
             extra: list[str] | None = None) -> dict:
    from nlp_contrastive.train import train

    overrides = ["--bf16", "true" if bf16 else "false"]  # plain row = fp32 like ST's; +bf16 row = recipe as shipped
    overrides += ["--output_dir", output_dir, "--overwrite_output_dir", "true", "--eval_tasks", "[]",
                 "--final_eval_tasks", "[]", "--use_cpu", "true",
                  "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                  "--report_to", "none"]
    if max_rows:
        overrides += ["--max_train_rows", str(max_rows)]
    overrides += extra or []
    trainer_cpu = _CpuTimeOfTrain()
    start = time.perf_counter()
    with trainer_cpu:
        train(str(RECIPES[kind]), overrides)
    seconds = time.perf_counter() - start
    run = json.loads((Path(output_dir) / "training_run.json").read_text())
    tokenize, tokenize_cpu = tokenization_seconds(kind, max_rows)
    return {"rows": run["train_rows"], "seconds": run["train_runtime_seconds"] + tokenize, "wall_seconds": seconds,
            "cpu_seconds": trainer_cpu.seconds + tokenize_cpu, "tokenize_seconds": tokenize, "model": output_dir}


class _CpuTimeOfTrain:
    """Process CPU seconds spent inside ContrastiveTrainer.train (what ST's side measures around Trainer.train):
    on a machine shared with other jobs, CPU time is steadier than wall time."""

    def __enter__(self):
        from nlp_contrastive.trainer import ContrastiveTrainer

        self.seconds, self._original, measure = 0.0, ContrastiveTrainer.train, self

        def timed_train(trainer, *args, **kwargs):
            start = time.process_time()
            try:
                return measure._original(trainer, *args, **kwargs)
            finally:
                measure.seconds += time.process_time() - start

        ContrastiveTrainer.train = timed_train
        return self

    def __exit__(self, *exc):
        from nlp_contrastive.trainer import ContrastiveTrainer

        ContrastiveTrainer.train = self._original


def worker(trainer: str, kind: str, output_dir: str, max_rows: int | None, extra: list[str],
           quality: bool = True) -> None:
    if trainer in ("st", "st-bf16"):
        result = run_sentence_transformers(kind, output_dir, max_rows, bf16=trainer == "st-bf16")
    else:
        result = run_ours(kind, output_dir, max_rows, bf16=trainer == "ours-bf16", extra=extra)
    result["peak_rss_mb"] = peak_rss_mib()
    result["stsb_test_spearman"] = float("nan")
    if not quality:
        print("RESULT " + json.dumps(result), flush=True)
        return
    from nlp_contrastive.evaluation.suite import load_suite
    from nlp_contrastive.modeling import Encoder

    suite = load_suite({"tasks": [{"name": "stsb-test", "type": "sts", "dataset": "stsb", "split": "test"}]})
    result["stsb_test_spearman"] = suite(Encoder.from_pretrained(result["model"]))["stsb-test"]["spearman_cosine"]
    print("RESULT " + json.dumps(result), flush=True)


def overrides_from(items: list[str]) -> list[str]:
    """`KEY=VALUE` items -> the `--KEY VALUE` overrides train() takes."""
    overrides = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"error: --set {item!r}: write KEY=VALUE, e.g. --set single_forward=false")
        overrides += [f"--{key}", value]
    return overrides


def run_in_subprocess(trainer: str, kind: str, output_dir: str, max_rows: int | None,
                      extra: list[str] | None = None, quality: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--worker", trainer, "--only", kind, "--output", output_dir]
    if not quality:
        cmd.append("--no-quality")
    if max_rows:
        cmd += ["--max-rows", str(max_rows)]
    cmd += [f"--set={item}" for item in extra or []]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{trainer}/{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(RECIPES), action="append")
    parser.add_argument("--max-rows", type=int, default=None, help="train on the first N rows (quick check)")
    parser.add_argument("--bf16", action="store_true", help="also compare both trainers with bf16 autocast (fp32 master weights)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for our trainer only (e.g. single_forward=false), to measure a lever")
    parser.add_argument("--no-quality", action="store_true", help="skip the STS-B test scoring (throughput only)")
    parser.add_argument("--worker", choices=["st", "st-bf16", "ours", "ours-bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("NLPC_DATA_DIR", str(REPO.parent / "shared" / "data"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        worker(args.worker, args.only[0], args.output, args.max_rows, overrides_from(args.set),
               quality=not args.no_quality)
        return
    from benchlib import cpu_class  # benchmarks/benchlib.py, beside this script

    from nlp_contrastive.precision import resolve_bf16

    choice = resolve_bf16("auto", use_cpu=True)
    print(f"machine: {cpu_class()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; CPU bf16: "
          f"{'native' if choice.native_bf16 else 'NOT native (emulated, slow)'} ({choice.reason}); "
          f"recipes: {', '.join(args.only or sorted(RECIPES))}; both trainers in the same precision per row, "
          "tokenization timed for both", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for kind in args.only or sorted(RECIPES):
            st = run_in_subprocess("st", kind, os.path.join(tmp, f"st-{kind}"), args.max_rows,
                                   quality=not args.no_quality)
            ours = run_in_subprocess("ours", kind, os.path.join(tmp, f"ours-{kind}"), args.max_rows, args.set,
                                     quality=not args.no_quality)
            rows.append((kind, st, ours))
            if args.bf16:
                st_bf16 = run_in_subprocess("st-bf16", kind, os.path.join(tmp, f"stbf-{kind}"), args.max_rows)
                rows.append((f"{kind}+bf16", st_bf16,
                             run_in_subprocess("ours-bf16", kind, os.path.join(tmp, f"bf-{kind}"), args.max_rows)))
    if args.set:
        print(f"ours with {' '.join(args.set)} (ST with its own default sampler and settings for the recipe)")
    header = f"{'recipe':<14} {'ST pairs/s':>10} {'ours pairs/s':>12} {'ratio':>6} {'CPU ratio':>9} " \
             f"{'ST RSS MB':>9} {'ours RSS MB':>11} {'ST STS-B':>8} {'ours STS-B':>10}"
    print(header, flush=True)
    for kind, st, ours in rows:
        st_rate, our_rate = st["rows"] / st["seconds"], ours["rows"] / ours["seconds"]
        cpu_ratio = (ours["rows"] / ours["cpu_seconds"]) / (st["rows"] / st["cpu_seconds"])
        print(f"{kind:<14} {st_rate:>10.1f} {our_rate:>12.1f} {our_rate / st_rate:>6.2f} {cpu_ratio:>9.2f} "
              f"{st['peak_rss_mb']:>9.0f} "
              f"{ours['peak_rss_mb']:>11.0f} {100 * st['stsb_test_spearman']:>8.2f} "
              f"{100 * ours['stsb_test_spearman']:>10.2f}")


if __name__ == "__main__":
    main()
