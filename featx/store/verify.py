"""Verifying stores: every chunk, checksum and schema rule (:func:`verify_store`)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import StoreError
from featx.store.config import N_TOKENS, TEXTS, StoreConfig, store_groups, store_outputs
from featx.store.layout import (
    COPY_ROWS,
    FORMAT,
    PART_FORMAT,
    _attr_value,
    _digest_attrs,
    _digest_ints,
    _digest_strings,
    _encode,
    _h5,
    _strings,
)
from featx.store.segments import SEGMENT_FORMAT, is_segmented, read_segmented, segment_dir

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
    try:
        with h5py.File(p, "r") as f:
            segmented = is_segmented(f)
    except Exception:  # noqa: BLE001 - reported as damage below
        segmented = False
    if segmented:
        return _verify_segmented(p)
    return _verify_file(p)


def _verify_file(p: Path, formats: tuple[str, ...] = (FORMAT,)) -> VerifyReport:
    """The checks of :func:`verify_store` on one file: a single-file store or a segment."""
    h5py = _h5()
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
        if attrs.get("format") not in formats:
            problems.append(f"attribute format is {attrs.get('format')!r}, not {formats[0]!r}")
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
                if ds.dtype.kind in "OS":  # variable- or fixed-length strings
                    raw = raw.tolist() if ds.dtype.kind == "S" else raw
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

        extra = [(g, w) for g, w in store_groups(cfg)]  # each layer of a store with --layers
        extra += [(g, w) for g, w, _ in store_outputs(cfg)]  # cached activations
        for gname, width in extra:
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
        if N_TOKENS in f:
            try:
                if f[N_TOKENS].shape[0] != n:
                    problems.append(f"{N_TOKENS} has {f[N_TOKENS].shape[0]} rows, features {n}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"dataset {N_TOKENS} unreadable ({_first_line(exc)})")
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


def _verify_segmented(p: Path) -> VerifyReport:
    """:func:`verify_store` of a segmented store: the index, every segment, and how they fit."""
    h5py = _h5()
    problems: list[str] = []
    notes: list[str] = []
    n = dim = chunks = nbytes = 0
    with h5py.File(p, "r") as f:
        attrs = {k: _attr_value(f.attrs[k]) for k in f.attrs}
        if "attrs_sha256" not in attrs or _digest_attrs(attrs) != attrs["attrs_sha256"]:
            problems.append("index attributes do not match their SHA-256")
        try:
            cfg = StoreConfig.from_json(attrs["config"])
            if attrs.get("config_hash") != cfg.hash:
                problems.append("config_hash does not match config")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"attribute config unreadable ({_first_line(exc)})")
        names: list[str] = []
        for name in (
            "segments/names",
            "segments/n_rows",
            *(["segments/per_row"] if "segments/per_row" in f else []),
            "dead/segment",
            "dead/row",
            "classes",
            *_FAILED_DATASETS,
        ):
            try:
                ds = f[name]
                raw = ds[()]
                if ds.dtype.kind in "OS":
                    raw = raw.tolist() if ds.dtype.kind == "S" else raw
                    digest = _digest_strings(b if isinstance(b, bytes) else _encode(b) for b in raw)
                else:
                    digest = _digest_ints(np.asarray(raw))
                if _attr_value(ds.attrs.get("featx_sha256")) != digest:
                    problems.append(f"index dataset {name} does not match its SHA-256")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"index dataset {name} unreadable ({_first_line(exc)})")
        if problems:
            return VerifyReport(str(p), False, tuple(problems), tuple(notes), 0, 0, 0, 0)
        names = [str(x) for x in _strings(f["segments/names"])]
        per_row = (
            [str(x) for x in _strings(f["segments/per_row"])] if "segments/per_row" in f else []
        )
        n_rows = f["segments/n_rows"][()]
        dead_seg, dead_row = f["dead/segment"][()], f["dead/row"][()]
        folder = segment_dir(p)
        for i, name in enumerate(names):
            seg = folder / name
            if not seg.is_file():
                problems.append(f"segment {name} is missing")
                continue
            rep = _verify_file(seg, (SEGMENT_FORMAT, FORMAT, PART_FORMAT))  # parts: #21
            try:  # texts, token counts: every segment has its rows' (unreadable: said above)
                with h5py.File(seg, "r") as sf:
                    lacking = [x for x in per_row if x not in sf]
            except Exception:  # noqa: BLE001
                lacking = []
            if lacking:
                problems.append(f"segment {name} has no {', '.join(lacking)} (the index lists it)")
            problems += [f"segment {name}: {x}" for x in rep.problems]
            chunks += rep.chunks_read
            nbytes += rep.bytes_read
            dim = dim or rep.dim
            if rep.n_items != int(n_rows[i]):
                problems.append(
                    f"segment {name} has {rep.n_items} rows, the index says {n_rows[i]}"
                )
        if len(dead_seg) and (
            dead_seg.min() < 0
            or dead_seg.max() >= len(names)
            or np.any(dead_row < 0)
            or np.any(dead_row >= n_rows[np.clip(dead_seg, 0, len(names) - 1)])
        ):
            problems.append("tombstones name rows that do not exist")
        if not problems:
            try:
                sr = read_segmented(f, p)
                sr.close()
                keys = list(sr.fields["keys"])
                n = len(keys)
                if any(a >= b for a, b in itertools.pairwise(keys)):
                    problems.append("live rows of the segments repeat a key")
                if int(attrs.get("n_items", -1)) != n:
                    problems.append(
                        f"attribute n_items is {attrs.get('n_items')}, the data says {n}"
                    )
                if int(attrs.get("dim", -1)) != dim:
                    problems.append(f"attribute dim is {attrs.get('dim')}, the segments say {dim}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"rows unreadable ({_first_line(exc)})")
    notes.append(f"{len(names)} segments, {len(dead_row)} dead rows")
    return VerifyReport(str(p), not problems, tuple(problems), tuple(notes), n, dim, chunks, nbytes)
