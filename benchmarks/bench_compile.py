"""Is `torch.compile` worth it for training here? Eager vs compiled (dynamic shapes) training steps of the encoder.

    python benchmarks/bench_compile.py [--batch-size 16] [--steps 20] [--threads 2]

Both sides are the same model (fresh copies of the same weights), the same fp32 steps (forward, mean pooling, a
stand-in loss, backward, fused AdamW) on the same random STS-B train batches padded to their own longest row, in
one process. The compiled side first runs its warm-up steps (the compile, counted and printed: a recipe pays it
once per run); then each timed step runs eager and compiled back to back, so outside load hits both. Prints the
machine line, the compile seconds, both sides' CPU seconds over the timed steps and their ratio, and the break-even
number of steps (compile seconds / seconds saved per step).
"""

from __future__ import annotations

import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from benchlib import bench_parser, setup_run  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from nlp_contrastive.data.loading import load_split  # noqa: E402
from nlp_contrastive.modeling import resolve_model_path  # noqa: E402

WARM_UP_STEPS = 4  # dynamic-shape compiles settle after a few distinct lengths


def _side(path, compiled: bool):
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    return (torch.compile(model, dynamic=True) if compiled else model), optimizer


def _step(model, optimizer, features) -> None:
    hidden = model(**features).last_hidden_state
    mask = features["attention_mask"].unsqueeze(-1).float()
    embeddings = (hidden * mask).sum(1) / mask.sum(1)
    embeddings.pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, rounds=1)
    parser.set_defaults(batch_size=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side")
    args = parser.parse_args(argv)
    setup_run(args)
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = load_split("stsb", "train")
    texts = rows["sentence1"][:] + rows["sentence2"][:]
    rng = random.Random(0)
    batches = [tokenizer(rng.sample(texts, args.batch_size), padding=True, truncation=True, max_length=256,
                         return_tensors="pt") for _ in range(WARM_UP_STEPS + args.steps)]
    torch.manual_seed(0)
    eager, compiled = _side(path, False), _side(path, True)
    start = time.perf_counter()
    for features in batches[:WARM_UP_STEPS]:
        _step(*compiled, features)
    compile_seconds = time.perf_counter() - start
    for features in batches[:2]:
        _step(*eager, features)
    cpu = {"eager": 0.0, "compiled": 0.0}
    for features in batches[WARM_UP_STEPS:]:
        for name, side in (("eager", eager), ("compiled", compiled)):
            start_cpu = time.process_time()
            _step(*side, features)
            cpu[name] += time.process_time() - start_cpu
    saved = (cpu["eager"] - cpu["compiled"]) / args.steps
    print(f"batch {args.batch_size}, {args.steps} timed steps: compile warm-up {compile_seconds:.1f} s wall "
          f"({WARM_UP_STEPS} steps); eager {cpu['eager']:.1f} CPU s, compiled {cpu['compiled']:.1f} CPU s, "
          f"eager/compiled {cpu['eager'] / cpu['compiled']:.2f}; break-even after "
          + (f"{compile_seconds / saved:.0f} steps" if saved > 0 else "never (compiled is not faster)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
