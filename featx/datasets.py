"""The embedded default dataset: scikit-learn's bundled handwritten digits as PNG files.

``sklearn:digits`` (1,797 real 8x8 grayscale scans, 10 classes) needs no network: the images
ship inside scikit-learn. They are written once, in ImageFolder layout, under
``$FEATX_CACHE_DIR/datasets/digits`` and scanned like any folder afterwards.
"""

from __future__ import annotations

from pathlib import Path

from featx.errors import FeatxError
from featx.files import atomic_path, cache_dir

BUILTIN = ("sklearn:digits",)


def materialize(spec: str) -> Path:
    """Write a built-in dataset to disk once (atomically) and return its folder."""
    name = spec.split(":", 1)[1]
    if spec not in BUILTIN:
        raise FeatxError(f"unknown built-in dataset {spec!r}; choose from {', '.join(BUILTIN)}")
    target = cache_dir() / "datasets" / name
    if (target / ".complete").exists():
        return target
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    with atomic_path(target) as tmp:
        for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            d = tmp / str(int(label))
            d.mkdir(parents=True, exist_ok=True)
            arr = np.clip(img * (255.0 / 16.0) + 0.5, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i:04d}.png")
        (tmp / ".complete").write_text("ok\n")
    return target
