"""Generate a synthetic JPEG dataset of realistic size for benchmarks.

Images are 500x375 (the median ImageNet size), quality 90, in ImageFolder layout. Content is
smooth multi-scale noise with edges, so files compress like photos (~60-110 KB) rather than like
flat colour or white noise, and decoding costs what it costs on real data.

    python benchmarks/make_jpegs.py /tmp/jpegs --n 2000 --classes 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def make_image(seed: int, width: int = 500, height: int = 375) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), dtype=np.float32)
    for scale, amp in ((8, 90.0), (32, 45.0), (128, 25.0)):
        small = rng.normal(
            0, 1, size=(max(2, height * scale // 500), max(2, width * scale // 500), 3)
        )
        up = Image.fromarray(np.uint8(np.clip(small * 40 + 128, 0, 255))).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        img += (np.asarray(up, dtype=np.float32) - 128) * (amp / 40)
    img += rng.uniform(60, 190, size=3)
    pil = Image.fromarray(np.uint8(np.clip(img, 0, 255)))
    return pil.filter(ImageFilter.DETAIL)


def _write(args: tuple[str, int, int, int, int]) -> int:
    root, i, n_classes, width, height = args
    path = Path(root) / f"class_{i % n_classes:03d}" / f"img_{i:07d}.jpg"
    make_image(i, width, height).save(path, quality=90)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    for c in range(a.classes):
        (a.out / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(str(a.out), i, a.classes, a.width, a.height) for i in range(a.n)]
    with ProcessPoolExecutor(a.jobs) as ex:
        sizes = list(ex.map(_write, jobs, chunksize=64))
    json.dump(
        {
            "out": str(a.out),
            "n": a.n,
            "classes": a.classes,
            "size": [a.width, a.height],
            "mean_kb": round(float(np.mean(sizes)) / 1024, 1),
            "seconds": round(time.perf_counter() - t0, 2),
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
