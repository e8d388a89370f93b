"""The SVM heads and calibrated probabilities: the Newton solver against exact solutions and
scikit-learn, the Nystroem path against the exact SVC, calibration, and estimator compliance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_moons
from sklearn.linear_model import RidgeClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.heads import make_head
from featx.heads._hinge import targets
from featx.heads.calibration import CalibratedClassifier, ScoreCalibrator
from featx.heads.ridge import RidgeLOOClassifier
from featx.heads.svm import RBFSVM, LinearSVM, auto_rank
from featx.splits import stratified_holdout


def _problem(n_classes, n=240, d=12, seed=0):
    X, y = make_classification(
        n_samples=n,
        n_features=d,
        n_informative=6,
        n_redundant=3,
        n_classes=n_classes,
        class_sep=1.0,
        flip_y=0.05,
        random_state=seed,
    )
    return StandardScaler().fit_transform(X), y


def _objective(coef, intercept, X, y, C, K, sw=None):
    """LinearSVC's primal objective summed over the one-vs-rest problems, bias unpenalized."""
    Y = targets(y, K)
    xi = np.maximum(0.0, 1.0 - Y * (X @ coef.T + intercept))
    s = np.ones(len(y)) if sw is None else sw
    return 0.5 * (coef**2).sum() + C * (s[:, None] * xi**2).sum()


def _gradient(coef, intercept, X, y, C, K, sw=None):
    Y = targets(y, K)
    Z = X @ coef.T + intercept
    s = np.ones(len(y)) if sw is None else sw
    R = -2.0 * C * s[:, None] * Y * np.maximum(0.0, 1.0 - Y * Z)
    return np.concatenate([(coef + R.T @ X).ravel(), R.sum(axis=0)])


# --------------------------------------------------------------------------- LinearSVM


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("C", [0.003, 0.1, 3.0])
def test_newton_solution_is_the_exact_minimum_and_matches_liblinear(n_classes, C):
    X, y = _problem(n_classes)
    svm = LinearSVM(C=C, dtype="float64", tol=1e-10, device="cpu", random_state=0).fit(X, y)
    K = n_classes
    g = _gradient(svm.coef_, svm.intercept_, X, y, C, K)
    assert np.abs(g).max() < 1e-6 * max(1.0, C * len(y))  # stationary: the exact optimum
    # liblinear's primal solver penalizes the bias; with a large intercept_scaling that penalty
    # vanishes and it solves the same problem
    ref = LinearSVC(C=C, dual=False, tol=1e-12, intercept_scaling=1e3, max_iter=100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X, y)
    ours = _objective(svm.coef_, svm.intercept_, X, y, C, K)
    theirs = _objective(ref.coef_, ref.intercept_, X, y, C, K)
    assert ours <= theirs * (1 + 1e-7)
    np.testing.assert_allclose(svm.decision_function(X), ref.decision_function(X), atol=2e-3)
    assert np.array_equal(svm.predict(X), ref.predict(X))
    assert svm.coef_.shape == (1 if K == 2 else K, X.shape[1])


def test_hessian_products_read_only_rows_inside_some_margin():
    import torch

    from featx.heads._hinge import _active_rows

    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=g, dtype=torch.float64)
    act = torch.rand(3, 50, generator=g) < 0.2
    act[:, :20] = False  # 20 rows outside every class's margin
    A = act.to(X.dtype)
    Xa, XaT, Aa = _active_rows(X, X.T.contiguous(), A, act)
    assert Xa.shape[0] == int(act.any(dim=0).sum()) <= 30
    D = torch.randn(3, 6, generator=g, dtype=X.dtype)
    torch.testing.assert_close(((D @ XaT) * Aa) @ Xa, ((D @ X.T) * A) @ X)
    dense = torch.ones(3, 50, dtype=torch.bool)
    assert _active_rows(X, X.T, dense.to(X.dtype), dense)[0] is X  # nothing to drop: no copy


