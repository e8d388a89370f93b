"""Heads: each head on tiny features, scikit-learn compliance, torch vs scikit-learn agreement,
and the registry's parameter handling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs, make_classification
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.errors import FeatxError
from featx.heads import (
    get_head_info,
    list_heads,
    make_head,
    parse_params,
    parse_preprocess,
)
from featx.heads.linear import DEFAULT_CS, LinearProbe
from featx.heads.mlp import MLPClassifier
from featx.heads.neighbors import CentroidClassifier, CosineKNNClassifier
from featx.heads.sweep import RelativeGamma, SweepClassifier
from featx.splits import stratified_holdout

ALL_HEADS = ["centroid", "knn", "linear-svm", "logreg", "mlp", "ridge", "svm"]
FAST = {"logreg": {"device": "cpu"}, "mlp": {"device": "cpu", "max_epochs": 30, "lr": 0.01}}


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(
        n_samples=200,
        n_features=16,
        n_informative=8,
        n_redundant=2,
        n_classes=3,
        class_sep=1.5,
        random_state=0,
    )
    return X.astype(np.float32), y


# --------------------------------------------------------------------------- every head


def test_registry_lists_the_builtin_heads():
    assert list_heads() == sorted(ALL_HEADS)


@pytest.mark.parametrize("name", ALL_HEADS)
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_each_head_fits_and_beats_chance(data, name, class_weight):
    X, y = data
    pipe = make_head(name, FAST.get(name), class_weight=class_weight)
    assert pipe.steps[-1][0] == "head"
    pipe.fit(X[:150], y[:150])
    acc = pipe.score(X[150:], y[150:])
    assert acc > 0.6, f"{name}: accuracy {acc:.3f} is barely above chance (0.33)"
    if hasattr(pipe, "predict_proba"):
        P = pipe.predict_proba(X[150:])
        assert P.shape == (50, 3)
        np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
        assert np.array_equal(P.argmax(axis=1), pipe.predict(X[150:]))


@pytest.mark.parametrize("name", ["logreg", "linear-svm", "knn", "mlp"])
def test_balanced_class_weight_helps_the_minority_class(name):
    X, y = make_classification(
        n_samples=400,
        n_features=10,
        n_informative=4,
        weights=[0.9, 0.1],
        class_sep=0.7,
        flip_y=0.0,
        random_state=3,
    )
    Xtr, ytr, Xte, yte = X[:300], y[:300], X[300:], y[300:]

    def minority_recall(cw):
        pred = make_head(name, FAST.get(name), class_weight=cw).fit(Xtr, ytr).predict(Xte)
        return np.mean(pred[yte == 1] == 1)

    assert minority_recall("balanced") > minority_recall(None)


def test_default_preprocessing_per_head():
    assert [n for n, _ in make_head("logreg").steps] == ["standardize", "head"]
    assert [n for n, _ in make_head("knn").steps] == ["head"]  # cosine needs no scaling
    assert [n for n, _ in make_head("logreg", preprocess=None).steps] == ["head"]
    steps = make_head("centroid", preprocess="l2,pca:8,standardize").steps
    assert [n for n, _ in steps] == ["l2", "pca", "standardize", "head"]
    assert steps[1][1].n_components == 8


def test_heads_work_with_sklearn_model_selection(data):
    X, y = data
    pipe = make_head("logreg", {"C": 1.0, "device": "cpu"})
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.6
    grid = GridSearchCV(make_head("knn"), {"head__k": [1, 5]}, cv=3).fit(X, y)
    assert grid.best_params_["head__k"] in (1, 5)
    assert clone(make_head("mlp")).get_params()["head__hidden_sizes"] == (512,)


# --------------------------------------------------------------------------- registry


def test_unknown_head_names_the_valid_ones():
    with pytest.raises(FeatxError, match="unknown head 'lgoreg'.*logreg.*mlp"):
        make_head("lgoreg")


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(FeatxError, match="unknown parameter 'hidden' .*hidden_sizes"):
        make_head("mlp", {"hidden": "256"})


@pytest.mark.parametrize(
    "params, match",
    [
        ({"lr": "fast"}, "'lr' of head 'mlp' must be a number"),
        ({"max_epochs": "2.5"}, "'max_epochs' of head 'mlp' must be an integer"),
        ({"early_stopping": "maybe"}, "must be true or false"),
        ({"hidden_sizes": "256,big"}, "comma-separated integers"),
        ({"lr": "-1"}, "bad parameter for head 'mlp'.*lr"),
        ({"dropout": "1.5"}, "bad parameter for head 'mlp'.*dropout"),
    ],
)
def test_ill_typed_or_invalid_parameters_are_one_line_errors(params, match):
    with pytest.raises(FeatxError, match=match) as e:
        make_head("mlp", params)
    assert "\n" not in str(e.value)


def test_cli_strings_are_coerced():
    mlp = make_head(
        "mlp",
        parse_params(["lr=0.01", "max_epochs=3", "early_stopping=false", "hidden_sizes=256,128"]),
    )[-1]
    assert (mlp.lr, mlp.max_epochs, mlp.early_stopping, mlp.hidden_sizes) == (
        0.01,
        3,
        False,
        (256, 128),
    )
    assert make_head("mlp", {"hidden_sizes": "none"})[-1].hidden_sizes == ()
    assert make_head("logreg", {"Cs": "0.1,1,10"})[-1].Cs == (0.1, 1.0, 10.0)
    assert make_head("logreg", {"C": 2})[-1].C == 2.0
    svm = make_head("svm", {"C": "10", "gamma": "scale"})[-1]
    assert (svm.C, svm.gamma) == (10.0, "scale")  # both fixed: a plain SVC, no sweep
    with pytest.raises(FeatxError, match="backend' of head 'logreg' must be one of"):
        make_head("logreg", {"backend": "jax"})
    with pytest.raises(FeatxError, match="not key=value"):
        parse_params(["C"])


def test_preprocess_parsing():
    assert parse_preprocess("std+pca:64") == ["standardize", "pca:64"]
    assert parse_preprocess("pca:0.95") == ["pca:0.95"]
    assert parse_preprocess("none") == [] == parse_preprocess(None)
    assert parse_preprocess("default", "logreg") == ["standardize"]
    for bad in ("whiten", "pca", "pca:0", "pca:abc"):
        with pytest.raises(FeatxError):
            parse_preprocess(bad)


def test_class_weight_is_ignored_where_it_cannot_apply(caplog):
    pipe = make_head("centroid", class_weight="balanced")
    assert "class_weight" not in pipe[-1].get_params()
    assert get_head_info("centroid").class_weight is False
    with pytest.raises(FeatxError, match="class_weight"):
        make_head("logreg", class_weight="equal")


# --------------------------------------------------------------------------- linear probe


def _problem(n_classes, n=400, d=16, seed=0):
    X, y = make_classification(
        n_samples=n, n_features=d, n_informative=8, n_classes=n_classes, random_state=seed
    )
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_torch_and_sklearn_backends_agree_at_the_same_C(n_classes, C, class_weight):
    X, y = _problem(n_classes)
    kw = {"C": C, "tol": 1e-6, "class_weight": class_weight}
    sk = LinearProbe(backend="sklearn", **kw).fit(X, y)
    th = LinearProbe(backend="torch", device="cpu", **kw).fit(X, y)
    assert th.coef_.shape == sk.coef_.shape == ((1, 16) if n_classes == 2 else (n_classes, 16))
    rel = np.linalg.norm(th.coef_ - sk.coef_) / np.linalg.norm(sk.coef_)
    assert rel < 1e-2, f"relative coefficient difference {rel:.2e}"
    np.testing.assert_allclose(
        th.intercept_, sk.intercept_, atol=1e-2 * (1 + np.abs(sk.intercept_).max())
    )
    assert abs(th.score(X, y) - sk.score(X, y)) <= 0.01
    np.testing.assert_allclose(th.predict_proba(X), sk.predict_proba(X), atol=1e-3)


def test_torch_float64_matches_sklearn_tightly():
    X, y = _problem(3)
    sk = LinearProbe(backend="sklearn", C=0.5, tol=1e-8).fit(X, y)
    th = LinearProbe(backend="torch", C=0.5, tol=1e-8, device="cpu", dtype="float64").fit(X, y)
    assert np.linalg.norm(th.coef_ - sk.coef_) / np.linalg.norm(sk.coef_) < 1e-4


def test_the_sweep_picks_C_on_validation_and_both_backends_agree():
    X, y = _problem(3, n=300)
    Xte, yte = _problem(3, n=300, seed=0)  # same distribution parameters
    Cs = list(np.logspace(-3, 2, 8))
    sk = LinearProbe(backend="sklearn", Cs=Cs, random_state=0).fit(X, y)
    th = LinearProbe(backend="torch", Cs=Cs, random_state=0, device="cpu").fit(X, y)
    assert sk.val_scores_.shape == th.val_scores_.shape == (8,)
    assert th.C_ == sk.C_
    assert (
        Cs[int(np.nanargmax(th.val_scores_))] == th.C_
        or np.sum(th.val_scores_ == np.nanmax(th.val_scores_)) > 1
    )
    np.testing.assert_allclose(th.val_scores_, sk.val_scores_, atol=0.01)
    assert abs(th.score(Xte, yte) - sk.score(Xte, yte)) <= 0.01


def test_default_grid_is_the_protocols_45_values():
    np.testing.assert_allclose(sorted(DEFAULT_CS), np.sort(1 / np.logspace(-6, 5, 45)))
    X, y = _problem(3, n=120)
    probe = LinearProbe(device="cpu", random_state=0).fit(X, y)
    assert probe.Cs_.shape == (45,) and np.all(np.diff(probe.Cs_) > 0)
    assert np.isfinite(probe.val_scores_).all()


def test_patience_stops_the_sweep_early():
    X, y = _problem(3, n=200)
    probe = LinearProbe(device="cpu", patience=3, random_state=0).fit(X, y)
    assert np.isnan(probe.val_scores_).any()
    last = np.flatnonzero(np.isfinite(probe.val_scores_))[-1]
    best = np.flatnonzero(probe.Cs_ == probe.C_)[0]
    assert last - best == 3  # stopped after 3 values without improvement
    assert probe.val_scores_[best] == np.nanmax(probe.val_scores_)


def test_one_shot_has_no_validation_split_and_falls_back_to_a_fixed_C():
    X = np.eye(3) + 0.01
    with pytest.warns(UserWarning, match="no class has 2 samples"):
        probe = LinearProbe(device="cpu").fit(X, [0, 1, 2])
    assert pytest.approx(1.0) == probe.C_ and probe.val_scores_ is None


def test_linear_probe_is_deterministic_and_rejects_one_class():
    X, y = _problem(3, n=150)
    a = LinearProbe(device="cpu", Cs=[0.1, 1.0], random_state=1).fit(X, y)
    b = LinearProbe(device="cpu", Cs=[0.1, 1.0], random_state=1).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearProbe(device="cpu").fit(X, np.zeros(len(X)))


def test_cuda_request_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    X, y = _problem(2, n=50)
    with pytest.raises(FeatxError, match="CUDA is not available"):
        LinearProbe(device="cuda", C=1.0).fit(X, y)


# --------------------------------------------------------------------------- other heads


def test_mlp_is_deterministic_given_random_state(data):
    X, y = data
    kw = {"hidden_sizes": (16,), "max_epochs": 5, "dropout": 0.2, "device": "cpu"}
    a = MLPClassifier(random_state=0, **kw).fit(X, y)
    b = MLPClassifier(random_state=0, **kw).fit(X, y)
    c = MLPClassifier(random_state=1, **kw).fit(X, y)
    for wa, wb in zip(a.coefs_, b.coefs_, strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])
    assert a.n_iter_ <= 5 and len(a.loss_curve_) == a.n_iter_


def test_mlp_early_stopping_keeps_the_best_epoch():
    X, y = make_blobs(n_samples=300, centers=3, n_features=6, cluster_std=4.0, random_state=0)
    m = MLPClassifier(
        hidden_sizes=(64,), lr=0.05, max_epochs=200, patience=5, random_state=0, device="cpu"
    ).fit(X, y)
    assert m.n_iter_ < 200
    assert m.best_epoch_ == 1 + int(np.argmin(m.validation_loss_curve_))
    assert m.n_iter_ - m.best_epoch_ >= 5


def test_knn_sweeps_k_and_gives_vote_probabilities():
    X, y = make_blobs(n_samples=150, centers=3, n_features=5, random_state=1)
    knn = CosineKNNClassifier(ks=[1, 5, 15], random_state=0).fit(X, y)
    assert knn.k_ in (1, 5, 15) and set(knn.val_scores_) == {1, 5, 15}
    P = CosineKNNClassifier(k=5, weights="uniform").fit(X, y).predict_proba(X[:10])
    assert set(np.round(P.ravel() * 5, 6)) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}  # votes of 5
    assert CosineKNNClassifier(k=500).fit(X, y).k_ == 150  # clipped to the data


def test_centroid_temperature_calibrates_probabilities():
    X, y = make_blobs(n_samples=300, centers=4, n_features=8, cluster_std=3.0, random_state=0)
    c = CentroidClassifier(metric="euclidean").fit(X, y)
    P = c.predict_proba(X)
    nll = -np.mean(np.log(P[np.arange(len(y)), y]))
    for t in (c.temperature_ * 4, c.temperature_ / 4):  # the fitted T beats others
        S = c._scores(X) / t
        Q = np.exp(S - S.max(axis=1, keepdims=True))
        Q /= Q.sum(axis=1, keepdims=True)
        assert nll < -np.mean(np.log(Q[np.arange(len(y)), y]))


def test_sweep_classifier_refits_the_best_and_handles_relative_gamma(data):
    X, y = data
    from sklearn.svm import SVC

    sw = SweepClassifier(
        SVC(), {"C": [0.1, 10.0], "gamma": [RelativeGamma(0.5), RelativeGamma(2.0)]}, random_state=0
    ).fit(X, y)
    assert len(sw.val_scores_) == 4
    assert isinstance(sw.best_params_["gamma"], float)
    assert sw.best_params_["C"] == sw.best_estimator_.C
    assert sw.decision_function(X).shape == (200, 3)
    assert not hasattr(sw, "predict_proba")


def test_stratified_holdout_keeps_both_sides_of_every_class():
    y = np.array([0] * 10 + [1] * 2 + [2])
    keep, hold = stratified_holdout(y, 0.2, 0)
    assert set(y[hold]) == {0, 1} and set(y[keep]) == {0, 1, 2}
    assert len(np.intersect1d(keep, hold)) == 0 and len(keep) + len(hold) == len(y)
    np.testing.assert_array_equal(hold, stratified_holdout(y, 0.2, 0)[1])


# --------------------------------------------------------------------------- sklearn compliance


def _expected_failures(est):
    if isinstance(est, CosineKNNClassifier):
        return {
            "check_class_weight_classifiers": (
                "class weights scale the votes of the k nearest neighbours only; the check's "
                "noisy 3-blob problem picks k=3 on a 10-item validation split, where one "
                "neighbour of class 0 is often missing (82% of predictions are class 0; the "
                "check wants 87%)"
            )
        }
    return {}


@parametrize_with_checks(
    [
        LinearProbe(Cs=[0.1, 1.0, 10.0], device="cpu", random_state=0),
        LinearProbe(backend="sklearn", Cs=[0.1, 1.0, 10.0], random_state=0),
        MLPClassifier(hidden_sizes=(16,), max_epochs=20, lr=1e-2, device="cpu", random_state=0),
        CosineKNNClassifier(random_state=0),
        CentroidClassifier(),
        CentroidClassifier(metric="euclidean"),
        SweepClassifier(LinearSVC(), {"C": [0.1, 1.0]}, random_state=0),
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_source_read_defaults_equal_the_estimators_signatures():
    """`featx heads` reads the defaults from the source (no scikit-learn import): they must be
    what the estimator really uses, for every built-in head."""
    import inspect

    from featx.heads import get_head_info, list_heads
    from featx.heads.registry import _source_defaults

    checked = 0
    for name in list_heads():
        info = get_head_info(name)
        static = _source_defaults(info.estimator)
        if static is None:
            continue
        sig = inspect.signature(info.factory()).parameters
        for key, value in static.items():
            assert sig[key].default == value, (name, key)
            checked += 1
        for key, param in info.params.items():
            if key in sig and sig[key].default is not inspect.Parameter.empty:
                assert param.default == sig[key].default, (name, key)
    assert checked >= 30
