"""Mining at scale: peak memory and time of `nlp-contrastive mine` vs sentence-transformers' mine_hard_negatives.

    python benchmarks/bench_mining_scale.py [--sizes 100000 1000000] [--st-sizes 100000] [--model PATH]
    python benchmarks/bench_mining_scale.py --recall [--sizes 1000000]      # approximate search vs exact

Corpus: real language from NLPC_DATA_DIR (default ../shared/data beside the repo): every distinct sentence of
STS-B, SICK, MSRP and TREC-QA and every SciFact abstract sentence; document i joins two of them picked by a
seeded generator (so 1M distinct documents of 20-60 tokens), plus the SciFact abstracts and the positives.
Queries: MSRP paraphrases (label 1) and STS-B pairs scored >= 4, in BOTH directions (a -> b and b -> a), so
every query's own text is in the corpus: the self-negative case.
Encoder: by default a 2-layer BERT (hidden 64, random weights, seed 0) with all-MiniLM-L6-v2's tokenizer at
max_seq_length 64 — MiniLM itself would take hours per side for 1M documents on 2 shared cores; `--model`
runs the real one. Options, both sides: num_negatives 3, range_max 50, sampling top, batch 128, torch threads
1 (--threads; two threads on a loaded 2-core machine spin), no margin (a random encoder ranks paraphrases below
other candidates, so a margin would leave nothing to compare). sentence-transformers runs with use_faiss=True (its exact IndexFlatIP over all embeddings: without
faiss it scores queries x corpus in 16384-query blocks, a 16 GB matrix at 1M). Each side runs in its own
process and reports its own peak RSS (VmHWM; benchlib.run_measured), printed with wall and CPU seconds.
`--recall [--scifact]`: each corpus's shards (reused from the mining run) and, with --scifact, SciFact's 5,183
abstracts under the real all-MiniLM-L6-v2 (1,109 claims as queries) searched with ivf-flat and hnsw;
recall@range_max of the candidates vs exact on up to 1,000 queries and the speed-up are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NLPC_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OPTIONS = {"num_negatives": 3, "range_max": 50, "batch_size": 128}
MAX_SEQ_LENGTH = 64


# ------------------------------------------------------------------------------------------ data
def sentences(data_dir: Path) -> list[str]:
    """Every distinct sentence of the STS / paraphrase / QA sets and of the SciFact abstracts, in a fixed order."""
    seen: dict[str, None] = {}
    for name, columns in (("stsb", ("sentence1", "sentence2")), ("sickr", ("sentence1", "sentence2")),
                          ("msrp", ("sentence1", "sentence2")), ("trecqa", ("question", "answer"))):
        for split in ("train", "validation", "test"):
            for line in (data_dir / name / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                for c in columns:
                    seen.setdefault(" ".join(str(row[c]).split()), None)
    for line in (data_dir / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        for sentence in json.loads(line)["text"].split(". "):
            if len(sentence) > 20:
                seen.setdefault(sentence.strip(), None)
    return [s for s in seen if s]


def paraphrase_pairs(data_dir: Path) -> list[tuple[str, str]]:
    pairs = []
    for split in ("train", "validation", "test"):
        for line in (data_dir / "msrp" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["label"] == 1:
                pairs.append((row["sentence1"], row["sentence2"]))
        for line in (data_dir / "stsb" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["score"] >= 4:
                pairs.append((row["sentence1"], row["sentence2"]))
    return [(a, b) for a, b in dict.fromkeys(pairs) if a != b]


def build_corpus(size: int, folder: Path, data_dir: Path, num_pairs: int) -> Path:
    """A BEIR folder: `size` documents, queries = paraphrase pairs both ways, qrels/train.tsv."""
    if (folder / "qrels" / "train.tsv").is_file():
        return folder
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    pool = sentences(data_dir)
    pairs = paraphrase_pairs(data_dir)[:num_pairs]
    rng = np.random.default_rng(0)
    texts: dict[str, None] = {}
    for a, b in pairs:  # positives (and so every query's own text) are documents
        texts.setdefault(a, None)
        texts.setdefault(b, None)
    for line in (data_dir / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        if len(texts) >= size:
            break
        row = json.loads(line)
        texts.setdefault(f"{row['title']} {row['text']}".strip(), None)
    while len(texts) < size:
        left, right = rng.integers(0, len(pool), size=(2, size))
        for i, j in zip(left.tolist(), right.tolist(), strict=True):
            texts.setdefault(f"{pool[i]} {pool[j]}", None)
            if len(texts) >= size:
                break
    doc_id = {t: f"d{i}" for i, t in enumerate(texts)}
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for t, i in doc_id.items():
            f.write(json.dumps({"_id": i, "title": "", "text": t}, ensure_ascii=False) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as q, \
            open(folder / "qrels" / "train.tsv", "w", encoding="utf-8") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        n = 0
        for a, b in pairs:
            for query, positive in ((a, b), (b, a)):
                q.write(json.dumps({"_id": f"q{n}", "text": query}, ensure_ascii=False) + "\n")
                r.write(f"q{n}\t{doc_id[positive]}\t1\n")
                n += 1
    return folder


def tiny_model(folder: Path) -> Path:
    """2-layer BERT, hidden 64, random weights (seed 0), MiniLM's WordPiece tokenizer; sentence-transformers format."""
    if (folder / "modules.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from nlp_contrastive.modeling import Encoder, bundled_default_model_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=128)
    torch.manual_seed(0)
    Encoder(BertModel(config), tokenizer, max_seq_length=MAX_SEQ_LENGTH).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ children
def child_ours(args) -> None:
    from nlp_contrastive.modeling import Encoder
    from nlp_contrastive.retrieval.mining import (
        MiningOptions,
        load_positives,
        mine_hard_negatives,
        mined_rows,
        write_rows,
    )

    start = time.perf_counter()
    encoder = Encoder.from_pretrained(args.model, max_seq_length=MAX_SEQ_LENGTH)
    data = load_positives(args.data, "train")
    mined, stats = mine_hard_negatives(encoder, data, MiningOptions(**OPTIONS), embeddings_dir=args.embeddings,
                                       show_progress=False)
    write_rows(args.out, mined_rows(mined))
    print(f"  ours: {time.perf_counter() - start:.1f} s in-process; "
          f"{stats.summary(OPTIONS['num_negatives']).splitlines()[-2]}", flush=True)


def child_st(args) -> None:
    import datasets
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    start = time.perf_counter()
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    corpus = [json.loads(line)["text"] for line in open(Path(args.data) / "corpus.jsonl", encoding="utf-8")]
    queries = {json.loads(line)["_id"]: json.loads(line)["text"]
               for line in open(Path(args.data) / "queries.jsonl", encoding="utf-8")}
    doc = {f"d{i}": t for i, t in enumerate(corpus)}
    qrels = [line.split("\t")[:2] for line in (Path(args.data) / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    ds = datasets.Dataset.from_dict({"query": [queries[q] for q, _ in qrels], "positive": [doc[d] for _, d in qrels]})
    mined = mine_hard_negatives(ds, model, corpus=corpus, range_max=OPTIONS["range_max"],
                                num_negatives=OPTIONS["num_negatives"],
                                sampling_strategy="top", batch_size=OPTIONS["batch_size"], output_format="n-tuple",
                                use_faiss=True, verbose=False)
    mined.to_json(args.out, lines=True)
    print(f"  sentence-transformers: {time.perf_counter() - start:.1f} s in-process, {len(mined)} rows", flush=True)


def agreement(ours: Path, st: Path) -> str:
    """Share of (query, positive) rows whose 3 negatives are the same texts on both sides (ST keeps full rows only)."""
    mine = {(r["query"], r["positive"]): r["negatives"] for r in map(json.loads, ours.read_text().splitlines())}
    same = total = 0
    for row in map(json.loads, st.read_text().splitlines()):
        negatives = [row[f"negative_{i}"] for i in range(1, OPTIONS["num_negatives"] + 1)]
        total += 1
        same += mine.get((row["query"], row["positive"])) == negatives
    return f"{same}/{total} of sentence-transformers' rows have the same negatives in ours"


# ------------------------------------------------------------------------------------------ parent
def recall(args, work: Path) -> None:
    """Each corpus's shards (the mining run's, reused) searched by each index; recall vs exact + speed-up."""
    from nlp_contrastive.modeling import Encoder, bundled_default_model_path
    from nlp_contrastive.retrieval.corpus import JsonlCorpus
    from nlp_contrastive.retrieval.embeddings import encode_corpus
    from nlp_contrastive.retrieval.encoding import encode
    from nlp_contrastive.retrieval.search import IndexOptions, search_shards

    data_dir = Path(os.environ["NLPC_DATA_DIR"])
    runs = []
    if args.scifact:  # the real MiniLM at its own max_seq_length (256), every SciFact claim as a query
        runs.append(("scifact", data_dir / "scifact", args.scifact_model or bundled_default_model_path(), None))
    runs += [(str(size), build_corpus(size, work / f"corpus-{size}", data_dir, args.pairs), args.model,
              MAX_SEQ_LENGTH) for size in args.sizes]
    for name, folder, model, max_seq_length in runs:
        encoder = Encoder.from_pretrained(model, max_seq_length=max_seq_length)
        corpus = JsonlCorpus(folder / "corpus.jsonl")
        shards = encode_corpus(encoder, corpus, folder=work / f"shards-{name}", show_progress=False)
        texts = [json.loads(line)["text"] for line in (folder / "queries.jsonl").read_text().splitlines()]
        queries = encode(encoder, texts, 64)
        for index in args.indexes:
            options = IndexOptions(index=index, nprobe=args.nprobe, ef_search=args.ef_search,
                                   recall_sample=min(len(queries), 1000))
            print(f"{name}: {len(corpus)} documents, {len(queries)} queries, {index}, k = {OPTIONS['range_max']}:",
                  flush=True)
            search_shards(queries, shards, OPTIONS["range_max"], options, log=lambda line: print("  " + line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--st-sizes", type=int, nargs="+", help="sizes sentence-transformers runs at (default: all)")
    parser.add_argument("--pairs", type=int, default=2000, help="paraphrase pairs (queries: twice as many)")
    parser.add_argument("--model", help="model folder (default: the tiny 2-layer BERT described above)")
    parser.add_argument("--work", help="folder for corpora, models, shards (default: a temporary one)")
    parser.add_argument("--recall", action="store_true", help="approximate search recall vs exact instead")
    parser.add_argument("--indexes", nargs="+", default=["ivf-flat", "hnsw"])
    parser.add_argument("--scifact", action="store_true", help="--recall also on SciFact with the real MiniLM")
    parser.add_argument("--scifact-model", help="model for --scifact (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--nprobe", type=int)
    parser.add_argument("--ef-search", type=int)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    parser.add_argument("--child", choices=("ours", "st"))
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--embeddings")
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        (child_ours if args.child == "ours" else child_st)(args)
        return
    from bench_retrieval import run_child
    from benchlib import cpu_class

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-mining-scale-"))
    args.model = args.model or str(tiny_model(work / "tiny-bert"))
    print(f"machine: {cpu_class()}, {os.cpu_count()} cores")
    print(f"model: {args.model} (max_seq_length {MAX_SEQ_LENGTH}); options {OPTIONS}; work folder {work}")
    if args.recall:
        recall(args, work)
        return
    results = {}
    for size in args.sizes:
        folder = build_corpus(size, work / f"corpus-{size}", Path(os.environ["NLPC_DATA_DIR"]), args.pairs)
        sides = [("ours", work / f"ours-{size}.jsonl")]
        if args.st_sizes is None or size in args.st_sizes:
            sides.append(("st", work / f"st-{size}.jsonl"))
        for side, out in sides:
            extra = []
            if side == "ours":  # encoded afresh every run (the folder stays for --recall)
                shutil.rmtree(work / f"shards-{size}", ignore_errors=True)
                extra = ["--embeddings", str(work / f"shards-{size}")]
            command = ["flock", "/tmp/nlpc-timing.lock", "nice", "-n", "5", sys.executable, __file__, "--child", side,
                       "--data", str(folder), "--out", str(out), "--model", args.model, "--threads", str(args.threads),
                       *extra]
            results[size, side] = run_child(command)
            wall, rss, cpu = results[size, side]
            print(f"{size:>9} documents  {side:<4} {wall:8.1f} s wall  {cpu:8.1f} s CPU  peak RSS {rss:8.0f} MiB",
                  flush=True)
        if len(sides) == 2:
            print("  " + agreement(sides[0][1], sides[1][1]), flush=True)
    sizes = sorted(s for s, side in results if side == "ours")
    if len(sizes) >= 2:
        small, large = results[sizes[0], "ours"][1], results[sizes[-1], "ours"][1]
        print(f"ours: peak RSS at {sizes[-1]} = {large / small:.2f}x the one at {sizes[0]} ({large:.0f} vs "
              f"{small:.0f} MiB); target <= 1.3x and < 3072 MiB")


if __name__ == "__main__":
    main()
