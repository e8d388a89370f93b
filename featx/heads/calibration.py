"""Probabilities for heads that only give scores: calibration on held-out decision values.

:class:`ScoreCalibrator` maps decision scores to class probabilities:

- two classes (scores of shape ``(n,)``): Platt scaling without its offset,
  ``P(class 1) = sigmoid(a * s)``, fitted with Platt's smoothed targets ``(n+ + 1) / (n+ + 2)``
  and ``1 / (n- + 2)`` so that a small, separable validation set does not give probabilities of
  exactly 0 and 1. Without the offset, ``P > 0.5`` exactly where the head predicts class 1, so
  probabilities and predictions never disagree (scikit-learn's contract);
- more classes (``(n, K)``): temperature scaling, ``softmax(a * s)`` with one scalar ``a > 0``,
  which keeps the head's ranking (and so its predictions) unchanged.

Both minimize the log-loss on scores the head gave to items it was not fitted on: the validation
split a sweep already holds out. :class:`CalibratedClassifier` adds that split to any classifier
with a ``decision_function`` (fit on the rest, calibrate on it, refit on everything).

Examples
--------
>>> import numpy as np
>>> s = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
>>> cal = ScoreCalibrator().fit(s, np.array([0, 0, 1, 0, 1, 1]))
>>> p = cal.predict_proba(s)
>>> p.shape, bool(np.all(np.diff(p[:, 1]) > 0))
((6, 2), True)
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from numbers import Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.splits import stratified_holdout

logger = logging.getLogger(__name__)


class ScoreCalibrator(BaseEstimator):
    """Platt (two classes) or temperature (more) scaling of decision scores.

    A (parameter-free) scikit-learn estimator, so that bundles store it as plain state.

    Attributes (after ``fit``)
    --------------------------
    a_ : float
        Scale of the scores (1 / temperature).
    c_ : float
        Offset of the scores (0: kept so that probabilities agree with predictions).
    n_classes_ : int
    """

    def fit(
        self, scores: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> ScoreCalibrator:
        """Fit on ``scores`` (``(n,)`` for two classes, else ``(n, K)``) and labels ``0..K-1``."""
        from scipy.optimize import minimize

        S = np.asarray(scores, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        w = w / w.sum()
        spread = float(np.std(S)) or 1.0
        if S.ndim == 1:
            self.n_classes_ = 2
            n_pos, n_neg = float((y == 1).sum()), float((y == 0).sum())
            t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

            def f(p: np.ndarray) -> tuple[float, np.ndarray]:
                z = p[0] * S
                loss = float(w @ (np.logaddexp(0.0, z) - t * z))  # log(1 + e^z) - t z, stable
                return loss, np.array([float(w @ ((_expit(z) - t) * S))])

            res = minimize(
                f, np.array([1.0 / spread]), jac=True, method="L-BFGS-B", bounds=[(0.0, None)]
            )
            self.a_, self.c_ = float(res.x[0]), 0.0
        else:
            self.n_classes_ = S.shape[1]
            Sf = np.where(np.isfinite(S), S, np.nan)
            spread = float(np.nanstd(Sf)) or 1.0
            S = np.nan_to_num(Sf, nan=np.nanmin(Sf) if np.isfinite(np.nanmin(Sf)) else 0.0)
            idx = np.arange(len(y))

            def g(log_a: np.ndarray) -> tuple[float, np.ndarray]:
                a = float(np.exp(log_a[0]))
                Z = a * S
                Z = Z - Z.max(axis=1, keepdims=True)
                E = np.exp(Z)
                tot = E.sum(axis=1)
                loss = float(w @ (np.log(tot) - Z[idx, y]))
                P = E / tot[:, None]
                # d loss / d log a = a * sum_i w_i (sum_k P_ik S_ik - S_iy)
                grad = a * float(w @ ((P * S).sum(axis=1) - S[idx, y]))
                return loss, np.array([grad])

            x0 = np.array([-np.log(spread)])
            res = minimize(g, x0, jac=True, method="L-BFGS-B", bounds=[(x0[0] - 12, x0[0] + 12)])
            self.a_, self.c_ = float(np.exp(res.x[0])), 0.0
        return self

    def predict_proba(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities, shape ``(n, K)``."""
        S = np.asarray(scores, dtype=np.float64)
        if S.ndim == 1:
            p = _expit(self.a_ * S + self.c_)
            return np.column_stack([1.0 - p, p])
        Z = self.a_ * S
        Z = Z - Z.max(axis=1, keepdims=True)
        E = np.exp(Z)
        return E / E.sum(axis=1, keepdims=True)

    def __repr__(self) -> str:
        if not hasattr(self, "a_"):
            return "ScoreCalibrator()"
        if self.n_classes_ == 2:
            return f"ScoreCalibrator(platt: a={self.a_:.4g})"
        return f"ScoreCalibrator(temperature={1.0 / self.a_:.4g})"


