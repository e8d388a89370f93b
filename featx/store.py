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
finished part on disk, and the next run resumes from them. A writer holds an exclusive
``flock`` on ``STORE.lock`` for the whole run, so a second writer fails at once with a clear
error; the kernel releases the lock when a killed process dies.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import StoreError, StoreLockedError
from featx.features import FeatureSet
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
    fmt = f.attrs.get("format")
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
    return np.asarray(ds.asstr()[()], dtype=object) if ds.shape[0] else np.empty(0, dtype=object)


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
    meta = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        meta[k] = v
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
    with _open_read(path) as f:
        idx = _read_index(f)
        ds = f["features"]
        X = np.empty(ds.shape, dtype=dtype)
        if ds.shape[0]:
            ds.read_direct(X) if ds.dtype == X.dtype else X.__setitem__(slice(None), ds[()])
        split = idx.split if any(idx.split) else None
        return FeatureSet(
            X=X,
            y=idx.labels.astype(np.int64),
            classes=idx.classes,
            split=split,
            keys=idx.keys,
            meta=_meta(f),
        )


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-able summary of a store: counts, dim, backbone, weights, classes, splits, versions."""
    with _open_read(path) as f:
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


def _str_ds(group, name: str, values: Iterable[str]) -> None:
    h5py = _h5()
    arr = np.asarray(list(values), dtype=object)
    kw = {"compression": "gzip", "chunks": True} if arr.shape[0] > 0 else {}
    group.create_dataset(name, data=arr, dtype=h5py.string_dtype(), **kw)


def _int_ds(group, name: str, values: Any) -> None:
    arr = np.asarray(values, dtype=np.int64)
    kw = {"compression": "gzip", "chunks": True} if arr.shape[0] > 0 else {}
    group.create_dataset(name, data=arr, **kw)


def _atomic_h5(path: Path):
    """Context manager: yields an open h5py.File at a temp name; on success fsync + rename."""
    h5py = _h5()

    @contextlib.contextmanager
    def cm():
        with atomic_path(path) as tmp, h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            yield f

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
        self._lock_fh = None
        self._n_parts = 0
        self.index: StoreIndex | None = None
        self.dim: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fh = open(lock_path, "a+")  # noqa: SIM115 - held for the writer's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StoreLockedError(
                f"another featx process is writing {self.path} (lock {lock_path.name} is held); "
                "wait for it to finish or use another --store"
            ) from None
        self._lock_fh = fh
        try:
            self._clean_stale_tmp()
            self._load_existing()
            self._check_parts()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

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
        dim = rows.features.shape[1] if rows.keys else (self.dim or 0)
        with _atomic_h5(path) as f:
            f.attrs["format"] = PART_FORMAT
            f.attrs["config_hash"] = self.config.hash
            feats = np.asarray(rows.features, dtype=self.config.dtype).reshape(-1, dim)
            f.create_dataset("features", data=feats)
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
        per_row : dict name -> (dict key -> int), optional
            Extra int64 datasets aligned with the rows (e.g. ``text/n_tokens``); -1 where a key
            has no value.
        """
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

        def source_ds(where: str):
            if where not in open_files:
                open_files[where] = h5py.File(self.path if where == "store" else where, "r")
            return open_files[where]["features"]

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
                feats = f.create_dataset(
                    "features",
                    shape=(n, dim),
                    dtype=self.config.dtype,
                    chunks=(rows_per_chunk, max(dim, 1)) if n else None,
                    compression="lzf" if n else None,
                )
                wheres = np.asarray([rows[k][0] for k in keys], dtype=object)
                srcrow = np.asarray([rows[k][1] for k in keys], dtype=np.int64)
                step = COPY_ROWS
                for a in range(0, n, step):
                    b = min(n, a + step)
                    block = np.empty((b - a, dim), dtype=self.config.dtype)
                    w, r = wheres[a:b], srcrow[a:b]
                    for where in dict.fromkeys(w):
                        m = w == where
                        sel = r[m]
                        order = np.argsort(sel, kind="stable")
                        vals = _read_rows(source_ds(where), sel[order])
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
                    _int_ds(
                        f.require_group(grp) if grp else f, leaf, [values.get(k, -1) for k in keys]
                    )
                fkeys = sorted(failed)
                fl = f.create_group("failed")
                _str_ds(fl, "paths", fkeys)
                _str_ds(fl, "reasons", [failed[k][0] for k in fkeys])
                _int_ds(fl, "size", [failed[k][1] for k in fkeys])
                _int_ds(fl, "mtime_ns", [failed[k][2] for k in fkeys])
                _str_ds(fl, "sha256", [failed[k][3] for k in fkeys])
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
