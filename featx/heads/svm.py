"""Support vector machines that train in seconds on cached embeddings, with probabilities.

:class:`LinearSVM` (head ``linear-svm``) minimizes LinearSVC's objective (squared hinge, L2,
one-vs-rest) with the bias left unpenalized, by a preconditioned Newton solver in torch
(:mod:`featx.heads._hinge`), sweeping ``C`` with warm starts on a validation split and stopping
the sweep once the validation accuracy has turned.

:class:`RBFSVM` (head ``svm``) is scikit-learn's exact ``SVC(kernel="rbf")`` for small training
sets; above ``exact_max_n`` training items it maps the data through a Nystroem approximation of
the same kernel (``rank`` landmarks chosen from the training items) and solves the linear SVM
above on those features, so the ``C x gamma`` sweep stays at seconds where the exact solver's
time grows with ``n^2``-``n^3``. ``solver_`` says which path ran.

Both calibrate their decision scores on the held-out validation split (Platt-style scaling for
two classes, temperature scaling for more; :mod:`featx.heads.calibration`), so ``predict_proba``
exists for every fit.
"""

from __future__ import annotations

import logging
import math
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads._weights import encode_class_weight, sample_weights, selection_score
from featx.heads.builtin import LINEAR_SVM_CS as LINEAR_REL_CS
from featx.heads.builtin import SVM_CS as EXACT_CS
from featx.heads.builtin import SVM_EXACT_MAX_N as EXACT_MAX_N
from featx.heads.builtin import SVM_GAMMAS as GAMMAS
from featx.heads.builtin import SVM_KERNEL_CS as KERNEL_CS
from featx.heads.calibration import calibrate
from featx.splits import stratified_holdout

logger = logging.getLogger(__name__)


def _scores_to_pred(Z: np.ndarray) -> np.ndarray:
    return (Z[:, 0] > 0).astype(np.int64) if Z.shape[1] == 1 else Z.argmax(axis=1)


def _flat(Z: np.ndarray) -> np.ndarray:
    """Decision scores as scikit-learn shapes them: (n,) for two classes."""
    return Z[:, 0] if Z.shape[1] == 1 else Z


def _hinge_val_loss(Z: np.ndarray, y: np.ndarray) -> float:
    from featx.heads._hinge import targets

    K = 2 if Z.shape[1] == 1 else Z.shape[1]
    return float(np.mean(np.maximum(0.0, 1.0 - targets(y, K) * Z) ** 2))


# ---------------------------------------------------------------------------------------------
# the shared torch path: a C sweep of the squared-hinge solver on (train | val) rows
# ---------------------------------------------------------------------------------------------


class _TorchSweep:
    """Rotated data on the device, and the warm-started ``C`` sweep over it.

    ``X`` holds the fitted rows first (``n_tr``), then the validation rows.
    """

    def __init__(
        self, X, y, K: int, n_tr: int, cw: Any, tol: float, max_iter: int, block: int = 128
    ) -> None:
        import torch

        from featx.heads import _hinge

        self.torch = torch
        self.H = _hinge
        self.X, self.y, self.K, self.n_tr, self.cw = X, y, K, n_tr, cw
        self.tol, self.max_iter, self.block = tol, max_iter, block
        self.mean, self.V = _hinge.rotation(X)
        self.Xr = (X - self.mean) @ self.V
        self.n_iter = 0
        self.n_cg = 0

    def _problem(self, n_fit: int):
        return self.H.make_problem(
            self.Xr[:n_fit],
            self.y[:n_fit],
            self.K,
            sample_weights(self.y[:n_fit], self.K, self.cw),
            self.V,
            self.mean,
        )

    def _solve(self, prob, state, C: float):
        state, it, ncg, status = self.H.newton(
            prob, state, C, max_iter=self.max_iter, tol=self.tol, block=self.block
        )
        self.n_iter += it
        self.n_cg += ncg
        if status != "converged":
            logger.debug("C=%g: Newton stopped at max_iter=%d", C, self.max_iter)
        return state, it, status

    def sweep(self, Cs: np.ndarray, patience: int | None) -> dict[str, Any]:
        """Fit every C on the first ``n_tr`` rows, score on the rest; returns the best."""
        from featx.heads.linear import _SweepTracker

        torch = self.torch
        prob = self._problem(self.n_tr)
        state = self.H.zero_state(prob)
        yv = self.y[self.n_tr :]
        Xv = self.Xr[self.n_tr :]
        track = _SweepTracker(len(Cs), patience)
        best: dict[str, Any] = {}
        for i, C in enumerate(Cs):
            cg0 = self.n_cg
            state, it, _ = self._solve(prob, state, float(C))
            Zv = torch.addmm(state.b, Xv, state.W.T).double().cpu().numpy()
            score = selection_score(yv, _scores_to_pred(Zv), self.K, self.cw)
            if track.add(i, score, _hinge_val_loss(Zv, yv)):
                best = {"C": float(C), "W": state.W.clone(), "b": state.b.clone(), "Zv": Zv}
            logger.debug("C=%-10.4g val=%.4f newton=%d cg=%d", C, score, it, self.n_cg - cg0)
            if track.stop:
                break
        best["scores"] = track.scores
        return best

    def refit(self, C: float, W=None, b=None):
        """Fit C on all rows (warm start from W, b); (coef, intercept, status)."""
        prob = self._problem(len(self.y))
        state = self.H.zero_state(prob) if W is None else self.H.state_from(prob, W, b)
        state, _, status = self._solve(prob, state, C)
        coef, intercept = self.H.unrotate(prob, state)
        return coef, intercept, status


