"""Store benchmark: write overhead, read throughput, and the no-op re-run of an unchanged source.

    python benchmarks/bench_store.py --files 20000 --rows 50000 --dim 2048

- ``write``: a real extraction (efficientnet_lite0 at 32 px, so the model is cheap and the
  store's share is as large as it gets). Parts are written on a background thread, so two
  figures: the time that thread spent writing parts (``parts_seconds``, overlapped with the
  model) and the time the run actually waited on the store (``waited_seconds``: part writes it
  had to wait for, plus the final commit, from ``ExtractResult.store_seconds``). The store's
  share of the run is the second over the run's seconds.
- ``read``: ``load_features`` of a ``rows`` x ``dim`` float32 store, in GB/s (page cache warm,
  as after a first read; the first read is reported too).
- ``noop``: the second ``featx extract`` over ``files`` unchanged files, in-process and as a CLI
  command (the CLI figure includes Python and torch start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_files(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / f"{i:06d}.png")


def bench_write_and_noop(root: Path, store: Path) -> dict:
    import featx.store as st
    from featx.extraction import ExtractOptions, extract

    spent = {"parts": 0.0, "commit": 0.0}
    orig_part, orig_commit = st.StoreWriter.write_part, st.StoreWriter.commit

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t

        return wrapper

    st.StoreWriter.write_part = timed("parts", orig_part)
    st.StoreWriter.commit = timed("commit", orig_commit)
    try:
        opts = ExtractOptions(batch_size=256, workers=2, device="cpu")
        t0 = time.perf_counter()
        r = extract(str(root), "efficientnet_lite0", image_size=32, store=store, options=opts)
        total = time.perf_counter() - t0
    finally:
        st.StoreWriter.write_part, st.StoreWriter.commit = orig_part, orig_commit
    t0 = time.perf_counter()
    again = extract(str(root), "efficientnet_lite0", image_size=32, store=store, options=opts)
    noop_lib = time.perf_counter() - t0
    assert again.noop
    cmd = [
        sys.executable,
        "-m",
        "featx.cli",
        "extract",
        str(root),
        "-b",
        "efficientnet_lite0",
        "--image-size",
        "32",
        "--store",
        str(store),
        "-q",
        "--json",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    noop_cli = time.perf_counter() - t0
    assert json.loads(out.stdout)["noop"]
    return {
        "write": {
            "images": r.n_items,
            "seconds": total,
            "parts_seconds": spent["parts"],
            "commit_seconds": spent["commit"],
            "waited_seconds": r.store_seconds,
            "store_share": r.store_seconds / total,
            "store_share_if_parts_were_synchronous": (spent["parts"] + spent["commit"]) / total,
        },
        "noop": {"files": r.n_items, "library_seconds": noop_lib, "cli_seconds": noop_cli},
    }


def bench_read(tmp: Path, rows: int, dim: int) -> dict:
    from featx.store import Rows, StoreConfig, StoreWriter, load_features

    path = tmp / "big.h5"
    cfg = StoreConfig(source={"kind": "bench"}, backbone={"name": "bench"})
    rng = np.random.default_rng(0)
    keys = [f"{i:08d}" for i in range(rows)]
    t0 = time.perf_counter()
    with StoreWriter(path, cfg) as w:
        where = {}
        step = 8192
        for a in range(0, rows, step):
            k = keys[a : a + step]
            part = w.write_part(
                Rows(
                    keys=k,
                    features=rng.standard_normal((len(k), dim), dtype=np.float32),
                    size=[0] * len(k),
                    mtime_ns=[0] * len(k),
                    sha256=[""] * len(k),
                    failed_keys=[],
                    failed_reasons=[],
                    failed_size=[],
                    failed_mtime_ns=[],
                    failed_sha256=[],
                )
            )
            where.update({key: (str(part), j) for j, key in enumerate(k)})
        w.commit(
            rows=where,
            failed={},
            labels={},
            split={},
            classes=(),
            fingerprints={k: (0, 0, "") for k in keys},
            attrs={"dim": dim},
        )
    write_s = time.perf_counter() - t0
    nbytes = rows * dim * 4
    out = {"rows": rows, "dim": dim, "gb": nbytes / 1e9, "write_gb_per_s": nbytes / 1e9 / write_s}
    for label in ("first_read", "warm_read"):
        t0 = time.perf_counter()
        fs = load_features(path)
        s = time.perf_counter() - t0
        out[f"{label}_gb_per_s"] = nbytes / 1e9 / s
        del fs
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="featx store benchmark")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=2048)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="featx-store-bench-"))
    try:
        make_files(tmp / "src", a.files)
        res = bench_write_and_noop(tmp / "src", tmp / "s.h5")
        res["read"] = bench_read(tmp, a.rows, a.dim)
        import h5py

        res["versions"] = {
            "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version,
            "cores": os.cpu_count(),
        }
        print(json.dumps({"benchmark": "store", **res}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
