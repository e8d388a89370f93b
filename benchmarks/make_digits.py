"""Write scikit-learn's digits, plus seeded affine variants, as PNG class folders.

    python benchmarks/make_digits.py /tmp/digits5k --copies 3

Each of the 1,797 real 8x8 scans is written once as it is and ``--copies - 1`` more times rotated
(+-12 degrees), scaled (0.85-1.15) and shifted (+-1 px of the 8x8 grid), at 32x32 px. With
``--copies 3`` that is 5,391 images of 10 classes: real handwriting, enough rows for the
4000-5000-item head benchmarks of issue #9 (``featx extract`` it with any backbone).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--copies", type=int, default=3, help="versions of each scan (1: originals)")
    ap.add_argument("--size", type=int, default=32, help="side of the written images, px")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(a.seed)
    s = a.size
    n = 0
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = a.out / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        arr = np.clip(img * (255.0 / 16.0) + 0.5, 0, 255).astype(np.uint8)
        base = Image.fromarray(arr).resize((s, s), Image.BICUBIC)
        for c in range(a.copies):
            im = base
            if c:
                ang = math.radians(rng.uniform(-12, 12))
                sc = rng.uniform(0.85, 1.15)
                tx, ty = rng.uniform(-1, 1, 2) * s / 8
                cos, sin = math.cos(ang) / sc, math.sin(ang) / sc
                cx = cy = s / 2
                # inverse map: output (x, y) -> input, rotation + scale about the centre + shift
                coeffs = (
                    cos, sin, cx - cos * (cx + tx) - sin * (cy + ty),
                    -sin, cos, cy + sin * (cx + tx) - cos * (cy + ty),
                )  # fmt: skip
                im = base.transform((s, s), Image.AFFINE, coeffs, Image.BILINEAR)
            im.save(d / f"{i:04d}_{c}.png")
            n += 1
    print(f"{n} images in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
