"""An unchanged rerun of a large CSV-manifest source: what ``featx extract`` costs when nothing
changed (#21).

Writes N empty files and a manifest (``path,label``), then a store for them through the normal
writer with the configuration ``featx extract MANIFEST -b resnet18 --weights none --dtype
float16`` uses (random 512-d rows: a no-op never reads them), optionally made segmented by one
small commit, and times the real command (a child process: start-up, scan, stat of every file,
the row index, the plan) with ``--json``.

    python benchmarks/bench_noop.py --rows 100000 --dir /tmp/noop
    python benchmarks/bench_noop.py --rows 1000000 --add 2   # then two runs of +1 real image
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

import numpy as np


def make_files(root: Path, n: int) -> Path:
    manifest = root / "manifest.csv"
    if manifest.exists():
        return manifest
    lines = ["path,label"]
    for i in range(n):
        d = root / "img" / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:07d}.jpg").touch()
        lines.append(f"img/d{i // 1000:04d}/f{i:07d}.jpg,c{i % 10}")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def make_store(manifest: Path, store: Path, segmented: bool) -> None:
    from featx.backbones import load_backbone
    from featx.extraction import store_config
    from featx.sources import open_source
    from featx.store import Rows, StoreWriter

    src = open_source(str(manifest))
    bb = load_backbone("resnet18", weights="none")
    cfg = store_config(src, bb, "float16")
    items = list(src.items)
    keys = [it.key for it in items]
    rng = np.random.default_rng(0)
    attrs = {"backbone": bb.name, "weights": bb.weights, "dim": int(bb.dim)}
    with StoreWriter(store, cfg) as w:
        rows = {}
        for a in range(0, len(keys), 100_000):
            b = min(len(keys), a + 100_000)
            sub = items[a:b]
            X = rng.normal(size=(b - a, bb.dim)).astype(np.float16)
            part = w.write_part(
                Rows(keys[a:b], X, [it.size for it in sub], [it.mtime_ns for it in sub],
                     [it.sha256 for it in sub], [], [], [], [], [])
            )  # fmt: skip
            rows.update({k: (str(part), i) for i, k in enumerate(keys[a:b])})
        last = keys[-1]
        if segmented:  # leave the last row out: a second, small commit adds it as a segment
            rows.pop(last)
        w.commit(
            rows=rows,
            failed={},
            labels={it.key: it.label for it in items},
            split={it.key: it.split for it in items},
            classes=src.classes,
            fingerprints={it.key: (it.size, it.mtime_ns, it.sha256) for it in items},
            attrs=attrs,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dir", default="/tmp/noop")
    ap.add_argument("--repeat", type=int, default=2, help="no-op reruns")
    ap.add_argument("--add", type=int, default=0, help="then this many runs of +1 image each")
    args = ap.parse_args()
    root = Path(args.dir) / str(args.rows)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = make_files(root, args.rows)
    print(json.dumps({"rows": args.rows, "files_s": round(time.perf_counter() - t0, 1)}))
    store = root / "store.h5"
    cmd = [sys.executable, "-m", "featx", "extract", str(manifest), "-b", "resnet18",
           "--weights", "none", "--dtype", "float16", "--store", str(store),
           "--json", "-q"]  # fmt: skip
    if not store.exists():
        t0 = time.perf_counter()
        make_store(manifest, store, segmented=True)
        print(json.dumps({"store_s": round(time.perf_counter() - t0, 1)}), flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)  # adds 1 row
        print(json.dumps({"first run": json.loads(out.stdout)}), flush=True)
    runs = [("no-op", rep + 1) for rep in range(args.repeat)]
    runs += [("+1 image", rep + 1) for rep in range(args.add)]
    for what, rep in runs:
        if what == "+1 image":  # a real image file and its manifest row: one new row
            add_image(root, manifest)
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time and memory
            wall = time.perf_counter() - t0
            out.seek(0)
            res = json.loads(out.read())
        print(json.dumps({"rows": args.rows, "run": what, "repeat": rep, "noop": res["noop"],
                          "n_new": res["n_new"], "wall_s": round(wall, 2),
                          "featx_seconds": round(res["seconds"], 2),
                          "store_seconds": round(res["store_seconds"], 3),
                          "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                          "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
                          "peak_rss_mb": round(usage.ru_maxrss / 1024),
                          "load": os.getloadavg()[0]}),
              flush=True)  # fmt: skip


def add_image(root: Path, manifest: Path) -> None:
    """One new 32x32 PNG under ``img/added/`` and its row at the end of the manifest."""
    from PIL import Image

    folder = root / "img" / "added"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"a{time.time_ns()}.png"
    rng = np.random.default_rng(len(list(folder.iterdir())))
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    with open(manifest, "a") as fh:
        fh.write(f"img/added/{name},c0\n")


if __name__ == "__main__":
    main()
