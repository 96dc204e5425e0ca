"""Streamed training data at scale: time to first optimizer step, peak RSS, extra disk and throughput at two
sizes, the in-memory pre-tokenized path at the smaller size, and duplicate texts per global batch (ours, and
sentence-transformers' trainer on the same stream as a `datasets.IterableDataset`).

Synthetic pair shards are drawn from the local data sets' sentences ($NLPC_DATA_DIR: STS-B, SICK, MSRP train,
lowercased, ~26k distinct), anchor and positive picked at random, so texts repeat and a random batch of 64 pairs
holds a repeated text about a quarter of the time. Repeats are counted on token sequences in the loss (what both
trainers' batches hold), which for lowercased texts and the uncased tokenizer is the same as equal texts. Shards: parquet, 100k rows each, row groups of 10k, written once
into --work and reused. Every run is a fresh process (peak RSS never goes down) training a tiny BERT (2 layers,
hidden 64, the bundled MiniLM tokenizer) for --steps InfoNCE steps at batch --batch-size, 1 process. That model's
step is so cheap (~40 ms) that on-the-fly tokenization is a visible share of it: the worst case for streaming.
`--model PATH` (e.g. the bundled all-MiniLM-L6-v2) trains a real encoder instead, the ratio at a real step's cost.

Targets (issue 22): 10M vs 1M time to first step and peak RSS within 1.2x, time to first step at 10M < 30 s,
extra disk < 100 MB; streaming throughput >= 0.9x in-memory at 1M; 0 repeated texts in any global batch.

    python benchmarks/bench_streaming.py [--sizes 1000000 10000000] [--steps 200] [--repeats 5] [--work outputs/bench-streaming]
    python benchmarks/bench_streaming.py --paraphrase-shards outputs/paraphrase-shards   # recipe's shards
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchlib import peak_rss_mib  # benchmarks/benchlib.py, beside this script

STARTED = time.time()
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLPC_DATA_DIR", str(REPO.parent / "shared" / "data"))
ROWS_PER_SHARD, ROW_GROUP = 100_000, 10_000


def sentences() -> list[str]:
    from nlp_contrastive.data.loading import load_split

    seen = {}
    for name in ("stsb", "sickr", "msrp"):
        for row in load_split(name, "train"):
            for column in ("sentence1", "sentence2"):  # lowercased: equal tokens (uncased) <=> equal texts
                seen.setdefault(" ".join(row[column].lower().split()), None)
    return list(seen)


def write_pair_shards(folder: Path, rows: int, texts: list[str], seed: int = 0) -> Path:
    """`rows` random (anchor, positive) pairs as parquet shards (dictionary-encoded: the texts repeat)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = folder / "_complete"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    dictionary = pa.array(texts)
    rng = np.random.default_rng(seed)
    for k, start in enumerate(range(0, rows, ROWS_PER_SHARD)):
        n = min(ROWS_PER_SHARD, rows - start)
        columns = {role: pa.DictionaryArray.from_arrays(pa.array(rng.integers(len(texts), size=n, dtype=np.int32)),
                                                        dictionary) for role in ("anchor", "positive")}
        tmp = folder / f".part-{k:05d}.parquet.tmp"
        pq.write_table(pa.table(columns), tmp, row_group_size=ROW_GROUP)
        os.replace(tmp, folder / f"part-{k:05d}.parquet")
    done.write_text(str(rows))
    return folder


