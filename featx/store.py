"""The feature store: one HDF5 file per (source, backbone, weights, layer, pool, preprocessing).

This module alone knows the file layout; docs/store.md documents it for people reading the files
with plain h5py. Everyone else goes through :func:`load_features`, :func:`store_info` and
:class:`StoreWriter`.

Crash safety
------------
The store file is never modified in place. A run writes its new rows into *parts*: small HDF5
files in ``STORE.parts/``, each written to a temporary name, fsynced and renamed, so a part is
either whole or absent. When the run ends, the old store's kept rows and the parts are merged in
key order into ``STORE.tmp-PID``, which is fsynced and atomically renamed over the store; then
the parts are deleted. A ``kill -9`` at any moment leaves the previous store intact and every
finished part on disk, and the next run resumes from them. A writer holds an exclusive POSIX
record lock (``lockf``) on ``STORE.lock`` for the whole run and writes its pid there, so a second
writer fails at once with an error naming that pid; the kernel releases the lock when the process
dies, and a forked child (a DataLoader worker) never inherits it. The writer deletes
``STORE.lock`` on exit while still holding it (the next writer checks that the file it locked is
still the one at that path), so lock files do not pile up beside stores. A run that finds
nothing to do needs no write access at all: without a writable folder it reads the store
unlocked (readers are safe, see below) and only fails if there is something to write.

Faults
------
Every HDF5 file featx writes goes through :class:`_Sink`, a file object that remembers the first
write error (a full disk, an I/O error) and then lets HDF5 finish and close the file without
touching the disk again; the error is raised after the half-written temporary file is closed and
removed. Without it, HDF5 keeps a file whose last flush failed half-open and the interpreter
crashes at exit. A full disk becomes :class:`~featx.errors.DiskFullError`: one line saying how
much to free and where.

Integrity
---------
The feature matrix and every other chunked dataset are written with HDF5's Fletcher-32 chunk
checksum; every small dataset also carries the SHA-256 of its values (``featx_sha256``: HDF5's
checksum covers a string dataset's references, not the strings) and the file attributes carry
the SHA-256 of all attributes (``attrs_sha256``). :func:`verify_store` reads every chunk and checks
all of it and the schema.

Names that are not valid UTF-8 (possible on Linux) are stored as their raw bytes and read back
with ``surrogateescape``, so they round-trip exactly.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import struct
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import StoreError, StoreLockedError, StoreReadOnlyError
from featx.features import FeatureGroup, FeatureSet
from featx.files import atomic_path, atomic_write
from featx.files import cache_dir as default_cache_dir
from featx.options import STORE_DTYPES as FEATURE_DTYPES  # one list, also for the CLI

log = logging.getLogger(__name__)

FORMAT = "featx-store"
SCHEMA_VERSION = 1
PART_FORMAT = "featx-store-part"

CHUNK_BYTES = 8 << 20  # ~8 MB feature chunks: large sequential reads, bounded memory per chunk
COPY_ROWS = 8192  # rows per block when merging into a new store


# ---------------------------------------------------------------------------------------------
# configuration identity
# ---------------------------------------------------------------------------------------------
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class StoreConfig:
    """Everything that determines the features; two runs share a store only if these match."""

    source: dict[str, Any]
    backbone: dict[str, Any]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in FEATURE_DTYPES:
            raise StoreError(f"--dtype must be one of {', '.join(FEATURE_DTYPES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "backbone": self.backbone, "dtype": self.dtype}

    def to_json(self) -> str:
        return _canonical(self.to_dict())

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:10]

    @classmethod
    def from_json(cls, s: str) -> StoreConfig:
        d = json.loads(s)
        return cls(source=d["source"], backbone=d["backbone"], dtype=d["dtype"])


#: Where the extra outputs of a multi-layer pass live: one dataset per layer (``--layers``).
GROUPS = "groups"
#: Where a text store keeps its texts (the ``tfidf`` feature group needs them at fit time).
TEXTS = "text/texts"


def store_groups(config: Any) -> list[tuple[str, int]]:
    """(dataset path, width) of each extra output group a store's configuration names."""
    if config is None:
        return []
    d = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(d, dict):
        return []
    layers = (d.get("backbone") or {}).get("layers") or []
    return [(f"{GROUPS}/{g['name']}", int(g["dim"])) for g in layers]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_difference(a: StoreConfig, b: StoreConfig, limit: int = 3) -> str:
    """A short human description of how two configurations differ."""
    fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
    diffs = [
        f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}"
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k)
    ]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s).strip("-")[:64] or "x"