def _device_data(X: np.ndarray, order: np.ndarray, device_name: str, dtype_name: str):
    import torch

    from featx.heads._torch import resolve_device, resolve_dtype

    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    return torch.from_numpy(np.ascontiguousarray(X[order], dtype=np_dtype)).to(device), device


# ---------------------------------------------------------------------------------------------
# LinearSVM
# ---------------------------------------------------------------------------------------------


class LinearSVM(ClassifierMixin, BaseEstimator):
    """Linear SVM (squared hinge, L2, one-vs-rest) with a validation sweep of ``C``.

    Parameters
    ----------
    backend : {"torch", "sklearn"}, default="torch"
        ``"torch"``: the preconditioned Newton solver of :mod:`featx.heads._hinge` on
        ``device``, bias unpenalized, warm-started along the ``C`` grid.
        ``"sklearn"``: ``LinearSVC`` (liblinear, which penalizes the bias like a feature), one
        fit per ``C``: the reference, and slow on dense embeddings.
    Cs : array-like of float or None, default=None
        Values of ``C`` to sweep. None: ``LINEAR_REL_CS / m``, 13 values from ``1e-3 / m`` to
        ``1e3 / m`` where ``m`` is the mean squared norm of the centred training rows (``m = d``
        for standardized features, so the grid suits any embedding width).
    C : float or None, default=None
        A fixed ``C``: no sweep (the validation split still calibrates the probabilities).
    val_size : float, default=0.2
        Share of each class held out to choose ``C`` and calibrate the probabilities.
    patience : int or None, default=2
        Stop the sweep (from small to large ``C``) after this many values without a better
        validation score; None sweeps every value.
    max_iter : int, default=50
        Newton iterations per ``C`` (``backend="sklearn"``: liblinear's iterations).
    tol : float, default=1e-4
        Newton stops when the largest absolute entry of the gradient of
        ``objective / (C * sum of sample weights)`` is below this.
    class_weight : dict, "balanced" or None, default=None
        Per-class weights of the loss terms (every row of class ``c`` weighs ``w_c`` in every
        one-vs-rest problem, as ``sample_weight`` does in LinearSVC); the sweep then picks ``C``
        by the class-weighted validation accuracy.
    random_state : int, RandomState or None, default=None
        Seed of the validation split.
    device : str, default="auto"
        Torch backend: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda[:N]"``.
    dtype : {"float32", "float64"}, default="float32"
        Torch backend: the precision of the solve.

    Attributes
    ----------
    classes_ : ndarray
    coef_ : ndarray of shape (1, d) for two classes, else (n_classes, d)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    C_ : float
    Cs_ : ndarray
        The grid (ascending).
    val_scores_ : ndarray or None
        Validation score per value of ``Cs_`` (NaN after an early stop).
    calibrator_ : ScoreCalibrator
        Maps decision scores to probabilities (fitted on the validation split).
    n_iter_ : int
        Newton iterations over the whole fit (torch), liblinear's of the final fit (sklearn).
    solver_ : str
        What ran, e.g. ``"torch newton (cpu)"``.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(n_samples=300, n_features=16, n_informative=6,
    ...                            n_classes=3, random_state=0)
    >>> svm = LinearSVM(random_state=0, device="cpu").fit(X, y)
    >>> svm.coef_.shape, svm.predict_proba(X[:2]).shape
    ((3, 16), (2, 3))
    """

    _parameter_constraints: dict = {
        "backend": [StrOptions({"sklearn", "torch"})],
        "Cs": ["array-like", None],
        "C": [Interval(Real, 0, None, closed="neither"), None],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "random_state": ["random_state"],
        "device": [str],
        "dtype": [StrOptions({"float32", "float64"})],
    }

    def __init__(
        self,
        backend: str = "torch",
        Cs: Any = None,
        C: float | None = None,
        val_size: float = 0.2,
        patience: int | None = 2,
        max_iter: int = 50,
        tol: float = 1e-4,
        class_weight: dict | str | None = None,
        random_state: int | np.random.RandomState | None = None,
        device: str = "auto",
        dtype: str = "float32",
    ) -> None:
        self.backend = backend
        self.Cs = Cs
        self.C = C
        self.val_size = val_size
        self.patience = patience
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    def _grid(self, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self.C is not None:
            return np.array([float(self.C)])
        if self.Cs is not None:
            Cs = np.asarray(self.Cs, dtype=np.float64).ravel()
            if Cs.size == 0 or not np.all(np.isfinite(Cs)) or np.any(Cs <= 0):
                raise ValueError("LinearSVM: Cs must be a non-empty list of positive numbers")
            return np.unique(Cs)
        # the mean squared norm of the centred rows is the sum of the column variances
        m = float(np.var(X[rows], axis=0, dtype=np.float64).sum()) or 1.0
        return np.asarray(LINEAR_REL_CS) / m

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> LinearSVM:
        """Sweep ``C`` on a validation split, calibrate on it, refit on all of X."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        y_enc = y_enc.astype(np.int64)
        K = len(self.classes_)
        if K < 2:
            raise ValueError(
                f"LinearSVM needs samples of at least 2 classes; got 1 class ({self.classes_[0]!r})"
            )
        cw = encode_class_weight(self.class_weight, self.classes_)
        train, val = stratified_holdout(y_enc, self.val_size, self.random_state)
        if len(val) and len(np.unique(y_enc[train])) < K:
            train, val = np.arange(len(y_enc)), np.zeros(0, dtype=np.int64)
        self.Cs_ = self._grid(X, train)
        if len(val) == 0 and len(self.Cs_) > 1:
            fallback = float(self.Cs_[len(self.Cs_) // 2])
            warnings.warn(
                f"LinearSVM: no class has 2 samples to hold out for the C sweep; using "
                f"C={fallback:g} without a sweep, probabilities calibrated on training items",
                UserWarning,
                stacklevel=2,
            )
            self.Cs_ = np.array([fallback])
        run = self._fit_torch if self.backend == "torch" else self._fit_sklearn
        out = run(X, y_enc, K, train, val, cw)
        self.C_ = out["C"]
        self.coef_, self.intercept_ = out["coef"], out["intercept"]
        self.val_scores_ = out.get("scores")
        Z = out.get("Zv")
        if Z is None:  # no validation rows: calibrate on the training items
            Z, yc = np.asarray(X, np.float64) @ self.coef_.T + self.intercept_, y_enc
        else:
            yc = y_enc[val]
        self.calibrator_ = calibrate(_flat(Z), yc, sample_weights(yc, K, cw))
        if out["status"] != "converged":
            warnings.warn(
                f"LinearSVM ({self.backend}) did not converge in max_iter={self.max_iter} "
                f"iterations at C={self.C_:g}; raise max_iter or tol, or standardize the features",
                ConvergenceWarning,
                stacklevel=2,
            )
        logger.info(
            "linear SVM (%s): C=%g chosen from %d values (%d swept), %d Newton iterations",
            self.solver_,
            self.C_,
            len(self.Cs_),
            0 if self.val_scores_ is None else int(np.isfinite(self.val_scores_).sum()),
            self.n_iter_,
        )
        return self

    def _fit_torch(self, X, y, K, train, val, cw) -> dict[str, Any]:
        from featx.heads._torch import cpu_threads

        order = np.concatenate([train, val])
        Xd, device = _device_data(X, order, self.device, self.dtype)
        self.solver_ = f"torch newton ({device.type})"
        with cpu_threads(device, float(X.shape[0]) * X.shape[1] * K):
            import torch

            with torch.no_grad():
                sw = _TorchSweep(Xd, y[order], K, len(train), cw, self.tol, self.max_iter)
                out: dict[str, Any] = {}
                W = b = None
                if len(val):
                    best = sw.sweep(self.Cs_, self.patience)
                    W, b = best["W"], best["b"]
                    out.update(C=best["C"], Zv=best["Zv"], scores=best["scores"])
                else:
                    out.update(C=float(self.Cs_[0]))
                coef, intercept, status = sw.refit(out["C"], W, b)
                self.n_iter_ = sw.n_iter
        out.update(coef=coef, intercept=intercept, status=status)
        return out

    def _fit_sklearn(self, X, y, K, train, val, cw) -> dict[str, Any]:
        from sklearn.svm import LinearSVC

        from featx.heads.linear import _SweepTracker

        self.solver_ = "sklearn liblinear"

        def fit(C: float, rows: np.ndarray) -> Any:
            est = LinearSVC(C=C, tol=self.tol, max_iter=max(self.max_iter, 1000))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                est.fit(X[rows], y[rows], sample_weight=sample_weights(y[rows], K, cw))
            est.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            return est

        out: dict[str, Any] = {}
        if len(val):
            track = _SweepTracker(len(self.Cs_), self.patience)
            for i, C in enumerate(self.Cs_):
                est = fit(float(C), train)
                Zv = np.asarray(est.decision_function(X[val]), np.float64).reshape(len(val), -1)
                score = selection_score(y[val], _scores_to_pred(Zv), K, cw)
                if track.add(i, score, _hinge_val_loss(Zv, y[val])):
                    out.update(C=float(C), Zv=Zv)
                if track.stop:
                    break
            out["scores"] = track.scores
        else:
            out["C"] = float(self.Cs_[0])
        est = fit(out["C"], np.arange(len(y)))
        self.n_iter_ = int(np.max(est.n_iter_))
        out.update(
            coef=np.asarray(est.coef_, np.float64),
            intercept=np.asarray(est.intercept_, np.float64),
            status="converged" if est.converged_ else "max_iter",
        )
        return out

    def fit_stream(self, stream: Any) -> LinearSVM:
        """Fit from a :class:`~featx.features.RowStream` too large for memory.

        ``C`` is swept (and the probabilities calibrated) as :meth:`fit` does, on a stratified
        sample of the rows that fits the stream's memory budget; the final model is then fitted
        on every row with that ``C`` by a streamed L-BFGS on the same objective (squared hinge,
        one-vs-rest, bias unpenalized), warm-started from the sample's solution.
        """
        from featx.heads._stream import fit_linear_stream, squared_hinge_terms

        return fit_linear_stream(
            self, stream, squared_hinge_terms, "LinearSVM", max(self.max_iter, 200)
        )

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores: shape (n,) for two classes (positive: ``classes_[1]``), else (n, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return _flat(np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_)

    def predict(self, X: Any) -> np.ndarray:
        """The class of the largest score."""
        Z = self.decision_function(X)
        return self.classes_[_scores_to_pred(Z.reshape(len(Z), -1))]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated class probabilities (see ``calibrator_``)."""
        Z = self.decision_function(X)  # checks the fit first
        return self.calibrator_.predict_proba(Z)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))


