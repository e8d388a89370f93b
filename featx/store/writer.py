"""Writing stores: durable parts, then one atomic merge (:class:`StoreWriter`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import glob
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import StoreError, StoreReadOnlyError
from featx.files import atomic_write
from featx.progress import progress_bar
from featx.store.config import (
    GROUPS,
    TEXTS,
    StoreConfig,
    _canonical,
    config_difference,
    store_groups,
    store_outputs,
)
from featx.store.layout import (
    CHUNK_BYTES,
    COPY_ROWS,
    PART_FORMAT,
    _atomic_h5,
    _digest_attrs,
    _h5,
    _int_ds,
    _read_rows,
    _str_ds,
    _strings,
    _write_attrs,
    _write_failed,
)
from featx.store.lock import acquire_lock, release_lock
from featx.store.read import StoreIndex, _open_read, _per_row_names, _read_index, _rows
from featx.store.segments import SEGMENT_FORMAT, _crash_point, is_segmented

log = logging.getLogger(__name__)


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
    #: The rows' labels (indices into ``classes``, -1: none) and splits, when the writer of the
    #: part knows them: a part in key order with them can become a segment as it is (#21).
    labels: list[int] | None = None
    split: list[str] | None = None
    classes: tuple[str, ...] = ()


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

    def __init__(self, path: str | os.PathLike, config: StoreConfig, *, progress: bool = False):
        self.path = Path(path)
        self.config = config
        #: Show a progress bar (stderr) on commits that copy many rows (a compaction).
        self.progress = progress
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd: int | None = None
        self._lock_key: tuple[int, int] | None = None
        self._n_parts = 0
        self.index: StoreIndex | None = None
        self.dim: int | None = None
        #: Where the old store's rows are (a StoreMatrix), its per-row extras, and for a
        #: segmented store its tombstones and segment sizes.
        self.layout: Any = None
        self.old_per_row: dict[str, np.ndarray] = {}
        #: Every per-row dataset the store carries (``text/n_tokens``, ``text/texts``); the
        #: string ones are not read with the index (``self.layout.column(name)`` reads them).
        self.per_row_names: tuple[str, ...] = ()
        self.old_dead: list[tuple[int, int]] = []
        self.old_n_rows: list[int] = []
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
        """Take the writer lock on ``STORE.lock`` (:func:`featx.store.lock.acquire_lock`)."""
        self._lock_fd, self._lock_key = acquire_lock(self.lock_path, self.path)

    def __exit__(self, *exc) -> None:
        if self.layout is not None:  # the segment files the index read holds open
            self.layout.close()
        if self._lock_fd is not None:
            release_lock(self.lock_path, self._lock_fd, self._lock_key)
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
        from featx.store.segments import clean_orphans

        clean_orphans(self.path)  # segments a killed commit or compaction left behind

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
            self.index, self.layout, self.old_per_row = _rows(f, self.path)
            self.per_row_names = _per_row_names(f)
            self.dim = int(self.layout.shape[1])
            self._created = f.attrs.get("created")
            if is_segmented(f):
                self.old_dead = list(
                    zip(f["dead/segment"][()].tolist(), f["dead/row"][()].tolist(), strict=True)
                )
                self.old_n_rows = f["segments/n_rows"][()].tolist()

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
        self._prepare_parts()
        self._n_parts += 1
        path = self.parts_dir / f"part-{self._n_parts:06d}.h5"
        while path.exists():
            self._n_parts += 1
            path = self.parts_dir / f"part-{self._n_parts:06d}.h5"
        return write_part_file(path, self.config, rows, self.dim)

    def _prepare_parts(self) -> None:
        self.parts_dir.mkdir(exist_ok=True)
        cfg_file = self.parts_dir / "config.json"
        if not cfg_file.exists():
            atomic_write(cfg_file, self.config.to_json())

    def part_sink(self, classes: tuple[str, ...], rows_per_part: int) -> PartSink:
        """Where other processes (Ray workers) write this run's parts themselves: a picklable
        :class:`PartSink` on this store's parts folder (which must be on storage they share)."""
        self.require_writable()  # the folder is made by the first part (none: no folder)
        return PartSink(str(self.parts_dir), self.config.to_json(), tuple(classes),
                        int(rows_per_part), self.dim)  # fmt: skip

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
        compact: bool = False,
    ) -> Path:
        """Commit the store's new state atomically: as a segment plus a new index when the
        change is small, else (or with ``compact``) as one rewritten file
        (:mod:`featx.store.segments`). The parameters are those of :meth:`_merge`."""
        from featx.store import segments

        self.require_writable()
        return segments.commit(
            self,
            rows=rows,
            failed=failed,
            labels=labels,
            split=split,
            classes=classes,
            fingerprints=fingerprints,
            attrs=attrs,
            per_row=per_row,
            force_full=compact,
        )

    def commit_change(self, change: Any, *, compact: bool = False) -> Path:
        """Commit a :class:`~featx.store.segments.StoreChange` (the rows kept, written and
        removed): a segment plus a new index, costing the change, when it is small; else (or
        with ``compact``) one rewritten file."""
        from featx.store import segments

        self.require_writable()
        return segments.commit_change(self, change, force_full=compact)

    def _merge(
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
        target: Path | None = None,
    ) -> Path:
        """Merge the kept old rows and the parts into a new store file, atomically.

        With ``target``, the rows go into that file instead, as a segment (format
        ``featx-segment``), and the parts stay.

        Parameters
        ----------
        rows : dict key -> (where, row)
            Where each final row comes from: ``"store"`` (this store's old row) or the path of a
            part file or segment, and the row index there.
        failed : dict key -> (reason, size, mtime_ns, sha256, "")
            Items that could not be decoded.
        labels, split, fingerprints : dicts keyed by key
            The current source's label, split and (size, mtime_ns, sha256) for every row.
        classes : tuple of str
            Class names.
        attrs : dict
            Provenance attributes (backbone, weights, versions, ...), stored as file attributes.
        per_row : dict name -> (dict key -> int or str), optional
            Extra datasets aligned with the rows: int64 (e.g. ``text/n_tokens``) or strings
            (``text/texts``). A row without a value here keeps the one stored with it where it
            comes from (this store, a segment), else gets -1 or "".
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

        def source_file(where: str):
            if where not in open_files:
                open_files[where] = h5py.File(self.path if where == "store" else where, "r")
            return open_files[where]

        def source_ds(where: str, name: str = "features"):
            return source_file(where)[name]

        try:
            with _atomic_h5(target or self.path) as f:
                self._write_attrs(f, attrs, getattr(self, "_created", None) or now, now)
                if target is not None:
                    f.attrs["format"] = SEGMENT_FORMAT
                f.attrs["n_items"] = n
                f.attrs["n_failed"] = len(failed)
                f.attrs["dim"] = dim
                wheres = np.asarray([rows[k][0] for k in keys], dtype=object)
                srcrow = np.asarray([rows[k][1] for k in keys], dtype=np.int64)
                # the pooled embedding, every extra output of the pass (--layers), and the outputs
                # that make this store one of its own (cached activations: flattened rows of
                # their own dtype)
                datasets = [("features", dim, self.config.dtype)]
                datasets += [(g, w, self.config.dtype) for g, w in store_groups(self.config)]
                datasets += store_outputs(self.config)
                row_bytes = sum(w * np.dtype(t).itemsize for _, w, t in datasets)
                bar = progress_bar(
                    total=n * len(datasets),
                    desc="store: compact" if target is None else "store: segment",
                    unit="row",
                    enabled=self.progress and n * row_bytes >= PROGRESS_BYTES,
                    unit_scale=True,
                )
                for ds_name, width, dtype in datasets:
                    ds = _copy_rows(f, ds_name, width, dtype, wheres, srcrow, source_ds, bar)
                    _output_attrs(ds, ds_name, self.config)
                bar.close()
                columns = {
                    name: _per_row_column(name, values, keys, wheres, srcrow, source_file)
                    for name, values in (per_row or {}).items()
                }
                _write_index(f, keys, labels, split, classes, fingerprints, columns, failed)
                f.attrs["attrs_sha256"] = _digest_attrs(f.attrs)
                for of in open_files.values():
                    of.close()
                open_files.clear()
                _crash_point("segment-write" if target else "full-write")  # tests: kill -9 here
        finally:
            for of in open_files.values():
                of.close()
        if target is not None:
            return target
        self.discard_parts()
        return self.path

    def _write_attrs(self, f: Any, attrs: dict[str, Any], created: str, now: str) -> None:
        """The format, configuration and provenance attributes of a new store file."""
        _write_attrs(f, self.config, attrs, created, now)

    def discard_parts(self) -> None:
        if self.parts_dir.is_dir():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._n_parts = 0


def write_part_file(
    path: Path, config: StoreConfig, rows: Rows, dim: int | None, *, worker: bool = False
) -> Path:
    """Write ``rows`` as the part file ``path``, durably (complete or absent). With the layout
    and attributes of a segment, so that a part in key order with its labels and splits can
    become a segment as it is (:mod:`featx.store.segments`)."""
    feats = np.asarray(rows.features, dtype=config.dtype)
    if feats.ndim != 2:  # (0,) for a part of failures only: keep the known width
        feats = feats.reshape(len(rows.keys), dim or 0)
    if feats.shape[0] != len(rows.keys):
        raise ValueError(f"{feats.shape[0]} feature rows for {len(rows.keys)} keys")
    n = len(rows.keys)
    labels = np.full(n, -1) if rows.labels is None else np.asarray(rows.labels, np.int64)
    split = [""] * n if rows.split is None else list(rows.split)
    in_order = all(a < b for a, b in zip(rows.keys, rows.keys[1:], strict=False))
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    with _atomic_h5(path) as f:
        _write_attrs(f, config, {}, now, now)
        f.attrs["format"] = PART_FORMAT
        f.attrs["n_items"] = n
        f.attrs["n_failed"] = len(rows.failed_keys)
        f.attrs["dim"] = int(feats.shape[1])
        f.attrs["segment_ready"] = bool(in_order and rows.labels is not None)
        f.attrs["worker_part"] = bool(worker)  # written by an engine's worker (PartSink)
        ds = _features_ds(f, "features", feats.shape[1], str(feats.dtype), n)
        if n:
            ds[...] = feats
        for name, arr in (rows.outputs or {}).items():  # as a segment holds them (#21)
            dtype = config.output_dtype(name)
            out = np.asarray(arr, dtype=dtype).reshape(n, -1)
            ds = _features_ds(f, f"{GROUPS}/{name}", out.shape[1], str(out.dtype), n)
            if n:
                ds[...] = out
            _output_attrs(ds, f"{GROUPS}/{name}", config)
        _str_ds(f, "paths", rows.keys, fixed=True)
        g = f.create_group("fingerprint")
        _int_ds(g, "size", rows.size)
        _int_ds(g, "mtime_ns", rows.mtime_ns)
        _str_ds(g, "sha256", rows.sha256, fixed=True)
        _write_failed(
            f,
            {
                k: (r, s, m, h)
                for k, r, s, m, h in zip(
                    rows.failed_keys, rows.failed_reasons, rows.failed_size,
                    rows.failed_mtime_ns, rows.failed_sha256, strict=True,
                )
            },
        )  # fmt: skip
        _int_ds(f, "labels", labels)
        _str_ds(f, "split", split, fixed=True)
        _str_ds(f, "classes", rows.classes)
        f.attrs["attrs_sha256"] = _digest_attrs(f.attrs)
    return path


@dataclass(frozen=True)
class PartSink:
    """Where a worker process writes parts of a run itself (``--engine ray``): the store's parts
    folder (storage the cluster shares), its configuration, the source's classes, and how many
    rows a part holds. Picklable; :meth:`write` needs no lock (names are unique)."""

    parts_dir: str
    config_json: str
    classes: tuple[str, ...]
    rows_per_part: int
    dim: int | None = None

    def write(self, rows: Rows) -> str:
        """Write ``rows`` (its ``labels`` index :attr:`classes`) as a new part; its path."""
        import uuid

        folder = Path(self.parts_dir)
        if not folder.parent.is_dir():
            import socket

            raise StoreError(
                f"the store's folder {folder.parent} is not visible on Ray worker "
                f"{socket.gethostname()}; put the store (--store) on storage every node shares"
            )
        folder.mkdir(exist_ok=True)
        if not (folder / "config.json").exists():  # as StoreWriter.write_part does
            atomic_write(folder / "config.json", self.config_json)
        path = folder / f"part-w{uuid.uuid4().hex[:12]}.h5"
        cfg = StoreConfig.from_json(self.config_json)
        rows = replace(rows, classes=self.classes)
        return str(write_part_file(path, cfg, rows, self.dim, worker=True))


#: Attributes a commit writes itself; compaction carries every other attribute over.
_STRUCTURAL_ATTRS = frozenset(
    {
        "format",
        "schema_version",
        "layout",
        "config",
        "config_hash",
        "created",
        "updated",
        "n_items",
        "n_failed",
        "dim",
        "dtype",
        "n_segments",
        "n_dead",
        "attrs_sha256",
    }
)


def compact_store(path: str | os.PathLike, *, progress: bool = False) -> dict[str, Any]:
    """Merge a segmented store's segments into one file without its dead rows (``featx compact``).

    The same atomic commit as an extraction's (a new file renamed over the index, then the
    segments removed), under the writer lock; readers see the old store or the new one. A store
    that is already one file is left alone.

    Returns
    -------
    dict
        ``store``, ``compacted`` (bool), ``segments`` and ``dead_rows`` before, ``n_items``,
        ``seconds``.
    """
    import time

    from featx.store.layout import _attr_value

    p = Path(path)
    with _open_read(p) as f:
        config = StoreConfig.from_json(f.attrs["config"])
        segmented = is_segmented(f)
        n_dead = int(f.attrs.get("n_dead", 0))
        meta = {k: _attr_value(v) for k, v in f.attrs.items() if k not in _STRUCTURAL_ATTRS}
    t0 = time.perf_counter()
    with StoreWriter(p, config, progress=progress) as w:
        if w.parts_dir.is_dir() and any(w.parts_dir.glob("part-*.h5")):
            raise StoreError(
                f"{p} has an unfinished extraction ({w.parts_dir.name}); run the same "
                "'featx extract' again first (it commits, and compacts when needed)"
            )
        idx = w.index
        n_segments = len(w.layout.files) if w.layout is not None else 0
        out = {"store": str(p), "segments": n_segments, "dead_rows": n_dead}
        if not segmented or idx is None:
            return {**out, "compacted": False, "n_items": 0 if idx is None else idx.n_rows,
                    "seconds": 0.0}  # fmt: skip
        keys = [str(k) for k in idx.keys]
        failed = {
            str(k): (str(r), int(s), int(m), str(h), "")
            for k, r, s, m, h in zip(
                idx.failed_keys,
                idx.failed_reasons,
                idx.failed_size,
                idx.failed_mtime_ns,
                idx.failed_sha256,
                strict=True,
            )
        }
        w.commit(
            rows={k: ("store", i) for i, k in enumerate(keys)},
            failed=failed,
            labels={k: int(v) for k, v in zip(keys, idx.labels, strict=True)},
            split={k: str(v) for k, v in zip(keys, idx.split, strict=True)},
            classes=idx.classes,
            fingerprints={
                k: (int(s), int(m), str(h))
                for k, s, m, h in zip(keys, idx.size, idx.mtime_ns, idx.sha256, strict=True)
            },
            attrs=meta,
            # every per-row dataset (token counts, texts) is copied with its row
            per_row={name: {} for name in w.per_row_names} or None,
            compact=True,
        )
    return {**out, "compacted": True, "n_items": len(keys), "seconds": time.perf_counter() - t0}


#: Bytes per block when copying rows into a new store (bounds memory for wide rows).
COPY_BYTES = 64 << 20


def _features_ds(f: Any, name: str, width: int, dtype: str, n: int) -> Any:
    """An empty (n, width) feature dataset as every store file has it: ~8 MB row chunks,
    LZF-compressed (without byte-shuffle: measured on dense float features it reads at
    ~2 GB/s, while shuffle cut reads to ~0.35 GB/s for a 1.09x size gain, BENCHMARKS.md),
    Fletcher-32 per chunk."""
    rows_per_chunk = max(1, min(n, CHUNK_BYTES // max(1, width * np.dtype(dtype).itemsize)))
    return f.create_dataset(
        name,
        shape=(n, width),
        dtype=dtype,
        chunks=(rows_per_chunk, max(width, 1)) if n else None,
        compression="lzf" if n else None,
        fletcher32=bool(n),
    )


def _output_attrs(ds: Any, ds_name: str, config: StoreConfig) -> None:
    """The attributes of an extra output dataset ``outputs/<name>``: a cached output's spec, or
    a layer's provenance (``layer``, ``pool``, ``dim`` and what else the family records)."""
    if ds_name == "features":
        return
    spec = config.outputs.get(ds_name.split("/", 1)[-1])
    if spec is not None:  # a cached output's spec
        ds.attrs["spec"] = _canonical(spec)
    for g in (config.backbone or {}).get("layers") or []:
        if ds_name == f"{GROUPS}/{g['name']}":  # the layer's provenance
            ds.attrs["layer"] = str(g["name"])
            ds.attrs["pool"] = str(g.get("pool") or "")
            ds.attrs["dim"] = int(g["dim"])
            for k, v in g.items():  # more provenance (text: normalize, tokens)
                if k not in ("name", "pool", "dim"):
                    ds.attrs[k] = v if isinstance(v, bool | int | float) else str(v)


