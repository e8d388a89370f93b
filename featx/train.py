"""Store-level entry points behind ``featx fit`` and ``featx compare``.

They read stores (through :mod:`featx.store`), run the protocol (:mod:`featx.protocol`,
:mod:`featx.comparison`) and write bundles (:mod:`featx.bundle`), so a Python user gets exactly what
the command line does.

Examples
--------
>>> import featx
>>> report = featx.fit_store("cache/digits__...h5", "logreg")  # doctest: +SKIP
>>> report.result.accuracy, report.bundle  # doctest: +SKIP
(0.955, PosixPath('cache/heads/digits__..._logreg.npz'))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featx.errors import FeatxError
from featx.files import cache_dir
from featx.options import DEFAULT_HEAD, DEFAULT_HEADS, DEFAULT_REFIT, EvalProtocol

if TYPE_CHECKING:  # pragma: no cover
    from featx.comparison import HeadSpec, Leaderboard
    from featx.features import FeatureSet
    from featx.protocol import Result


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit_store` did: the evaluation and where the bundle went."""

    result: Result
    bundle: Path | None  # None: no ``out`` was given, nothing was written
    refit: str

    def to_dict(self, details: bool = True) -> dict[str, Any]:
        d = self.result.to_dict(details=details)
        d["bundle"] = None if self.bundle is None else str(self.bundle)
        d["refit"] = self.refit
        return d


def _load(
    store: str | os.PathLike, manifest: str | os.PathLike | None, max_memory: int | None = None
) -> FeatureSet:
    """The store's features, cleaned by ``manifest`` when one is given; above ``max_memory``
    bytes (and without a manifest, which needs the rows in memory) left on disk."""
    fs = load_store(store, max_memory=None if manifest else max_memory)
    if manifest:
        from featx.diagnostics.manifest import apply_manifest

        fs = apply_manifest(fs, manifest)
    return fs


def default_bundle_path(store: str | os.PathLike, head: str) -> Path:
    """``<cache>/heads/<store stem>__<head>.npz`` (see :func:`featx.files.cache_dir`)."""
    return cache_dir() / "heads" / f"{Path(store).stem}__{head}.npz"


