"""What Matryoshka costs on top of a GradCache InfoNCE step, ours vs sentence-transformers, in one session.

Each side times one training step (forward + backward, no optimizer) of the bundled all-MiniLM-L6-v2 on the same
STS-B train pairs, global batch `--batch` cached in mini-batches of `--mini-batch`, in two forms: the cached
in-batch loss alone, and that loss wrapped in Matryoshka over dims 384/256/128/64/32 (ours: CachedLoss(
MatryoshkaLoss(InfoNCELoss)), also with self_distill; sentence-transformers: MatryoshkaLoss(
CachedMultipleNegativesRankingLoss)). The result is each side's overhead ratio (Matryoshka step / plain step), so
the two libraries' absolute speeds do not enter it. Rounds interleave all forms (benchlib), same precision (fp32
unless `bf16: auto` picks bf16 for both), same texts, same max_seq_length, both with their own tokenization inside
the timed step.

    python benchmarks/bench_matryoshka.py [--batch 128] [--mini-batch 32] [--rounds 4] [--threads N]
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("NLPC_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchlib import bench_parser, interleaved, setup_run  # noqa: E402

from nlp_contrastive.data.loading import load_split  # noqa: E402

DIMS = [384, 256, 128, 64, 32]


def stsb_pairs(count: int) -> tuple[list[str], list[str]]:
    rows = load_split("stsb", "train").select(range(count))
    return rows["sentence1"], rows["sentence2"]


def main() -> int:
    parser = bench_parser(__doc__, rounds=4)
    parser.add_argument("--batch", type=int, default=128, help="pairs per step (the cached global batch)")
    parser.add_argument("--mini-batch", type=int, default=32, help="rows per cached forward")
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()
    bf16, _ = setup_run(args)

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import losses as st_losses

    from nlp_contrastive.losses import InfoNCELoss, MatryoshkaLoss
    from nlp_contrastive.losses.cached import CachedLoss
    from nlp_contrastive.modeling import Encoder, resolve_model_path

    anchors, positives = stsb_pairs(args.batch)
    ours_model = Encoder.from_pretrained(args.model).train()
    ours_model.max_seq_length = args.max_seq_length
    inner = InfoNCELoss(temperature=0.05)
    ours_losses = {"ours plain": CachedLoss(inner, mini_batch_size=args.mini_batch),
                   "ours matryoshka": CachedLoss(MatryoshkaLoss(inner, dims=DIMS), mini_batch_size=args.mini_batch),
                   "ours matryoshka+sd": CachedLoss(MatryoshkaLoss(inner, dims=DIMS, self_distill=1.0),
                                                    mini_batch_size=args.mini_batch)}

    st_model = SentenceTransformer(resolve_model_path(args.model), device="cpu")
    st_model.max_seq_length = args.max_seq_length
    st_model.train()
    st_plain = st_losses.CachedMultipleNegativesRankingLoss(st_model, scale=20.0, mini_batch_size=args.mini_batch,
                                                            show_progress_bar=False)
    st_wrapped = st_losses.MatryoshkaLoss(
        st_model, st_losses.CachedMultipleNegativesRankingLoss(st_model, scale=20.0, mini_batch_size=args.mini_batch,
                                                               show_progress_bar=False), DIMS)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def ours_step(loss):
        def run():
            ours_model.zero_grad(set_to_none=True)
            features = {"anchor": ours_model.tokenize(anchors), "positive": ours_model.tokenize(positives)}
            with autocast():
                value = loss(ours_model, features)
            value.backward()
            return float(value.detach())
        return run

    def st_step(loss):
        def run():
            st_model.zero_grad(set_to_none=True)
            features = [st_model.preprocess(anchors), st_model.preprocess(positives)]
            with autocast():
                value = loss(features, None)
            value.backward()
            return float(value.detach())
        return run

    sides = [(name, ours_step(loss)) for name, loss in ours_losses.items()]
    sides += [("st plain", st_step(st_plain)), ("st matryoshka", st_step(st_wrapped))]
    for _, run in sides:  # warm-up: first-call allocations and lazy imports are not what we measure
        run()
    print(f"batch {args.batch} pairs, mini-batch {args.mini_batch}, max_seq_length {args.max_seq_length}, "
          f"dims {DIMS}, {args.rounds} rounds", flush=True)
    wall, cpu, _ = interleaved(sides, args.rounds)

    def overhead(times: dict, wrapped: str, plain: str) -> float:
        return statistics.median(w / p for w, p in zip(times[wrapped], times[plain], strict=True))

    rows = [("ours: CachedLoss(Matryoshka(InfoNCE))", "ours matryoshka", "ours plain"),
            ("ours: same + self_distill 1.0", "ours matryoshka+sd", "ours plain"),
            ("ST: MatryoshkaLoss(CachedMNRL)", "st matryoshka", "st plain")]
    print("\n| Matryoshka on a GradCache step | wall / plain cached step | CPU s / plain cached step |\n|---|---|---|")
    for label, wrapped, plain in rows:
        w, c = overhead(wall, wrapped, plain), overhead(cpu, wrapped, plain)
        print(f"| {label} | {w:.3f} ({(w - 1) * 100:+.1f}%) | {c:.3f} ({(c - 1) * 100:+.1f}%) |")
    for name in wall:
        print(f"{name:<20} median {statistics.median(wall[name]):6.2f} s wall, {statistics.median(cpu[name]):6.2f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
