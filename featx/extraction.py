"""``featx extract`` as a library call: scan a source, diff it against the store, extract what is
new or changed, and commit the store atomically.

Examples
--------
>>> import featx
>>> result = featx.extract("photos/", "efficientnet_lite0")  # doctest: +SKIP
>>> result.n_items, result.dim  # doctest: +SKIP
(1797, 1280)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from itertools import compress, repeat
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones.registry import BackboneLike
from featx.engines import (
    FEATURES,
    Engine,
    EngineSetup,
    check_options,
    engine_for,
    get_engine,
)
from featx.errors import FeatxError, disk_full_error, is_disk_full
from featx.items import Item, Source
from featx.modalities import (
    check_modality,
    default_backbone,
    get_modality,
    modality_of,
    modality_of_name,
    open_source,
)
from featx.options import DEFAULT_WEIGHTS, BackboneSpec, ExtractOptions, TextFormat
from featx.store import Rows, StoreChange, StoreConfig, StoreWriter, default_store_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What one extraction run did."""

    store: str
    n_items: int  # rows in the store after the run
    n_new: int  # rows extracted in this run (new or changed files)
    n_resumed: int  # rows taken from an interrupted earlier run
    n_removed: int  # rows dropped because their file is gone
    n_failed: int  # items recorded as failed in the store
    n_new_failed: int  # of which found in this run
    dim: int
    seconds: float
    images_per_s: float
    store_seconds: float  # time the run waited on the store: part writes, then the commit
    device: str
    precision: str
    decode: str
    backbone: str
    weights: str
    noop: bool
    n_truncated: int = 0  # text rows longer than the encoder's max_seq_length (embedded cut)
    modality: str = "image"  # or "text"; images_per_s (alias of items_per_s) counts texts then
    engine: str = "local"

    @property
    def items_per_s(self) -> float:
        """Items (images or texts) per second of the extraction loop."""
        return self.images_per_s

    def to_dict(self) -> dict[str, Any]:
        # "items_per_s" says what it counts for text too; "images_per_s" stays for one release
        return {**asdict(self), "items_per_s": self.images_per_s}


def _versions(modality: str) -> dict[str, str]:
    """The library versions a store records: featx, torch, the modality's own, h5py, numpy."""
    import importlib

    import h5py
    import torch

    from featx._version import __version__

    out = {"featx_version": __version__, "torch_version": torch.__version__}
    for name in get_modality(modality).versions:
        out[f"{name}_version"] = importlib.import_module(name).__version__
    out["h5py_version"] = h5py.__version__
    out["numpy_version"] = np.__version__
    return out


def _fp(item: Item) -> tuple[int, int, str]:
    return (item.size, item.mtime_ns, item.sha256)


def _same(old: tuple[int, int, str], item: Item) -> bool:
    if old[2] and item.sha256:
        return old[2] == item.sha256
    return old[0] == item.size and old[1] == item.mtime_ns


__all__ = ["ExtractOptions", "ExtractResult", "extract", "store_config"]


def store_config(source: Source, backbone: BackboneLike, dtype: str = "float32") -> StoreConfig:
    """The store's identity: source, backbone, dtype, and the extra outputs that make a store
    of its own (a backbone's optional ``store_outputs``, e.g. cached activations)."""
    outputs = dict(getattr(backbone, "store_outputs", None) or {})
    return StoreConfig(
        source=source.identity(), backbone=backbone.config(), dtype=dtype, outputs=outputs
    )


