"""Evaluation speed: our evaluators vs SentenceTransformer.encode + the same metric code, identical scores.

--suite sts (default): the local STS suite (STS-B test + SICK-R test) end to end through `load_suite(...)(encoder)`
  vs sentence-transformers encoding both sides of every pair with `encode(batch_size=...)`, as its
  EmbeddingSimilarityEvaluator does, then the same Spearman.
--suite scifact: BEIR SciFact test (300 claims, 5,183 abstracts of ~235 tokens) through our RetrievalEvaluator
  vs sentence-transformers encoding queries and corpus, scored by the same exact top-k and metric code.
  `--max-docs N` keeps every judged abstract and fills up to N documents (a quick run; the nDCG is then higher
  than the full corpus', but identical for both sides).

Same weights, process, threads and precision (`bf16: auto` for both; fp32 on a CPU without native bf16);
both warmed up; timed round by round in alternating order (benchmarks/benchlib.py). Prints the machine line,
the times, the ratio (baseline time / our time, median over rounds) and both sides' scores, which must agree.

    python benchmarks/bench_eval.py [--suite sts,scifact] [--max-docs N] [--threads 2] [--rounds 3] [--require 2]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from benchlib import bench_parser, interleaved, report, setup_run, st_autocast  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from nlp_contrastive.data.loading import load_split  # noqa: E402
from nlp_contrastive.evaluation import load_suite  # noqa: E402
from nlp_contrastive.evaluation.retrieval import RetrievalEvaluator, exact_top_k  # noqa: E402
from nlp_contrastive.evaluation.retrieval_data import load_beir_folder  # noqa: E402
from nlp_contrastive.evaluation.suite import BUILTIN_STS_SUITE  # noqa: E402  (STS-B + SICK-R test)
from nlp_contrastive.modeling import Encoder, resolve_model_path  # noqa: E402

DATA = Path(os.environ.get("NLPC_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def sts_sides(encoder, st, batch_size: int, bf16: bool):
    pairs = {}
    for name, task in BUILTIN_STS_SUITE["tasks"].items():
        rows = load_split(task["dataset"], "test")
        pairs[name] = (rows["sentence1"][:], rows["sentence2"][:], rows["score"][:])
    n_texts = sum(2 * len(p[0]) for p in pairs.values())
    n_distinct = sum(len(set(p[0]) | set(p[1])) for p in pairs.values())
    print(f"sts: {', '.join(f'{k} ({len(v[0])} pairs)' for k, v in pairs.items())}: {n_texts} texts, {n_distinct} "
          f"distinct; batch {batch_size}", flush=True)

    def ours() -> dict[str, float]:
        results = load_suite(BUILTIN_STS_SUITE, batch_size=batch_size)(encoder)
        return {task: metrics["spearman_cosine"] for task, metrics in results.items()}

    def baseline() -> dict[str, float]:
        out = {}
        with st_autocast(bf16):
            for task, (s1, s2, gold) in pairs.items():
                a = st.encode(s1, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
                b = st.encode(s2, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
                cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                out[task] = float(spearmanr(gold, cosine).statistic)
        return out

    return ours, baseline, "spearman_cosine"


def scifact_sides(encoder, st, batch_size: int, bf16: bool, max_docs: int | None):
    queries, corpus, qrels = load_beir_folder(DATA / "scifact", "test")
    if max_docs:
        judged = {d for docs in qrels.values() for d in docs}
        keep = [d for d in corpus if d in judged] + [d for d in corpus if d not in judged]
        corpus = {d: corpus[d] for d in keep[:max(max_docs, len(judged))]}
    evaluator = RetrievalEvaluator(queries, corpus, qrels, name="SciFact", batch_size=batch_size)
    print(f"scifact: {len(evaluator.query_ids)} queries, {len(corpus)} documents; batch {batch_size}", flush=True)

    def ours() -> dict[str, float]:
        return {"SciFact": evaluator(encoder)["ndcg_at_10"]}

    def baseline() -> dict[str, float]:
        with st_autocast(bf16):
            q = st.encode([evaluator.queries[i] for i in evaluator.query_ids], batch_size=batch_size,
                          show_progress_bar=False, convert_to_numpy=True)
            d = st.encode([evaluator.corpus[i] for i in evaluator.doc_ids], batch_size=batch_size,
                          show_progress_bar=False, convert_to_numpy=True)
        scores, indices = exact_top_k(q, iter([d]), evaluator.k, similarity=evaluator.similarity)
        run = {query: {evaluator.doc_ids[j]: float(s) for s, j in zip(row_s, row_i, strict=True)}
               for query, row_s, row_i in zip(evaluator.query_ids, scores, indices, strict=True)}
        return {"SciFact": evaluator.score(run)["ndcg_at_10"]}

    return ours, baseline, "ndcg_at_10"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, rounds=3)
    parser.add_argument("--suite", default="sts", help="comma-separated: sts, scifact")
    parser.add_argument("--max-docs", type=int, help="scifact: at most this many documents (judged ones kept)")
    args = parser.parse_args(argv)
    bf16, _ = setup_run(args)
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(args.model)
    encoder = Encoder.from_pretrained(path)
    st = SentenceTransformer(str(path), device="cpu")
    status = 0
    for suite in args.suite.split(","):
        if suite == "sts":
            ours, baseline, metric = sts_sides(encoder, st, args.batch_size, bf16)
        elif suite == "scifact":
            ours, baseline, metric = scifact_sides(encoder, st, args.batch_size, bf16, args.max_docs)
        else:
            raise SystemExit(f"unknown suite '{suite}': choose sts or scifact")
        warm = ["a short warm-up sentence"] * 8
        st.encode(warm, batch_size=args.batch_size, show_progress_bar=False)
        encoder.encode(warm, batch_size=args.batch_size, show_progress_bar=False)
        wall, cpu, scores = interleaved([("ours", ours), ("sentence-transformers", baseline)], args.rounds)
        for name, values in scores.items():
            print(f"{name:<22} {metric}: " + ", ".join(f"{t} {100 * v:.2f}" for t, v in values.items()))
        ratio = report(wall, cpu, "ours", "sentence-transformers")
        if not all(abs(scores["ours"][t] - scores["sentence-transformers"][t]) < 1e-4 for t in scores["ours"]):
            print(f"{suite}: scores disagree by more than 1e-4", file=sys.stderr)
            status = 1
        elif args.require is not None and ratio < args.require:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
