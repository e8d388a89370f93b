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
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones.registry import BackboneLike
from featx.errors import FeatxError, disk_full_error, is_disk_full
from featx.options import (
    DEFAULT_BACKBONE,
    DEFAULT_TEXT_BACKBONE,
    DEFAULT_WEIGHTS,
    BackboneSpec,
    ExtractOptions,
    TextFormat,
)
from featx.sources import Item, Source, open_source
from featx.store import Rows, StoreConfig, StoreWriter, default_store_path

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
    modality: str = "image"  # or "text"; for text, images_per_s counts texts
    engine: str = "local"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _versions(text: bool = False) -> dict[str, str]:
    import h5py
    import torch

    from featx._version import __version__

    out = {"featx_version": __version__, "torch_version": torch.__version__}
    if text:
        import tokenizers
        import transformers

        out["transformers_version"] = transformers.__version__
        out["tokenizers_version"] = tokenizers.__version__
    else:
        import timm
        import torchvision

        out["torchvision_version"] = torchvision.__version__
        out["timm_version"] = timm.__version__
    out["h5py_version"] = h5py.__version__
    out["numpy_version"] = np.__version__
    return out


def _is_text(obj: Any) -> bool:
    return getattr(obj, "modality", "image") == "text"


def _fp(item: Item) -> tuple[int, int, str]:
    return (item.size, item.mtime_ns, item.sha256)


def _same(old: tuple[int, int, str], item: Item) -> bool:
    if old[2] and item.sha256:
        return old[2] == item.sha256
    return old[0] == item.size and old[1] == item.mtime_ns


__all__ = ["ExtractOptions", "ExtractResult", "extract", "store_config"]


def store_config(source: Source, backbone: BackboneLike, dtype: str = "float32") -> StoreConfig:
    return StoreConfig(source=source.identity(), backbone=backbone.config(), dtype=dtype)


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
        Batching, device, precision, dtype, hashing, strictness, progress.
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
    from featx.backbones._text import is_text_name

    name = backbone.name if isinstance(backbone, BackboneSpec) else backbone
    if name is None:
        hint = None
    elif isinstance(name, str):
        hint = "text" if is_text_name(name) else "image"
    else:
        hint = "text" if _is_text(name) else "image"
    src = (
        source
        if isinstance(source, Source)
        else open_source(
            source,
            root=root,
            download=download,
            content_hash=opts.content_hash,
            text=text,
            modality=hint,
            allow_outside_root=opts.allow_outside_root,
        )
    )
    is_text = _is_text(src)
    if name is None:
        name = DEFAULT_TEXT_BACKBONE if is_text else DEFAULT_BACKBONE
        if isinstance(backbone, BackboneSpec):
            backbone = replace(backbone, name=name)
        else:
            backbone = name
    if isinstance(name, str) and is_text_name(name) != is_text:
        _mismatch(src, name, is_text)
    memo_key = None
    if isinstance(backbone, str | BackboneSpec):
        from featx.backbones import load_backbone, memo

        spec = (
            backbone
            if isinstance(backbone, BackboneSpec)
            else BackboneSpec(
                name=backbone,
                weights=weights,
                weights_file=None if weights_file is None else os.fspath(weights_file),
                layer=layer,
                pool=pool,
                image_size=image_size,
                max_seq_length=max_seq_length,
                normalize=normalize,
            )
        )
        if not is_text:  # text encoders are always loaded (a model folder can change in place)
            memo_key = memo.request_key(
                spec.name,
                spec.weights,
                weights_file=spec.weights_file,
                layer=spec.layer,
                pool=spec.pool,
                image_size=spec.image_size,
            )
            remembered = memo.recall(memo_key)
            if remembered is not None:
                done = _up_to_date(src, remembered, store, opts, t0)
                if done is not None:
                    return done
        bb = load_backbone(spec)
        if not is_text:
            memo.remember(memo_key, bb.config())
    else:
        bb = backbone
    if _is_text(bb) != is_text:
        _mismatch(src, bb.name, is_text)
    config = store_config(src, bb, opts.dtype)
    path = Path(store) if store else default_store_path(config, src.name)
    if path.exists() and path.is_dir():
        raise FeatxError(f"--store {path} is a folder; give a file path ending in .h5")

    if is_text and opts.engine != "local":
        raise FeatxError("--engine ray runs image backbones; text runs on the local engine")
    dev, prec, dec = _resolve_engine(opts)
    if is_text:
        dec = "-"

    itemsize = np.dtype(opts.dtype).itemsize
    # At most what the run needs on disk: parts for every item, then the merged store beside them.
    need = 2 * len(src.items) * int(bb.dim) * itemsize + (1 << 20)
    try:
        return _extract_locked(src, bb, path, config, opts, dev, prec, dec, t0)
    except OSError as exc:
        if is_disk_full(exc):
            log.debug("disk full", exc_info=True)
            raise disk_full_error(path.parent, need) from None
        raise


