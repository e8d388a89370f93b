"""The in-memory feature set that the store hands to heads (numpy only, no h5py, no torch)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
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
    X : ndarray of shape (n, d), float32, or RowMatrix
        One embedding per item, in the store's row order (sorted by key). A store larger than
        the memory budget leaves its features on disk: ``X`` is then a :class:`RowMatrix` that
        reads rows on demand (``X[rows]``, ``X.blocks(rows)``).
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


# ---------------------------------------------------------------------------------------------
# rows that stay on disk
# ---------------------------------------------------------------------------------------------


class RowMatrix:
    """An ``(n, d)`` matrix whose rows live elsewhere (a store on disk), read by row indices.

    The store implements it (:func:`featx.store.open_features`); heads only ever receive numpy
    arrays from it, through :meth:`read` or a :class:`RowStream`. ``matrix[rows]`` and
    ``np.asarray(matrix)`` read rows into memory (float32), so code written for arrays works on
    small selections.

    Subclasses set ``shape``, ``dtype`` (as stored) and ``block_rows`` (the rows of one storage
    chunk) and implement :meth:`_read_sorted`.
    """

    ndim = 2
    shape: tuple[int, int]
    dtype: np.dtype
    block_rows: int = 4096

    def _read_sorted(self, rows: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """float32 rows for strictly increasing indices ``rows``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the whole matrix as float32 (what reading it all would take)."""
        return int(self.shape[0]) * int(self.shape[1]) * 4

    def read(self, rows: Any) -> np.ndarray:
        """Rows ``rows`` (indices in any order, repeats allowed) as a float32 array."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if rows.size == 0:
            return np.empty((0, self.shape[1]), dtype=np.float32)
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        if rows.size == 1 or np.all(rows[1:] > rows[:-1]):
            return self._read_sorted(rows)
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self._read_sorted(uniq)[inverse]

    def __getitem__(self, idx: Any) -> np.ndarray:
        if isinstance(idx, tuple):
            first, rest = idx[0], idx[1:]
            return self[first][(slice(None), *rest)]
        if isinstance(idx, slice):
            return self.read(np.arange(*idx.indices(self.shape[0])))
        if isinstance(idx, int | np.integer):
            i = int(idx) + (self.shape[0] if idx < 0 else 0)
            return self.read([i])[0]
        arr = np.asarray(idx)
        if arr.dtype == bool:
            arr = np.flatnonzero(arr)
        return self.read(arr)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        X = self.read(np.arange(self.shape[0]))
        return X if dtype is None else X.astype(dtype, copy=False)

    def subset(self, rows: Any) -> RowMatrix:
        """The matrix of rows ``rows`` of this one (nothing is read)."""
        return _RowView(self, np.asarray(rows, dtype=np.int64))

    def blocks(self, rows: np.ndarray, block_rows: int | None = None) -> Iterator[np.ndarray]:
        """Rows ``rows`` read ``block_rows`` at a time (float32), in the order given."""
        step = max(1, int(block_rows or self.block_rows))
        for s in range(0, len(rows), step):
            yield self.read(rows[s : s + step])


class _RowView(RowMatrix):
    """Rows ``rows`` of another RowMatrix."""

    def __init__(self, base: RowMatrix, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows
        self.shape = (len(rows), int(base.shape[1]))
        self.dtype = base.dtype
        self.block_rows = base.block_rows

    def _read_sorted(self, rows: np.ndarray) -> np.ndarray:
        return self.base.read(self.rows[rows])


@dataclass(frozen=True, eq=False)
class RowStream:
    """Training rows of a :class:`RowMatrix` with their labels, handed to a head block by block.

    What a head's ``fit_stream(stream)`` receives when its training data is above the memory
    budget: iterate it (any number of times) for ``(X_block, y_block)`` pairs of numpy arrays;
    :meth:`take` reads chosen rows into memory. ``transforms`` (fitted preprocessing steps) are
    applied to every block on the way out.

    Attributes
    ----------
    matrix : RowMatrix
    rows : ndarray of int64
        The rows of ``matrix`` that form this stream, in order.
    y : ndarray
        Their labels.
    block_rows : int
        Rows per block.
    budget : int
        The memory budget in bytes (what a head may hold at once).
    """

    matrix: RowMatrix
    rows: np.ndarray
    y: np.ndarray
    block_rows: int
    budget: int
    transforms: tuple[Any, ...] = ()
    dim: int = 0

    def __post_init__(self) -> None:
        if not self.dim:
            object.__setattr__(self, "dim", int(self.matrix.shape[1]))

    @property
    def n(self) -> int:
        return int(len(self.rows))

    def _apply(self, X: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            X = np.asarray(t(X), dtype=np.float32)
        return X

    def blocks(self, shuffle: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(X, y)`` blocks in row order, or in a seeded random order of blocks."""
        starts = np.arange(0, self.n, self.block_rows)
        if shuffle is not None:
            starts = np.random.default_rng(shuffle).permutation(starts)
        for s in starts:
            e = min(s + self.block_rows, self.n)
            yield self._apply(self.matrix.read(self.rows[s:e])), self.y[s:e]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.blocks()

    def take(self, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        """Rows at ``positions`` (indices into this stream) in memory, transformed."""
        positions = np.asarray(positions, dtype=np.int64)
        return self._apply(self.matrix.read(self.rows[positions])), self.y[positions]

    def subset(self, positions: Any) -> RowStream:
        """The stream of the rows at ``positions``."""
        positions = np.asarray(positions, dtype=np.int64)
        return replace(self, rows=self.rows[positions], y=self.y[positions])

    def then(self, transform: Any, dim: int) -> RowStream:
        """This stream with one more transform (producing ``dim`` columns) applied to blocks."""
        return replace(self, transforms=(*self.transforms, transform), dim=int(dim))

    def rows_in_budget(self, copies: float = 3.0) -> int:
        """How many rows fit in the budget as float32, ``copies`` times over (at least 1)."""
        return max(1, int(self.budget // max(1.0, copies * 4 * self.dim)))

    def sample(self, max_rows: int, seed: int | None = 0) -> np.ndarray:
        """A seeded, stratified choice of at most ``max_rows`` positions (sorted), keeping at
        least two of each class that has two (one of a class that has one)."""
        if max_rows >= self.n:
            return np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng(seed)
        classes, inverse, counts = np.unique(self.y, return_inverse=True, return_counts=True)
        share = max_rows / self.n
        picked = []
        for c in range(len(classes)):
            idx = np.flatnonzero(inverse == c)
            k = int(np.clip(round(share * counts[c]), min(2, counts[c]), counts[c]))
            picked.append(rng.choice(idx, size=k, replace=False))
        return np.sort(np.concatenate(picked)).astype(np.int64)