def fit_store(
    store: str | os.PathLike,
    head: str = DEFAULT_HEAD,
    *,
    params: Mapping[str, Any] | None = None,
    protocol: EvalProtocol | None = None,
    refit: str = DEFAULT_REFIT,
    out: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    **overrides: Any,
) -> FitReport:
    """Fit one head on a store, evaluate it, and (with ``out``) save a bundle for ``featx predict``.

    Without ``out`` nothing is written and ``FitReport.bundle`` is None
    (:func:`default_bundle_path` gives a conventional place to pass as ``out``).

    With ``cv`` or ``shots`` the reported metrics are the mean (and std) over folds or trials;
    the bundled head is then fitted by the plain split protocol. ``refit="all"`` (the default,
    :data:`featx.options.DEFAULT_REFIT`) ships a head refit on every labeled item; ``"train"``
    ships the very estimator the metrics measure. ``protocol`` and ``**overrides`` are those of
    :func:`featx.protocol.evaluate`. ``manifest`` (a cleaning manifest, e.g. from ``featx
    diagnose``) leaves out and relabels items first (:func:`featx.apply_manifest`).
    """
    from featx.bundle import save_bundle
    from featx.memory import IN_MEMORY_COPIES, memory_budget
    from featx.protocol import evaluate, fit_head

    proto = EvalProtocol.resolve(protocol, overrides)
    fs = _load(store, manifest, memory_budget(proto.max_memory) // IN_MEMORY_COPIES)
    name = Path(store).stem
    params = dict(params or {})
    # without a bundle to ship, refitting on every labeled item would be wasted work
    fit_refit = refit if out else "train"
    fitted = fit_head(
        fs, head, params=params, protocol=proto.split_only(), refit=fit_refit, store=name
    )
    result = fitted.result
    if proto.cv or proto.shots:
        result = evaluate(fs, head, params=params, protocol=proto, store=name)
    if not out:
        return FitReport(result=result, bundle=None, refit=refit)
    path = Path(out)
    meta = bundle_meta(fitted.features if fitted.features is not None else fs)
    save_bundle(path, fitted.estimator, fitted.classes, meta, result.to_dict(details=False))
    return FitReport(result=result, bundle=path, refit=refit)


def bundle_meta(fs: FeatureSet) -> dict[str, Any]:
    """The store provenance a bundle keeps: the store's, plus the groups the head takes.

    ``feature_groups`` (name, start, stop, kind) in the head's input order tells
    :func:`featx.predict` which columns of which store (``fused`` parts) or layer to compute,
    and whether the texts go in too; ``dim`` is the head's input size.
    """
    meta = dict(fs.meta)
    if fs.groups:
        meta["feature_groups"] = [list(g.to_tuple()) for g in fs.groups]
        meta["feature_group_sources"] = [g.source for g in fs.groups]
        meta["dim"] = fs.dim
    return meta


def load_store(spec: str | os.PathLike, max_memory: int | None = None) -> FeatureSet:
    """A store, or the fusion of stores joined by ``+`` (``A.h5+B.h5``, :mod:`featx.fusion`).

    A path that exists is one store even if its name has a ``+``. The fused set's groups are
    named by :func:`store_labels` of its stores; its ``meta["label"]`` is those joined by ``+``.
    A single store whose features are above ``max_memory`` bytes keeps them on disk
    (:func:`featx.store.load_features`); a fusion is built in memory.
    """
    from featx.fusion import fuse, split_spec
    from featx.store import load_features

    parts = [] if Path(spec).exists() else split_spec(str(spec))
    if len(parts) < 2:
        return load_features(spec, max_memory=max_memory)
    sets = [load_features(p) for p in parts]
    labels = store_labels([fs.meta for fs in sets], [Path(p).stem for p in parts])
    fusion = fuse(dict(zip(labels, sets, strict=True)))
    meta = {**fusion.features.meta, "label": "+".join(labels), "fusion_report": fusion.report}
    meta["fused_paths"] = [str(p) for p in parts]
    from dataclasses import replace

    return replace(fusion.features, meta=meta)


#: What tells two stores apart in a leaderboard, in the order labels show it.
_DISTINCT = ("weights", "layer", "pool", "size", "dtype")


def _describe(meta: dict[str, Any]) -> dict[str, str]:
    cfg = meta.get("config") or {}
    bb = cfg.get("backbone") or {}
    pre = bb.get("preprocess") or meta.get("preprocess") or {}
    crop = pre.get("crop_size") if isinstance(pre, dict) else None
    return {
        "backbone": str(meta.get("backbone") or bb.get("name") or ""),
        "weights": str(meta.get("weights") or bb.get("weights") or ""),
        "layer": str(meta.get("layer") or bb.get("layer") or ""),
        "pool": str(meta.get("pool") or bb.get("pool") or ""),
        "size": f"{crop}px" if crop else "",
        "dtype": str(cfg.get("dtype") or ""),
    }


def store_labels(metas: Sequence[dict[str, Any]], stems: Sequence[str]) -> list[str]:
    """Leaderboard names of stores: the backbone, plus what differs between stores of it.

    Every store of one backbone gets the same kind of name (``resnet18 32px``, ``resnet18
    64px``), not the first a short name and the next its file name. Stores identical in all of
    backbone, weights, layer, pool, input size and dtype (other sources) fall back to file stems.

    Examples
    --------
    >>> def m(size):
    ...     pre = {"preprocess": {"crop_size": size}}
    ...     return {"backbone": "resnet18", "weights": "none", "config": {"backbone": pre}}
    >>> store_labels([m(32), m(64)], ["a", "b"])
    ['resnet18 32px', 'resnet18 64px']
    >>> store_labels([m(32)], ["a"])
    ['resnet18']
    """
    desc = [_describe(m) for m in metas]
    labels = []
    for i, d in enumerate(desc):
        same = [e for e in desc if e["backbone"] == d["backbone"]]
        varying = [k for k in _DISTINCT if len({e[k] for e in same}) > 1]
        extra = " ".join(d[k] for k in varying if d[k])
        labels.append(f"{d['backbone'] or stems[i]} {extra}".strip())
    if len(set(labels)) < len(labels):
        return list(stems)
    return labels


def compare_stores(
    stores: Sequence[str | os.PathLike],
    heads: Sequence[HeadSpec] = DEFAULT_HEADS,
    *,
    protocol: EvalProtocol | None = None,
    on_error: str = "continue",
    progress: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    manifest: str | os.PathLike | None = None,
    **overrides: Any,
) -> Leaderboard:
    """Load stores and run :func:`featx.comparison.compare` on them (named by
    :func:`store_labels`); ``manifest`` cleans every store first (see :func:`fit_store`)."""
    from featx.comparison import compare

    if not stores:
        raise FeatxError("give at least one store to compare")
    if not heads:
        raise FeatxError("no heads to compare; give e.g. --heads logreg,knn")
    from featx.memory import IN_MEMORY_COPIES, memory_budget

    budget = memory_budget(EvalProtocol.resolve(protocol, overrides).max_memory)
    budget //= IN_MEMORY_COPIES  # what an in-memory fit of the whole store would hold
    loaded = [(path, _load(path, manifest, budget)) for path in stores]
    labels = store_labels([fs.meta for _, fs in loaded], [Path(p).stem for p, _ in loaded])
    labels = [fs.meta.get("label") or lab for (_, fs), lab in zip(loaded, labels, strict=True)]
    sets: dict[str, FeatureSet] = dict(zip(labels, (fs for _, fs in loaded), strict=True))
    return compare(
        sets,
        list(heads),
        protocol=protocol,
        on_error=on_error,
        progress=progress,
        engine=engine,
        ray_address=ray_address,
        **overrides,
    )