def extract(
    source: str | os.PathLike | Source,
    backbone: str | BackboneSpec | BackboneLike | None = None,
    *,
    weights: str | None = DEFAULT_WEIGHTS,
    weights_file: str | os.PathLike | None = None,
    layer: str | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    store: str | os.PathLike | None = None,
    options: ExtractOptions | None = None,
    root: str | None = None,
    download: bool = False,
    max_seq_length: int | None = None,
    normalize: bool | None = None,
    text: TextFormat | None = None,
) -> ExtractResult:
    """Extract features of every new or changed item of ``source`` into its store.

    Parameters
    ----------
    source : str, path-like or Source
        A folder, CSV manifest or ``torchvision:NAME`` (see :func:`featx.sources.open_source`).
    backbone : str, BackboneSpec or Backbone, optional
        A registry name (``featx backbones``), a :class:`~featx.options.BackboneSpec`, or an
        already loaded backbone (any object with the attributes of
        :class:`~featx.backbones.registry.BackboneLike`). Default (also for a spec without a
        name): ``efficientnet_lite0`` for images, ``all-minilm-l6-v2`` for text.
    weights, weights_file, layer, pool, image_size, max_seq_length, normalize
        Passed to :func:`featx.backbones.load_backbone` when ``backbone`` is a name.
    store : path-like, optional
        The store file; default: a name under the cache folder derived from the configuration.
    options : ExtractOptions
        Batching, device, precision, dtype, hashing, strictness, progress, and the engine
        (looked up in :mod:`featx.engines` by ``options.engine`` and the backbone's modality).
    text : TextFormat, optional
        Columns and encoding of a text table (see :func:`featx.sources.open_source`).

    Raises
    ------
    DiskFullError
        The disk filled up; the message says how much to free and where. Finished parts stay
        and the next run resumes from them.
    StoreReadOnlyError
        The store needs writing but its folder is not writable (an up-to-date store in a
        read-only folder is fine).

    Returns
    -------
    ExtractResult
    """
    opts = options or ExtractOptions()
    t0 = time.perf_counter()
    if isinstance(backbone, str) or backbone is None:
        backbone = BackboneSpec(
            name=backbone,
            weights=weights,
            weights_file=None if weights_file is None else os.fspath(weights_file),
            layer=layer,
            pool=pool,
            image_size=image_size,
            max_seq_length=max_seq_length,
            normalize=normalize,
        )
    src = _open(source, backbone, opts, root=root, download=download, text=text)
    if opts.manifest:
        from featx.diagnostics.manifest import apply_manifest_to_source

        src = apply_manifest_to_source(src, opts.manifest)
    bb = backbone
    if isinstance(backbone, BackboneSpec):
        done, bb = _load(src, backbone, store, opts, t0)
        if done is not None:
            return done
    return _extract_into(src, bb, store, opts, t0)


def with_outputs(bb: Any, opts: ExtractOptions) -> Any:
    """``bb`` with the extra named outputs ``opts`` asks of its one pass: the groups of
    ``--layers`` (:mod:`featx.backbones.layers`), then, tapped in that same pass, the
    activations of ``--cache-activations`` (:mod:`featx.finetuning.cache`)."""
    if opts.layers:
        from featx.backbones.layers import with_layers

        bb = with_layers(bb, opts.layers)
    if opts.cache_activations is not None:  # the activations at a cut, for featx finetune
        from featx.finetuning.cache import with_activations

        bb = with_activations(bb, opts.cache_activations)
    return bb


def _extract_into(
    src: Source, bb: Any, store: str | os.PathLike | None, opts: ExtractOptions, t0: float
) -> ExtractResult:
    """Check the backbone and the engine against the source, then run under the store's lock."""
    bb = with_outputs(bb, opts)
    check_modality(src, bb.name, modality_of(bb))
    engine = engine_for(opts, src.modality)
    config = store_config(src, bb, opts.dtype)
    path = Path(store) if store else default_store_path(config, src.name)
    if path.exists() and path.is_dir():
        raise FeatxError(f"--store {path} is a folder; give a file path ending in .h5")
    setup = engine.setup(opts)
    itemsize = np.dtype(opts.dtype).itemsize
    # At most what the run needs on disk: parts for every item, then the merged store beside them.
    width = sum(getattr(bb, "output_dims", {}).values()) or int(bb.dim)
    extra = int(getattr(bb, "bytes_per_item", lambda: 0)())  # cached activations
    need = 2 * len(src.items) * (int(width) * itemsize + extra) + (1 << 20)
    try:
        return _extract_locked(_Run(src, bb, path, config, opts, engine, setup, t0))
    except OSError as exc:
        if is_disk_full(exc):
            log.debug("disk full", exc_info=True)
            raise disk_full_error(path.parent, need) from None
        raise


def _open(
    source: str | os.PathLike | Source,
    backbone: BackboneSpec | BackboneLike,
    opts: ExtractOptions,
    **how: Any,
) -> Source:
    """The scanned source; a named backbone's modality settles what an ambiguous table is."""
    if isinstance(source, Source):
        return source
    if isinstance(backbone, BackboneSpec):
        hint = None if backbone.name is None else modality_of_name(backbone.name)
    else:
        hint = modality_of(backbone)
    return open_source(
        source,
        content_hash=opts.content_hash,
        modality=hint,
        allow_outside_root=opts.allow_outside_root,
        **how,
    )


