"""STS suite speed: our evaluator vs encoding the same pairs with SentenceTransformer.encode.

Ours: the local STS suite (STS-B test + SICK-R test) end to end — data loading, encoding, correlations —
through `load_suite(...)(encoder)`. Baseline: sentence-transformers encodes both sides of every pair with
`encode(batch_size=64)`, as EmbeddingSimilarityEvaluator does, then the same Spearman. Same weights,
process and threads; both warmed up; timed round by round in alternating order (benchmarks/benchlib.py).
Prints the times, the ratio (baseline time / our time, median over rounds) and both Spearman values,
which must agree.

    python benchmarks/bench_eval.py [--model PATH] [--batch-size 64] [--rounds 3] [--require 1.5]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchlib import interleaved, parse_bench_args, report  # noqa: E402  (benchmarks/benchlib.py)
from scipy.stats import spearmanr  # noqa: E402

from nlp_contrastive.data import load_split  # noqa: E402
from nlp_contrastive.evaluation import load_suite  # noqa: E402
from nlp_contrastive.evaluation.suite import BUILTIN_STS_SUITE as SUITE  # noqa: E402  (STS-B + SICK-R test)
from nlp_contrastive.modeling import Encoder, resolve_model_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_bench_args(__doc__, argv, rounds=3)
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(args.model)
    encoder = Encoder.from_pretrained(path)
    st = SentenceTransformer(str(path), device="cpu")
    pairs = {}
    for name, task in SUITE["tasks"].items():
        rows = load_split(task["dataset"], "test")
        pairs[name] = (rows["sentence1"][:], rows["sentence2"][:], rows["score"][:])
    n_texts = sum(2 * len(p[0]) for p in pairs.values())
    n_distinct = sum(len(set(p[0]) | set(p[1])) for p in pairs.values())
    print(f"{', '.join(f'{k} ({len(v[0])} pairs)' for k, v in pairs.items())}: {n_texts} texts, {n_distinct} "
          f"distinct; batch {args.batch_size}; torch threads {torch.get_num_threads()}")

    def run_ours() -> dict[str, float]:
        results = load_suite(SUITE, batch_size=args.batch_size)(encoder)
        return {task: metrics["spearman_cosine"] for task, metrics in results.items()}

    def run_st() -> dict[str, float]:
        out = {}
        for task, (s1, s2, gold) in pairs.items():
            a = st.encode(s1, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)
            b = st.encode(s2, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            out[task] = float(spearmanr(gold, cosine).statistic)
        return out

    st.encode(pairs["STSBenchmark"][0][:256], batch_size=args.batch_size, show_progress_bar=False)  # warm-up
    encoder.encode(pairs["STSBenchmark"][0][:256], batch_size=args.batch_size, show_progress_bar=False)
    wall, cpu, spearman = interleaved([("ours (suite)", run_ours), ("sentence-transformers", run_st)], args.rounds)
    for name, values in spearman.items():
        print(f"{name:<22} spearman_cosine: " + ", ".join(f"{t} {100 * v:.2f}" for t, v in values.items()))
    ratio = report(wall, cpu, "ours (suite)", "sentence-transformers")
    agree = all(abs(spearman["ours (suite)"][t] - spearman["sentence-transformers"][t]) < 1e-4 for t in pairs)
    if not agree:
        print("spearman values disagree by more than 1e-4", file=sys.stderr)
        return 1
    return 1 if args.require is not None and ratio < args.require else 0


if __name__ == "__main__":
    sys.exit(main())
