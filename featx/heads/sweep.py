"""Choose a head's hyper-parameters on a validation split held out from the training data.

:class:`SweepClassifier` is the protocol of the linear probe for any scikit-learn classifier: fit
each candidate on the training part, score it on a stratified, seeded validation part, refit the
best on everything. It is what ``GridSearchCV(cv=<one stratified split>)`` does, except that it
never fails on small classes (see :func:`featx.splits.stratified_holdout`) and falls back to
the first candidate when no validation split is possible (one item per class, as in 1-shot).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads._weights import encode_class_weight, selection_score
from featx.splits import stratified_holdout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelativeGamma:
    """An RBF ``gamma`` given as a multiple of scikit-learn's ``gamma="scale"``.

    ``"scale"`` is ``1 / (n_features * X.var())``; ``RelativeGamma(4.0)`` is four times that, so
    one grid fits features of any dimension and scale.
    """

    factor: float

    def resolve(self, X: np.ndarray) -> float:
        var = float(np.var(X))
        return self.factor / (X.shape[1] * var) if var > 0 else self.factor

    def __repr__(self) -> str:
        return f"{self.factor:g}*scale"


def _estimator_has(attr: str):
    def check(self: SweepClassifier) -> bool:
        if hasattr(self, "best_estimator_"):
            return hasattr(self.best_estimator_, attr)
        return hasattr(self.estimator, attr)

    return check


class SweepClassifier(ClassifierMixin, BaseEstimator):
    """Pick the best parameters of ``estimator`` on a held-out validation split, then refit.

    Parameters
    ----------
    estimator : classifier
        The head to tune (cloned, never modified).
    param_grid : dict of str to list
        Candidate values per parameter; every combination is tried, in order (put the strongest
        regularization first: ties go to the earlier candidate). Values may be
        :class:`RelativeGamma`.
    val_size : float, default=0.2
        Share of each class held out for validation.
    random_state : int, RandomState or None, default=None
        Seed of the validation split.

    Attributes
    ----------
    best_params_ : dict
    best_estimator_ : classifier fitted on all of X
    val_scores_ : list of (dict, float)
        Every candidate with its validation score: the accuracy, weighted by the estimator's
        ``class_weight`` when it has one (the balanced accuracy for ``"balanced"``). Empty
        without a sweep.
    classes_ : ndarray
    n_features_in_ : int

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.svm import LinearSVC
    >>> X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    >>> head = SweepClassifier(LinearSVC(), {"C": [0.01, 0.1, 1.0]}, random_state=0).fit(X, y)
    >>> sorted(head.best_params_)
    ['C']
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"])],
        "param_grid": [dict],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator: Any,
        param_grid: dict[str, list],
        val_size: float = 0.2,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.estimator = estimator
        self.param_grid = param_grid
        self.val_size = val_size
        self.random_state = random_state

    def _candidates(self, X: np.ndarray) -> list[dict[str, Any]]:
        names = list(self.param_grid)
        for n in names:
            if not isinstance(self.param_grid[n], list | tuple | np.ndarray) or not len(
                self.param_grid[n]
            ):
                raise ValueError(f"param_grid[{n!r}] must be a non-empty list")
        out = []
        for values in itertools.product(*(self.param_grid[n] for n in names)):
            out.append(
                {
                    n: (v.resolve(X) if isinstance(v, RelativeGamma) else v)
                    for n, v in zip(names, values, strict=True)
                }
            )
        return out

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X: Any, y: Any) -> SweepClassifier:
        """Score every candidate on the validation split, refit the best on all of X."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self.estimator).__name__} needs samples of at least 2 classes; "
                f"got 1 class ({self.classes_[0]!r})"
            )
        candidates = self._candidates(X)
        self.val_scores_: list[tuple[dict[str, Any], float]] = []
        best = candidates[0]
        if len(candidates) > 1:
            train, val = stratified_holdout(y_enc, self.val_size, self.random_state)
            if len(val) == 0:
                warnings.warn(
                    f"no class has 2 samples to hold out for validation; using {best} "
                    "without a sweep",
                    UserWarning,
                    stacklevel=2,
                )
            else:
                K = len(self.classes_)
                cw = getattr(self.estimator, "class_weight", None)
                cw = encode_class_weight(cw, self.classes_)
                best_score = -np.inf
                for params in candidates:
                    est = clone(self.estimator).set_params(**params)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        est.fit(X[train], y[train])
                    y_hat = np.searchsorted(self.classes_, est.predict(X[val]))
                    score = selection_score(y_enc[val], y_hat, K, cw)
                    self.val_scores_.append((params, score))
                    logger.debug("%s %s: val=%.4f", type(est).__name__, params, score)
                    if score > best_score + 1e-12:
                        best, best_score = params, score
        self.best_params_ = best
        self.best_estimator_ = clone(self.estimator).set_params(**best).fit(X, y)
        logger.info("%s: chose %s", type(self.estimator).__name__, best)
        return self

    def _check(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the refitted best estimator."""
        X = self._check(X)
        return self.best_estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of the refitted best estimator."""
        X = self._check(X)
        return self.best_estimator_.predict_proba(X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities of the refitted best estimator."""
        X = self._check(X)
        return self.best_estimator_.predict_log_proba(X)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        """Decision scores of the refitted best estimator."""
        X = self._check(X)
        return self.best_estimator_.decision_function(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = self.estimator.__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.classifier_tags = inner.classifier_tags
        tags.non_deterministic = inner.non_deterministic
        return tags