def test_float32_solution_agrees_with_float64():
    X, y = _problem(3, n=300, d=40)
    a = LinearSVM(C=0.05, device="cpu", random_state=0).fit(X, y)
    b = LinearSVM(C=0.05, dtype="float64", tol=1e-8, device="cpu", random_state=0).fit(X, y)
    np.testing.assert_allclose(a.decision_function(X), b.decision_function(X), atol=2e-2)
    assert np.mean(a.predict(X) == b.predict(X)) > 0.99


def test_class_weights_act_as_sample_weights():
    X, y = _problem(3)
    cw = {0: 3.0, 1: 1.0, 2: 0.5}
    svm = LinearSVM(C=0.1, class_weight=cw, dtype="float64", tol=1e-10, device="cpu").fit(X, y)
    sw = np.array([cw[c] for c in y])
    g = _gradient(svm.coef_, svm.intercept_, X, y, 0.1, 3, sw)
    assert np.abs(g).max() < 1e-5
    unweighted = LinearSVM(C=0.1, dtype="float64", tol=1e-10, device="cpu").fit(X, y)
    assert not np.allclose(svm.coef_, unweighted.coef_, atol=1e-3)


def test_sweep_warm_starts_stops_early_and_picks_by_validation():
    X, y = _problem(3, n=400, d=30, seed=1)
    svm = LinearSVM(random_state=0, device="cpu", patience=2).fit(X, y)
    scores = svm.val_scores_
    assert len(svm.Cs_) == 13
    done = np.isfinite(scores)
    assert done[0] and not done.all()  # the sweep stopped before the end of the grid
    last = np.flatnonzero(done)[-1]
    best = int(np.nanargmax(scores))
    assert svm.Cs_[best] == svm.C_ or scores[np.searchsorted(svm.Cs_, svm.C_)] == scores[best]
    assert last - best >= 2  # the patience of 2 values without gain
    full = LinearSVM(random_state=0, device="cpu", patience=None).fit(X, y)
    assert np.isfinite(full.val_scores_).all()
    # the grid is relative to the features' scale: scaling X scales the chosen C by 1/s^2
    scaled = LinearSVM(random_state=0, device="cpu", patience=2).fit(X * 10.0, y)
    np.testing.assert_allclose(scaled.Cs_, svm.Cs_ / 100.0, rtol=1e-9)
    assert np.array_equal(scaled.predict(X * 10.0), svm.predict(X))


def test_sklearn_backend_runs_the_same_grid():
    X, y = _problem(3)
    a = LinearSVM(backend="sklearn", Cs=[0.01, 0.1, 1.0], random_state=0).fit(X, y)
    b = LinearSVM(Cs=[0.01, 0.1, 1.0], random_state=0, device="cpu").fit(X, y)
    assert a.solver_ == "sklearn liblinear" and b.solver_.startswith("torch newton")
    np.testing.assert_array_equal(a.Cs_, b.Cs_)
    assert abs(a.score(X, y) - b.score(X, y)) < 0.05
    assert a.predict_proba(X).shape == (len(y), 3)


def test_linear_svm_probabilities_are_calibrated_on_validation():
    X, y = make_classification(n_samples=400, n_features=12, class_sep=1.5, random_state=0)
    svm = LinearSVM(random_state=0, device="cpu").fit(X[:300], y[:300])
    P = svm.predict_proba(X[300:])
    assert P.shape == (100, 2) and np.allclose(P.sum(axis=1), 1.0)
    # Platt's sigmoid increases with the decision score
    order = np.argsort(svm.decision_function(X[300:]))
    assert np.all(np.diff(P[order, 1]) >= 0)
    ll = -np.mean(np.log(np.clip(P[np.arange(100), y[300:]], 1e-15, None)))
    raw = 1 / (1 + np.exp(-svm.decision_function(X[300:])))  # the scores as they are
    ll_raw = -np.mean(np.log(np.where(y[300:] == 1, raw, 1 - raw)))
    assert ll < min(ll_raw, 0.5 * np.log(2))


def test_one_item_per_class_falls_back_without_a_sweep():
    X, y = _problem(3, n=60)
    rows = np.array([np.flatnonzero(y == c)[0] for c in range(3)])
    with pytest.warns(UserWarning, match="no class has 2 samples"):
        svm = LinearSVM(device="cpu").fit(X[rows], y[rows])
    assert svm.val_scores_ is None and svm.predict_proba(X[:2]).shape == (2, 3)


