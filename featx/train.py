"""Store-level entry points behind ``featx fit`` and ``featx compare``.

They read stores (through :mod:`featx.store`), run the protocol (:mod:`featx.protocol`,
:mod:`featx.compare`) and write bundles (:mod:`featx.bundle`), so a Python user gets exactly what
the command line does.

Examples
--------
>>> from featx.train import fit_store
>>> report = fit_store("cache/digits__...h5", "logreg")  # doctest: +SKIP
>>> report.result.accuracy, report.bundle  # doctest: +SKIP
(0.955, PosixPath('cache/heads/digits__..._logreg.npz'))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.errors import FeatxError


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit_store` did: the evaluation and where the bundle went."""

    result: Any  # featx.protocol.Result
    bundle: Path
    refit: str

    def to_dict(self, details: bool = True) -> dict[str, Any]:
        d = self.result.to_dict(details=details)
        d["bundle"] = str(self.bundle)
        d["refit"] = self.refit
        return d


def default_bundle_path(store: str | os.PathLike, head: str) -> Path:
    cache = Path(os.environ.get("FEATX_CACHE_DIR") or "cache")
    return cache / "heads" / f"{Path(store).stem}__{head}.npz"


def fit_store(
    store: str | os.PathLike,
    head: str = "logreg",
    *,
    params: Mapping[str, Any] | None = None,
    preprocess: str | Sequence[Any] | None = "default",
    class_weight: str | None = None,
    split: str = "auto",
    test_size: float = 0.2,
    cv: int | None = None,
    shots: int | None = None,
    trials: int = 5,
    seed: int = 0,
    refit: str = "all",
    out: str | os.PathLike | None = None,
) -> FitReport:
    """Fit one head on a store, evaluate it, and save a bundle that ``featx predict`` can use.

    With ``cv`` or ``shots`` the reported metrics are the mean (and std) over folds or trials;
    the bundled head is then fitted by the plain split protocol. ``refit="all"`` (default) ships
    a head refit on every labeled item; ``"train"`` ships the very estimator the metrics measure.
    """
    from featx.bundle import save_bundle
    from featx.protocol import evaluate, fit_head
    from featx.store import load_features

    fs = load_features(store)
    common = dict(
        params=dict(params or {}),
        preprocess=preprocess,
        class_weight=class_weight,
        split=split,
        test_size=test_size,
        seed=seed,
        store=Path(store).stem,
    )
    fitted = fit_head(fs, head, refit=refit, **common)
    result = fitted.result
    if cv or shots:
        result = evaluate(fs, head, cv=cv, shots=shots, trials=trials, **common)
    path = Path(out) if out else default_bundle_path(store, head)
    save_bundle(path, fitted.estimator, fitted.classes, fs.meta, result.to_dict(details=False))
    return FitReport(result=result, bundle=path, refit=refit)


def compare_stores(
    stores: Sequence[str | os.PathLike],
    heads: Sequence[Any] = ("logreg", "knn", "centroid", "mlp"),
    **protocol: Any,
):
    """Load stores and run :func:`featx.compare.compare` on them; names come from the backbone.

    Two stores of the same backbone (e.g. other layers) are named by their file stems.
    """
    from featx.compare import compare
    from featx.store import load_features

    if not stores:
        raise FeatxError("give at least one store to compare")
    if not heads:
        raise FeatxError("no heads to compare; give e.g. --heads logreg,knn")
    sets: dict[str, Any] = {}
    for path in stores:
        fs = load_features(path)
        label = str(fs.meta.get("backbone") or Path(path).stem)
        if label in sets:
            label = Path(path).stem
        sets[label] = fs
    return compare(sets, list(heads), **protocol)
