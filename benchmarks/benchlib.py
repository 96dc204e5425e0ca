"""Shared by the eval/ benchmark scripts: interleaved timing of two sides and the report.

The machine may be shared, so one side can be slowed by someone else's job at any moment. Each round
times both sides back to back (ABBA order across rounds), and the headline is the median over rounds of
the per-round ratio: a burst of outside load spoils one round, not the result. Process CPU time is
reported as well, since other processes' load inflates wall time but barely our own CPU seconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(sides: list[tuple[str, Callable[[], object]]], rounds: int
                ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict]:
    """Run each side once per round, order alternating (ABBA...).

    Returns ({side: [wall seconds]}, {side: [process CPU seconds]}, {side: last return value}).
    """
    wall: dict[str, list[float]] = {name: [] for name, _ in sides}
    cpu: dict[str, list[float]] = {name: [] for name, _ in sides}
    outputs: dict[str, object] = {}
    for r in range(rounds):
        for name, run in (sides if r % 2 == 0 else sides[::-1]):
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[name] = run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            print(f"  round {r + 1}: {name:<22} {wall[name][-1]:7.2f} s wall  {cpu[name][-1]:7.2f} s CPU", flush=True)
    return wall, cpu, outputs


def report(wall: dict[str, list[float]], cpu: dict[str, list[float]], ours: str, baseline: str) -> float:
    """Print per-side summaries; return the median over rounds of baseline time / our time (wall)."""
    for name in (ours, baseline):
        print(f"{name:<22} wall: median {statistics.median(wall[name]):7.2f} s, best {min(wall[name]):7.2f} s, "
              f"total {sum(wall[name]):7.2f} s   CPU total {sum(cpu[name]):7.2f} s   ({len(wall[name])} runs)")
    per_round = [b / o for b, o in zip(wall[baseline], wall[ours], strict=True)]
    ratio = statistics.median(per_round)
    print(f"per-round ratios: {', '.join(f'{r:.2f}' for r in per_round)}")
    print(f"ratio ({baseline} time / {ours} time): {ratio:.2f}x (median of rounds); "
          f"{sum(wall[baseline]) / sum(wall[ours]):.2f}x on wall totals; "
          f"{sum(cpu[baseline]) / sum(cpu[ours]):.2f}x on CPU totals")
    return ratio


def peak_rss_mib() -> float:
    """This process's own peak RSS in MiB: VmHWM of its address space where /proc exists.

    Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries the spawning parent's peak across fork and exec, so a
    child started by a benchmark parent holding 1 GB would report at least 1 GB (measured: a 13 MiB child
    reported 1513 MiB after its parent touched 1.5 GB).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux KiB; no /proc: macOS etc.


def run_measured(command: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """(wall seconds, the child's own peak RSS MiB, its CPU seconds) of one Python child process.

    `command` runs `sys.executable SCRIPT|-m MODULE ...`, possibly behind wrappers (flock, nice); the Python part is
    started through benchmarks/peak_rss.py, which writes the child's own peak (see `peak_rss_mib`). CPU seconds
    (user + system, os.wait4) are what to compare on a shared machine: wall time depends on the neighbours.
    """
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    at = command.index(sys.executable) + 1
    with tempfile.TemporaryDirectory(prefix="peak-rss-") as tmp:
        report = Path(tmp) / "peak_rss_mib"
        wrapped = [*command[:at], str(Path(__file__).with_name("peak_rss.py")), str(report), *command[at:]]
        start = time.perf_counter()
        process = subprocess.Popen(wrapped, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"child failed ({code}): {' '.join(command)}")
        return seconds, float(report.read_text()), usage.ru_utime + usage.ru_stime


def cpu_class() -> str:
    """The CPU class a benchmark's numbers belong to: model name, native bf16 or not, torch's kernel level."""
    import platform

    import torch

    from nlp_contrastive.precision import cpu_bf16_support, read_cpu_model

    bf16, evidence = cpu_bf16_support()
    return (f"{read_cpu_model() or platform.processor() or 'unknown CPU'} ({evidence if bf16 else 'no native bf16'}; "
            f"torch kernels {torch.backends.cpu.get_cpu_capability()})")


def bench_parser(doc: str, rounds: int):
    """The flags both encode/eval benchmarks take: --model, --batch-size, --rounds, --require, --threads."""
    import argparse

    from nlp_contrastive.modeling import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=rounds, help="timed runs per side")
    parser.add_argument("--require", type=float, help="exit 1 if the ratio is below this")
    parser.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's choice)")
    return parser


def setup_run(args) -> tuple[bool, str]:
    """Apply --threads; print the machine line every table needs (CPU class, cores, threads, load, precision).

    Returns (bf16, reason): both sides encode in the precision `bf16: auto` picks here, so neither is flattered.
    """
    import os

    import torch

    from nlp_contrastive.precision import resolve_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    choice = resolve_bf16("auto", use_cpu=not torch.cuda.is_available())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_class()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load:.1f}; "
          f"precision for both sides: {'bf16' if choice.bf16 else 'fp32'} ({choice.reason})", flush=True)
    return choice.bf16, choice.reason


def st_autocast(bf16: bool):
    """The same autocast our encode uses, around sentence-transformers' encode."""
    import torch

    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16, enabled=bf16)


def parse_bench_args(doc: str, argv: list[str] | None, rounds: int):
    return bench_parser(doc, rounds).parse_args(argv)
