"""`featx compare --heads all` next to a busy loop, for two featx trees in the same run.

    python benchmarks/bench_compare_busy.py STORE --tree before=/tmp/featx-old --tree after=. \\
        --repeat 2

A child process spins on one core for the whole run (another user's job). Each tree's
``python -m featx compare STORE --heads all`` runs with that tree first on ``PYTHONPATH``,
trees alternating run by run so that a change of machine load hits both alike. Prints one JSON
line per run: wall seconds, CPU seconds of the compare process (user + system), the run-queue
count of other processes at the start, the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a featx tree")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--heads", default="all")
    ap.add_argument("--no-busy", action="store_true", help="no busy loop beside the runs")
    a = ap.parse_args(argv)

    trees = [t.split("=", 1) for t in a.tree]
    spin = None
    if not a.no_busy:
        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for r in range(a.repeat):
            for name, path in trees:
                env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
                cmd = [sys.executable, "-m", "featx", "compare", a.store, "--heads", a.heads]
                with open("/proc/loadavg") as f:
                    runq = f.read().split()[3]
                load = os.getloadavg()[0]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                row = {
                    "tree": name,
                    "run": r + 1,
                    "rc": res.returncode,
                    "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "busy_loop": spin is not None,
                    "run_queue_at_start": runq,
                    "load1_at_start": round(load, 2),
                }
                if res.returncode:
                    row["stderr"] = res.stderr[-400:]
                print(json.dumps(row), flush=True)
                print(res.stdout, file=sys.stderr, flush=True)
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
