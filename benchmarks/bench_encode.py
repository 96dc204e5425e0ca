"""Encoding speed: our Encoder.encode vs SentenceTransformer.encode on the 2,758 STS-B test sentences.

Same model weights, same batch size, same process, threads and precision (`bf16: auto` for both); both warmed up first, then timed round
by round in alternating order (see benchmarks/benchlib.py). Prints every timing and the ratio ST time / our
time, the median over rounds (>= 1.0 means we are at least as fast).

    python benchmarks/bench_encode.py [--model PATH] [--batch-size 64] [--rounds 5] [--require 1.0]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchlib import interleaved, parse_bench_args, report, setup_run, st_autocast  # noqa: E402  (benchmarks/benchlib.py)

from nlp_contrastive.data.loading import load_split  # noqa: E402
from nlp_contrastive.modeling import Encoder, resolve_model_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_bench_args(__doc__, argv, rounds=5)
    bf16, _ = setup_run(args)
    from sentence_transformers import SentenceTransformer

    rows = load_split("stsb", "test")
    sentences = rows["sentence1"][:] + rows["sentence2"][:]
    path = resolve_model_path(args.model)
    ours = Encoder.from_pretrained(path)
    st = SentenceTransformer(str(path), device="cpu")
    print(f"{len(sentences)} sentences ({len(set(sentences))} distinct), batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, model {path}")

    def run_ours():
        return ours.encode(sentences, batch_size=args.batch_size, show_progress_bar=False)

    def run_st():
        with st_autocast(bf16):
            return st.encode(sentences, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)

    a, b = run_ours(), run_st()  # warm-up, and a check that both compute the same embeddings
    print(f"max |ours - ST| over all embeddings: {np.abs(a - b).max():.2e}")
    wall, cpu, _ = interleaved([("ours", run_ours), ("sentence-transformers", run_st)], args.rounds)
    ratio = report(wall, cpu, "ours", "sentence-transformers")
    return 1 if args.require is not None and ratio < args.require else 0


if __name__ == "__main__":
    sys.exit(main())