def _load(
    src: Source,
    spec: BackboneSpec,
    store: str | os.PathLike | None,
    opts: ExtractOptions,
    t0: float,
) -> tuple[ExtractResult | None, Any]:
    """(the no-op result, None) when a remembered configuration finds the store up to date
    (no torch needed), else (None, the loaded backbone). A spec without a name gets the
    source's default backbone."""
    from featx.backbones import load_backbone, memo

    if spec.name is None:
        spec = replace(spec, name=default_backbone(src.modality))
    check_modality(src, spec.name, modality_of_name(spec.name))
    _check_before_noop(spec, opts, modality_of_name(spec.name) == "text")

    # a text model folder can change in place (remembered under its fingerprint, see
    # Modality.request_fingerprint); --layers is not part of the remembered request; cached
    # activations need the model's shapes
    modality = get_modality(modality_of_name(spec.name))
    remembers = (
        (modality.remembers_config or modality.request_fingerprint is not None)
        and not opts.layers
        and opts.cache_activations is None
    )
    memo_key = None
    if remembers:
        fingerprint = modality.request_fingerprint
        memo_key = memo.request_key(
            spec.name,
            spec.weights,
            weights_file=spec.weights_file,
            layer=spec.layer,
            pool=spec.pool,
            image_size=spec.image_size,
            extra=None if fingerprint is None else fingerprint(spec),
        )
        remembered = memo.recall(memo_key)
        if remembered is not None:
            done = _up_to_date(src, remembered, store, opts, t0)
            if done is not None:
                return done, None
    bb = load_backbone(spec)
    if remembers:
        memo.remember(memo_key, bb.config())
    return None, bb


def _check_before_noop(spec: BackboneSpec, opts: ExtractOptions, is_text: bool) -> None:
    """What the full run would refuse, refused before the up-to-date shortcut too (#23).

    A device that is not there (``--device cuda:7`` without that GPU) and text-only options on
    an image backbone are errors whether or not anything needs extracting.
    """
    if not is_text and (spec.max_seq_length is not None or spec.normalize is not None):
        raise FeatxError(
            f"{spec.name} is an image backbone: --max-seq-length and --normalize apply to text "
            "encoders only"
        )
    if opts.engine == "local" and (opts.device or "auto").lower() not in ("auto", "cpu"):
        from featx.devices import resolve_device

        resolve_device(opts.device)  # explicit GPUs only: "auto"/"cpu" need no torch here


@dataclass(frozen=True)
class _Run:
    """One extraction run, as :func:`extract` resolved it."""

    src: Source
    bb: Any
    path: Path
    config: StoreConfig
    opts: ExtractOptions
    engine: Engine
    setup: EngineSetup
    t0: float

    def result(self, **counts: Any) -> ExtractResult:
        return ExtractResult(
            store=str(self.path),
            seconds=time.perf_counter() - self.t0,
            device=self.setup.device,
            precision=self.setup.precision,
            decode=self.setup.decode,
            backbone=self.bb.name,
            weights=self.bb.weights,
            modality=self.src.modality,
            engine=self.opts.engine,
            **counts,
        )


def _extract_locked(run: _Run) -> ExtractResult:
    with StoreWriter(run.path, run.config, progress=run.opts.progress) as writer:
        plan = _plan(run.src, writer)
        todo: list[Item] = plan["todo"]
        rows: dict[str, tuple[str, int]] = plan["rows"]
        failed: dict[str, tuple] = plan["failed"]
        if run.opts.strict and failed:
            key, (reason, *_) = min(failed.items())
            raise FeatxError(
                f"{key}: {reason}; fix or remove it, or run without --strict to skip and record it"
            )
        if not todo and not plan["dirty"]:
            log.info("store %s is up to date", run.path)
            return run.result(
                n_items=len(rows), n_new=0, n_resumed=0, n_removed=0, n_failed=len(failed),
                n_new_failed=0, dim=int(writer.dim or run.bb.dim), images_per_s=0.0,
                store_seconds=0.0, noop=True, n_truncated=stored_truncated(run.path, run.src),
            )  # fmt: skip
        writer.require_writable()
        n_new, n_new_failed, waited = 0, plan["n_scan_failed"], 0.0
        t_extract = time.perf_counter()
        if todo:
            _say_size(run.bb, len(todo))
            n_new, n_run_failed, waited = _run(run, todo, writer, rows, failed)
            n_new_failed += n_run_failed
        t_extract = time.perf_counter() - t_extract
        t_commit = time.perf_counter()
        n_truncated = _commit(run, writer, rows, failed, plan)
        t_commit_s = time.perf_counter() - t_commit
    return run.result(
        n_items=len(rows), n_new=n_new, n_resumed=plan["n_resumed"], n_removed=plan["n_removed"],
        n_failed=len(failed), n_new_failed=n_new_failed, dim=int(run.bb.dim),
        images_per_s=(n_new + n_new_failed) / t_extract if t_extract > 0 and todo else 0.0,
        store_seconds=waited + t_commit_s, noop=False, n_truncated=n_truncated,
    )  # fmt: skip