def _extract_locked(
    src: Source,
    bb: Any,
    path: Path,
    config: StoreConfig,
    opts: ExtractOptions,
    dev: Any,
    prec: str,
    dec: str,
    t0: float,
) -> ExtractResult:
    is_text = _is_text(src)
    with StoreWriter(path, config) as writer:
        plan = _plan(src, writer)
        todo: list[Item] = plan["todo"]
        rows: dict[str, tuple[str, int]] = plan["rows"]
        failed: dict[str, tuple] = plan["failed"]
        n_resumed = plan["n_resumed"]
        if opts.strict and failed:
            key, (reason, *_) = min(failed.items())
            raise FeatxError(
                f"{key}: {reason}; fix or remove it, or run without --strict to skip and record it"
            )
        if not todo and not plan["dirty"]:
            log.info("store %s is up to date", path)
            dim = writer.dim or bb.dim
            return ExtractResult(
                store=str(path),
                n_items=len(rows),
                n_new=0,
                n_resumed=0,
                n_removed=0,
                n_failed=len(failed),
                n_new_failed=0,
                dim=int(dim),
                seconds=time.perf_counter() - t0,
                images_per_s=0.0,
                store_seconds=0.0,
                device=str(dev),
                precision=prec,
                decode=dec,
                backbone=bb.name,
                weights=bb.weights,
                noop=True,
                n_truncated=_stored_truncated(path) if is_text else 0,
                modality="text" if is_text else "image",
                engine=opts.engine,
            )
        writer.require_writable()
        n_new, n_new_failed = 0, plan["n_scan_failed"]
        waited = 0.0
        t_extract = time.perf_counter()
        if todo:
            n_new, n_run_failed, waited = _run(todo, src, bb, writer, rows, failed, opts, dec)
            n_new_failed += n_run_failed
        t_extract = time.perf_counter() - t_extract
        labels = {it.key: it.label for it in src.items}
        split = {it.key: it.split for it in src.items}
        fps = {it.key: _fp(it) for it in src.items}
        attrs = {
            "backbone": bb.name,
            "weights": bb.weights,
            "weights_sha256": bb.weights_sha256 or "",
            "layer": bb.layer or "",
            "pool": bb.pool or "",
            "preprocess": bb.preprocess.to_dict(),
            "source": {"kind": src.kind, "uri": src.uri, "name": src.name},
            "dim": int(bb.dim),
            **_versions(is_text),
        }
        per_row = None
        n_truncated = 0
        if is_text:
            per_row, n_truncated = _text_rows(src, bb, rows)
            attrs["modality"] = "text"
            attrs["normalize"] = bool(bb.normalize)
            attrs["max_seq_length"] = int(bb.preprocess.max_seq_length)
            attrs["text_column"] = getattr(src, "text_column", "")
            attrs["n_truncated"] = n_truncated
        t_commit = time.perf_counter()
        writer.commit(
            rows=rows,
            failed=failed,
            labels=labels,
            split=split,
            classes=src.classes,
            fingerprints=fps,
            attrs=attrs,
            per_row=per_row,
        )
        t_commit_s = time.perf_counter() - t_commit
    seconds = time.perf_counter() - t0
    return ExtractResult(
        store=str(path),
        n_items=len(rows),
        n_new=n_new,
        n_resumed=n_resumed,
        n_removed=plan["n_removed"],
        n_failed=len(failed),
        n_new_failed=n_new_failed,
        dim=int(bb.dim),
        seconds=seconds,
        images_per_s=(n_new + n_new_failed) / t_extract if t_extract > 0 and todo else 0.0,
        store_seconds=waited + t_commit_s,
        device=str(dev),
        precision=prec,
        decode=dec,
        backbone=bb.name,
        weights=bb.weights,
        noop=False,
        engine=opts.engine,
        n_truncated=n_truncated,
        modality="text" if is_text else "image",
    )


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
    if opts.engine != "local" or any(getattr(opts, k) is not None for k in _RAY_ONLY):
        return None  # Ray runs, and flags the normal path rejects, take the normal path
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
                engine=opts.engine,
            )
    except FeatxError:
        return None  # e.g. a configuration mismatch: the normal path says what is wrong


_RAY_ONLY = ("ray_address", "actors", "gpus_per_actor", "cpus_per_actor")