# --------------------------------------------------------------------------- RBFSVM


def test_exact_path_is_sklearns_svc():
    X, y = _problem(3)
    ours = RBFSVM(solver="exact", C=3.0, gamma=0.05, random_state=0).fit(X, y)
    ref = SVC(C=3.0, gamma=0.05).fit(X, y)
    assert ours.solver_ == "exact SVC"
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X), atol=1e-8)


def test_nystroem_path_matches_the_exact_svm_on_a_nonlinear_problem():
    X, y = make_moons(n_samples=600, noise=0.25, random_state=0)
    Xtr, ytr, Xte, yte = X[:400], y[:400], X[400:], y[400:]
    exact = RBFSVM(solver="exact", random_state=0).fit(Xtr, ytr)
    nys = RBFSVM(solver="nystroem", rank=100, random_state=0, device="cpu").fit(Xtr, ytr)
    linear = LinearSVM(random_state=0, device="cpu").fit(Xtr, ytr)
    assert nys.solver_ == "nystroem rank 100 (cpu)"
    acc = {m: np.mean(est.predict(Xte) == yte) for m, est in [("e", exact), ("n", nys)]}
    assert acc["n"] >= acc["e"] - 0.03
    assert acc["n"] > np.mean(linear.predict(Xte) == yte) + 0.03  # the kernel matters here
    assert len(nys.val_scores_) >= 3 and nys.predict_proba(Xte).shape == (200, 2)


def test_auto_solver_switches_at_exact_max_n():
    X, y = _problem(3, n=200)
    small = RBFSVM(exact_max_n=200, random_state=0).fit(X, y)
    large = RBFSVM(exact_max_n=199, random_state=0, device="cpu").fit(X, y)
    assert small.solver_ == "exact SVC"
    n_train = len(stratified_holdout(y, 0.2, 0)[0])  # the rows left after the validation split
    assert large.solver_ == f"nystroem rank {auto_rank(n_train)} (cpu)"
    assert auto_rank(100) == 100 and auto_rank(4000) == 1200 and auto_rank(10**6) == 1500


def test_svm_head_reports_its_path_and_probabilities():
    X, y = _problem(3, n=200)
    pipe = make_head("svm", {"solver": "nystroem", "rank": "50", "device": "cpu"})
    pipe.fit(X, y)
    assert pipe[-1].solver_ == "nystroem rank 50 (cpu)"
    assert pipe.predict_proba(X).shape == (200, 3)


# --------------------------------------------------------------------------- calibration


def test_platt_and_temperature_scaling_lower_the_log_loss():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    s = (2 * y - 1) * 3.0 + rng.normal(scale=3.0, size=2000)  # over-spread scores
    cal = ScoreCalibrator().fit(s[:1000], y[:1000])
    P = cal.predict_proba(s[1000:])
    raw = 1 / (1 + np.exp(-s[1000:]))
    nll = -np.mean(np.log(np.where(y[1000:] == 1, P[:, 1], P[:, 0])))
    nll_raw = -np.mean(np.log(np.where(y[1000:] == 1, raw, 1 - raw)))
    assert nll < nll_raw and 0 < cal.a_ < 1  # the scores were shrunk
    # multiclass: temperature scaling keeps the ranking and lowers the log-loss
    y3 = rng.integers(0, 3, 2000)
    S = rng.normal(size=(2000, 3)) + 4.0 * np.eye(3)[y3]
    cal3 = ScoreCalibrator().fit(S[:1000], y3[:1000])
    P3 = cal3.predict_proba(S[1000:])
    assert np.array_equal(P3.argmax(axis=1), S[1000:].argmax(axis=1))
    E = np.exp(S[1000:] - S[1000:].max(axis=1, keepdims=True))
    E /= E.sum(axis=1, keepdims=True)
    idx = np.arange(1000), y3[1000:]
    assert -np.mean(np.log(P3[idx])) < -np.mean(np.log(E[idx]))