#: Extra outputs estimated above this many bytes make a "large run": the estimate is a warning.
LARGE_OUTPUT_BYTES = 256 << 20


def _say_size(bb: Any, n: int) -> None:
    """Before the run: the size of the extra outputs (cached activations) per item and in all,
    as a warning on stderr when it is large."""
    estimate = getattr(bb, "size_estimate", None)
    if estimate is None:
        return
    large = n * int(bb.bytes_per_item()) >= LARGE_OUTPUT_BYTES
    (log.warning if large else log.info)("%s", estimate(n))


def _commit(
    run: _Run,
    writer: StoreWriter,
    rows: dict[str, tuple[str, int]],
    failed: dict[str, tuple],
    plan: dict[str, Any],
) -> int:
    """Commit the change (the plan's kept and restamped old rows, the parts' new rows) with
    the source's labels, splits and fingerprints and the backbone's provenance; returns how
    many texts were truncated (0 for images)."""
    src, bb = run.src, run.bb
    attrs = {
        "backbone": bb.name,
        "weights": bb.weights,
        "weights_sha256": bb.weights_sha256 or "",
        "layer": bb.layer or "",
        "pool": bb.pool or "",
        "preprocess": bb.preprocess.to_dict(),
        "source": {"kind": src.kind, "uri": src.uri, "name": src.name},
        "dim": int(bb.dim),
        **_versions(src.modality),
    }
    write = {k: v for k, v in rows.items() if v[0] != "store"}
    write.update(plan["restamp"])
    if writer.index is not None and _store_complete(src, writer):
        # per-row values (texts, token counts) for the written rows only: the kept rows keep
        # theirs, and store-wide counts take the kept rows' stored integers (#21)
        kept = {name: vals[plan["kept"]] for name, vals in writer.old_per_row.items()}
        extra, per_row, n_truncated = modality_attrs(src, bb, write, kept)
    else:  # a new store, or one that lacks a per-row dataset: every row's values
        extra, per_row, n_truncated = modality_attrs(src, bb, rows)
    attrs.update(extra)
    meta = [it for it in src.items if it.key in write]
    writer.commit_change(
        StoreChange(
            kept=plan["kept"],
            write=write,
            labels={it.key: it.label for it in meta},
            split={it.key: it.split for it in meta},
            fingerprints={it.key: _fp(it) for it in meta},
            failed=failed,
            classes=src.classes,
            attrs=attrs,
            per_row=per_row,
        )
    )
    return n_truncated


def remembers_config(name: str) -> bool:
    """Whether the configuration of backbone ``name`` may be remembered (images: yes)."""
    return get_modality(modality_of_name(name)).remembers_config


def modality_attrs(
    src: Source, bb: Any, rows: Any, kept: Any = None
) -> tuple[dict[str, Any], Any, int]:
    """The modality's extra store attributes, per-row datasets (for ``rows``) and truncated
    count (``Modality.store_attrs``; ``kept``: the kept rows' stored integer per-row values)."""
    fn = get_modality(src.modality).store_attrs
    if fn is None:
        return {}, None, 0
    return fn(src, bb, rows) if kept is None else fn(src, bb, rows, kept)


def stored_truncated(path: Path, src: Source) -> int:
    fn = get_modality(src.modality).stored_truncated
    return 0 if fn is None else fn(path)


