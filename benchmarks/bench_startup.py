"""Wall time of short featx commands, measured per process, and which heavy modules they import.

Each command runs ``--repeat`` times as a fresh ``python -m featx.cli ...`` process (interleaved, so
machine load hits every row alike); the median wall time is reported, plus whether torch, timm,
torchvision, sklearn or h5py were imported (from ``python -X importtime``, in a separate run).
A ``python -c pass`` row gives the interpreter's own start-up as the floor.

    python benchmarks/bench_startup.py --repeat 5          # JSON on stdout
    python benchmarks/bench_startup.py --tree /tmp/old --no-info   # another checkout, same way

The no-op extract row extracts a tiny folder once first (not timed), then times the re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "timm", "torchvision", "sklearn", "h5py", "numpy")


def _images(root: Path, n: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        arr = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"{i}.png")
    return root


def _imports(args: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    res = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    seen = set()
    for line in res.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name.split(".")[0] in HEAVY and "." not in name:
                seen.add(name)
    return sorted(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-info", dest="info", action="store_false", help="featx before 'info'")
    ap.add_argument("--tree", help="featx checkout to time (put first on PYTHONPATH)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="featx-startup-"))
    env = {**os.environ, "FEATX_CACHE_DIR": str(tmp / "cache"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.path.abspath(a.tree or Path(__file__).resolve().parents[1])
    src = _images(tmp / "imgs")
    store = tmp / "s.h5"
    extract = ["extract", str(src), "-b", "resnet18", "--weights", "none", "--image-size", "32"]
    extract += ["--workers", "0", "-q", "--store", str(store)]
    subprocess.run(  # from tmp: `python -m` puts the working directory first on sys.path
        [sys.executable, "-m", "featx.cli", *extract],
        env=env,
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    rows = {
        "python -c pass (floor)": ["-c", "pass"],
        "featx --help": ["-m", "featx.cli", "--help"],
        "featx --version": ["-m", "featx.cli", "--version"],
        "featx backbones 'resnet*'": ["-m", "featx.cli", "backbones", "resnet*"],
        "featx backbones": ["-m", "featx.cli", "backbones"],
        "featx heads": ["-m", "featx.cli", "heads"],
        **({"featx info (no argument)": ["-m", "featx.cli", "info"]} if a.info else {}),
        "featx info STORE": ["-m", "featx.cli", "info", str(store)],
        "featx extract (no-op)": ["-m", "featx.cli", *extract],
    }
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(a.repeat):
        for name, args in rows.items():
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, *args], env=env, capture_output=True, cwd=tmp)
            times[name].append(time.perf_counter() - t0)
            if res.returncode != 0:
                sys.exit(f"{name} failed: {res.stderr.decode()[-500:]}")
    out = {
        "tree": env.get("PYTHONPATH", ""),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "repeat": a.repeat,
        "rows": [
            {
                "command": name,
                "median_s": round(statistics.median(times[name]), 3),
                "min_s": round(min(times[name]), 3),
                "imports": _imports(rows[name], env, tmp),
            }
            for name in rows
        ],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