def one_file(shards: Path, folder: Path) -> Path:
    """The same rows as one `train.parquet` (what the in-memory path loads)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    target = folder / "train.parquet"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        table = ds.dataset(sorted(str(p) for p in shards.glob("part-*.parquet"))).to_table()
        pq.write_table(table, folder / ".train.parquet.tmp", row_group_size=ROW_GROUP)
        os.replace(folder / ".train.parquet.tmp", target)
    return folder


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def repeated_texts(rows: list[set]) -> int:
    """Texts that occur in more than one row of a batch (a row's own anchor == positive does not count)."""
    counts = Counter(h for texts in rows for h in texts)
    return sum(c - 1 for c in counts.values() if c > 1)


# ------------------------------------------------------------------------------------------- child runs
def child_ours(spec: dict) -> dict:
    """One training run through nlp_contrastive.train, measured."""
    from transformers import TrainerCallback

    from nlp_contrastive.data.batch import Batch
    from nlp_contrastive.train import train
    from nlp_contrastive.trainer import ContrastiveTrainer

    times, repeats = [], []
    compute_loss = ContrastiveTrainer.compute_loss

    def counting(self, model, inputs, *args, **kwargs):
        hashes = Batch.from_inputs(inputs).text_hashes
        repeats.append(repeated_texts([{int(hashes["anchor"][i]), int(hashes["positive"][i])}
                                       for i in range(len(hashes["anchor"]))]))
        return compute_loss(self, model, inputs, *args, **kwargs)

    ContrastiveTrainer.compute_loss = counting

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.time())

    data = (f"[{{dataset: '{spec['data']}', columns: {{anchor: anchor, positive: positive}}"
            + (", streaming: true}]" if spec["streaming"] else "}]"))
    out = Path(spec["out"])
    overrides = ["--model_name_or_path", spec["model"], "--output_dir", str(out), "--train_data", data,
                 "--per_device_train_batch_size", str(spec["batch"]), "--max_steps", str(spec["steps"]),
                 "--batch_sampler", "no_duplicates", "--eval_tasks", "[]", "--final_eval_tasks", "[]",
                 "--logging_steps", "1000", "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
                 "--save_strategy", "no", "--overwrite_output_dir", "true", "--disable_tqdm", "true"]
    assert train(str(REPO / "recipes" / "paraphrase-infonce.yaml"), overrides, callbacks=[Clock()]) == 0
    return measured(times, spec["batch"], repeats)


def child_st(spec: dict) -> dict:
    """sentence-transformers' trainer on the same shards as a datasets IterableDataset (streaming=True)."""
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    times, repeats = [], []
    model = SentenceTransformer(spec["model"], device="cpu")
    stream = datasets.load_dataset("parquet", data_files={"train": f"{spec['data']}/part-*.parquet"},
                                   split="train", streaming=True)

    class CountingMNRL(MultipleNegativesRankingLoss):
        def forward(self, sentence_features, labels=None):
            ids = [f["input_ids"].tolist() for f in sentence_features]
            repeats.append(repeated_texts([{tuple(t) for t in texts} for texts in zip(*ids, strict=True)]))
            return super().forward(sentence_features, labels)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.time())

    args = SentenceTransformerTrainingArguments(
        output_dir=spec["out"], per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
        learning_rate=2e-5, batch_sampler=BatchSamplers.NO_DUPLICATES, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=1000, disable_tqdm=True, seed=42)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=stream, loss=CountingMNRL(model),
                               callbacks=[Clock()]).train()
    return measured(times, spec["batch"], repeats)


def measured(times: list[float], batch: int, repeats: list[int]) -> dict:
    steady = (len(times) - 1) * batch / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return {"first_step_s": times[0] - STARTED, "pairs_per_s": steady, "steps": len(times),
            "peak_rss_mib": peak_rss_mib(),
            "batches_with_repeats": sum(1 for r in repeats if r), "repeated_texts": sum(repeats),
            "batches_checked": len(repeats)}


def run_child(kind: str, spec: dict) -> dict:
    cache = Path(spec["out"]).with_name(Path(spec["out"]).name + "-cache")
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(spec["out"], ignore_errors=True)
    env = os.environ | {"HF_DATASETS_CACHE": str(cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)], env=env,
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["extra_disk_mib"] = (disk_bytes(cache) + disk_bytes(Path(spec["out"]))) / 2**20
    result["cache_mib"] = disk_bytes(cache) / 2**20
    return result


def tiny_model(path: Path) -> str:
    if not (path / "modules.json").is_file():
        sys.path.insert(0, str(REPO))
        from tests.conftest import make_tiny_encoder

        make_tiny_encoder(hidden=64).save_pretrained(path)
    return str(path)


