"""Run a Python script or module in this process and write its own peak RSS (MiB) to a file at exit.

    python benchmarks/peak_rss.py REPORT_FILE (-m MODULE | SCRIPT) [ARGS ...]

Why: a child's `getrusage` / `os.wait4` ru_maxrss keeps the peak of the process that spawned it (Linux carries
the hiwater mark across fork/vfork and exec), so a benchmark parent holding 1 GB makes every child report at
least 1 GB. VmHWM in /proc/self/status belongs to the child's own address space. `benchlib.run_measured` starts
children through this file.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
from pathlib import Path


def main() -> None:
    from benchlib import peak_rss_mib  # sys.path[0] is this file's folder, benchmarks/

    report, target, *rest = sys.argv[1:]
    atexit.register(lambda: Path(report).write_text(f"{peak_rss_mib()}\n"))
    if target == "-m":  # sys.path[0] as `python -m MODULE` / `python SCRIPT` would have it
        module, *rest = rest
        sys.argv, sys.path[0] = [module, *rest], os.getcwd()
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv, sys.path[0] = [target, *rest], str(Path(target).resolve().parent)
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
