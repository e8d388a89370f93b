"""The in-memory feature set that the store hands to heads (numpy only, no h5py, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Name of the one group of a store that has no named groups (the pooled embedding).
DEFAULT_GROUP = "features"
#: Kinds of feature groups: columns of ``X``, or a representation computed from the raw texts
#: when a head is fitted (TF-IDF; it has no columns in ``X``).
GROUP_KINDS = ("dense", "text")


@dataclass(frozen=True)
class FeatureGroup:
    """A named block of features: columns ``start:stop`` of ``X`` (kind ``dense``), or a
    representation fitted on the raw texts of the training rows (kind ``text``, no columns).

    ``source`` says where the group came from (a store label, a layer), for reports.
    """

    name: str
    start: int
    stop: int
    kind: str = "dense"
    source: str = ""

    @property
    def dim(self) -> int:
        return self.stop - self.start

    def to_tuple(self) -> tuple[str, int, int, str]:
        return (self.name, self.start, self.stop, self.kind)


class TextRows:
    """Head input that carries raw texts beside the dense features, row-aligned.

    What a head gets when one of its feature groups is computed from texts (TF-IDF): ``X`` (n, d)
    float32 dense features (d may be 0) and ``texts`` (n,) str. It indexes by rows like an
    array (``rows[train]``), so the evaluation protocol treats it as one.
    """

    def __init__(self, X: np.ndarray, texts: np.ndarray) -> None:
        X = np.asarray(X)
        texts = np.asarray(texts, dtype=object)
        if X.ndim != 2 or texts.ndim != 1 or X.shape[0] != texts.shape[0]:
            raise ValueError(f"features {X.shape} and texts {texts.shape} do not match")
        self.X = X
        self.texts = texts

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape  # type: ignore[return-value]

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __getitem__(self, rows: Any) -> TextRows:
        if isinstance(rows, tuple):
            raise TypeError("TextRows index rows only")
        X, t = self.X[rows], self.texts[rows]
        if X.ndim == 1:  # a single row stays a table of one row
            X, t = X[None, :], np.asarray([t], dtype=object)
        return TextRows(X, t)


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
    groups : tuple of FeatureGroup
        Named feature groups (layers of one pass, stores fused by key, TF-IDF of the texts);
        empty for a plain store (one group, :data:`DEFAULT_GROUP`, all columns). See
        :attr:`feature_groups`.
    texts : ndarray of shape (n,), object, or None
        The raw texts of a text store that keeps them (for groups of kind ``text``).
    select : int or None
        Group selection before a head (see :mod:`featx.groups`): None keeps every group, 0
        chooses how many on a validation split of the training rows, k keeps the best k.
    """

    X: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    split: np.ndarray | None
    keys: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    groups: tuple[FeatureGroup, ...] = ()
    texts: np.ndarray | None = None
    select: int | None = None

    @property
    def feature_groups(self) -> tuple[FeatureGroup, ...]:
        """The groups, or one group over every column when the set has none named."""
        if self.groups:
            return self.groups
        return (FeatureGroup(DEFAULT_GROUP, 0, self.dim),)

    @property
    def uses_texts(self) -> bool:
        """Whether a head on this set needs the raw texts (a group of kind ``text``)."""
        return any(g.kind == "text" for g in self.groups)

    def inputs(self) -> Any:
        """What a head is fitted on: ``X``, or :class:`TextRows` when a group needs texts."""
        if self.uses_texts:
            if self.texts is None:
                raise ValueError("a text feature group needs the texts")
            return TextRows(self.X, self.texts)
        return self.X

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
