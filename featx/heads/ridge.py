"""Ridge classifier whose whole alpha path comes from one eigendecomposition.

:class:`RidgeLOOClassifier` fits scikit-learn's ``RidgeClassifier`` objective (targets +-1 per
class, squared loss, L2 penalty ``alpha``, unpenalized intercept, class weights as sample weights)
and chooses ``alpha`` the way ``RidgeClassifierCV`` does: the smallest mean squared
leave-one-out error of the targets, in closed form. One symmetric eigendecomposition of the
centred Gram matrix (``X^T X``, ``d x d``, or ``X X^T``, ``n x n``, whichever is smaller) gives,
for every alpha, the fitted values ``H y`` and the diagonal of the hat matrix ``H``, so the
leave-one-out residuals ``(y - H y) / (1 - h_ii)`` cost ``O(n d k)`` per alpha.

The same leave-one-out decision values (every training item scored by a model fitted without
it) calibrate the probabilities (:class:`~featx.heads.calibration.ScoreCalibrator`): no
holdout and no second fit.

Examples
--------
>>> from sklearn.datasets import make_classification
>>> X, y = make_classification(n_samples=200, n_features=8, random_state=0)
>>> head = RidgeLOOClassifier(alphas=[0.1, 1.0, 10.0]).fit(X, y)
>>> head.alpha_ in (0.1, 1.0, 10.0), head.predict_proba(X[:3]).shape
(True, (3, 2))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads.builtin import RIDGE_ALPHAS as DEFAULT_ALPHAS  # the one grid (exported there)
from featx.heads.calibration import ScoreCalibrator

logger = logging.getLogger(__name__)


class RidgeLOOClassifier(ClassifierMixin, BaseEstimator):
    """Ridge classifier, alpha by exact leave-one-out, calibrated probabilities.

    Parameters
    ----------
    alpha : float or None, default=None
        Fixed alpha; skips the sweep (the leave-one-out scores still calibrate).
    alphas : sequence of float or None, default=None
        Alphas to sweep (default :data:`DEFAULT_ALPHAS`). Ties go to the first.
    class_weight : dict, "balanced" or None, default=None
        Class weights, used as sample weights (as ``RidgeClassifier`` does).

    Attributes
    ----------
    alpha_ : float
        The chosen alpha.
    coef_ : ndarray of shape (1, d) for two classes, else (K, d)
    intercept_ : ndarray of shape (1,) or (K,)
    classes_ : ndarray
    loo_errors_ : ndarray of shape (len(alphas),)
        Mean squared leave-one-out error of the +-1 targets per alpha (what
        ``RidgeClassifierCV`` minimizes).
    calibrator_ : ScoreCalibrator
        Fitted on the leave-one-out decision values at ``alpha_``.
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="neither"), None],
        "alphas": ["array-like", None],
        "class_weight": [dict, str, None],
    }

    def __init__(
        self,
        alpha: float | None = None,
        alphas: Sequence[float] | None = None,
        class_weight: Any = None,
    ) -> None:
        self.alpha = alpha
        self.alphas = alphas
        self.class_weight = class_weight

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> RidgeLOOClassifier:
        """Choose alpha by leave-one-out, fit at it, calibrate on the leave-one-out scores.

        No ``sample_weight``: a weight of 2 is not the same as a duplicate when items are left
        out one at a time. Class weights are supported (``class_weight``).
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        k = len(self.classes_)
        if k < 2:
            raise ValueError(
                f"RidgeLOOClassifier needs samples of at least 2 classes; "
                f"got 1 class ({self.classes_[0]!r})"
            )
        alphas = self._alphas()
        n, d = X.shape
        X = np.asarray(X, dtype=np.float64)
        sw = np.ones(n)
        if self.class_weight is not None:
            sw = sw * compute_sample_weight(self.class_weight, y_enc)
        Y = -np.ones((n, k))
        Y[np.arange(n), y_enc] = 1.0
        if k == 2:
            Y = Y[:, 1:]
        sw_sum = sw.sum()
        x_mean = sw @ X / sw_sum
        y_mean = sw @ Y / sw_sum
        sq = np.sqrt(sw)[:, None]
        Xs = (X - x_mean) * sq
        Ys = (Y - y_mean) * sq
        h0 = sw / sw_sum  # the intercept's share of the hat matrix (orthogonal to Xs)
        if n >= d:  # d x d Gram: Xs^T Xs = V diag(lam) V^T, basis A = Xs V, filter 1/(lam+a)
            lam, V = np.linalg.eigh(Xs.T @ Xs)
            lam = np.clip(lam, 0.0, None)
            A = Xs @ V
            gram = "primal"
        else:  # n x n Gram: Xs Xs^T = U diag(lam) U^T, basis A = U, filter lam/(lam+a)
            lam, A = np.linalg.eigh(Xs @ Xs.T)
            lam = np.clip(lam, 0.0, None)
            V = None
            gram = "dual"
        P = A.T @ Ys
        A2 = A * A
        errors = np.empty(len(alphas))
        best = None
        for i, a in enumerate(alphas):
            f = 1.0 / (lam + a) if gram == "primal" else lam / (lam + a)
            resid = Ys - A @ (f[:, None] * P)
            denom = 1.0 - (A2 @ f) - h0
            loo = resid / np.where(np.abs(denom) > 1e-12, denom, 1e-12)[:, None]
            errors[i] = float(np.mean(loo**2))
            if best is None or errors[i] < errors[best]:
                best, best_loo = i, loo
        self.loo_errors_ = errors
        self.alpha_ = float(alphas[best])
        a = self.alpha_
        if gram == "primal":
            W = V @ (P / (lam + a)[:, None])
        else:
            W = Xs.T @ (A @ (P / (lam + a)[:, None]))
        self.coef_ = W.T.copy()
        self.intercept_ = y_mean - x_mean @ W
        # leave-one-out decision values: y - (unscaled leave-one-out residual)
        loo_scores = Y - best_loo / sq
        self.calibrator_ = ScoreCalibrator().fit(
            loo_scores[:, 0] if k == 2 else loo_scores, y_enc, sample_weight=sw
        )
        self.solver_ = f"eigen-{gram}"
        logger.info("ridge: alpha %.4g by leave-one-out (%s Gram)", self.alpha_, gram)
        return self

    def _alphas(self) -> np.ndarray:
        if self.alpha is not None:
            return np.array([float(self.alpha)])
        alphas = np.asarray(self.alphas if self.alphas is not None else DEFAULT_ALPHAS, float)
        if alphas.ndim != 1 or len(alphas) == 0 or np.any(~(alphas > 0)):
            raise ValueError(f"alphas must be positive numbers; got {self.alphas!r}")
        return alphas

    def decision_function(self, X: Any) -> np.ndarray:
        """Decision scores: ``(n,)`` for two classes, else ``(n, K)``."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        S = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return S[:, 0] if S.shape[1] == 1 else S

    def predict(self, X: Any) -> np.ndarray:
        """Predicted classes."""
        S = self.decision_function(X)
        idx = (S > 0).astype(int) if S.ndim == 1 else S.argmax(axis=1)
        return self.classes_[idx]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated class probabilities, columns in the order of ``classes_``."""
        scores = self.decision_function(X)  # raises NotFittedError first
        return self.calibrator_.predict_proba(scores)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.classifier_tags.multi_label = False
        return tags
