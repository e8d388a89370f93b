"""Synthetic stores written through the normal writer (parts, then the commit), for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featx.store import Rows, StoreConfig, StoreWriter


def blobs(n_per_class: int, n_classes: int, dim: int, sep: float = 3.0, seed: int = 0):
    """(X float32, y int64): Gaussian blobs, one per class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * sep / np.sqrt(dim)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = (centers[y] + rng.normal(size=(len(y), dim)) / np.sqrt(dim) * 2).astype(np.float32)
    return X, y


def write_store(
    path: Path,
    X: np.ndarray,
    y: np.ndarray,
    *,
    dtype: str = "float32",
    split: list[str] | None = None,
    keys: list[str] | None = None,
) -> Path:
    """A store of rows X with labels y (classes "c0", "c1", ...) and keys ``k000123``."""
    n = len(X)
    keys = keys or [f"k{i:06d}" for i in range(n)]
    classes = tuple(f"c{c}" for c in range(int(y.max()) + 1))
    cfg = StoreConfig(source={"synthetic": str(path)}, backbone={"dim": X.shape[1]}, dtype=dtype)
    with StoreWriter(path, cfg) as w:
        part = w.write_part(Rows(list(keys), X, [1] * n, [1] * n, [""] * n, [], [], [], [], []))
        w.commit(
            rows={k: (str(part), i) for i, k in enumerate(keys)},
            failed={},
            labels={k: int(v) for k, v in zip(keys, y, strict=True)},
            split={k: s for k, s in zip(keys, split, strict=True)} if split else {},
            classes=classes,
            fingerprints={k: (1, 1, "") for k in keys},
            attrs={"dim": int(X.shape[1]), "backbone": "synthetic"},
        )
    return path