#: Commits that copy at least this many feature bytes show a progress bar (with ``progress``).
PROGRESS_BYTES = 256 << 20


def _copy_rows(
    f: Any,
    name: str,
    width: int,
    dtype: str,
    wheres: np.ndarray,
    srcrow: np.ndarray,
    source_ds: Any,
    bar: Any = None,
) -> Any:
    """Dataset ``name`` of a new store: row i copied from row ``srcrow[i]`` of ``wheres[i]``
    (the old store or a part), in blocks, each source read in row order."""
    n = len(wheres)
    itemsize = np.dtype(dtype).itemsize
    ds = _features_ds(f, name, width, dtype, n)
    step = max(1, min(COPY_ROWS, COPY_BYTES // max(1, width * itemsize)))  # wide rows: ~64 MB
    for a in range(0, n, step):
        b = min(n, a + step)
        block = np.empty((b - a, width), dtype=dtype)
        w, r = wheres[a:b], srcrow[a:b]
        for where in dict.fromkeys(w):
            m = w == where
            sel = r[m]
            order = np.argsort(sel, kind="stable")
            vals = _read_rows(source_ds(where, name), sel[order])
            tmp = np.empty_like(vals)
            tmp[order] = vals
            block[m] = tmp
        ds[a:b] = block
        if bar is not None:
            bar.update(b - a)
    return ds


def _per_row_column(
    name: str,
    values: Any,
    keys: list[str],
    wheres: np.ndarray,
    srcrow: np.ndarray,
    source_file: Any,
) -> np.ndarray:
    """The per-row dataset ``name`` of a new store file, aligned with ``keys``: the value given
    in ``values`` (key -> value), else the one stored with the row where it comes from (the old
    store or a segment: a kept text keeps its text without anyone reading it into a dict), else
    -1 or "". Strings when the values or the stored dataset are strings."""
    n = len(keys)
    given = np.fromiter((k in values for k in keys), bool, n) if values else np.zeros(n, bool)
    stored: dict[str, Any] = {}
    for where in dict.fromkeys(wheres[~given].tolist()):
        f = source_file(where)
        if name in f:
            stored[where] = f[name]
    first = next(iter(values.values()), None) if values else None
    strings = isinstance(first, str) or any(ds.dtype.kind in "OS" for ds in stored.values())
    strings = strings or name == TEXTS  # (a store of no rows still keeps texts as strings)
    col = np.full(n, "" if strings else -1, dtype=object if strings else np.int64)
    if given.any():
        gi = np.flatnonzero(given)
        col[gi] = [values[keys[i]] for i in gi.tolist()]
    for where, ds in stored.items():
        m = np.flatnonzero(~given & (wheres == where))
        if not len(m):
            continue
        vals = _strings(ds) if ds.dtype.kind in "OS" else ds[()].astype(np.int64)
        col[m] = vals[srcrow[m]]
    return col


def _write_index(f, keys, labels, split, classes, fingerprints, per_row, failed) -> None:
    """The row index, the per-row datasets (``per_row``: name -> values aligned with ``keys``)
    and the failures of a new store file."""
    _str_ds(f, "paths", keys, fixed=True)
    _int_ds(f, "labels", [labels.get(k, -1) for k in keys])
    _str_ds(f, "split", [split.get(k, "") for k in keys], fixed=True)
    _str_ds(f, "classes", classes)
    g = f.create_group("fingerprint")
    _int_ds(g, "size", [fingerprints[k][0] for k in keys])
    _int_ds(g, "mtime_ns", [fingerprints[k][1] for k in keys])
    _str_ds(g, "sha256", [fingerprints[k][2] for k in keys], fixed=True)
    for name, values in (per_row or {}).items():
        grp, _, leaf = name.rpartition("/")
        where = f.require_group(grp) if grp else f
        if values.dtype == object:  # e.g. text/texts
            _str_ds(where, leaf, values)
        else:
            _int_ds(where, leaf, values)
    _write_failed(f, failed)