def _expit(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def calibrate(
    scores: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
) -> ScoreCalibrator:
    """A :class:`ScoreCalibrator` fitted on held-out ``scores`` of labels ``y`` (0..K-1)."""
    return ScoreCalibrator().fit(scores, y, sample_weight)


class CalibratedClassifier(ClassifierMixin, BaseEstimator):
    """Give a classifier with a ``decision_function`` a calibrated ``predict_proba``.

    Fits ``estimator`` on a stratified share of the data, calibrates its decision scores on the
    held-out rest (:class:`ScoreCalibrator`), then refits it on all the data; predictions are
    those of the refitted estimator. A ``RidgeClassifierCV`` chooses alpha on the training
    share and is refit on everything at that alpha (see ``_final``). Used for the ``ridge`` head.

    Parameters
    ----------
    estimator : classifier with ``decision_function``
    val_size : float, default=0.2
        Share of each class held out for calibration.
    random_state : int, RandomState or None
        Seed of the split.

    Attributes
    ----------
    estimator_ : the refitted estimator
    calibrator_ : ScoreCalibrator
    classes_ : ndarray

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import RidgeClassifier
    >>> X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    >>> head = CalibratedClassifier(RidgeClassifier(), random_state=0).fit(X, y)
    >>> head.predict_proba(X[:3]).shape
    (3, 2)
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "decision_function"])],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator: Any,
        val_size: float = 0.2,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.estimator = estimator
        self.val_size = val_size
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X: Any, y: Any) -> CalibratedClassifier:
        """Fit on the training share, calibrate on the held-out share, refit on all of X."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self.estimator).__name__} needs samples of at least 2 classes; "
                f"got 1 class ({self.classes_[0]!r})"
            )
        train, val = stratified_holdout(y_enc, self.val_size, self.random_state)
        if len(val) and len(np.unique(y_enc[train])) == len(self.classes_):
            est = clone(self.estimator).fit(X[train], y[train])
            self.calibrator_ = calibrate(_decision(est, X[val]), y_enc[val])
            self.estimator_ = _final(self.estimator, est).fit(X, y)
        else:
            warnings.warn(
                "too few items per class to hold some out for calibration; the probabilities "
                "are calibrated on the training items (over-confident)",
                UserWarning,
                stacklevel=2,
            )
            self.estimator_ = clone(self.estimator).fit(X, y)
            self.calibrator_ = calibrate(_decision(self.estimator_, X), y_enc)
        logger.info("%s: %r", type(self.estimator).__name__, self.calibrator_)
        return self

    def _check(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    def decision_function(self, X: Any) -> np.ndarray:
        """Decision scores of the refitted estimator."""
        X = self._check(X)
        return self.estimator_.decision_function(X)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the refitted estimator."""
        X = self._check(X)
        return self.estimator_.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated class probabilities, columns in the order of ``classes_``."""
        X = self._check(X)
        return self.calibrator_.predict_proba(_decision(self.estimator_, X))

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = self.estimator.__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.classifier_tags = replace(inner.classifier_tags, multi_label=False)
        return tags


def _final(estimator: Any, fitted: Any) -> Any:
    """The estimator to refit on all the data after calibrating ``fitted`` (fit on a share).

    A ``RidgeClassifierCV`` is refit as a ``RidgeClassifier`` at the alpha it chose on the
    share: one solve instead of a second leave-one-out search over every alpha (its
    leave-one-out values are squared errors, not scores, so they cannot calibrate).
    """
    from sklearn.base import clone
    from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV

    if isinstance(estimator, RidgeClassifierCV):
        return RidgeClassifier(
            alpha=float(np.atleast_1d(fitted.alpha_)[0]),
            fit_intercept=estimator.fit_intercept,
            class_weight=estimator.class_weight,
        )
    return clone(estimator)


def _decision(est: Any, X: np.ndarray) -> np.ndarray:
    """Decision scores with the estimator's columns as they are: (n,) for two classes."""
    return np.asarray(est.decision_function(X), dtype=np.float64)
