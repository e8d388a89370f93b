"""Store-level entry points behind ``featx fit`` and ``featx compare``.

They read stores (through :mod:`featx.store`), run the protocol (:mod:`featx.protocol`,
:mod:`featx.comparison`) and write bundles (:mod:`featx.bundle`), so a Python user gets exactly what
the command line does.

Examples
--------
>>> import featx
>>> report = featx.fit_store("cache/digits__...h5", "logreg")  # doctest: +SKIP
>>> report.result.accuracy, report.bundle  # doctest: +SKIP
(0.955, PosixPath('cache/heads/digits__..._logreg.joblib'))
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
    bundle: Path
    refit: str

    def to_dict(self, details: bool = True) -> dict[str, Any]:
        d = self.result.to_dict(details=details)
        d["bundle"] = str(self.bundle)
        d["refit"] = self.refit
        return d


def default_bundle_path(store: str | os.PathLike, head: str) -> Path:
    """``<cache>/heads/<store stem>__<head>.joblib`` (see :func:`featx.files.cache_dir`)."""
    return cache_dir() / "heads" / f"{Path(store).stem}__{head}.joblib"


def fit_store(
    store: str | os.PathLike,
    head: str = DEFAULT_HEAD,
    *,
    params: Mapping[str, Any] | None = None,
    protocol: EvalProtocol | None = None,
    refit: str = DEFAULT_REFIT,
    out: str | os.PathLike | None = None,
    **overrides: Any,
) -> FitReport:
    """Fit one head on a store, evaluate it, and save a bundle that ``featx predict`` can use.

    With ``cv`` or ``shots`` the reported metrics are the mean (and std) over folds or trials;
    the bundled head is then fitted by the plain split protocol. ``refit="all"`` (the default,
    :data:`featx.options.DEFAULT_REFIT`) ships a head refit on every labeled item; ``"train"``
    ships the very estimator the metrics measure. ``protocol`` and ``**overrides`` are those of
    :func:`featx.protocol.evaluate`.
    """
    from featx.bundle import save_bundle
    from featx.protocol import evaluate, fit_head
    from featx.store import load_features

    proto = EvalProtocol.resolve(protocol, overrides)
    fs = load_features(store)
    name = Path(store).stem
    params = dict(params or {})
    fitted = fit_head(fs, head, params=params, protocol=proto.split_only(), refit=refit, store=name)
    result = fitted.result
    if proto.cv or proto.shots:
        result = evaluate(fs, head, params=params, protocol=proto, store=name)
    path = Path(out) if out else default_bundle_path(store, head)
    save_bundle(path, fitted.estimator, fitted.classes, fs.meta, result.to_dict(details=False))
    return FitReport(result=result, bundle=path, refit=refit)


def compare_stores(
    stores: Sequence[str | os.PathLike],
    heads: Sequence[HeadSpec] = DEFAULT_HEADS,
    *,
    protocol: EvalProtocol | None = None,
    on_error: str = "continue",
    progress: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    **overrides: Any,
) -> Leaderboard:
    """Load stores and run :func:`featx.comparison.compare` on them; names come from the backbone.

    Two stores of the same backbone (e.g. other layers) are named by their file stems.
    """
    from featx.comparison import compare
    from featx.store import load_features

    if not stores:
        raise FeatxError("give at least one store to compare")
    if not heads:
        raise FeatxError("no heads to compare; give e.g. --heads logreg,knn")
    sets: dict[str, FeatureSet] = {}
    for path in stores:
        fs = load_features(path)
        label = str(fs.meta.get("backbone") or Path(path).stem)
        if label in sets:
            label = Path(path).stem
        sets[label] = fs
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
