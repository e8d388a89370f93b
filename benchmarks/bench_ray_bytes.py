"""Bytes the driver writes per feature byte: ``--engine ray`` against the local engine (#21).

Extracts the same folder into a fresh store with each engine, in this process (the driver), and
reads the process's ``write_bytes`` from ``/proc/self/io`` (bytes it caused to be written to
storage: parts, segments, the index) before and after each run. Feature bytes are rows x dim x
itemsize. With Ray the workers write the parts themselves and the driver's commit only links
them and writes the index; with the local engine the driver writes every part and then the
commit's segment or file.

    python benchmarks/make_jpegs.py /tmp/jpegs --n 4096
    python benchmarks/bench_ray_bytes.py /tmp/jpegs --model resnet18 --image-size 64

Prints one JSON object per engine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def write_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import ray

    from featx.extraction import extract
    from featx.options import BackboneSpec, ExtractOptions
    from featx.store import store_info

    tmp = Path(tempfile.mkdtemp(prefix="featx-bench-bytes-"))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    spec = BackboneSpec(name=args.model, weights=args.weights, image_size=args.image_size)
    for engine in ("ray", "local"):
        store = tmp / f"{engine}.h5"
        opts = ExtractOptions(engine=engine, batch_size=args.batch_size, device="cpu",
                              dtype=args.dtype, progress=False,
                              **({"actors": 1} if engine == "ray" else {}))  # fmt: skip
        os.sync()
        before, t0, c0 = write_bytes(), time.perf_counter(), time.process_time()
        r = extract(args.folder, spec, store=store, options=opts)
        os.sync()
        written = write_bytes() - before
        info = store_info(store)
        feature_bytes = r.n_items * r.dim * (2 if args.dtype == "float16" else 4)
        print(json.dumps({
            "engine": engine, "rows": r.n_items, "dim": r.dim, "dtype": args.dtype,
            "feature_MB": round(feature_bytes / 1e6, 2),
            "driver_written_MB": round(written / 1e6, 2),
            "driver_bytes_per_feature_byte": round(written / max(1, feature_bytes), 3),
            "layout": info["layout"], "segments": info["segments"],
            "seconds": round(time.perf_counter() - t0, 1),
            "driver_cpu_s": round(time.process_time() - c0, 1),
            "load": os.getloadavg()[0],
        }), flush=True)  # fmt: skip
    ray.shutdown()


if __name__ == "__main__":
    main()
