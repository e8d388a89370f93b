"""Reading stores: open with one-line errors, the row index, :func:`load_features`,
:func:`store_info`."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import StoreError
from featx.features import FeatureGroup, FeatureSet
from featx.store.chunks import StoreMatrix
from featx.store.config import PER_ROW_DATASETS, TEXTS, StoreConfig, store_groups, store_outputs
from featx.store.layout import (
    FORMAT,
    SCHEMA_VERSION,
    _attr_value,
    _digest_attrs,
    _h5,
    _raw_strings,
    _strings,
    decode_bytes,
)
from featx.store.segments import (
    SEGMENTED_SCHEMA_VERSION,
    SegmentMissing,
    is_segmented,
    read_segmented,
)


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
    newest = max(SCHEMA_VERSION, SEGMENTED_SCHEMA_VERSION)
    if version > newest:
        f.close()
        raise StoreError(
            f"{p} uses store schema {version}, newer than this featx reads ({newest}); "
            "upgrade featx"
        )
    _check_attrs(f, p)
    return f


def _check_attrs(f: Any, p: Path) -> None:
    """Every reader checks the attributes' SHA-256 (cheap: they are in memory) before using
    them, so a damaged configuration, class list or count never reaches a head or a bundle
    (#23); the chunks are checked by HDF5's Fletcher-32 as they are read."""
    want = f.attrs.get("attrs_sha256")
    if want is None:
        return  # a store written before featx kept checksums
    try:
        ok = _digest_attrs(f.attrs) == _attr_value(want)
    except (OSError, KeyError, RuntimeError, ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        f.close()
        raise StoreError(
            f"store {p} is damaged (its attributes do not match their SHA-256); check it with "
            f"'featx verify {p}', then delete it and run the same 'featx extract' again"
        )


_INDEX_FIELDS = (
    "size", "mtime_ns", "sha256", "failed_keys", "failed_reasons", "failed_size",
    "failed_mtime_ns", "failed_sha256", "labels", "split", "classes",
)  # fmt: skip


def read_config(path: str | os.PathLike) -> StoreConfig:
    with _open_read(path) as f:
        return StoreConfig.from_json(f.attrs["config"])


class StoreIndex:
    """The per-row bookkeeping of a store, without the feature matrix (read-only).

    Attributes: ``keys`` (object array of str, key order), ``size``, ``mtime_ns``, ``sha256``,
    ``labels``, ``split``, ``failed_keys``, ``failed_reasons``, ``failed_size``,
    ``failed_mtime_ns``, ``failed_sha256``, ``classes``; ``n_rows``.

    ``keys`` may be given as the stored fixed-length UTF-8 bytes (``S`` dtype): they are decoded
    to str on first use (a million keys cost ~0.2 s to decode; a commit that only needs row
    counts and positions, ``featx info``, or a compaction's plan never pay it).
    """

    __slots__ = ("_keys", "_key_bytes", *_INDEX_FIELDS)

    def __init__(
        self,
        keys: np.ndarray,
        size: np.ndarray,
        mtime_ns: np.ndarray,
        sha256: np.ndarray,
        failed_keys: np.ndarray,
        failed_reasons: np.ndarray,
        failed_size: np.ndarray,
        failed_mtime_ns: np.ndarray,
        failed_sha256: np.ndarray,
        labels: np.ndarray,
        split: np.ndarray,
        classes: tuple[str, ...],
    ) -> None:
        lazy = isinstance(keys, np.ndarray) and keys.dtype.kind == "S"
        values = dict(
            size=size, mtime_ns=mtime_ns, sha256=sha256, failed_keys=failed_keys,
            failed_reasons=failed_reasons, failed_size=failed_size,
            failed_mtime_ns=failed_mtime_ns, failed_sha256=failed_sha256, labels=labels,
            split=split, classes=classes,
        )  # fmt: skip
        for k, v in values.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_key_bytes", keys if lazy else None)
        object.__setattr__(self, "_keys", None if lazy else keys)

    @property
    def keys(self) -> np.ndarray:
        """The row keys, an object array of str in key order."""
        if self._keys is None:
            object.__setattr__(self, "_keys", decode_bytes(self._key_bytes))
            object.__setattr__(self, "_key_bytes", None)
        return self._keys

    def keys_equal(self, keys: list[str]) -> bool:
        """Whether the keys are exactly ``keys``, in order: the usual no-op rerun's check. While
        they are still the stored bytes, one comparison of the NUL-joined UTF-8 of both (a key
        never holds NUL), without decoding a million keys to str."""
        if len(keys) != self.n_rows:
            return False
        if self._key_bytes is not None:
            try:
                mine = "\0".join(keys).encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate that is no escaped byte: not stored
                return False
            return b"\0".join(self._key_bytes.tolist()) == mine
        cand = np.empty(len(keys), dtype=object)
        cand[:] = keys
        return bool((self._keys == cand).all())

    @property
    def n_rows(self) -> int:
        """Rows in the index (without decoding the keys)."""
        return len(self.size)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"StoreIndex is read-only (cannot set {name})")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # pickling (read-only slots)
        keys = self._keys if self._keys is not None else self._key_bytes
        return (StoreIndex, (keys, *(getattr(self, k) for k in _INDEX_FIELDS)))

    def __repr__(self) -> str:
        return f"StoreIndex({self.n_rows} rows, {len(self.failed_keys)} failed)"


def _read_index(f) -> StoreIndex:
    if is_segmented(f):
        idx, matrix, _ = _rows(f, Path(f.filename))
        matrix.close()
        return idx
    g = f["fingerprint"]
    fl = f["failed"]
    return StoreIndex(
        keys=_raw_strings(f["paths"]),
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


def _per_row_names(f) -> tuple[str, ...]:
    """The per-row datasets (``text/n_tokens``, ``text/texts``) an open store carries: those its
    index lists (segmented) or those in the file (single file)."""
    if is_segmented(f):
        if "segments/per_row" not in f:
            return ()
        return tuple(str(n) for n in _strings(f["segments/per_row"]))
    return tuple(n for n in PER_ROW_DATASETS if n in f)


def stored_per_row(path: str | os.PathLike) -> tuple[str, ...]:
    """The per-row datasets a store carries (``text/texts`` for a text store since #19), read
    from its index without reading any row: cheap on a large store.

    Examples
    --------
    >>> "text/texts" in stored_per_row("cache/tickets__...h5")  # doctest: +SKIP
    True
    """
    with _open_read(path) as f:
        return _per_row_names(f)


def _meta(f) -> dict[str, Any]:
    meta = {k: _attr_value(v) for k, v in f.attrs.items()}
    for k in ("config", "preprocess", "versions", "source"):
        if isinstance(meta.get(k), str):
            with contextlib.suppress(ValueError):
                meta[k] = json.loads(meta[k])
    return meta


def load_features(
    path: str | os.PathLike, *, dtype: Any = np.float32, max_memory: int | str | None = None
) -> FeatureSet:
    """Read a whole store into memory as a :class:`~featx.features.FeatureSet`.

    With ``max_memory`` (bytes, or a size such as ``"2G"``), a store whose features take more
    than that as float32 is not read: its ``X`` is a :class:`~featx.store.chunks.StoreMatrix`
    that reads rows on demand (:func:`featx.store.open_features`), which the heads train from
    block by block.

    Examples
    --------
    >>> fs = load_features("cache/digits__efficientnet_lite0-....h5")  # doctest: +SKIP
    >>> fs.X.shape, fs.classes[:3]  # doctest: +SKIP
    ((1797, 1280), ('0', '1', '2'))
    """
    if max_memory is not None:
        from featx.memory import parse_bytes

        with _open_read(path) as f:
            n, d = _shape(f)
            # a store with more groups per row (--layers), outputs or texts is read whole
            config = _meta(f).get("config")
            plain = not store_groups(config) and not store_outputs(config)
            plain = plain and TEXTS not in _per_row_names(f) and "outputs" not in f
            big = plain and n * d * 4 > parse_bytes(max_memory)
        if big:
            return open_features(path)
    with _open_read(path) as f, _damage_is_store_error(path):
        meta = _meta(f)
        matrix = None
        if is_segmented(f):  # the rows of every segment, tombstones left out, in key order
            idx, matrix, _ = _rows(f, Path(path))
            X = np.asarray(matrix).astype(dtype, copy=False)

            def dataset(name: str) -> np.ndarray | None:
                return matrix.column(name)
        else:
            idx = _read_index(f)
            ds = f["features"]
            X = np.empty(ds.shape, dtype=dtype)
            if ds.shape[0]:
                ds.read_direct(X) if ds.dtype == X.dtype else X.__setitem__(slice(None), ds[()])

            def dataset(name: str) -> np.ndarray | None:
                if name not in f:
                    return None
                return _strings(f[name]) if f[name].dtype.kind in "OS" else f[name][()]

        try:
            split = idx.split if any(idx.split) else None
            groups: tuple[FeatureGroup, ...] = ()
            names = store_groups(meta.get("config"))
            if names:  # a multi-layer store: the embedding, then each layer's group
                blocks, groups, pos = [X], [FeatureGroup("features", 0, X.shape[1])], X.shape[1]
                for name, width in names:
                    g = dataset(name)
                    if g is None:
                        raise KeyError(f"no dataset {name}")
                    blocks.append(np.asarray(g, dtype=dtype).reshape(X.shape[0], width))
                    groups.append(FeatureGroup(name.split("/", 1)[1], pos, pos + width))
                    pos += width
                X, groups = np.concatenate(blocks, axis=1), tuple(groups)
            texts = None
            if TEXTS in _per_row_names(f):
                texts = np.asarray(dataset(TEXTS), dtype=object)
        finally:
            if matrix is not None:
                matrix.close()
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


def open_features(path: str | os.PathLike) -> FeatureSet:
    """A store's :class:`~featx.features.FeatureSet` with ``X`` left on disk (a StoreMatrix).

    Labels, keys, splits and attributes are read; the features are read on demand, so this costs
    a few bytes of memory per row whatever the feature width.

    Examples
    --------
    >>> fs = open_features("cache/big.h5")  # doctest: +SKIP
    >>> fs.X[:4].shape, next(fs.X.blocks(np.arange(fs.n))).dtype  # doctest: +SKIP
    ((4, 1280), dtype('float32'))
    """
    with _open_read(path) as f, _damage_is_store_error(path):
        idx, layout, _ = _rows(f, Path(path))
        meta = _meta(f)
    split = idx.split if any(idx.split) else None
    return FeatureSet(
        X=layout,
        y=idx.labels.astype(np.int64),
        classes=idx.classes,
        split=split,
        keys=idx.keys,
        meta=meta,
    )


def _shape(f) -> tuple[int, int]:
    """(rows, dim) of an open store."""
    if is_segmented(f):
        return int(f.attrs["n_items"]), int(f.attrs["dim"])
    return tuple(int(v) for v in f["features"].shape) if "features" in f else (0, 0)


#: How many newer indexes a reader tries when a segment vanished under it (each is a commit).
_REOPEN_TRIES = 5


def _rows(f, path: Path) -> tuple[StoreIndex, StoreMatrix, dict[str, np.ndarray]]:
    """(row index, the features as a StoreMatrix, per-row extras such as ``text/n_tokens``)
    of an open store, single-file or segmented."""
    if is_segmented(f):
        try:
            sr = read_segmented(f, path)
        except SegmentMissing:
            # a commit or compaction renamed a new index over the store and removed segments
            # since ``f`` was opened: read the store as it is now (#21)
            names = [str(n) for n in _strings(f["segments/names"])]
            for _ in range(_REOPEN_TRIES):
                with _open_read(path) as now:
                    if is_segmented(now) and names == [
                        str(n) for n in _strings(now["segments/names"])
                    ]:
                        break  # the same index: the segment is really gone
                    try:
                        return _rows(now, path)
                    except SegmentMissing:
                        continue
            raise
        return StoreIndex(**sr.fields), sr.matrix(str(path)), sr.per_row
    ds = f["features"]
    block = ds.chunks[0] if ds.chunks else max(1, ds.shape[0])
    matrix = StoreMatrix([path], ds.shape, ds.dtype, block_rows=block, store=str(path))
    extras = {  # the integer per-row datasets (token counts); texts are read on demand
        n: f[n][()] for n in PER_ROW_DATASETS if n in f and f[n].dtype.kind not in "OS"
    }
    return _read_index(f), matrix, extras


def read_output(path: str | os.PathLike, name: str) -> np.ndarray:
    """All rows of the extra output ``name`` of a store (``outputs/<name>``), in key order, each
    row in the ``shape`` its configuration records (stored flattened).

    Raises
    ------
    StoreError
        The store has no such output, or is damaged.
    """
    with _open_read(path) as f, _damage_is_store_error(path):
        config = StoreConfig.from_json(f.attrs["config"])
        if is_segmented(f):  # every segment's rows of it, in key order (#21)
            held = [g.split("/", 1)[1] for g, _ in store_groups(config)]
            held += [g.split("/", 1)[1] for g, _, _ in store_outputs(config)]
            arr = None
            if name in held:
                _, matrix, _ = _rows(f, Path(path))
                try:
                    arr = matrix.column(f"outputs/{name}")
                finally:
                    matrix.close()
            if arr is None:
                raise StoreError(
                    f"store {path} has no output {name!r} (it has: {', '.join(held) or 'none'})"
                )
        else:
            held = f.get("outputs")
            if held is None or name not in held:
                have = ", ".join(sorted(held)) if held is not None else "none"
                raise StoreError(f"store {path} has no output {name!r} (it has: {have})")
            arr = held[name][()]
        spec = config.outputs.get(name)
        if spec is not None:
            arr = arr.reshape(arr.shape[0], *(int(d) for d in spec["shape"]))
        return arr


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


def _segment_rows(f: Any) -> list[int]:
    """Live rows of each segment of a segmented store's index (what the merge policy sizes)."""
    n_rows = f["segments/n_rows"][()].astype(np.int64)
    dead = np.bincount(f["dead/segment"][()].astype(np.int64), minlength=len(n_rows))
    return (n_rows - dead[: len(n_rows)]).tolist()


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-able summary of a store: counts, dim, backbone, weights, classes, splits, versions."""
    with _open_read(path) as f, _damage_is_store_error(path):
        meta = _meta(f)
        idx, matrix, extras = _rows(f, Path(path))
        segmented = is_segmented(f)
        splits: dict[str, int] = {}
        for s in idx.split:
            splits[s or "(none)"] = splits.get(s or "(none)", 0) + 1
        labeled = int((idx.labels >= 0).sum())
        text = None
        if meta.get("modality") == "text":
            n_tok = extras.get("text/n_tokens", np.empty(0, np.int64))
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
            "n_items": int(matrix.shape[0]),
            "n_failed": int(idx.failed_keys.shape[0]),
            "n_labeled": labeled,
            "dim": int(matrix.shape[1]),
            "dtype": str(matrix.dtype),
            "layout": "segments" if segmented else "single file",
            "segments": len(matrix.files),
            "dead_rows": int(f.attrs.get("n_dead", 0)) if segmented else 0,
            "segment_rows": _segment_rows(f) if segmented else [],
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
            "groups": [{"name": "features", "dim": int(matrix.shape[1]), "pool": meta.get("pool")}]
            + [
                {"name": g["name"], "dim": int(g["dim"]), "pool": g.get("pool")}
                for g in ((meta.get("config") or {}).get("backbone") or {}).get("layers") or []
            ],
            "has_texts": TEXTS in _per_row_names(f),
            "outputs": {  # the extra outputs that make this store one of its own
                k: {**spec, "bytes": _stored_bytes(matrix.files, f"outputs/{k}")}
                for k, spec in StoreConfig.from_json(f.attrs["config"]).outputs.items()
            },
            "file_bytes": sum(os.path.getsize(p) for p in {str(path), *matrix.files}),
            "failed": [
                {"path": k, "reason": r}
                for k, r in zip(idx.failed_keys[:20], idx.failed_reasons[:20], strict=True)
            ],
        }


def _stored_bytes(files: list[str], name: str) -> int:
    """The bytes dataset ``name`` takes on disk in ``files`` (the store's file or segments)."""
    h5py = _h5()
    total = 0
    for p in files:
        with h5py.File(p, "r") as g:
            if name in g:
                total += int(g[name].id.get_storage_size())
    return total
