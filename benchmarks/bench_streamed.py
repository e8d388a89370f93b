"""Heads trained from disk: peak memory and accuracy against the in-memory fit (#21).

Runs ``featx fit STORE --head H --max-memory M --json`` in a child process and reports its peak
RSS (``wait4``), fit time, accuracy and the solver line, for each ``--max-memory`` given
(``none``: the default budget, half of this machine's memory).

    python benchmarks/bench_streamed.py STORE --head logreg --max-memory none 64M
    python benchmarks/bench_streamed.py --make /tmp/s.h5 --rows 200000 --dim 256 --sep 0.05

``--make`` first writes a synthetic float16 store of ``--rows`` class blobs (10 classes,
centres ``--sep`` times a standard normal per dimension, unit noise) through the normal writer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(store: str, head: str, max_memory: str | None, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "featx", "fit", store, "--head", head, "--json", *extra]
    if max_memory:
        cmd += ["--max-memory", max_memory]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if status:
            raise SystemExit(f"{cmd} failed:\n{err.read().decode()[-3000:]}")
        res = json.loads(out.read())
    res = res.get("result", res)
    return {
        "head": head,
        "max_memory": max_memory or "default",
        "accuracy": res["accuracy"],
        "fit_seconds": round(res["fit_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "load": os.getloadavg()[0],
        "solver": res.get("solver", ""),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store", nargs="?")
    ap.add_argument("--head", default="logreg")
    ap.add_argument("--max-memory", nargs="+", default=["none"])
    ap.add_argument("--make")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--sep", type=float, default=0.05)
    ap.add_argument("--param", action="append", default=[])
    args = ap.parse_args()
    store = args.store
    if args.make:
        t = _build(Path(args.make), args.rows, args.dim, args.sep)
        print(json.dumps({"built": args.make, "rows": args.rows, "seconds": round(t, 1)}))
        store = args.make
    extra = [x for p in args.param for x in ("--param", p)]
    for mm in args.max_memory:
        print(json.dumps(run(store, args.head, None if mm == "none" else mm, extra)), flush=True)


def _build(path: Path, n: int, dim: int, sep: float) -> float:
    import numpy as np

    from featx.store import Rows, StoreConfig, StoreWriter

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, dim)).astype(np.float32) * sep
    keys = [f"img{i:08d}" for i in range(n)]
    t0 = time.perf_counter()
    cfg = StoreConfig(source={"bench": "streamed"}, backbone={"dim": dim}, dtype="float16")
    with StoreWriter(path, cfg) as w:
        rows = {}
        for a in range(0, n, 50_000):
            b = min(n, a + 50_000)
            y = np.arange(a, b) % 10
            X = (centers[y] + rng.normal(size=(b - a, dim)).astype(np.float32)).astype(np.float16)
            m = b - a
            part = w.write_part(Rows(keys[a:b], X, [1] * m, [1] * m, [""] * m, [], [], [], [], []))
            rows.update({k: (str(part), i) for i, k in enumerate(keys[a:b])})
        w.commit(
            rows=rows,
            failed={},
            labels={k: i % 10 for i, k in enumerate(keys)},
            split={},
            classes=tuple(f"c{c}" for c in range(10)),
            fingerprints={k: (1, 1, "") for k in keys},
            attrs={"dim": dim, "backbone": "synthetic"},
        )
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