def _up_to_date(
    src: Source,
    backbone_config: dict[str, Any],
    store: str | os.PathLike | None,
    opts: ExtractOptions,
    t0: float,
) -> ExtractResult | None:
    """The no-op result when the store of a remembered backbone configuration is up to date.

    Needs neither torch nor the model (see :mod:`featx.backbones.memo`); None when there is
    anything to do, or any doubt, and the caller then builds the backbone as usual.
    """
    if opts.engine != ExtractOptions().engine:
        return None  # other engines (Ray) check their runtime first: the normal path
    try:
        check_options(get_engine(opts.engine, src.modality), opts)
    except FeatxError:
        return None  # the normal path says what is wrong
    config = StoreConfig(source=src.identity(), backbone=backbone_config, dtype=opts.dtype)
    path = Path(store) if store else default_store_path(config, src.name)
    if not path.is_file() or path.with_name(path.name + ".parts").exists():
        return None
    try:
        with StoreWriter(path, config) as writer:
            plan = _plan(src, writer)
            if plan["todo"] or plan["dirty"] or writer.dim is None:
                return None
            if opts.strict and plan["failed"]:
                return None  # the normal path raises the error about it
            log.info("store %s is up to date", path)
            return ExtractResult(
                store=str(path),
                n_items=len(plan["rows"]),
                n_new=0,
                n_resumed=0,
                n_removed=0,
                n_failed=len(plan["failed"]),
                n_new_failed=0,
                dim=int(writer.dim),
                seconds=time.perf_counter() - t0,
                images_per_s=0.0,
                store_seconds=0.0,
                device=opts.device,
                precision=opts.precision,
                decode=opts.decode,
                backbone=str(backbone_config.get("name")),
                weights=str(backbone_config.get("weights")),
                noop=True,
                n_truncated=stored_truncated(path, src),
                modality=src.modality,
                engine=opts.engine,
            )
    except FeatxError:
        return None  # e.g. a configuration mismatch: the normal path says what is wrong


def _row_fingerprint(idx: Any, r: int) -> tuple:
    """(size, mtime_ns, sha256) of row ``r`` of a store's or a part's index."""
    return (int(idx.size[r]), int(idx.mtime_ns[r]), idx.sha256[r])


def _failed_records(idx: Any) -> dict[str, tuple]:
    """key -> (reason, size, mtime_ns, sha256) of the failures an index records."""
    return {
        k: (
            idx.failed_reasons[r],
            int(idx.failed_size[r]),
            int(idx.failed_mtime_ns[r]),
            idx.failed_sha256[r],
        )
        for r, k in enumerate(idx.failed_keys)
    }


def _positions(stored: np.ndarray, keys: list[str]) -> np.ndarray:
    """For each of ``keys``: its row in ``stored`` (a store's keys), or -1. Both are unique;
    one merge of the two sorted runs (numpy's stable sort is a timsort), no dict of the
    store's keys: a million rows in a fraction of a second."""
    n, m = len(keys), len(stored)
    cand = np.empty(n, dtype=object)
    cand[:] = keys
    if n == m and bool((stored == cand).all()):  # the usual rerun: the same keys
        return np.arange(n, dtype=np.int64)
    merged = np.concatenate([np.asarray(stored, dtype=object), cand])
    order = np.argsort(merged, kind="stable")  # a stored key sorts before the same source key
    s = merged[order]
    i = np.flatnonzero(s[1:] == s[:-1])
    a, b = order[i], order[i + 1]
    ok = (a < m) & (b >= m)
    pos = np.full(n, -1, dtype=np.int64)
    pos[b[ok] - m] = a[ok]
    return pos


def _same_keys(old: Any, keys: list[str]) -> np.ndarray | None:
    """The usual rerun's positions without a merge: when the source's keys are the store's rows
    in order, with its recorded failures among them (their position -1), compared as the
    stored bytes (:meth:`featx.store.StoreIndex.keys_equal`); else None."""
    n, n_failed = len(keys), len(old.failed_keys)
    if n != old.n_rows + n_failed:
        return None
    if not n_failed:
        return np.arange(n, dtype=np.int64) if old.keys_equal(keys) else None
    failed = set(old.failed_keys.tolist())
    ok = np.fromiter((k not in failed for k in keys), bool, n)
    if n - int(ok.sum()) != n_failed or not old.keys_equal(list(compress(keys, ok))):
        return None
    pos = np.full(n, -1, dtype=np.int64)
    pos[ok] = np.arange(old.n_rows, dtype=np.int64)
    return pos


