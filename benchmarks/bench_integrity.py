"""What integrity costs: Fletcher-32 chunk checksums and the fault-safe writer (issue #14).

    python benchmarks/bench_integrity.py --rows 20000 --dim 2048 --repeats 3

Writes a ``rows`` x ``dim`` float32 feature matrix the way the store's commit does (~8 MB row
chunks, LZF, 8192-row blocks, fsync) in four variants, alternating them ``repeats`` times so a
noisy machine hits all alike, and reports the median seconds of each and ratios against the
plain one:

- ``plain``: HDF5's own POSIX driver, no checksum (featx before #14);
- ``fletcher32``: the same with HDF5's Fletcher-32 chunk checksum;
- ``sink``: no checksum, written through ``featx.store.layout._Sink`` (h5py's file-object driver);
- ``sink+fletcher32``: what featx writes now.

Then the read side: ``load_features``-style full read with and without checksums, and
``featx verify`` (``verify_store``) of a real store of the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write(path: Path, X: np.ndarray, fletcher32: bool, sink: bool) -> float:
    import h5py

    from featx.store.layout import CHUNK_BYTES, COPY_ROWS, _Sink

    n, dim = X.shape
    t = time.perf_counter()
    s = _Sink(path) if sink else None
    f = h5py.File(s if sink else path, "w", libver=("earliest", "v110"))
    rows = max(1, min(n, CHUNK_BYTES // (dim * 4)))
    ds = f.create_dataset(
        "features",
        shape=X.shape,
        dtype="float32",
        chunks=(rows, dim),
        compression="lzf",
        fletcher32=fletcher32,
    )
    for a in range(0, n, COPY_ROWS):
        ds[a : a + COPY_ROWS] = X[a : a + COPY_ROWS]
    f.close()
    if sink:
        os.fsync(s.fileno())
        s.close()
    else:
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    return time.perf_counter() - t


def read(path: Path) -> float:
    import h5py

    t = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["features"]
        X = np.empty(ds.shape, dtype=np.float32)
        ds.read_direct(X)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    # Features of a real backbone after ReLU + pooling: non-negative, some exact zeros.
    X = np.maximum(rng.normal(size=(a.rows, a.dim)), 0).astype(np.float32)
    variants = {
        "plain": (False, False),
        "fletcher32": (True, False),
        "sink": (False, True),
        "sink+fletcher32": (True, True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    reads: dict[str, list[float]] = {"plain": [], "fletcher32": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        for _ in range(a.repeats):
            for name, (fl, sk) in variants.items():
                p = Path(d) / f"{name}.h5"
                times[name].append(write(p, X, fl, sk))
            for name in reads:
                reads[name].append(read(Path(d) / f"{name}.h5"))
        from featx.store import Rows, StoreConfig, StoreWriter, verify_store

        store = Path(d) / "store.h5"
        keys = [f"{i:07d}.png" for i in range(a.rows)]
        n = a.rows
        with StoreWriter(store, StoreConfig(source={"b": 1}, backbone={"b": 1})) as w:
            part = w.write_part(Rows(keys, X, [1] * n, [1] * n, [""] * n, [], [], [], [], []))
            t = time.perf_counter()
            w.commit(
                rows={k: (str(part), i) for i, k in enumerate(keys)},
                failed={},
                labels={},
                split={},
                classes=(),
                fingerprints={k: (1, 1, "") for k in keys},
                attrs={"dim": a.dim},
            )
            commit_s = time.perf_counter() - t
        t = time.perf_counter()
        rep = verify_store(store)
        verify_s = time.perf_counter() - t
        assert rep.ok, rep.problems
    med = {k: statistics.median(v) for k, v in times.items()}
    gb = X.nbytes / 1e9
    out = {
        "rows": a.rows,
        "dim": a.dim,
        "gb": round(gb, 3),
        "write_seconds_median": {k: round(v, 3) for k, v in med.items()},
        "write_ratio_vs_plain": {k: round(v / med["plain"], 3) for k, v in med.items()},
        "read_gb_per_s_median": {k: round(gb / statistics.median(v), 2) for k, v in reads.items()},
        "commit_seconds_real_store": round(commit_s, 3),
        "verify_gb_per_s": round(gb / verify_s, 2),
        "verify_seconds": round(verify_s, 3),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