def test_calibrated_ridge_has_probabilities():
    X, y = _problem(3)
    head = CalibratedClassifier(RidgeClassifier(), random_state=0).fit(X, y)
    P = head.predict_proba(X)
    assert P.shape == (len(y), 3) and np.allclose(P.sum(axis=1), 1.0)
    assert np.array_equal(P.argmax(axis=1), head.predict(X))
    assert np.array_equal(head.predict(X), RidgeClassifier().fit(X, y).predict(X))
    assert hasattr(make_head("ridge").fit(X, y), "predict_proba")


# --------------------------------------------------------------------------- sklearn compliance


@parametrize_with_checks(
    [
        LinearSVM(Cs=[0.01, 0.1, 1.0], device="cpu", random_state=0),
        LinearSVM(backend="sklearn", Cs=[0.01, 0.1, 1.0], random_state=0),
        RBFSVM(solver="exact", random_state=0),
        RBFSVM(solver="nystroem", rank=20, device="cpu", random_state=0),
        CalibratedClassifier(RidgeClassifier(), random_state=0),
        RidgeLOOClassifier(alphas=[0.1, 1.0, 10.0]),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_ridge_head_chooses_alpha_by_leave_one_out_on_all_items():
    from featx.heads import RIDGE_ALPHAS

    X, y = _problem(3)
    head = make_head("ridge").fit(X, y)[-1]
    assert type(head).__name__ == "RidgeLOOClassifier"
    assert head.alpha_ in RIDGE_ALPHAS
    P = head.predict_proba(X)
    assert P.shape == (len(y), 3) and np.array_equal(P.argmax(axis=1), head.predict(X))


@pytest.mark.parametrize(
    ("n", "d", "k", "class_weight"),
    [
        (300, 20, 3, None),
        (60, 100, 3, None),
        (200, 10, 2, None),
        (300, 20, 3, "balanced"),
        (50, 80, 2, "balanced"),
    ],
)
def test_eigen_ridge_equals_sklearn(n, d, k, class_weight):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import RidgeClassifierCV

    weights = None if class_weight is None else [0.6] + [0.4 / (k - 1)] * (k - 1)
    X, y = make_classification(
        n_samples=n,
        n_features=d,
        n_informative=min(d, 8),
        n_classes=k,
        weights=weights,
        random_state=0,
    )
    alphas = np.logspace(-2, 4, 13)
    ours = RidgeLOOClassifier(alphas=alphas, class_weight=class_weight).fit(X, y)
    cv = RidgeClassifierCV(alphas=alphas, class_weight=class_weight, store_cv_results=True)
    cv.fit(X, y)
    assert ours.alpha_ == cv.alpha_  # the same alpha chosen by leave-one-out
    sk_errors = cv.cv_results_.reshape(n, -1, len(alphas)).mean(axis=(0, 1))
    assert np.allclose(ours.loo_errors_, sk_errors, rtol=1e-8)
    for alpha in (0.1, float(ours.alpha_)):  # the same decision function at a given alpha
        ref = RidgeClassifier(alpha=alpha, class_weight=class_weight).fit(X, y)
        fixed = RidgeLOOClassifier(alpha=alpha, class_weight=class_weight).fit(X, y)
        assert np.allclose(fixed.decision_function(X), ref.decision_function(X), atol=1e-9)
        assert np.array_equal(fixed.predict(X), ref.predict(X))


def test_eigen_ridge_calibrates_on_leave_one_out_scores():
    X, y = make_classification(
        n_samples=40, n_features=6, n_classes=3, n_informative=4, random_state=1
    )
    head = RidgeLOOClassifier(alpha=1.0).fit(X, y)
    loo = np.array(
        [
            RidgeClassifier(alpha=1.0)
            .fit(np.delete(X, i, 0), np.delete(y, i))
            .decision_function(X[i : i + 1])[0]
            for i in range(len(y))
        ]
    )  # each item scored by a ridge fitted without it
    assert np.isclose(head.calibrator_.a_, ScoreCalibrator().fit(loo, y).a_, rtol=1e-5)
