"""Save and load a fitted head bundle: the head with its preprocessing, the class names, and the
configuration of the features it was trained on, so predictions on new images use the same
backbone and preprocessing.

A bundle is one joblib file holding a plain dict (format version, featx version, estimator,
classes, store metadata, metrics). It is written atomically: a temporary file in the same folder,
then ``os.replace``, so a crash never leaves a half-written bundle under the final name.

Loading runs pickle: only load bundles you trust.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from sklearn.linear_model import LogisticRegression
>>> X = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]]); y = np.array([0, 1, 0, 1])
>>> est = LogisticRegression().fit(X, y)
>>> path = os.path.join(tempfile.mkdtemp(), "head.joblib")
>>> meta = {"backbone": "resnet18", "dim": 2}
>>> _ = save_bundle(path, est, ("cat", "dog"), meta, {"accuracy": 1.0})
>>> b = load_bundle(path)
>>> b.predict(np.array([[0.0, 1.0]])).tolist(), b.dim
(['cat'], 2)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.files import atomic_path

logger = logging.getLogger(__name__)

#: Version of the bundle layout. Bump it when the dict saved below changes incompatibly.
BUNDLE_FORMAT = 1
_MAGIC = "featx-head-bundle"


def _feature_dim(estimator: Any) -> int | None:
    n = getattr(estimator, "n_features_in_", None)
    if n is None and hasattr(estimator, "steps"):
        n = getattr(estimator.steps[0][1], "n_features_in_", None)
    return None if n is None else int(n)


def save_bundle(
    path: str | os.PathLike,
    estimator: Any,
    classes: Sequence[str],
    store_meta: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write a fitted head and everything needed to use it to ``path`` (atomically).

    Parameters
    ----------
    path : path-like
        The bundle file (conventionally ``*.joblib``); its folder is created if needed.
    estimator : fitted scikit-learn classifier
        Usually the ``Pipeline`` from :func:`featx.heads.make_head`, fitted on class indices
        into ``classes``.
    classes : sequence of str
        Class names; ``classes[i]`` is the name of class index ``i``.
    store_meta : mapping, optional
        The feature store's configuration (backbone, weights, layer, pool, preprocess, dim, ...);
        kept as given. Its ``"dim"``, when present, must match the head's input size.
    metrics : mapping, optional
        Evaluation results to keep with the head (e.g. ``Result.to_dict(details=False)``).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FeatxError
        An unfitted estimator, class indices outside ``classes``, or a dim that disagrees with
        the store's.
    """
    import joblib
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise FeatxError("the head is not fitted; fit it before saving a bundle") from None
    except TypeError as e:
        raise FeatxError(
            f"cannot save {type(estimator).__name__}: not an estimator ({e})"
        ) from None
    classes = tuple(str(c) for c in classes)
    est_classes = np.asarray(getattr(estimator, "classes_", []))
    if est_classes.size and (
        not np.issubdtype(est_classes.dtype, np.integer)
        or est_classes.min() < 0
        or est_classes.max() >= len(classes)
    ):
        raise FeatxError(
            f"the head's classes {est_classes.tolist()[:5]} are not indices into the "
            f"{len(classes)} class names; fit the head on FeatureSet.y"
        )
    meta = dict(store_meta or {})
    dim = _feature_dim(estimator)
    if dim is None:
        dim = meta.get("dim")
    if dim is None:
        raise FeatxError("cannot tell the feature dimension of the head; fit it on a 2-D array")
    if meta.get("dim") is not None and int(meta["dim"]) != int(dim):
        raise FeatxError(
            f"the head takes {dim}-dim features but the store's dim is {meta['dim']}; "
            "fit the head on this store's features"
        )
    import sklearn

    from featx import __version__

    payload = {
        "magic": _MAGIC,
        "format_version": BUNDLE_FORMAT,
        "featx_version": __version__,
        "sklearn_version": sklearn.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "estimator": estimator,
        "classes": classes,
        "dim": int(dim),
        "store_meta": meta,
        "metrics": dict(metrics or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        joblib.dump(payload, f)
    logger.info("saved head bundle %s (%d classes, dim %d)", path, len(classes), dim)
    return path


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Bundle:
    """A loaded head bundle.

    Attributes
    ----------
    estimator : fitted scikit-learn classifier (with its preprocessing)
    classes : tuple of str
    dim : int
        Feature dimension the head takes.
    store_meta : dict
        Configuration of the store it was trained on (backbone, weights, layer, pool, ...).
    metrics : dict
    featx_version : str
        featx version that wrote it.
    format_version : int
    created : str
        ISO time of writing (UTC).
    path : Path or None
    """

    estimator: Any
    classes: tuple[str, ...]
    dim: int
    store_meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    featx_version: str = ""
    format_version: int = BUNDLE_FORMAT
    created: str = ""
    path: Path | None = None

    def check_compatible(self, dim: int) -> None:
        """Raise FeatxError unless features of size ``dim`` fit this head."""
        if int(dim) != self.dim:
            backbone = self.store_meta.get("backbone")
            hint = f" (backbone {backbone!r})" if backbone else ""
            raise FeatxError(
                f"the head takes {self.dim}-dim features but got {dim}-dim ones; extract features "
                f"with the bundle's backbone configuration{hint}"
            )

    def _X(self, X: Any) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2:
            raise FeatxError(f"features must be a 2-D array (items x dim); got shape {X.shape}")
        self.check_compatible(X.shape[1])
        if not np.isfinite(X).all():
            raise FeatxError("features contain NaN or inf; re-extract them")
        return X

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n, len(classes)), columns in the order of ``classes``."""
        X = self._X(X)
        if not hasattr(self.estimator, "predict_proba"):
            raise FeatxError(
                "this head gives no probabilities (e.g. linear-svm, svm, ridge); use predict, "
                "or fit logreg, knn, centroid or mlp"
            )
        P = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        out = np.zeros((P.shape[0], len(self.classes)))
        out[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = P
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class names, an array of str of shape (n,)."""
        X = self._X(X)
        idx = np.asarray(self.estimator.predict(X), dtype=np.int64)
        return np.asarray(self.classes, dtype=object)[idx].astype(str)


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load a bundle written by :func:`save_bundle`.

    Raises
    ------
    FeatxError
        The file is missing, is not a joblib file or is corrupt, is not a featx bundle, or was
        written in a bundle format this featx cannot read.
    """
    import joblib

    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"no head bundle at {str(path)!r}; check the path or run featx fit")
    try:
        payload = joblib.load(path)
    except Exception as e:  # noqa: BLE001  (unpickling raises anything; all mean "corrupt")
        raise FeatxError(
            f"{str(path)!r} is not a readable head bundle ({type(e).__name__}); "
            "it is corrupt or not a featx bundle: refit with featx fit"
        ) from None
    if not isinstance(payload, dict) or payload.get("magic") != _MAGIC:
        raise FeatxError(
            f"{str(path)!r} is a joblib file but not a featx head bundle; "
            "give the file written by featx fit"
        )
    version = payload.get("format_version")
    if version != BUNDLE_FORMAT:
        newer = isinstance(version, int) and version > BUNDLE_FORMAT
        raise FeatxError(
            f"{str(path)!r} has bundle format {version!r} but this featx reads format "
            f"{BUNDLE_FORMAT}; " + ("upgrade featx" if newer else "refit the head with this featx")
        )
    import sklearn

    saved_with = payload.get("sklearn_version")
    if saved_with and saved_with != sklearn.__version__:
        logger.warning(
            "bundle %s was saved with scikit-learn %s, this is %s; predictions may differ",
            path,
            saved_with,
            sklearn.__version__,
        )
    try:
        return Bundle(
            estimator=payload["estimator"],
            classes=tuple(payload["classes"]),
            dim=int(payload["dim"]),
            store_meta=dict(payload.get("store_meta") or {}),
            metrics=dict(payload.get("metrics") or {}),
            featx_version=str(payload.get("featx_version", "")),
            format_version=int(version),
            created=str(payload.get("created", "")),
            path=path,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise FeatxError(
            f"{str(path)!r} is an incomplete head bundle (missing {e}); refit with featx fit"
        ) from None
