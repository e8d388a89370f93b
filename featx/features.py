"""The in-memory feature set that the store hands to heads (numpy only, no h5py, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FeatureSet:
    """Features and labels of one store, as numpy arrays.

    Attributes
    ----------
    X : ndarray of shape (n, d), float32
        One embedding per item, in the store's row order (sorted by key).
    y : ndarray of shape (n,), int64
        Class index into ``classes``; -1 where the item is unlabeled.
    classes : tuple of str
        Class names; ``classes[y[i]]`` is item i's label.
    split : ndarray of shape (n,), str, or None
        ``"train"``, ``"val"``, ``"test"`` or ``""`` per item; None when the source has no splits.
    keys : ndarray of shape (n,), str
        The item's key (path relative to the source root, or ``split/index`` for datasets).
    meta : dict
        The store's attributes: backbone, weights, layer, pool, preprocessing, versions.
    """

    X: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    split: np.ndarray | None
    keys: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    @property
    def labeled(self) -> np.ndarray:
        """Boolean mask of the items that carry a label."""
        return self.y >= 0