# ---------------------------------------------------------------------------------------------
# RBFSVM
# ---------------------------------------------------------------------------------------------


def auto_rank(n: int) -> int:
    """Nystroem landmarks for ``n`` training items: ``min(n, 400 + n / 5)``, at most 1500.

    Enough for the approximate kernel's accuracy to stay within half a point of the exact SVC's
    on 1280-d embeddings at 4,000 items (BENCHMARKS.md), while the ``rank^2 n`` feature map and
    the ``rank^3`` factorizations stay at a fraction of a second per ``gamma``.
    """
    return int(min(n, 1500, 400 + n // 5))


class RBFSVM(ClassifierMixin, BaseEstimator):
    """RBF-kernel SVM with a ``C x gamma`` validation sweep: exact for small n, Nystroem above.

    Parameters
    ----------
    solver : {"auto", "exact", "nystroem"}, default="auto"
        ``"exact"``: scikit-learn's ``SVC(kernel="rbf")`` (hinge loss, one-vs-one), one fit per
        candidate; its time grows with ``n^2``-``n^3``. ``"nystroem"``: the kernel approximated
        by ``rank`` landmarks drawn from the training items, its feature map solved by the
        squared-hinge one-vs-rest solver of :class:`LinearSVM` (torch, warm-started along ``C``).
        ``"auto"``: exact up to ``exact_max_n`` items, Nystroem above.
    Cs : array-like of float or None
        ``C`` values to sweep; None: ``EXACT_CS`` (exact) or ``KERNEL_CS`` (Nystroem).
    gammas : array-like of float or None
        ``gamma`` values to sweep as multiples of ``"scale"`` (``1 / (d * X.var())``); None:
        ``GAMMAS`` = (0.25, 1, 4).
    C : float or None
        A fixed ``C`` (skips its sweep).
    gamma : float, "scale" or None
        A fixed ``gamma`` (skips its sweep).
    exact_max_n : int, default=2000
        Largest training set the ``"auto"`` solver fits exactly.
    rank : int or None
        Nystroem landmarks; None: :func:`auto_rank` of the number of training items.
    val_size, patience, max_iter, tol, class_weight, random_state, device, dtype
        As in :class:`LinearSVM` (``patience``, ``max_iter``, ``tol``, ``device`` and ``dtype``
        apply to the Nystroem path).

    Attributes
    ----------
    classes_ : ndarray
    C_, gamma_ : float
        The chosen values (``gamma_`` absolute).
    solver_ : str
        What ran: ``"exact SVC"`` or ``"nystroem rank R (device)"``.
    val_scores_ : list of (dict, float)
        Every candidate tried with its validation score.
    calibrator_ : ScoreCalibrator
    n_iter_ : int
        Newton iterations of the chosen gamma's sweep and refit (Nystroem), or the exact
        SVC's iterations.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(n_samples=300, n_features=16, n_informative=6,
    ...                            n_classes=3, random_state=0)
    >>> svm = RBFSVM(solver="nystroem", rank=100, random_state=0, device="cpu").fit(X, y)
    >>> svm.solver_, svm.predict_proba(X[:2]).shape
    ('nystroem rank 100 (cpu)', (2, 3))
    """

    _parameter_constraints: dict = {
        "solver": [StrOptions({"auto", "exact", "nystroem"})],
        "Cs": ["array-like", None],
        "gammas": ["array-like", None],
        "C": [Interval(Real, 0, None, closed="neither"), None],
        "gamma": [Interval(Real, 0, None, closed="neither"), StrOptions({"scale"}), None],
        "exact_max_n": [Interval(Integral, 0, None, closed="left")],
        "rank": [Interval(Integral, 1, None, closed="left"), None],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "random_state": ["random_state"],
        "device": [str],
        "dtype": [StrOptions({"float32", "float64"})],
    }

    def __init__(
        self,
        solver: str = "auto",
        Cs: Any = None,
        gammas: Any = None,
        C: float | None = None,
        gamma: float | str | None = None,
        exact_max_n: int = EXACT_MAX_N,
        rank: int | None = None,
        val_size: float = 0.2,
        patience: int | None = 2,
        max_iter: int = 50,
        tol: float = 1e-4,
        class_weight: dict | str | None = None,
        random_state: int | np.random.RandomState | None = None,
        device: str = "auto",
        dtype: str = "float32",
    ) -> None:
        self.solver = solver
        self.Cs = Cs
        self.gammas = gammas
        self.C = C
        self.gamma = gamma
        self.exact_max_n = exact_max_n
        self.rank = rank
        self.val_size = val_size
        self.patience = patience
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    def _gammas(self, X: np.ndarray) -> list[float]:
        from featx.heads.sweep import RelativeGamma

        if self.gamma is not None:
            rel = [1.0] if self.gamma == "scale" else None
            if rel is None:
                return [float(self.gamma)]
        else:
            rel = [float(g) for g in (GAMMAS if self.gammas is None else self.gammas)]
            if not rel or any(not (g > 0 and math.isfinite(g)) for g in rel):
                raise ValueError("RBFSVM: gammas must be a non-empty list of positive numbers")
        return [RelativeGamma(g).resolve(X) for g in rel]

    def _Cs(self, exact: bool) -> np.ndarray:
        if self.C is not None:
            return np.array([float(self.C)])
        Cs = np.asarray(
            (EXACT_CS if exact else KERNEL_CS) if self.Cs is None else self.Cs, np.float64
        ).ravel()
        if Cs.size == 0 or not np.all(np.isfinite(Cs)) or np.any(Cs <= 0):
            raise ValueError("RBFSVM: Cs must be a non-empty list of positive numbers")
        return np.unique(Cs)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> RBFSVM:
        """Sweep ``C x gamma`` on a validation split, calibrate on it, refit on all of X."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        y_enc = y_enc.astype(np.int64)
        K = len(self.classes_)
        if K < 2:
            raise ValueError(
                f"RBFSVM needs samples of at least 2 classes; got 1 class ({self.classes_[0]!r})"
            )
        cw = encode_class_weight(self.class_weight, self.classes_)
        train, val = stratified_holdout(y_enc, self.val_size, self.random_state)
        if len(val) and len(np.unique(y_enc[train])) < K:
            train, val = np.arange(len(y_enc)), np.zeros(0, dtype=np.int64)
        exact = self.solver == "exact" or (self.solver == "auto" and len(y) <= self.exact_max_n)
        gammas = self._gammas(np.asarray(X[train]))
        Cs = self._Cs(exact)
        if len(val) == 0 and len(gammas) * len(Cs) > 1:
            warnings.warn(
                "RBFSVM: no class has 2 samples to hold out for the sweep; using the middle "
                "candidate without a sweep, probabilities calibrated on training items",
                UserWarning,
                stacklevel=2,
            )
            gammas, Cs = [gammas[len(gammas) // 2]], Cs[len(Cs) // 2 : len(Cs) // 2 + 1]
        run = self._fit_exact if exact else self._fit_nystroem
        Zv = run(np.asarray(X), y_enc, K, train, val, cw, gammas, Cs)
        if Zv is None:
            Zv, yc = self._decision(np.asarray(X, np.float64)), y_enc
        else:
            yc = y_enc[val]
        self.calibrator_ = calibrate(_flat(Zv.reshape(len(yc), -1)), yc, sample_weights(yc, K, cw))
        logger.info("RBF SVM (%s): C=%g gamma=%g", self.solver_, self.C_, self.gamma_)
        return self

    # -- exact: scikit-learn's SVC per candidate
    def _fit_exact(self, X, y, K, train, val, cw, gammas, Cs) -> np.ndarray | None:
        from sklearn.svm import SVC

        self.solver_ = "exact SVC"

        def svc(C: float, g: float) -> Any:
            cwd = None if cw is None else ("balanced" if isinstance(cw, str) else cw)
            return SVC(kernel="rbf", C=C, gamma=g, class_weight=cwd, random_state=0)

        self.val_scores_: list[tuple[dict[str, float], float]] = []
        Zv = None
        best = (-np.inf, float(Cs[0]), gammas[0])
        if len(val):
            for C in Cs:
                for g in gammas:
                    est = svc(float(C), g).fit(X[train], y[train])
                    Z = np.asarray(est.decision_function(X[val]), np.float64).reshape(len(val), -1)
                    score = selection_score(y[val], _scores_to_pred(Z), K, cw)
                    self.val_scores_.append(({"C": float(C), "gamma": g}, score))
                    if score > best[0] + 1e-12:
                        best, Zv = (score, float(C), g), Z
        self.C_, self.gamma_ = best[1], best[2]
        self.estimator_ = svc(self.C_, self.gamma_).fit(X, y)
        self.n_iter_ = int(np.max(self.estimator_.n_iter_))
        return Zv

    # -- Nystroem features + the squared-hinge solver
    def _fit_nystroem(self, X, y, K, train, val, cw, gammas, Cs) -> np.ndarray | None:
        import torch
        from sklearn.utils import check_random_state

        from featx.heads._torch import cpu_threads

        rank = min(len(train), self.rank if self.rank is not None else auto_rank(len(train)))
        rng = check_random_state(self.random_state)
        landmarks = np.sort(rng.choice(train, size=rank, replace=False))
        order = np.concatenate([train, val])
        Xd, device = _device_data(X, order, self.device, self.dtype)
        Ld = Xd.new_tensor(np.ascontiguousarray(X[landmarks]))
        self.solver_ = f"nystroem rank {rank} ({device.type})"
        self.val_scores_ = []
        best: dict[str, Any] = {"score": -np.inf}
        with cpu_threads(device, float(len(order)) * rank * K), torch.no_grad():
            D = _sq_dist(Xd, Ld)
            D_ll = _sq_dist(Ld, Ld)
            prev = -np.inf
            for g in sorted(gammas):
                P = _nystroem_map(D_ll, g)
                Phi = torch.exp(D * -g) @ P
                sw = _TorchSweep(Phi, y[order], K, len(train), cw, self.tol, self.max_iter)
                if len(val):
                    res = sw.sweep(Cs, self.patience)
                    for C, sc in zip(Cs, res["scores"], strict=True):
                        if np.isfinite(sc):
                            self.val_scores_.append(({"C": float(C), "gamma": g}, float(sc)))
                    score = float(np.nanmax(res["scores"]))
                else:
                    res, score = {"C": float(Cs[0]), "W": None, "b": None, "Zv": None}, 0.0
                if score > best["score"] + 1e-12:
                    best = {"score": score, "gamma": g, "P": P, "sweep": sw, **res}
                else:
                    del sw
                if score < prev - 1e-12:  # accuracy has turned along gamma: stop
                    break
                prev = score
            sw = best["sweep"]
            coef, intercept, status = sw.refit(best["C"], best["W"], best["b"])
            self.n_iter_ = sw.n_iter
        self.C_, self.gamma_ = float(best["C"]), float(best["gamma"])
        self.landmarks_ = X[landmarks].astype(np.float64)
        self.projection_ = best["P"].double().cpu().numpy()
        self.coef_, self.intercept_ = coef, intercept
        if status != "converged":
            warnings.warn(
                f"RBFSVM (nystroem) did not converge in max_iter={self.max_iter} iterations at "
                f"C={self.C_:g}; raise max_iter or tol",
                ConvergenceWarning,
                stacklevel=3,
            )
        return best["Zv"]

    def _features(self, X: np.ndarray) -> np.ndarray:
        L = self.landmarks_
        D = (X * X).sum(axis=1)[:, None] + (L * L).sum(axis=1)[None, :] - 2.0 * X @ L.T
        return np.exp(-self.gamma_ * np.maximum(D, 0.0)) @ self.projection_

    def _decision(self, X: np.ndarray) -> np.ndarray:
        if hasattr(self, "estimator_"):
            return np.asarray(self.estimator_.decision_function(X), np.float64)
        return _flat(self._features(X) @ self.coef_.T + self.intercept_)

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores: (n,) for two classes (positive: ``classes_[1]``), else (n, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self._decision(np.asarray(X, np.float64))

    def predict(self, X: Any) -> np.ndarray:
        """The class of the largest score (the exact path: scikit-learn's one-vs-one vote)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        if hasattr(self, "estimator_"):
            return self.classes_[np.asarray(self.estimator_.predict(X))]
        Z = self._decision(np.asarray(X, np.float64))
        return self.classes_[_scores_to_pred(Z.reshape(len(Z), -1))]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated class probabilities (see ``calibrator_``)."""
        Z = self.decision_function(X)  # checks the fit first
        return self.calibrator_.predict_proba(Z)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))


def _sq_dist(A, B):
    """Squared Euclidean distances between the rows of A and B (torch), clipped at 0."""
    import torch

    D = torch.addmm((A * A).sum(dim=1)[:, None], A, B.T, alpha=-2.0)
    D += (B * B).sum(dim=1)[None, :]
    return D.clamp_min_(0.0)


def _nystroem_map(D_ll, gamma: float):
    """``U diag(lambda^-1/2)`` of the landmarks' kernel matrix (tiny eigenvalues dropped)."""
    import torch

    K_ll = torch.exp(D_ll * -gamma)
    lam, U = torch.linalg.eigh(K_ll.double())
    keep = lam > lam.max() * 1e-7
    return (U[:, keep] / lam[keep].sqrt()).to(D_ll.dtype)
