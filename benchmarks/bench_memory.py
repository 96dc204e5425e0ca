"""Peak memory of InfoNCE training steps: plain global batch 64 vs GradCache global batch 1024 (mini-batch 64).

Each configuration runs in a fresh process (peak RSS is per process and never goes down) doing `--steps` full
training steps (forward, backward, AdamW step) of the bundled all-MiniLM-L6-v2 on STS-B sentence pairs, and
reports its own peak RSS (VmHWM, benchlib.peak_rss_mib), the peak right after loading (model + libraries,
~1.1 GB that both share) and the difference: the memory training itself adds (activations, gradients, optimizer state). The ratio
and its target compare that training memory, not whole-process RSS, which the libraries dominate.
Target: cached-1024 training memory <= 1.3 x plain-64 training memory.

Only short pairs (both sentences <= --max-length tokens) are used: activation memory follows the widest
mini-batch, and the widest of 32 cached mini-batches drawn from all STS-B lengths is ~2x wider than a single
64-pair batch, which would measure sentence lengths rather than caching. (For mixed lengths, bound each
mini-batch with CachedLoss(max_tokens_per_mini_batch=...) instead.)

    python benchmarks/bench_memory.py [--steps 2] [--threads 1] [--max-length 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import peak_rss_mib  # benchmarks/benchlib.py, beside this script

os.environ.setdefault("NLPC_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
TARGET_RATIO = 1.3
CONFIGS = {"plain": {"batch": 64, "mini_batch": None}, "cached": {"batch": 1024, "mini_batch": 64}}


def short_stsb_pairs(tokenizer, count: int, max_length: int) -> list[tuple[str, str]]:
    """The first `count` STS-B train pairs whose two sentences are at most `max_length` tokens long."""
    from nlp_contrastive.data.loading import load_split

    pairs = []
    for row in load_split("stsb", "train"):
        pair = (row["sentence1"], row["sentence2"])
        if max(len(ids) for ids in tokenizer(list(pair))["input_ids"]) <= max_length:
            pairs.append(pair)
    if len(pairs) < count:
        raise SystemExit(f"STS-B train has {len(pairs)} pairs of <= {max_length} tokens, {count} needed: raise "
                         "--max-length or lower --steps")
    return pairs[:count]


def child(name: str, steps: int, threads: int, max_length: int) -> dict:
    """One configuration's training steps; returns its measurements."""
    import torch

    from nlp_contrastive.losses import InfoNCELoss
    from nlp_contrastive.losses.cached import CachedLoss
    from nlp_contrastive.modeling import DEFAULT_MODEL, Encoder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = CONFIGS[name]
    encoder = Encoder.from_pretrained(DEFAULT_MODEL).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=2e-5)
    loss = InfoNCELoss(temperature=0.05)
    cached = CachedLoss(loss, mini_batch_size=config["mini_batch"]) if config["mini_batch"] else None
    pairs = short_stsb_pairs(encoder.tokenizer, config["batch"] * steps, max_length)
    after_load = peak_rss_mib()
    start = time.perf_counter()
    for step in range(steps):
        batch = pairs[step * config["batch"]:(step + 1) * config["batch"]]
        features = {"anchor": encoder.tokenize([a for a, _ in batch]), "positive": encoder.tokenize([p for _, p in batch])}
        if cached is not None:
            value = cached(encoder, features)
        else:
            value = loss(anchor=encoder(**features["anchor"]), positive=encoder(**features["positive"]))
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"name": name, "batch": config["batch"], "mini_batch": config["mini_batch"], "peak_mib": peak_rss_mib(),
            "after_load_mib": after_load, "seconds_per_step": (time.perf_counter() - start) / steps,
            "last_loss": value.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="training steps per configuration (>= 2: AdamW state)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--max-length", type=int, default=16, help="longest sentence used, in tokens")
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads, args.max_length)))
        return
    from benchlib import cpu_class  # benchmarks/benchlib.py, beside this script

    print(f"machine: {cpu_class()}, {os.cpu_count()} cores, torch threads per run {args.threads}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                              "--threads", str(args.threads), "--max-length", str(args.max_length)], env=env, check=True, capture_output=True, text=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'config':<8} {'global batch':>12} {'mini-batch':>10} {'peak RSS MiB':>13} {'after load MiB':>15} "
          f"{'training MiB':>13} {'s/step':>7}")
    for r in results.values():
        print(f"{r['name']:<8} {r['batch']:>12} {str(r['mini_batch'] or '-'):>10} {r['peak_mib']:>13.0f} "
              f"{r['after_load_mib']:>15.0f} {r['peak_mib'] - r['after_load_mib']:>13.0f} {r['seconds_per_step']:>7.1f}")
    plain, cached = results["plain"], results["cached"]
    ratio = (cached["peak_mib"] - cached["after_load_mib"]) / (plain["peak_mib"] - plain["after_load_mib"])
    print(f"training-memory ratio cached-{cached['batch']} / plain-{plain['batch']}: {ratio:.2f} "
          f"(target <= {TARGET_RATIO}: {'OK' if ratio <= TARGET_RATIO else 'FAILED'}); whole-process peak RSS ratio "
          f"{cached['peak_mib'] / plain['peak_mib']:.2f}")
    sys.exit(0 if ratio <= TARGET_RATIO else 1)


if __name__ == "__main__":
    main()