def paraphrase_shards(folder: Path, shards: int = 4) -> None:
    """recipes/paraphrase-infonce.yaml's training rows (anchor, positive), written as parquet shards for
    recipes/paraphrase-infonce-streaming.yaml."""
    import pyarrow.parquet as pq

    from nlp_contrastive.config import load_recipe
    from nlp_contrastive.data.train_data import build_train_dataset

    recipe = load_recipe(str(REPO / "recipes" / "paraphrase-infonce.yaml"), ["--use_cpu", "true"])
    table = build_train_dataset(recipe.data.train_data).with_format("arrow")[:].select(["anchor", "positive"])
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        part = table.take(list(range(k, len(table), shards)))
        pq.write_table(part, folder / f".part-{k}.parquet.tmp")
        os.replace(folder / f".part-{k}.parquet.tmp", folder / f"part-{k}.parquet")
    print(f"wrote {len(table)} rows in {shards} shards to {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5,
                        help="stream / in-memory pairs at the smallest size; one pair proves nothing: on a shared "
                             "2-core VM a pair's ratio ranged 0.82-1.38 in one session")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", help="model folder to train (default: the tiny BERT described above)")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench-streaming")
    parser.add_argument("--skip", nargs="*", default=[], choices=["in-memory", "st"])
    parser.add_argument("--child", nargs=2)
    parser.add_argument("--paraphrase-shards", type=Path)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        print(json.dumps(child_ours(spec) if kind == "ours" else child_st(spec)))
        return
    if args.paraphrase_shards:
        paraphrase_shards(args.paraphrase_shards)
        return
    from benchlib import cpu_class

    print(f"machine: {cpu_class()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    model = args.model or tiny_model(args.work / "tiny-model")
    texts = sentences()
    common = {"model": model, "batch": args.batch_size, "steps": args.steps}
    results = {}
    for size in args.sizes:
        shards = write_pair_shards(args.work / f"shards-{size}", size, texts)
        results[f"stream {size}"] = run_child("ours", {**common, "data": str(shards), "streaming": True,
                                                        "out": str(args.work / "run")})
        print(f"stream {size}: {results[f'stream {size}']}", flush=True)
    small = min(args.sizes)
    shards = args.work / f"shards-{small}"
    ratios = []
    if "in-memory" not in args.skip:
        folder = one_file(shards, args.work / f"one-file-{small}")
        for k in range(args.repeats):  # pairs run back to back: a slow spell of the machine hits both
            if k:
                results[f"stream {small} #{k + 1}"] = run_child("ours", {**common, "data": str(shards),
                                                                         "streaming": True, "out": str(args.work / "run")})
            name = f"in-memory {small}" + (f" #{k + 1}" if k else "")
            results[name] = run_child("ours", {**common, "data": str(folder), "streaming": False,
                                               "out": str(args.work / "run")})
            print(f"{name}: {results[name]}", flush=True)
            streamed = results[f"stream {small}" + (f" #{k + 1}" if k else "")]
            ratios.append(streamed["pairs_per_s"] / results[name]["pairs_per_s"])
    if "st" not in args.skip:
        results[f"st stream {small}"] = run_child("st", {**common, "data": str(shards), "out": str(args.work / "run")})
        print(f"st stream {small}: {results[f'st stream {small}']}", flush=True)
    print(f"\n{'run':<22} {'first step s':>12} {'pairs/s':>9} {'peak RSS MiB':>13} {'extra disk MiB':>15} "
          f"{'batches w/ repeats':>19}")
    for name, r in results.items():
        print(f"{name:<22} {r['first_step_s']:12.1f} {r['pairs_per_s']:9.1f} {r['peak_rss_mib']:13.0f} "
              f"{r['extra_disk_mib']:15.1f} {r['batches_with_repeats']:>8}/{r['batches_checked']:<10}")
    big = max(args.sizes)
    if big != small:
        a, b = results[f"stream {small}"], results[f"stream {big}"]
        print(f"{big} vs {small}: first step {b['first_step_s'] / a['first_step_s']:.2f}x, peak RSS "
              f"{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x")
    if ratios:
        print(f"streaming / in-memory throughput at {small}: median {statistics.median(ratios):.2f}x of "
              f"{len(ratios)} back-to-back pair(s): {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
