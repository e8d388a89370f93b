"""Reading stores larger than memory: :class:`StoreMatrix` and :func:`open_features`.

:func:`open_features` returns a :class:`~featx.features.FeatureSet` whose ``X`` is a
:class:`StoreMatrix`: the labels, keys and splits are in memory (a few bytes per row), the
features stay in the file and are read by row indices or block by block
(:class:`~featx.features.RowStream`), one HDF5 chunk span at a time, as float32. Heads see only
those numpy blocks. HDF5's Fletcher-32 checks every chunk read on the way, as for a full load.

A store's rows can live in several files (a segmented store, :mod:`featx.store.segments`): the
matrix maps each row (in key order) to its file and its row there.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from featx.errors import StoreError
from featx.features import RowMatrix
from featx.store.layout import _h5


class StoreMatrix(RowMatrix):
    """The ``features`` of a store, read on demand (see :class:`~featx.features.RowMatrix`).

    Parameters
    ----------
    files : list of path
        The HDF5 files holding the rows (one for a single-file store).
    shape : (n, d)
    dtype : numpy dtype as stored
    file_of_row, row_in_file : ndarray or None
        For row ``i`` (key order): the index into ``files`` and the row in that file's
        ``features``; None for a single file read in its own order.
    block_rows : int
        Rows per storage chunk (the natural read unit).
    store : str
        The store's path, for messages.
    """

    def __init__(
        self,
        files: list[str | os.PathLike],
        shape: tuple[int, int],
        dtype: Any,
        *,
        file_of_row: np.ndarray | None = None,
        row_in_file: np.ndarray | None = None,
        block_rows: int = 4096,
        store: str = "",
    ) -> None:
        self.files = [str(p) for p in files]
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.file_of_row = file_of_row
        self.row_in_file = row_in_file
        self.block_rows = max(1, int(block_rows))
        self.store = store or (self.files[0] if self.files else "")
        self._open: dict[int, Any] = {}

    # pickling (Ray, multiprocessing): paths travel, open handles do not
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def _ds(self, i: int) -> Any:
        return self._file(i)["features"]

    def _file(self, i: int) -> Any:
        f = self._open.get(i)
        if f is None:
            try:
                f = _h5().File(self.files[i], "r")
            except OSError as exc:
                raise StoreError(
                    f"cannot read {self.files[i]} of store {self.store} ({exc}); it was removed "
                    f"or damaged: check it with 'featx verify {self.store}'"
                ) from None
            self._open[i] = f
        return f

    def column(self, name: str) -> np.ndarray | None:
        """Every row's value of the per-row dataset ``name`` of the store's files, in row order,
        as stored: strings (``text/texts``) as an object array of str, integers
        (``text/n_tokens``) as int64, other arrays (an extra output ``outputs/<name>``, (n, w))
        in their own dtype. A file without it gives "" or -1 for its rows (a 1-D dataset) or is
        an error. None when no file has it."""
        from featx.store.layout import _strings

        n = self.shape[0]
        have: dict[int, np.ndarray] = {}
        files = range(len(self.files)) if self.file_of_row is not None else [0]
        try:
            for i in files:
                f = self._file(i)  # (a one-line error when it is gone)
                if name in f:
                    ds = f[name]
                    if ds.dtype.kind in "OS":
                        have[i] = _strings(ds)
                    elif ds.ndim == 1:
                        have[i] = ds[()].astype(np.int64)
                    else:
                        have[i] = ds[()]
        except (OSError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(
                f"store {self.store} is damaged ({first}); check it with "
                f"'featx verify {self.store}'"
            ) from None
        if not have:
            return None
        if self.file_of_row is None:
            return have[0][:n]
        first = next(iter(have.values()))
        if len(have) < len(self.files) and first.ndim > 1:
            raise StoreError(
                f"store {self.store} is damaged (a segment has no {name}); check it with "
                f"'featx verify {self.store}'"
            )
        out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        if len(have) < len(self.files):
            out[...] = "" if first.dtype == object else -1
        for i, vals in have.items():
            m = self.file_of_row == i
            out[m] = vals[self.row_in_file[m]]
        return out

    def close(self) -> None:
        """Close the files this matrix opened (it reopens them when read again)."""
        for f in self._open.values():
            with contextlib.suppress(Exception):  # closing is best effort
                f.close()
        self._open.clear()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        with contextlib.suppress(Exception):
            self.close()

    def _read_file_rows(self, i: int, local: np.ndarray) -> np.ndarray:
        """float32 rows ``local`` (increasing) of file ``i``, one read per touched chunk span."""
        ds = self._ds(i)
        out = np.empty((len(local), self.shape[1]), dtype=np.float32)
        chunk = ds.chunks[0] if ds.chunks else max(1, len(local))
        cid = local // chunk
        cuts = np.flatnonzero(np.diff(cid)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(local)]])
        try:
            for s, e in zip(starts, ends, strict=True):
                a, b = int(local[s]), int(local[e - 1]) + 1
                span = ds[a:b]
                out[s:e] = span[local[s:e] - a]
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(
                f"store {self.store} is damaged ({first}); check it with "
                f"'featx verify {self.store}', then delete it and run the same 'featx extract' "
                "again"
            ) from None
        return out

    def _read_sorted(self, rows: np.ndarray) -> np.ndarray:
        if self.file_of_row is None:
            return self._read_file_rows(0, rows)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        files = self.file_of_row[rows]
        local = self.row_in_file[rows]
        for i in np.unique(files):
            m = files == i
            loc = local[m]
            if len(loc) > 1 and not np.all(loc[1:] > loc[:-1]):
                order = np.argsort(loc, kind="stable")
                vals = self._read_file_rows(int(i), loc[order])
                tmp = np.empty_like(vals)
                tmp[order] = vals
                out[m] = tmp
            else:
                out[m] = self._read_file_rows(int(i), loc)
        return out