def default_store_path(config: StoreConfig, source_name: str, cache_dir: str | None = None) -> Path:
    """``<cache>/<source>__<backbone>-<weights>[-<layer>][-<pool>][-<size>px][-float16]__<hash>.h5``.

    Everything a user varies from the command line shows in the readable part, so two stores of
    one source and backbone never differ only in their configuration hash.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    bb = config.backbone
    parts = [str(bb.get("name", "backbone")).replace("/", "-"), str(bb.get("weights", ""))]
    if bb.get("layer"):
        parts.append(str(bb["layer"]))
    if bb.get("pool"):
        parts.append(str(bb["pool"]))
    crop = (bb.get("preprocess") or {}).get("crop_size")
    if crop:
        parts.append(f"{crop}px")
    if config.dtype != "float32":
        parts.append(config.dtype)
    name = f"{_slug(source_name)}__{_slug('-'.join(p for p in parts if p))}__{config.hash}.h5"
    return cache / name


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _h5():
    import h5py

    return h5py


def _open_read(path: str | os.PathLike):
    """Open a featx store for reading, turning every kind of wrong file into a StoreError."""
    h5py = _h5()
    p = Path(path)
    if not p.exists():
        if p.with_name(p.name + ".parts").is_dir():
            raise StoreError(
                f"store {p} has an unfinished extraction ({p.name}.parts); "
                "run the same 'featx extract' again to resume it"
            )
        raise StoreError(f"store {p} does not exist; run 'featx extract' first or check the path")
    if p.is_dir():
        raise StoreError(f"{p} is a folder, not a featx store (.h5 file)")
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise StoreError(f"{p} is not a featx store (not an HDF5 file)") from None
    try:
        fmt = f.attrs.get("format")
    except (OSError, KeyError, RuntimeError):
        f.close()
        raise StoreError(
            f"{p} is damaged (its attributes cannot be read); delete it and run the same "
            "'featx extract' again"
        ) from None
    if fmt != FORMAT:
        f.close()
        raise StoreError(f"{p} is an HDF5 file but not a featx store")
    version = int(f.attrs.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        f.close()
        raise StoreError(
            f"{p} uses store schema {version}, newer than this featx reads ({SCHEMA_VERSION}); "
            "upgrade featx"
        )
    return f


def read_config(path: str | os.PathLike) -> StoreConfig:
    with _open_read(path) as f:
        return StoreConfig.from_json(f.attrs["config"])


def _strings(ds) -> np.ndarray:
    """A string dataset as an object array of str; raw non-UTF-8 bytes come back as the
    ``surrogateescape`` str that :func:`os.fsdecode` gives for the same bytes."""
    if not ds.shape[0]:
        return np.empty(0, dtype=object)
    return np.asarray(ds.asstr(errors="surrogateescape")[()], dtype=object)


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


@dataclass(frozen=True)
class StoreIndex:
    """The per-row bookkeeping of a store, without the feature matrix."""

    keys: np.ndarray
    size: np.ndarray
    mtime_ns: np.ndarray
    sha256: np.ndarray
    failed_keys: np.ndarray
    failed_reasons: np.ndarray
    failed_size: np.ndarray
    failed_mtime_ns: np.ndarray
    failed_sha256: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    classes: tuple[str, ...]


def _read_index(f) -> StoreIndex:
    g = f["fingerprint"]
    fl = f["failed"]
    return StoreIndex(
        keys=_strings(f["paths"]),
        size=g["size"][()],
        mtime_ns=g["mtime_ns"][()],
        sha256=_strings(g["sha256"]),
        failed_keys=_strings(fl["paths"]),
        failed_reasons=_strings(fl["reasons"]),
        failed_size=fl["size"][()],
        failed_mtime_ns=fl["mtime_ns"][()],
        failed_sha256=_strings(fl["sha256"]),
        labels=f["labels"][()],
        split=_strings(f["split"]),
        classes=tuple(_strings(f["classes"])),
    )


def read_index(path: str | os.PathLike) -> StoreIndex:
    """The keys, fingerprints, failures, labels and splits of a store, without its features."""
    with _open_read(path) as f:
        return _read_index(f)


def _meta(f) -> dict[str, Any]:
    meta = {k: _attr_value(v) for k, v in f.attrs.items()}
    for k in ("config", "preprocess", "versions", "source"):
        if isinstance(meta.get(k), str):
            with contextlib.suppress(ValueError):
                meta[k] = json.loads(meta[k])
    return meta


def load_features(path: str | os.PathLike, *, dtype: Any = np.float32) -> FeatureSet:
    """Read a whole store into memory as a :class:`~featx.features.FeatureSet`.

    Examples
    --------
    >>> fs = load_features("cache/digits__efficientnet_lite0-....h5")  # doctest: +SKIP
    >>> fs.X.shape, fs.classes[:3]  # doctest: +SKIP
    ((1797, 1280), ('0', '1', '2'))
    """
    with _open_read(path) as f, _damage_is_store_error(path):
        idx = _read_index(f)
        ds = f["features"]
        X = np.empty(ds.shape, dtype=dtype)
        if ds.shape[0]:
            ds.read_direct(X) if ds.dtype == X.dtype else X.__setitem__(slice(None), ds[()])
        split = idx.split if any(idx.split) else None
        meta = _meta(f)
        groups: tuple[FeatureGroup, ...] = ()
        names = store_groups(meta.get("config"))
        if names:  # a multi-layer store: the embedding, then each layer's group
            blocks, groups, pos = [X], [FeatureGroup("features", 0, X.shape[1])], X.shape[1]
            for name, width in names:
                g = f[name]
                blocks.append(np.asarray(g[()], dtype=dtype).reshape(X.shape[0], width))
                groups.append(FeatureGroup(name.split("/", 1)[1], pos, pos + width))
                pos += width
            X, groups = np.concatenate(blocks, axis=1), tuple(groups)
        texts = None
        if TEXTS in f:
            texts = np.asarray(_strings(f[TEXTS]), dtype=object)
        return FeatureSet(
            X=X,
            y=idx.labels.astype(np.int64),
            classes=idx.classes,
            split=split,
            keys=idx.keys,
            meta=meta,
            groups=groups,
            texts=texts,
        )


@contextlib.contextmanager
def _damage_is_store_error(path: str | os.PathLike) -> Iterator[None]:
    """HDF5 errors while reading a store that opened fine mean the file is damaged."""
    try:
        yield
    except (OSError, KeyError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(
            f"store {path} is damaged ({first}); check it with 'featx verify {path}', then "
            "delete it and run the same 'featx extract' again"
        ) from None


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-able summary of a store: counts, dim, backbone, weights, classes, splits, versions."""
    with _open_read(path) as f, _damage_is_store_error(path):
        meta = _meta(f)
        idx = _read_index(f)
        splits: dict[str, int] = {}
        for s in idx.split:
            splits[s or "(none)"] = splits.get(s or "(none)", 0) + 1
        labeled = int((idx.labels >= 0).sum())
        text = None
        if meta.get("modality") == "text":
            n_tok = f["text/n_tokens"][()] if "text/n_tokens" in f else np.empty(0, np.int64)
            limit = int(meta.get("max_seq_length") or 0)
            over = n_tok > limit
            text = {
                "text_column": meta.get("text_column") or "",
                "max_seq_length": limit,
                "normalize": bool(meta.get("normalize")),
                "n_truncated": int(over.sum()),
                "median_tokens": float(np.median(n_tok)) if n_tok.size else None,
                "truncated": [str(k) for k in idx.keys[over][:20]],
            }
        return {
            "store": str(path),
            "n_items": int(f["features"].shape[0]),
            "n_failed": int(idx.failed_keys.shape[0]),
            "n_labeled": labeled,
            "dim": int(f["features"].shape[1]),
            "dtype": str(f["features"].dtype),
            "n_classes": len(idx.classes),
            "classes": list(idx.classes),
            "splits": splits,
            "backbone": meta.get("backbone"),
            "weights": meta.get("weights"),
            "weights_sha256": meta.get("weights_sha256"),
            "layer": meta.get("layer"),
            "pool": meta.get("pool"),
            "preprocess": meta.get("preprocess"),
            "source": meta.get("source"),
            "config_hash": meta.get("config_hash"),
            "created": meta.get("created"),
            "updated": meta.get("updated"),
            "versions": {
                k[: -len("_version")]: v
                for k, v in meta.items()
                if k.endswith("_version") and k != "schema_version"
            },
            "schema_version": meta.get("schema_version"),
            "modality": meta.get("modality") or "image",
            "text": text,
            "groups": [
                {"name": "features", "dim": int(f["features"].shape[1]), "pool": meta.get("pool")}
            ]
            + [
                {"name": g["name"], "dim": int(g["dim"]), "pool": g.get("pool")}
                for g in ((meta.get("config") or {}).get("backbone") or {}).get("layers") or []
            ],
            "has_texts": TEXTS in f,
            "file_bytes": os.path.getsize(path),
            "failed": [
                {"path": k, "reason": r}
                for k, r in zip(idx.failed_keys[:20], idx.failed_reasons[:20], strict=True)
            ],
        }


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
@dataclass
class Rows:
    """Rows produced by the engine: successes with features, failures with reasons."""

    keys: list[str]
    features: np.ndarray  # (n, d)
    size: list[int]
    mtime_ns: list[int]
    sha256: list[str]
    failed_keys: list[str]
    failed_reasons: list[str]
    failed_size: list[int]
    failed_mtime_ns: list[int]
    failed_sha256: list[str]
    #: Extra named outputs of the pass (``--layers``): name -> (n, d_name), rows as ``keys``.
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