def _plan(src: Source, writer: StoreWriter) -> dict[str, Any]:
    """See :func:`_plan_rows`; without cyclic garbage collections while its million small
    tuples are made (none of them is garbage)."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        return _plan_rows(src, writer)
    finally:
        if was:
            gc.enable()


def _plan_rows(src: Source, writer: StoreWriter) -> dict[str, Any]:
    """Decide, per item, whether its row comes from a part, the old store, or must be extracted.

    Vectorized over the items (a no-op rerun of a million items costs numpy passes, not a
    Python dict per stored row); only items that are new, changed, failed or in a part of an
    interrupted run go through the per-item rules. Besides ``rows`` (key -> (where, row)) it
    returns ``kept`` (old rows that stay exactly as stored) and ``restamp`` (old rows kept
    whose label, split or fingerprint changed): with the parts' rows, the store's change
    (:class:`featx.store.StoreChange`).
    """
    part_rows: dict[str, tuple[str, int, tuple]] = {}
    part_failed: dict[str, tuple] = {}
    for part, idx in writer.iter_part_index():
        for r, k in enumerate(idx.keys):
            part_rows[k] = (str(part), r, _row_fingerprint(idx, r))
        part_failed.update(_failed_records(idx))
    old = writer.index
    items = src.items
    n = len(items)
    keys = [it.key for it in items]
    old_failed: dict[str, tuple] = {}
    has_old = old is not None and old.n_rows > 0
    same = _same_keys(old, keys) if has_old else None  # the usual rerun (keys not decoded)
    if same is not None:
        pos = same
    else:
        pos = _positions(old.keys, keys) if has_old else np.full(n, -1, dtype=np.int64)
    if old is not None:
        old_failed = _failed_records(old)
    matched = pos >= 0
    err = np.fromiter((bool(it.error) for it in items), bool, n)
    same_fp = np.zeros(n, dtype=bool)
    same_meta = np.zeros(n, dtype=bool)
    meta_dirty = False
    if has_old:
        r = np.where(matched, pos, 0)
        size = np.fromiter((it.size for it in items), np.int64, n)
        mtime = np.fromiter((it.mtime_ns for it in items), np.int64, n)
        sha = np.empty(n, dtype=object)
        sha[:] = [it.sha256 for it in items]
        split = np.empty(n, dtype=object)
        split[:] = [it.split for it in items]
        label = np.fromiter((it.label for it in items), np.int64, n)
        osha, osize, omtime = old.sha256[r], old.size[r], old.mtime_ns[r]
        both = (sha != "") & (osha != "")
        same_fp = matched & np.where(both, sha == osha, (size == osize) & (mtime == omtime))
        new_names = np.array([*src.classes, ""], dtype=object)[label]
        old_names = np.array([*old.classes, ""], dtype=object)[old.labels[r]]
        same_split = split == old.split[r]
        # exactly as stored (else the row is written again with its old features)
        same_meta = (
            same_fp & (new_names == old_names) & same_split & (size == osize)
            & (mtime == omtime) & (sha == osha)
        )  # fmt: skip
        # what makes a rerun not a no-op (labels, splits, a new content hash or time)
        changed = (label != old.labels[r]) | ~same_split | (mtime != omtime)
        changed |= (sha != "") & (sha != osha)
        meta_dirty = bool((changed & matched).any())
    fast = same_fp & ~err
    if part_rows or part_failed:  # a part's row wins over the store's: the per-item rules
        fast &= np.fromiter((k not in part_rows and k not in part_failed for k in keys), bool, n)
    fi = np.flatnonzero(fast)
    rows: dict[str, tuple[str, int]] = dict(
        zip([keys[i] for i in fi.tolist()], zip(repeat("store"), pos[fi].tolist()), strict=True)
    )
    keep = fast & same_meta
    kept = [pos[keep]]
    restamp = {keys[i]: rows[keys[i]] for i in np.flatnonzero(fast & ~same_meta).tolist()}
    failed: dict[str, tuple] = {}
    todo: list[Item] = []
    n_resumed = n_scan_failed = 0
    for i in np.flatnonzero(~fast).tolist():
        it = items[i]
        k = it.key
        if it.error:  # the scan could not read it (broken link, loop, no permission)
            failed[k] = (it.error, *_fp(it))
            old_f = old_failed.get(k)
            if old_f is None or old_f[0] != it.error or not _same(old_f[1:], it):
                n_scan_failed += 1
        elif k in part_rows and _same(part_rows[k][2], it):
            rows[k] = (part_rows[k][0], part_rows[k][1])
            n_resumed += 1
        elif k in part_failed and _same(part_failed[k][1:], it):
            failed[k] = (part_failed[k][0], *_fp(it))
            n_resumed += 1
        elif same_fp[i]:
            rows[k] = ("store", int(pos[i]))
            if same_meta[i]:
                kept.append(pos[i : i + 1])
            else:
                restamp[k] = rows[k]
        elif k in old_failed and _same(old_failed[k][1:], it):
            failed[k] = (old_failed[k][0], *_fp(it))
        else:
            todo.append(it)
    n_removed = (old.n_rows - int(matched.sum())) if has_old else 0
    if old_failed:
        current = set(keys)
        n_removed += sum(1 for k in old_failed if k not in current)
    dirty = (
        old is None
        or n_resumed > 0
        or n_removed > 0
        or n_scan_failed > 0
        or tuple(old.classes) != tuple(src.classes)
        or meta_dirty
        or not _store_complete(src, writer)
    )
    return {
        "rows": rows,
        "failed": failed,
        "todo": todo,
        "n_scan_failed": n_scan_failed,
        "n_resumed": n_resumed,
        "n_removed": n_removed,
        "dirty": dirty,
        "kept": np.sort(np.concatenate(kept)).astype(np.int64),
        "restamp": restamp,
    }


def _store_complete(src: Source, writer: StoreWriter) -> bool:
    """Whether the existing store holds every per-row dataset the modality keeps today
    (``Modality.store_complete``); an incomplete one is committed again (no model pass)."""
    check = get_modality(src.modality).store_complete
    return writer.index is None or check is None or bool(check(writer.path))


#: At most this many rows in a part an engine's worker writes (its memory, a kill's loss).
PARTS_MAX_ROWS = 65536


def _rows_per_part(n: int, opts: ExtractOptions) -> int:
    """Rows per part an engine's worker writes: about ``max(checkpoint_every, n / 12)`` (at
    most :data:`PARTS_MAX_ROWS`), evened out so the last part is not a small remainder (parts
    of 1,024 rows or more become segments as they are, :mod:`featx.store.segments`)."""
    target = min(PARTS_MAX_ROWS, max(opts.checkpoint_every, -(-n // 12)))
    k = max(1, -(-n // target))
    return max(1, -(-n // k))


def plain_store(config: StoreConfig, src: Source) -> bool:
    """Whether a store holds only what parts written by workers can hold: the pooled features,
    the extra outputs of the pass (``--layers`` groups, cached activations: parts hold them as
    segments do, #21) and plain per-row metadata; not texts (an image store)."""
    return src.modality == "image"


def _run(
    run: _Run,
    todo: list[Item],
    writer: StoreWriter,
    rows: dict[str, tuple[str, int]],
    failed: dict[str, tuple],
) -> tuple[int, int, float]:
    """Extract ``todo`` with the run's engine and write durable parts as it goes; fill ``rows``
    and ``failed``. Returns (rows extracted, failures, seconds spent waiting for part writes).

    A part is written at least every ``checkpoint_every`` items and ``checkpoint_seconds``.
    """
    from concurrent.futures import ThreadPoolExecutor

    opts = run.opts
    n_new = n_fail = n_pending = 0
    # Leaving the with-block waits for a part still being written, also when the run fails:
    # a part is then complete on disk (and resumed next time) or was never renamed into place.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featx-part") as pool:
        parts = _Parts(todo, writer, rows, failed, int(run.bb.dim), pool, run.src.classes)
        kw = {}
        if getattr(run.engine, "writes_parts", False) and plain_store(run.config, run.src):
            # the engine's workers write the parts themselves (storage the cluster shares):
            # the driver then writes no feature byte, and its commit links them as segments
            kw["sink"] = writer.part_sink(run.src.classes, _rows_per_part(len(todo), opts))
        for batch in run.engine.iter_batches(run.bb, todo, run.src.reader(), opts, **kw):
            parts.add(batch)
            n_new += int(batch.indices.size)
            n_fail += len(batch.failures)
            n_pending += int(batch.indices.size) + len(batch.failures)
            if batch.failures and opts.strict:
                parts.flush()
                parts.settle()
                i, reason = batch.failures[0]
                name = todo[i].path or todo[i].key
                raise FeatxError(
                    f"{name}: {reason}; fix or remove it, "
                    "or run without --strict to skip and record it"
                )
            if n_pending >= opts.checkpoint_every or (
                time.monotonic() - parts.last_flush >= opts.checkpoint_seconds
            ):
                parts.flush()
                n_pending = 0
        parts.flush()
        parts.settle()
    return n_new, n_fail, parts.waited


class _Parts:
    """The batches of a run, gathered into durable part files.

    Parts are written by one background thread while the model keeps running (HDF5 writes and
    the fsync overlap the next batches). At most one part is in flight: the next checkpoint
    first waits for the previous one, which bounds memory and keeps parts in order.
    """

    def __init__(
        self,
        todo: list[Item],
        writer: StoreWriter,
        rows: dict[str, tuple[str, int]],
        failed: dict[str, tuple],
        dim: int,
        pool: Any,
        classes: tuple[str, ...] = (),
    ) -> None:
        self.todo, self.writer, self.rows, self.failed, self.dim = todo, writer, rows, failed, dim
        self.pool = pool
        self.classes = tuple(classes)
        self.indices: list[np.ndarray] = []
        self.outputs: dict[str, list[np.ndarray]] = {}
        self.failures: list[tuple[int, str]] = []
        self.inflight: list[tuple[Any, list[Item], list[tuple[Item, str]]]] = []
        self.waited = 0.0
        self.last_flush = time.monotonic()

    def add(self, batch: Any) -> None:
        if batch.parts is not None:  # written by the engine's workers: durable already
            for i, part, r in zip(
                batch.indices.tolist(), batch.parts.tolist(), batch.part_rows.tolist(),
                strict=True,
            ):  # fmt: skip
                self.rows[self.todo[i].key] = (str(part), int(r))
            for i, reason in batch.failures:
                self.failed[self.todo[i].key] = (reason, *_fp(self.todo[i]))
            return
        if batch.indices.size:
            self.indices.append(batch.indices)
            for name, arr in batch.outputs.items():
                self.outputs.setdefault(name, []).append(arr)
        self.failures.extend(batch.failures)

    def settle(self) -> None:
        """Wait for the part in flight (if any) and record where its rows are."""
        if not self.inflight:
            return
        fut, ok_items, bad_items = self.inflight.pop()
        t = time.perf_counter()
        part = fut.result()
        self.waited += time.perf_counter() - t
        for r, it in enumerate(ok_items):
            self.rows[it.key] = (str(part), r)
        for it, reason in bad_items:
            self.failed[it.key] = (reason, *_fp(it))

    def flush(self) -> None:
        """Hand what was gathered to the writer thread as one part."""
        idx = np.concatenate(self.indices) if self.indices else np.empty(0, dtype=np.int64)
        if not idx.size and not self.failures:
            return
        outputs = {k: np.concatenate(v) for k, v in self.outputs.items()}
        # rows in key order, with their labels and splits: a part that can become a segment
        order = sorted(range(len(idx)), key=lambda j: self.todo[idx[j]].key)
        if order != list(range(len(idx))):
            idx = idx[order]
            outputs = {k: v[order] for k, v in outputs.items()}
        feats = outputs.pop(FEATURES, np.empty((0, self.dim)))
        ok_items = [self.todo[i] for i in idx]
        bad_items = [(self.todo[i], r) for i, r in self.failures]
        part = Rows(
            keys=[it.key for it in ok_items],
            features=feats,
            size=[it.size for it in ok_items],
            mtime_ns=[it.mtime_ns for it in ok_items],
            sha256=[it.sha256 for it in ok_items],
            failed_keys=[it.key for it, _ in bad_items],
            failed_reasons=[r for _, r in bad_items],
            failed_size=[it.size for it, _ in bad_items],
            failed_mtime_ns=[it.mtime_ns for it, _ in bad_items],
            failed_sha256=[it.sha256 for it, _ in bad_items],
            outputs=outputs,
            labels=[it.label for it in ok_items],
            split=[it.split for it in ok_items],
            classes=self.classes,
        )
        self.settle()
        self.inflight.append((self.pool.submit(self.writer.write_part, part), ok_items, bad_items))
        self.indices.clear()
        self.outputs.clear()
        self.failures.clear()
        self.last_flush = time.monotonic()