def _resolve_engine(opts: ExtractOptions) -> tuple[Any, str, str]:
    """(device, precision, decode) of the run, checked before the store is touched."""
    from featx.engine import resolve_device, resolve_precision
    from featx.jpeg import resolve_decode

    if opts.engine == "local":
        given = [k for k in _RAY_ONLY if getattr(opts, k) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise FeatxError(f"{flag} applies only with --engine ray")
        dev = resolve_device(opts.device)
        prec = resolve_precision(opts.precision, dev)
        return dev, prec, resolve_decode(opts.decode, dev)
    import torch

    from featx.ray_engine import actor_device, import_ray

    import_ray()
    settings = opts.ray_settings()
    dev = torch.device(actor_device(opts.device, settings.gpus_per_actor))
    if (opts.decode or "auto").lower() == "device":
        raise FeatxError(
            "--decode device is not available with --engine ray (Ray tasks decode on CPUs); "
            "use --decode cpu or auto"
        )
    if opts.workers is not None:
        raise FeatxError("--workers applies to the local engine; with --engine ray use --actors")
    return dev, resolve_precision(opts.precision, dev), "cpu"


def _mismatch(src: Source, name: str, is_text: bool) -> None:
    if is_text:
        raise FeatxError(
            f"{src.uri} is a text source but {name} is an image backbone; use a text encoder "
            "(all-minilm-l6-v2, or hf:PATH for a local model folder)"
        )
    raise FeatxError(
        f"{src.uri} is an image source but {name} is a text encoder; use an image backbone "
        "(see 'featx backbones')"
    )


def _stored_truncated(path: Path) -> int:
    from featx.store import store_info

    return int((store_info(path).get("text") or {}).get("n_truncated") or 0)


def _text_rows(
    src: Source, bb: Any, rows: dict[str, tuple[str, int]]
) -> tuple[dict[str, dict[str, int]], int]:
    """Per-row token counts (``text/n_tokens``) and texts (``text/texts``) of a text store, and
    how many texts were truncated."""
    from featx.text.engine import count_tokens

    items = [it for it in src.items if it.key in rows]
    limit = int(bb.preprocess.max_seq_length)
    texts = list(src.texts(items))
    counts = count_tokens(bb.tokenizer, texts, limit)
    n_tokens = {it.key: int(c) for it, c in zip(items, counts, strict=True)}
    n_truncated = int((counts > limit).sum())
    if n_truncated:
        log.warning(
            "%d of %d texts are longer than %d tokens; their embeddings use the first %d "
            "(featx info lists how many)",
            n_truncated,
            len(items),
            limit,
            limit,
        )
    # the texts themselves, for heads on their TF-IDF (docs/groups.md)
    kept = {it.key: "" if t is None else str(t) for it, t in zip(items, texts, strict=True)}
    return {"text/n_tokens": n_tokens, "text/texts": kept}, n_truncated


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


def _plan(src: Source, writer: StoreWriter) -> dict[str, Any]:
    """Decide, per item, whether its row comes from a part, the old store, or must be extracted."""
    part_rows: dict[str, tuple[str, int, tuple]] = {}
    part_failed: dict[str, tuple] = {}
    for part, idx in writer.iter_part_index():
        for r, k in enumerate(idx.keys):
            part_rows[k] = (str(part), r, _row_fingerprint(idx, r))
        part_failed.update(_failed_records(idx))
    old_rows: dict[str, tuple[int, tuple]] = {}
    old_failed: dict[str, tuple] = {}
    old = writer.index
    if old is not None:
        old_rows = {k: (r, _row_fingerprint(old, r)) for r, k in enumerate(old.keys)}
        old_failed = _failed_records(old)
    rows: dict[str, tuple[str, int]] = {}
    failed: dict[str, tuple] = {}
    todo: list[Item] = []
    n_resumed = n_scan_failed = 0
    for it in src.items:
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
        elif k in old_rows and _same(old_rows[k][1], it):
            rows[k] = ("store", old_rows[k][0])
        elif k in old_failed and _same(old_failed[k][1:], it):
            failed[k] = (old_failed[k][0], *_fp(it))
        else:
            todo.append(it)
    current = {it.key for it in src.items}
    n_removed = sum(1 for k in old_rows if k not in current) + sum(
        1 for k in old_failed if k not in current
    )
    dirty = (
        old is None
        or n_resumed > 0
        or n_removed > 0
        or n_scan_failed > 0
        or _metadata_changed(src, old)
    )
    return {
        "rows": rows,
        "failed": failed,
        "todo": todo,
        "n_scan_failed": n_scan_failed,
        "n_resumed": n_resumed,
        "n_removed": n_removed,
        "dirty": dirty,
    }


def _metadata_changed(src: Source, old) -> bool:
    """Labels, splits, class names or fingerprints (e.g. a new content hash) differ."""
    if tuple(old.classes) != tuple(src.classes):
        return True
    pos = {k: r for r, k in enumerate(old.keys)}
    for it in src.items:
        r = pos.get(it.key)
        if r is None:
            continue
        if (
            int(old.labels[r]) != it.label
            or old.split[r] != it.split
            or (it.sha256 and old.sha256[r] != it.sha256)
            or int(old.mtime_ns[r]) != it.mtime_ns
        ):
            return True
    return False


def _batches(todo: list[Item], src: Source, bb: Any, opts: ExtractOptions, dec: str):
    """The engine's batches of features for ``todo``: local (in-process) or Ray."""
    if _is_text(bb):
        from featx.text.engine import iter_text_features

        return iter_text_features(
            bb,
            todo,
            src.reader(),
            device=opts.device,
            precision=opts.precision,
            batch_size=opts.batch_size,
            compile=opts.compile,
            progress=opts.progress,
        )
    if opts.engine == "ray":
        from featx.engine import resolve_precision
        from featx.ray_engine import actor_device, iter_features_ray

        settings = opts.ray_settings()
        dev = actor_device(opts.device, settings.gpus_per_actor)
        import torch

        return iter_features_ray(
            bb,
            todo,
            src.reader(),
            settings=settings,
            device=dev,
            precision=resolve_precision(opts.precision, torch.device(dev)),
            batch_size=opts.batch_size,
            channels_last=opts.channels_last,
            compile=opts.compile,
            fold_bn=opts.fold_bn,
            progress=opts.progress,
        )
    from featx.engine import iter_features

    return iter_features(
        bb,
        todo,
        src.reader(),
        device=opts.device,
        precision=opts.precision,
        batch_size=opts.batch_size,
        workers=opts.workers,
        channels_last=opts.channels_last,
        compile=opts.compile,
        fold_bn=opts.fold_bn,
        decode=dec,
        progress=opts.progress,
    )


def _run(
    todo: list[Item],
    src: Source,
    bb: BackboneLike,
    writer: StoreWriter,
    rows: dict[str, tuple[str, int]],
    failed: dict[str, tuple],
    opts: ExtractOptions,
    dec: str,
) -> tuple[int, int, float]:
    """Extract ``todo`` and write durable parts as it goes; fill ``rows`` and ``failed``.

    Parts are written by one background thread while the model keeps running (HDF5 writes and
    the fsync overlap the next batches). At most one part is in flight: the next checkpoint
    first waits for the previous one, which bounds memory and keeps parts in order. Returns
    (rows extracted, failures, seconds spent waiting for part writes). ``dec`` is the resolved
    ``--decode``.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    pending_idx: list[np.ndarray] = []
    pending_feats: list[np.ndarray] = []
    pending_fail: list[tuple[int, str]] = []
    n_new = n_fail = 0
    waited = 0.0
    last_flush = time.monotonic()
    inflight: list[tuple[Future, list[Item], list[tuple[Item, str]]]] = []

    def settle() -> None:
        """Wait for the part in flight (if any) and record where its rows are."""
        nonlocal waited
        if not inflight:
            return
        fut, ok_items, bad_items = inflight.pop()
        t = time.perf_counter()
        part = fut.result()
        waited += time.perf_counter() - t
        for r, it in enumerate(ok_items):
            rows[it.key] = (str(part), r)
        for it, reason in bad_items:
            failed[it.key] = (reason, *_fp(it))

    def flush(pool: ThreadPoolExecutor) -> None:
        nonlocal last_flush
        idx = np.concatenate(pending_idx) if pending_idx else np.empty(0, dtype=np.int64)
        if not idx.size and not pending_fail:
            return
        feats = np.concatenate(pending_feats) if pending_feats else np.empty((0, bb.dim))
        ok_items = [todo[i] for i in idx]
        bad_items = [(todo[i], r) for i, r in pending_fail]
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
        )
        settle()
        inflight.append((pool.submit(writer.write_part, part), ok_items, bad_items))
        pending_idx.clear()
        pending_feats.clear()
        pending_fail.clear()
        last_flush = time.monotonic()

    n_pending = 0
    # Leaving the with-block waits for a part still being written, also when the run fails:
    # a part is then complete on disk (and resumed next time) or was never renamed into place.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featx-part") as pool:
        for batch in _batches(todo, src, bb, opts, dec):
            if batch.indices.size:
                pending_idx.append(batch.indices)
                pending_feats.append(batch.features)
            pending_fail.extend(batch.failures)
            n_new += int(batch.indices.size)
            n_fail += len(batch.failures)
            n_pending += int(batch.indices.size) + len(batch.failures)
            if batch.failures and opts.strict:
                flush(pool)
                settle()
                i, reason = batch.failures[0]
                name = todo[i].path or todo[i].key
                raise FeatxError(
                    f"{name}: {reason}; fix or remove it, "
                    "or run without --strict to skip and record it"
                )
            if n_pending >= opts.checkpoint_every or (
                time.monotonic() - last_flush >= opts.checkpoint_seconds
            ):
                flush(pool)
                n_pending = 0
        flush(pool)
        settle()
    return n_new, n_fail, waited