# HDF5 refuses Fletcher-32 on variable-length strings; their SHA-256 attribute covers them.
_GZIP = {"compression": "gzip", "chunks": True}
_CHECKED = {**_GZIP, "fletcher32": True}


def _str_ds(group, name: str, values: Iterable[str]) -> None:
    h5py = _h5()
    raw = [_encode(v) for v in values]
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
        with atomic_path(path) as tmp:
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


#: (st_dev, st_ino) of the lock files this process holds.
_HELD: set[tuple[int, int]] = set()
_HELD_GUARD = threading.Lock()


def _lock_holder(fd: int) -> int | None:
    """The pid holding the lock on ``fd``'s file: F_GETLK on Linux, else the pid written there."""
    if sys.platform.startswith("linux"):
        try:
            req = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)
            res = fcntl.fcntl(fd, fcntl.F_GETLK, req)
            l_type, _, _, _, pid = struct.unpack("hhqqi4x", res)
            if l_type != fcntl.F_UNLCK and pid > 0:
                return int(pid)
        except (OSError, struct.error):
            pass
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


class StoreWriter:
    """Exclusive, crash-safe writer of one store. Use as a context manager.

    Parameters
    ----------
    path : path-like
        The store file (``.h5``).
    config : StoreConfig
        The configuration this run extracts with. An existing store or unfinished parts with a
        different configuration raise :class:`~featx.errors.StoreError`.
    """

    def __init__(self, path: str | os.PathLike, config: StoreConfig):
        self.path = Path(path)
        self.config = config
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd: int | None = None
        self._lock_key: tuple[int, int] | None = None
        self._n_parts = 0
        self.index: StoreIndex | None = None
        self.dim: int | None = None
        #: Why this writer may only read (the folder is not writable), or "" when it may write.
        self.read_only = ""

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        except PermissionError as exc:  # a read-only folder: only reading is possible
            self.read_only = f"{exc.strerror}: {exc.filename or self.path.parent}"
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            self.read_only = f"{exc.strerror}: {exc.filename or self.path.parent}"
        try:
            if not self.read_only:
                self._clean_stale_tmp()
            self._load_existing()
            self._check_parts()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _lock(self) -> None:
        """Take the POSIX record lock on ``STORE.lock`` and write this pid into it.

        A ``lockf`` lock belongs to this process: forked children (DataLoader workers) do not
        inherit it, and it is released the moment this process dies. Two writers in the same
        process are refused by :data:`_HELD` (POSIX locks do not conflict within a process, and
        opening and closing a second descriptor would even release the first one's lock).
        """
        with _HELD_GUARD:
            with contextlib.suppress(OSError):
                st = os.stat(self.lock_path)
                if (st.st_dev, st.st_ino) in _HELD:
                    raise StoreLockedError(
                        f"this process (pid {os.getpid()}) is already writing {self.path}; "
                        "finish that write first or use another --store"
                    )
            while True:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        os.close(fd)
                        raise
                    holder = _lock_holder(fd)
                    os.close(fd)
                    who = f"featx process {holder}" if holder else "another featx process"
                    raise StoreLockedError(
                        f"{who} is writing {self.path} (lock {self.lock_path.name} is held); "
                        "wait for it to finish or use another --store"
                    ) from None
                st = os.fstat(fd)
                # The previous writer removes the lock file on exit (while holding it), so no
                # .lock files pile up. If it did so after we opened the file, we hold a lock on
                # a removed file that nobody else will see: drop it and lock the current one.
                try:
                    now = os.stat(self.lock_path)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    break
                os.close(fd)
            self._lock_fd, self._lock_key = fd, (st.st_dev, st.st_ino)
            _HELD.add(self._lock_key)
        with contextlib.suppress(OSError):  # the pid is for messages only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def __exit__(self, *exc) -> None:
        if self._lock_fd is not None:
            with _HELD_GUARD:
                with contextlib.suppress(OSError):  # still holding it: no other writer races us
                    st = os.stat(self.lock_path)
                    if (st.st_dev, st.st_ino) == self._lock_key:
                        os.unlink(self.lock_path)
                with contextlib.suppress(OSError):
                    os.ftruncate(self._lock_fd, 0)
                    fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                _HELD.discard(self._lock_key)
            self._lock_fd = self._lock_key = None

    def require_writable(self) -> None:
        """Raise :class:`~featx.errors.StoreReadOnlyError` when this writer may only read."""
        if self.read_only:
            raise StoreReadOnlyError(
                f"cannot write {self.path} ({self.read_only}); the store needs updating, so give "
                "it a writable place: --store PATH or FEATX_CACHE_DIR"
            )

    def _clean_stale_tmp(self) -> None:
        for tmp in glob.glob(glob.escape(str(self.path)) + ".tmp-*"):
            log.info("removing unfinished temporary file %s", tmp)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if self.parts_dir.is_dir():
            for tmp in self.parts_dir.glob("*.tmp-*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _load_existing(self) -> None:
        if not self.path.exists():
            return
        with _open_read(self.path) as f:
            stored = StoreConfig.from_json(f.attrs["config"])
            if stored.hash != self.config.hash:
                raise StoreError(
                    f"{self.path} was built with another configuration "
                    f"({config_difference(stored, self.config)}); "
                    "use another --store or delete that file"
                )
            self.index = _read_index(f)
            self.dim = int(f["features"].shape[1])
            self._created = f.attrs.get("created")

    def _check_parts(self) -> None:
        cfg_file = self.parts_dir / "config.json"
        if not self.parts_dir.is_dir():
            return
        if cfg_file.exists():
            stored = StoreConfig.from_json(cfg_file.read_text())
            if stored.hash != self.config.hash:
                raise StoreError(
                    f"{self.parts_dir} holds an unfinished extraction with another configuration "
                    f"({config_difference(stored, self.config)}); re-run with those options to "
                    "finish it, or delete that folder"
                )
        self._n_parts = len(self._part_files())

    def _part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob("part-*.h5"))

    # -- parts -----------------------------------------------------------------------------------
    def iter_part_index(self) -> Iterator[tuple[Path, StoreIndex]]:
        """Yield (part file, its index) for every finished part of an earlier, unfinished run."""
        for p in self._part_files():
            try:
                with _h5().File(p, "r") as f:
                    if f.attrs.get("format") != PART_FORMAT:
                        raise OSError("not a part")
                    yield p, _read_index(f)
            except OSError:
                log.warning("ignoring unreadable part %s", p)

    def write_part(self, rows: Rows) -> Path:
        """Write one batch of rows durably (whole or not at all)."""
        self.require_writable()
        if not rows.keys and not rows.failed_keys:
            raise ValueError("empty part")
        self.parts_dir.mkdir(exist_ok=True)
        cfg_file = self.parts_dir / "config.json"
        if not cfg_file.exists():
            atomic_write(cfg_file, self.config.to_json())
        self._n_parts += 1
        path = self.parts_dir / f"part-{self._n_parts:06d}.h5"
        while path.exists():
            self._n_parts += 1
            path = self.parts_dir / f"part-{self._n_parts:06d}.h5"
        feats = np.asarray(rows.features, dtype=self.config.dtype)
        if feats.ndim != 2:  # (0,) for a part of failures only: keep the known width
            feats = feats.reshape(len(rows.keys), self.dim or 0)
        if feats.shape[0] != len(rows.keys):
            raise ValueError(f"{feats.shape[0]} feature rows for {len(rows.keys)} keys")
        with _atomic_h5(path) as f:
            f.attrs["format"] = PART_FORMAT
            f.attrs["config_hash"] = self.config.hash
            f.create_dataset("features", data=feats)
            for name, arr in (rows.outputs or {}).items():
                out = np.asarray(arr, dtype=self.config.dtype).reshape(len(rows.keys), -1)
                f.create_dataset(f"{GROUPS}/{name}", data=out)
            _str_ds(f, "paths", rows.keys)
            g = f.create_group("fingerprint")
            _int_ds(g, "size", rows.size)
            _int_ds(g, "mtime_ns", rows.mtime_ns)
            _str_ds(g, "sha256", rows.sha256)
            fl = f.create_group("failed")
            _str_ds(fl, "paths", rows.failed_keys)
            _str_ds(fl, "reasons", rows.failed_reasons)
            _int_ds(fl, "size", rows.failed_size)
            _int_ds(fl, "mtime_ns", rows.failed_mtime_ns)
            _str_ds(fl, "sha256", rows.failed_sha256)
            _int_ds(f, "labels", np.full(len(rows.keys), -1))
            _str_ds(f, "split", [""] * len(rows.keys))
            _str_ds(f, "classes", [])
        return path

    # -- commit ------------------------------------------------------------------------------------
    def commit(
        self,
        *,
        rows: dict[str, tuple[str, int]],
        failed: dict[str, tuple[str, int, int, str, str]],
        labels: dict[str, int],
        split: dict[str, str],
        classes: tuple[str, ...],
        fingerprints: dict[str, tuple[int, int, str]],
        attrs: dict[str, Any],
        per_row: dict[str, dict[str, int]] | None = None,
    ) -> Path:
        """Merge the kept old rows and the parts into a new store file, atomically.

        Parameters
        ----------
        rows : dict key -> (where, row)
            Where each final row comes from: ``"store"`` (this store's old row) or the path of a
            part file, and the row index there.
        failed : dict key -> (reason, size, mtime_ns, sha256, "")
            Items that could not be decoded.
        labels, split, fingerprints : dicts keyed by key
            The current source's label, split and (size, mtime_ns, sha256) for every row.
        classes : tuple of str
            Class names.
        attrs : dict
            Provenance attributes (backbone, weights, versions, ...), stored as file attributes.
        per_row : dict name -> (dict key -> int or str), optional
            Extra datasets aligned with the rows: int64 (e.g. ``text/n_tokens``; -1 where a key
            has no value) or strings (``text/texts``; "" where a key has none).
        """
        self.require_writable()
        h5py = _h5()
        keys = sorted(rows)
        n = len(keys)
        dim = self.dim
        if dim is None:
            for where, _ in rows.values():
                if where != "store":
                    with h5py.File(where, "r") as pf:
                        dim = int(pf["features"].shape[1])
                    break
        dim = int(dim or attrs.get("dim") or 0)
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        open_files: dict[str, Any] = {}

        def source_ds(where: str, name: str = "features"):
            if where not in open_files:
                open_files[where] = h5py.File(self.path if where == "store" else where, "r")
            return open_files[where][name]

        try:
            with _atomic_h5(self.path) as f:
                f.attrs["format"] = FORMAT
                f.attrs["schema_version"] = SCHEMA_VERSION
                f.attrs["config"] = self.config.to_json()
                f.attrs["config_hash"] = self.config.hash
                f.attrs["created"] = getattr(self, "_created", None) or now
                f.attrs["updated"] = now
                for k, v in attrs.items():
                    if isinstance(v, str):
                        v = str(v)  # str subclasses (torch's TorchVersion) confuse h5py
                    elif not isinstance(v, int | float | bool):
                        v = _canonical(v)
                    f.attrs[k] = v
                f.attrs["n_items"] = n
                f.attrs["n_failed"] = len(failed)
                f.attrs["dim"] = dim
                itemsize = np.dtype(self.config.dtype).itemsize
                rows_per_chunk = max(1, min(n, CHUNK_BYTES // max(1, dim * itemsize)))
                # LZF without byte-shuffle: measured on dense float features it reads at ~2 GB/s,
                # while shuffle cut reads to ~0.35 GB/s for a 1.09x size gain (BENCHMARKS.md).
                wheres = np.asarray([rows[k][0] for k in keys], dtype=object)
                srcrow = np.asarray([rows[k][1] for k in keys], dtype=np.int64)
                # the pooled embedding, then every extra output of the pass (--layers)
                for ds_name, width in [("features", dim), *store_groups(self.config)]:
                    rows_per_chunk = max(1, min(n, CHUNK_BYTES // max(1, width * itemsize)))
                    feats = f.create_dataset(
                        ds_name,
                        shape=(n, width),
                        dtype=self.config.dtype,
                        chunks=(rows_per_chunk, max(width, 1)) if n else None,
                        compression="lzf" if n else None,
                        fletcher32=bool(n),
                    )
                    step = COPY_ROWS
                    for a in range(0, n, step):
                        b = min(n, a + step)
                        block = np.empty((b - a, width), dtype=self.config.dtype)
                        w, r = wheres[a:b], srcrow[a:b]
                        for where in dict.fromkeys(w):
                            m = w == where
                            sel = r[m]
                            order = np.argsort(sel, kind="stable")
                            vals = _read_rows(source_ds(where, ds_name), sel[order])
                            tmp = np.empty_like(vals)
                            tmp[order] = vals
                            block[m] = tmp
                        feats[a:b] = block
                _str_ds(f, "paths", keys)
                _int_ds(f, "labels", [labels.get(k, -1) for k in keys])
                _str_ds(f, "split", [split.get(k, "") for k in keys])
                _str_ds(f, "classes", classes)
                g = f.create_group("fingerprint")
                _int_ds(g, "size", [fingerprints[k][0] for k in keys])
                _int_ds(g, "mtime_ns", [fingerprints[k][1] for k in keys])
                _str_ds(g, "sha256", [fingerprints[k][2] for k in keys])
                for name, values in (per_row or {}).items():
                    grp, _, leaf = name.rpartition("/")
                    where_ = f.require_group(grp) if grp else f
                    if any(isinstance(v, str) for v in values.values()):  # e.g. text/texts
                        _str_ds(where_, leaf, [values.get(k, "") for k in keys])
                    else:
                        _int_ds(where_, leaf, [values.get(k, -1) for k in keys])
                fkeys = sorted(failed)
                fl = f.create_group("failed")
                _str_ds(fl, "paths", fkeys)
                _str_ds(fl, "reasons", [failed[k][0] for k in fkeys])
                _int_ds(fl, "size", [failed[k][1] for k in fkeys])
                _int_ds(fl, "mtime_ns", [failed[k][2] for k in fkeys])
                _str_ds(fl, "sha256", [failed[k][3] for k in fkeys])
                f.attrs["attrs_sha256"] = _digest_attrs(f.attrs)
                for of in open_files.values():
                    of.close()
                open_files.clear()
        finally:
            for of in open_files.values():
                of.close()
        self.discard_parts()
        return self.path

    def discard_parts(self) -> None:
        if self.parts_dir.is_dir():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._n_parts = 0


# ---------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------
_INDEX_DATASETS = (
    "paths",
    "labels",
    "split",
    "fingerprint/size",
    "fingerprint/mtime_ns",
    "fingerprint/sha256",
)
_FAILED_DATASETS = (
    "failed/paths",
    "failed/reasons",
    "failed/size",
    "failed/mtime_ns",
    "failed/sha256",
)


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_store` found.

    Attributes
    ----------
    store : str
    ok : bool
        True when nothing is damaged.
    problems : tuple of str
        One line per damage found (empty when ``ok``).
    notes : tuple of str
        Not damage: e.g. a store written before featx kept checksums.
    n_items, dim : int
        Rows and feature size (0 when unreadable).
    chunks_read : int
        Feature chunks read (each checked by Fletcher-32 when the store has it).
    bytes_read : int
        Feature bytes read.
    """

    store: str
    ok: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    n_items: int
    dim: int
    chunks_read: int
    bytes_read: int

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["problems"], d["notes"] = list(self.problems), list(self.notes)
        return d


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def verify_store(path: str | os.PathLike) -> VerifyReport:
    """Read every byte of a store that matters and check it: chunks, checksums, schema.

    Every chunk of ``features`` is read (HDF5 checks its Fletcher-32 checksum on read), every
    other dataset is read and compared with its stored SHA-256, the file attributes with theirs,
    and the schema is checked: required datasets, matching row counts, sorted unique keys,
    labels inside the classes, the configuration hash, finite features.

    Parameters
    ----------
    path : path-like
        The store file.

    Returns
    -------
    VerifyReport
        ``ok`` is False when anything is damaged; ``problems`` says what.

    Raises
    ------
    StoreError
        The file does not exist or is a folder (nothing to verify).

    Examples
    --------
    >>> rep = verify_store("cache/digits__....h5")  # doctest: +SKIP
    >>> rep.ok, rep.chunks_read  # doctest: +SKIP
    (True, 2)
    """
    h5py = _h5()
    p = Path(path)
    if not p.exists():
        raise StoreError(f"store {p} does not exist; check the path")
    if p.is_dir():
        raise StoreError(f"{p} is a folder, not a featx store (.h5 file)")
    problems: list[str] = []
    notes: list[str] = []
    n = dim = chunks = nbytes = 0

    def report() -> VerifyReport:
        return VerifyReport(
            str(p), not problems, tuple(problems), tuple(notes), n, dim, chunks, nbytes
        )

    try:
        f = h5py.File(p, "r")
    except Exception as exc:  # noqa: BLE001 - any failure to open is damage here
        problems.append(f"cannot open as HDF5 ({_first_line(exc)})")
        return report()
    with f:
        try:
            attrs = {k: _attr_value(f.attrs[k]) for k in f.attrs}
        except Exception as exc:  # noqa: BLE001
            problems.append(f"file attributes unreadable ({_first_line(exc)})")
            return report()
        if attrs.get("format") != FORMAT:
            problems.append(f"attribute format is {attrs.get('format')!r}, not {FORMAT!r}")
            return report()
        if "attrs_sha256" in attrs:
            if _digest_attrs(attrs) != attrs["attrs_sha256"]:
                problems.append("file attributes do not match their SHA-256")
        else:
            notes.append("no checksums: written before featx kept them; structure checked only")
        try:
            cfg = StoreConfig.from_json(attrs["config"])
            if attrs.get("config_hash") != cfg.hash:
                problems.append("config_hash does not match config")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"attribute config unreadable ({_first_line(exc)})")
            cfg = None

        values: dict[str, np.ndarray] = {}
        for name in (*_INDEX_DATASETS, "classes", *_FAILED_DATASETS):
            try:
                ds = f[name]
                raw = ds[()]
                if ds.dtype.kind == "O":
                    enc = [b if isinstance(b, bytes) else _encode(b) for b in raw]
                    digest = _digest_strings(enc)
                    values[name] = np.asarray(
                        [b.decode("utf-8", "surrogateescape") for b in enc], dtype=object
                    )
                else:
                    values[name] = np.asarray(raw)
                    digest = _digest_ints(values[name])
                want = _attr_value(ds.attrs["featx_sha256"]) if "featx_sha256" in ds.attrs else None
                if want is not None and want != digest:
                    problems.append(f"dataset {name} does not match its SHA-256")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"dataset {name} unreadable ({_first_line(exc)})")

        try:
            ds = f["features"]
            if ds.ndim != 2:
                raise ValueError(f"shape {ds.shape} is not 2-D")
            n, dim = int(ds.shape[0]), int(ds.shape[1])
            if cfg is not None and str(ds.dtype) != cfg.dtype:
                problems.append(f"features are {ds.dtype}, the configuration says {cfg.dtype}")
            if n and not ds.fletcher32:
                notes.append("features have no Fletcher-32 checksums (written by an older featx)")
            step = ds.chunks[0] if ds.chunks else max(1, COPY_ROWS)
            bad_rows = 0
            for a in range(0, n, step):
                block = ds[a : min(n, a + step)]
                chunks += 1
                nbytes += block.nbytes
                bad_rows += int((~np.isfinite(block)).any(axis=1).sum())
            if bad_rows:
                problems.append(f"{bad_rows} feature rows hold NaN or inf")
        except Exception as exc:  # noqa: BLE001
            where = f" after {chunks} chunks" if chunks else ""
            problems.append(f"features unreadable{where} ({_first_line(exc)})")

        for gname, width in store_groups(cfg):  # each layer of a multi-layer store (--layers)
            try:
                g = f[gname]
                if tuple(g.shape) != (n, width):
                    problems.append(f"{gname} has shape {tuple(g.shape)}, expected ({n}, {width})")
                step = g.chunks[0] if g.chunks else COPY_ROWS
                bad_rows = 0
                for a in range(0, int(g.shape[0]), step):
                    block = g[a : min(int(g.shape[0]), a + step)]
                    chunks += 1
                    nbytes += block.nbytes
                    bad_rows += int((~np.isfinite(block)).any(axis=1).sum())
                if bad_rows:
                    problems.append(f"{bad_rows} rows of {gname} hold NaN or inf")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{gname} unreadable ({_first_line(exc)})")
        if TEXTS in f:  # a text store's texts (docs/store.md)
            try:
                enc = [b if isinstance(b, bytes) else _encode(b) for b in f[TEXTS][()]]
                want = _attr_value(f[TEXTS].attrs.get("featx_sha256"))
                if want is not None and want != _digest_strings(enc):
                    problems.append(f"dataset {TEXTS} does not match its SHA-256")
                if len(enc) != n:
                    problems.append(f"{TEXTS} has {len(enc)} rows, features {n}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"dataset {TEXTS} unreadable ({_first_line(exc)})")
        lens = {k: len(values[k]) for k in _INDEX_DATASETS if k in values}
        if any(v != n for v in lens.values()):
            problems.append(
                f"row counts disagree: features {n}, "
                + ", ".join(f"{k} {v}" for k, v in lens.items() if v != n)
            )
        flens = {k: len(values[k]) for k in _FAILED_DATASETS if k in values}
        if len(set(flens.values())) > 1:
            problems.append("failed/* datasets have different lengths")
        keys = values.get("paths")
        if keys is not None and len(keys) > 1:
            k = list(keys)
            if any(a >= b for a, b in itertools.pairwise(k)):
                problems.append("paths are not sorted and unique")
        labels, classes = values.get("labels"), values.get("classes")
        if (
            labels is not None
            and classes is not None
            and labels.size
            and (labels.min() < -1 or labels.max() >= len(classes))
        ):
            problems.append(f"labels outside -1..{len(classes) - 1}")
        for attr, want in (("n_items", n), ("dim", dim), ("n_failed", flens.get("failed/paths"))):
            if want is not None and attr in attrs and int(attrs[attr]) != int(want):
                problems.append(f"attribute {attr} is {attrs[attr]}, the data says {want}")
    return report()
