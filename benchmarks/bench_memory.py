"""Peak memory of ``featx extract`` at several dataset sizes: it must not grow with N.

    python benchmarks/make_jpegs.py /tmp/jpegs256 --n 256
    python benchmarks/make_jpegs.py /tmp/jpegs1024 --n 1024
    python benchmarks/bench_memory.py /tmp/jpegs256 /tmp/jpegs1024 --model resnet18

Each extraction runs in a fresh subprocess (so nothing is shared between sizes) into a fresh
store; the subprocess reports ``getrusage`` peak RSS of itself (the main process: model,
batches, pending features, HDF5 writes). DataLoader workers are not reported separately: on Linux
a forked child inherits its parent's RSS high-water mark, so their ``ru_maxrss`` only repeats the
main process's figure. Prints one JSON object with the peak per size and the ratio of the
largest to the smallest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
from featx.extraction import ExtractOptions, extract
root, model, store, precision, workers = sys.argv[1:6]
r = extract(root, model, weights=None, store=store,
            options=ExtractOptions(device="cpu", precision=precision, workers=int(workers)))
print(json.dumps({
    "images": r.n_items,
    "seconds": round(r.seconds, 2),
    "main_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="featx extraction peak-memory benchmark")
    ap.add_argument("roots", type=Path, nargs="+", help="image folders of increasing size")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="featx-mem-") as tmp:
        for i, root in enumerate(a.roots):
            cmd = [sys.executable, "-c", CHILD, str(root), a.model, f"{tmp}/s{i}.h5"]
            out = subprocess.run(
                [*cmd, a.precision, str(a.workers)], check=True, capture_output=True, text=True
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lo, hi = rows[0], rows[-1]
    print(
        json.dumps(
            {
                "benchmark": "memory",
                "model": a.model,
                "precision": a.precision,
                "workers": a.workers,
                "rows": rows,
                "n_ratio": hi["images"] / lo["images"],
                "main_peak_ratio": round(hi["main_peak_rss_mb"] / lo["main_peak_rss_mb"], 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
