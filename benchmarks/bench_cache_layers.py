"""One pass for --layers and --cache-activations together vs the two separate extractions (#20).

Extracts the same JPEG folder three ways into fresh stores: ``--layers`` alone,
``--cache-activations`` alone, and both at once (one forward pass gives the features, the layer
groups and the tapped activations); the rounds alternate the order. Prints one JSON object with
each run's wall and CPU seconds (this process; ``workers=0`` decodes in it too) and the ratio of
the combined run to the sum of the two separate ones.

    python benchmarks/make_jpegs.py /tmp/jpegs --n 256 --classes 4
    OMP_NUM_THREADS=1 python benchmarks/bench_cache_layers.py /tmp/jpegs --model resnet18 \\
        --image-size 112 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _one(root: str, model: str, size: int, store: Path, **kw: str) -> dict[str, float]:
    from featx.extraction import ExtractOptions, extract

    opts = ExtractOptions(workers=0, batch_size=32, **kw)
    t, c = time.perf_counter(), time.process_time()
    extract(root, model, weights=None, image_size=size, store=store, options=opts)
    return {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="an image folder (benchmarks/make_jpegs.py)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--layers", default="last:2")
    ap.add_argument("--cut", default="-2")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    import torch

    runs = {
        "layers": {"layers": a.layers},
        "activations": {"cache_activations": a.cut},
        "both": {"layers": a.layers, "cache_activations": a.cut},
    }
    got: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        _one(a.root, a.model, a.image_size, Path(tmp) / "warm.h5")  # imports, first load
        for r in range(a.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                store = Path(tmp) / f"{name}-{r}.h5"
                got[name].append(_one(a.root, a.model, a.image_size, store, **runs[name]))
                store.unlink()
            load.append(os.getloadavg()[0])
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "cpu_s")}
           for k, v in got.items()}  # fmt: skip
    ratio = {
        m: med["both"][m] / (med["layers"][m] + med["activations"][m]) for m in ("wall_s", "cpu_s")
    }
    print(json.dumps({
        "model": a.model, "image_size": a.image_size, "layers": a.layers, "cut": a.cut,
        "items": sum(1 for p in Path(a.root).rglob("*") if p.is_file()),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "load_1min": load,
        "runs": got, "median": med, "both_over_separate_sum": ratio,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
