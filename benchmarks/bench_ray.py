"""``--engine ray`` against the local engine on the same data, and the driver's store write rate.

    python benchmarks/make_jpegs.py /tmp/jpegs --n 512
    python benchmarks/bench_ray.py /tmp/jpegs --repeat 2

Rows:

- ``local``: ``featx.extract`` with the local engine (default workers) into a fresh store.
- ``ray``: the same call with ``engine="ray"`` on a local Ray runtime started once by the
  benchmark (``ray.init(num_cpus=os.cpu_count())``, its start-up reported as ``ray_init_s``),
  ``--actors`` model actors of ``--cpus-per-actor`` CPUs; the rest of the CPUs decode.
  Each run still creates its actor pool (process start, torch import, model from the object
  store), which is part of the overhead a user pays per ``featx extract``.
  ``overhead_ratio`` = local images/s over Ray images/s of the same repeat (> 1: Ray slower).
- ``store_write``: the single writer's rate, :meth:`featx.store.StoreWriter.write_part` of
  ``--part-rows`` rows of float32 features per ``--dims`` value (MB/s and rows/s), and the final
  commit's merge rate: the ceiling on how many images/s one driver can take in, whatever the
  cluster behind it.

Both engines must give the same store: the largest absolute feature difference is reported.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def run(src: str, store: Path, model: str, image_size: int | None, **opts) -> dict:
    from featx.extraction import extract
    from featx.options import ExtractOptions

    if store.exists():
        store.unlink()
    t = time.perf_counter()
    r = extract(
        src,
        model,
        image_size=image_size,
        store=store,
        options=ExtractOptions(**opts),
    )
    seconds = time.perf_counter() - t
    return {"seconds": round(seconds, 3), "images_per_s": round(r.n_new / seconds, 1)}


def store_write(dims: list[int], part_rows: int, parts: int, tmp: Path) -> list[dict]:
    from featx.store import Rows, StoreConfig, StoreWriter

    out = []
    rng = np.random.default_rng(0)
    for dim in dims:
        path = tmp / f"w{dim}.h5"
        config = StoreConfig(source={"kind": "bench"}, backbone={"dim": dim})
        feats = rng.standard_normal((part_rows, dim)).astype(np.float32)
        with StoreWriter(path, config) as w:
            t = time.perf_counter()
            rows: dict[str, tuple[str, int]] = {}
            for p in range(parts):
                keys = [f"{p:04d}/{i:07d}" for i in range(part_rows)]
                part = w.write_part(
                    Rows(
                        keys=keys,
                        features=feats,
                        size=[1] * part_rows,
                        mtime_ns=[1] * part_rows,
                        sha256=[""] * part_rows,
                        failed_keys=[],
                        failed_reasons=[],
                        failed_size=[],
                        failed_mtime_ns=[],
                        failed_sha256=[],
                    )
                )
                rows.update({k: (str(part), r) for r, k in enumerate(keys)})
            t_parts = time.perf_counter() - t
            t = time.perf_counter()
            w.commit(
                rows=rows,
                failed={},
                labels=dict.fromkeys(rows, -1),
                split=dict.fromkeys(rows, ""),
                classes=(),
                fingerprints=dict.fromkeys(rows, (1, 1, "")),
                attrs={"dim": dim},
            )
            t_commit = time.perf_counter() - t
        n = part_rows * parts
        mb = n * dim * 4 / 1e6
        out.append(
            {
                "dim": dim,
                "rows": n,
                "part_mb_per_s": round(mb / t_parts, 1),
                "part_rows_per_s": round(n / t_parts),
                "commit_mb_per_s": round(mb / t_commit, 1),
                "commit_rows_per_s": round(n / t_commit),
            }
        )
        path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--dims", default="512,1280,2048,4096")
    ap.add_argument("--part-rows", type=int, default=2048)
    ap.add_argument("--parts", type=int, default=4)
    args = ap.parse_args()

    import ray
    import torch

    from featx.store import load_features

    tmp = Path(tempfile.mkdtemp(prefix="featx-bench-ray-"))
    try:
        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
        ray_init = time.perf_counter() - t
        rows = []
        for rep in range(args.repeat):
            common = {"batch_size": args.batch_size, "device": "cpu"}
            loc = run(args.folder, tmp / "local.h5", args.model, args.image_size, **common)
            ry = run(
                args.folder,
                tmp / "ray.h5",
                args.model,
                args.image_size,
                engine="ray",
                actors=args.actors,
                cpus_per_actor=args.cpus_per_actor,
                **common,
            )
            rows.append(
                {
                    "repeat": rep,
                    "local": loc,
                    "ray": ry,
                    "overhead_ratio": round(loc["images_per_s"] / ry["images_per_s"], 2),
                }
            )
        a, b = load_features(tmp / "local.h5"), load_features(tmp / "ray.h5")
        assert list(a.keys) == list(b.keys)
        diff = float(np.abs(a.X - b.X).max())
        ray.shutdown()
        writes = store_write(
            [int(d) for d in args.dims.split(",")], args.part_rows, args.parts, tmp
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "ray": ray.__version__,
                    "loadavg_end": os.getloadavg()[0],
                },
                "args": vars(args),
                "n_images": len(a.keys),
                "ray_init_s": round(ray_init, 2),
                "runs": rows,
                "max_abs_feature_diff": diff,
                "store_write": writes,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
