"""The on-disk layout shared by reading, writing and verifying: format names, string and
integer datasets with their SHA-256, attribute digests, and the safe HDF5 file writer.

HDF5 is imported lazily (:func:`_h5`) so ``import featx.store`` stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from featx.files import atomic_path
from featx.store.config import _canonical

FORMAT = "featx-store"
SCHEMA_VERSION = 1
PART_FORMAT = "featx-store-part"

CHUNK_BYTES = 8 << 20  # ~8 MB feature chunks: large sequential reads, bounded memory per chunk
COPY_ROWS = 8192  # rows per block when merging into a new store


def _h5():
    import h5py

    return h5py


def _strings(ds) -> np.ndarray:
    """A string dataset as an object array of str; raw non-UTF-8 bytes come back as the
    ``surrogateescape`` str that :func:`os.fsdecode` gives for the same bytes.

    Fixed-length string datasets (the per-row columns of files written since #21) are read as
    one byte array and decoded here: a million keys in a fraction of a second, where
    variable-length strings cost HDF5 a heap lookup each."""
    if not ds.shape[0]:
        return np.empty(0, dtype=object)
    if ds.dtype.kind == "S":
        return decode_bytes(ds[()])
    return np.asarray(ds.asstr(errors="surrogateescape")[()], dtype=object)


def _raw_strings(ds) -> np.ndarray:
    """A per-row string dataset as stored: fixed-length bytes (``S`` dtype, decoded later by
    :func:`decode_bytes`), or, for a variable-length one (files written before #21), decoded
    to an object array of str as :func:`_strings` does."""
    if ds.shape[0] and ds.dtype.kind == "S":
        return ds[()]
    return _strings(ds)


def decode_bytes(raw: np.ndarray) -> np.ndarray:
    """A fixed-length byte-string array as an object array of str (``surrogateescape``).

    Columns with few distinct values (splits, empty content hashes) decode each value once."""
    out = np.empty(len(raw), dtype=object)
    if not len(raw):
        return out
    if bool((raw == raw[0]).all()):  # e.g. no content hashes, or no splits
        out[:] = [raw[0].decode("utf-8", "surrogateescape")] * len(raw)
        return out
    if raw.dtype.itemsize <= 8:
        uniq, inv = np.unique(raw, return_inverse=True)
        if len(uniq) * 16 < len(raw):
            names = np.empty(len(uniq), dtype=object)
            names[:] = [b.decode("utf-8", "surrogateescape") for b in uniq.tolist()]
            out[:] = names[inv.reshape(-1)]
            return out
    out[:] = [b.decode("utf-8", "surrogateescape") for b in raw.tolist()]
    return out


def encode_keys(values: Any) -> np.ndarray:
    """str values as a fixed-length byte array (UTF-8, ``surrogateescape``): the form the
    per-row string columns are stored in."""
    raw = [_encode(v) for v in values]
    width = max(1, max(map(len, raw), default=1))
    return np.array(raw, dtype=f"S{width}")


def _encode(v: Any) -> bytes:
    return str(v).encode("utf-8", "surrogateescape")


def _digest_strings(values: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for b in values:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _digest_ints(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype="<i8").tobytes()).hexdigest()


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _digest_attrs(attrs: Any) -> str:
    d = {k: _attr_value(v) for k, v in attrs.items() if k != "attrs_sha256"}
    return hashlib.sha256(_canonical(d).encode("utf-8", "surrogateescape")).hexdigest()


# HDF5 refuses Fletcher-32 on variable-length strings; their SHA-256 attribute covers them.
_GZIP = {"compression": "gzip", "chunks": True}
_CHECKED = {**_GZIP, "fletcher32": True}


def _str_ds(group, name: str, values: Iterable[str], *, fixed: bool = False) -> None:
    """A string dataset with the SHA-256 of its values.

    ``fixed``: fixed-length UTF-8 strings, for the per-row columns (keys, splits, content
    hashes): read back as one byte array (:func:`_strings`), checked by Fletcher-32 too, and
    read the same way by plain h5py (``ds.asstr()[()]``). Longer free text (reasons, texts)
    stays variable-length. Values never contain NUL (paths cannot), which fixed-length strings
    would drop at the end."""
    h5py = _h5()
    raw = [_encode(v) for v in values]
    if fixed:
        width = max(1, max(map(len, raw), default=1))
        arr = np.array(raw, dtype=h5py.string_dtype(length=width))
        n = arr.shape[0]
        rows = max(1, min(n, (1 << 20) // width))  # ~1 MB chunks: whole-column reads are fast
        kw = {"compression": "gzip", "chunks": (rows,), "fletcher32": True} if n else {}
        ds = group.create_dataset(name, data=arr, **kw)
    else:
        arr = np.empty(len(raw), dtype=object)
        arr[:] = raw
        kw = _GZIP if arr.shape[0] > 0 else {}
        ds = group.create_dataset(name, data=arr, dtype=h5py.string_dtype(), **kw)
    ds.attrs["featx_sha256"] = _digest_strings(raw)


def _int_ds(group, name: str, values: Any) -> None:
    arr = np.asarray(values, dtype=np.int64)
    kw = _CHECKED if arr.shape[0] > 0 else {}
    ds = group.create_dataset(name, data=arr, **kw)
    ds.attrs["featx_sha256"] = _digest_ints(arr)


class _Sink(io.RawIOBase):
    """The file object HDF5 writes through (h5py's ``fileobj`` driver).

    After the first failed write (ENOSPC, EIO, ...) it remembers the error and accepts every
    further write without touching the disk, so HDF5 can flush and close the file normally;
    the owner then raises :attr:`error` and deletes the file. Measured on this machine, as fast
    as HDF5's own POSIX driver for a 200 MB store (BENCHMARKS.md).
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._f = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed by close()
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b: Any) -> int:
        return self._f.readinto(b)

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(mv):
                    done += self._f.write(mv[done:])
            except OSError as exc:
                self.error = exc
        return len(mv)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._f.truncate(size)
            except OSError as exc:
                self.error = exc
        return self._f.tell() if size is None else size

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()
        super().close()


def _atomic_h5(path: Path):
    """Context manager: yields an open h5py.File at a temp name; on success fsync + rename.

    On any failure (an exception in the body, a failed write) the temporary file is closed
    first, then removed, and the error is raised; the file at ``path`` is untouched.
    """
    h5py = _h5()

    @contextlib.contextmanager
    def cm():
        with atomic_path(path, sweep=False) as tmp:  # StoreWriter sweeps under its lock
            sink = _Sink(tmp)
            try:
                with h5py.File(sink, "w", libver=("earliest", "v110")) as f:
                    yield f
            finally:
                sink.close()  # HDF5 has closed the file: nothing holds it any more
            if sink.error is not None:  # a write failed; HDF5 finished without the disk
                raise sink.error

    return cm()


def _read_rows(ds, rows: np.ndarray) -> np.ndarray:
    """ds[rows] for increasing rows, read as contiguous slices (fast for runs of rows)."""
    if rows.size == 0:
        return np.empty((0,) + ds.shape[1:], dtype=ds.dtype)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [rows.size]])
    pieces = [ds[rows[s] : rows[e - 1] + 1] for s, e in zip(starts, ends, strict=True)]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _write_attrs(f: Any, config: Any, attrs: Any, created: str, now: str) -> None:
    """The format, configuration and provenance attributes of a new store file (a single-file
    store, a segment or a segmented store's index)."""
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["config"] = config.to_json()
    f.attrs["config_hash"] = config.hash
    f.attrs["created"] = created
    f.attrs["updated"] = now
    for k, v in attrs.items():
        if isinstance(v, str):
            v = str(v)  # str subclasses (torch's TorchVersion) confuse h5py
        elif not isinstance(v, int | float | bool):
            v = _canonical(v)
        f.attrs[k] = v


def _write_failed(f: Any, failed: Any) -> None:
    """The ``failed`` group: key -> (reason, size, mtime_ns, sha256, ...), in key order."""
    fkeys = sorted(failed)
    fl = f.create_group("failed")
    _str_ds(fl, "paths", fkeys)
    _str_ds(fl, "reasons", [failed[k][0] for k in fkeys])
    _int_ds(fl, "size", [failed[k][1] for k in fkeys])
    _int_ds(fl, "mtime_ns", [failed[k][2] for k in fkeys])
    _str_ds(fl, "sha256", [failed[k][3] for k in fkeys])
