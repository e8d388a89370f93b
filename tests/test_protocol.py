"""Protocol: splits, few-shot, metrics, results and the bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from featx.errors import FeatxError
from featx.features import FeatureSet
from featx.protocol import (
    compute_metrics,
    evaluate,
    few_shot_splits,
    fit_head,
    make_splits,
    protocol_splits,
)


def make_fs(n_per_class=30, n_classes=3, dim=8, sep=3.0, seed=0, split=None, order=None):
    """Separable Gaussian classes; ``order`` permutes the rows (a store of another backbone)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    centers = rng.normal(size=(n_classes, dim)) * sep
    X = (centers[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    keys = np.array([f"c{c}/img{i:04d}.jpg" for i, c in enumerate(y)])
    if order is not None:
        X, y, keys = X[order], y[order], keys[order]
        split = None if split is None else split[order]
    classes = tuple(f"class_{i}" for i in range(n_classes))
    return FeatureSet(X=X, y=y.astype(np.int64), classes=classes, split=split, keys=keys)


# --------------------------------------------------------------------------- splits


def test_stratified_split_is_reproducible_and_stratified():
    fs = make_fs(n_per_class=50)
    (a,) = make_splits(fs, seed=0)
    (b,) = make_splits(fs, seed=0)
    (c,) = make_splits(fs, seed=1)
    np.testing.assert_array_equal(a.train, b.train)
    assert not np.array_equal(a.test, c.test)
    assert len(np.intersect1d(a.train, a.test)) == 0 and len(a.train) + len(a.test) == fs.n
    assert np.bincount(fs.y[a.test]).tolist() == [10, 10, 10]  # 20% of each class


def test_splits_depend_on_keys_not_row_order():
    fs = make_fs(n_per_class=40)
    other = make_fs(n_per_class=40, order=np.random.default_rng(5).permutation(120))
    for kw in ({}, {"cv": 4}, {"shots": 3, "trials": 2}):
        for s1, s2 in zip(protocol_splits(fs, **kw), protocol_splits(other, **kw), strict=True):
            k1, k2 = s1.keys(fs), s2.keys(other)
            assert set(k1[0]) == set(k2[0]) and set(k1[1]) == set(k2[1])


def test_store_split_is_used_with_val_folded_into_train():
    split = np.array(["train"] * 60 + ["val"] * 15 + ["test"] * 15)
    rng = np.random.default_rng(0)
    split = split[rng.permutation(90)]
    fs = make_fs(split=split)
    (s,) = make_splits(fs)
    assert s.name.startswith("store split")
    assert set(split[s.test]) == {"test"} and set(split[s.train]) == {"train", "val"}
    # without test items the val items are the test set
    fs2 = make_fs(split=np.where(split == "test", "train", split))
    (s2,) = make_splits(fs2)
    assert set(fs2.split[s2.test]) == {"val"}
    # stratified on request, store split on request
    assert make_splits(fs, split="stratified")[0].name.startswith("stratified")
    with pytest.raises(FeatxError, match="no usable split"):
        make_splits(make_fs(), split="store")


def test_cv_folds_cover_every_labeled_item_once():
    fs = make_fs(n_per_class=20)
    folds = make_splits(fs, cv=5, seed=3)
    assert len(folds) == 5
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(fs.n))
    for f in folds:
        assert len(np.intersect1d(f.train, f.test)) == 0


def test_few_shot_samples_k_per_class_per_trial():
    fs = make_fs(n_per_class=30)
    base = make_splits(fs)[0]
    trials = few_shot_splits(fs, base, shots=4, trials=3, seed=0)
    assert len(trials) == 3
    for t in trials:
        assert np.bincount(fs.y[t.train]).tolist() == [4, 4, 4]
        assert np.isin(t.train, base.train).all()
        np.testing.assert_array_equal(t.test, base.test)
    assert not np.array_equal(trials[0].train, trials[1].train)
    again = few_shot_splits(fs, base, shots=4, trials=3, seed=0)
    assert all(np.array_equal(a.train, b.train) for a, b in zip(trials, again, strict=True))


def test_few_shot_evaluation_reports_mean_and_std():
    fs = make_fs(n_per_class=30, sep=1.0)
    r = evaluate(fs, "centroid", shots=2, trials=4, seed=0)
    assert r.n_runs == 4 and r.n_train == 6
    accs = [m.accuracy for m in r.runs]
    assert r.accuracy == pytest.approx(np.mean(accs))
    assert r.std["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert "2-shot" in r.protocol and "4 trials" in r.protocol


def test_one_shot_logreg_runs_without_a_validation_split():
    fs = make_fs(n_per_class=10)
    with pytest.warns(UserWarning, match="no class has 2 samples"):
        r = evaluate(fs, "logreg", params={"device": "cpu"}, shots=1, trials=2)
    assert r.accuracy > 0.5


# --------------------------------------------------------------------------- bad input


def test_store_without_labels_is_an_error():
    fs = make_fs()
    fs = FeatureSet(fs.X, np.full(fs.n, -1), fs.classes, None, fs.keys)
    with pytest.raises(FeatxError, match="no labeled items"):
        evaluate(fs, "centroid")
    with pytest.raises(FeatxError, match="no labeled items"):
        fit_head(fs, "centroid")


def test_a_single_class_is_an_error():
    fs = make_fs()
    y = np.where(fs.y == 0, 0, -1)
    with pytest.raises(FeatxError, match="one class \\('class_0'\\).*at least 2 classes"):
        evaluate(FeatureSet(fs.X, y, fs.classes, None, fs.keys), "centroid")


def test_nan_or_inf_features_are_an_error_naming_an_item():
    fs = make_fs()
    X = fs.X.copy()
    X[7, 2] = np.nan
    X[50, 0] = np.inf
    msg = "NaN or inf in 2 labeled items \\(first: 'c0/img0007.jpg'\\)"
    with pytest.raises(FeatxError, match=msg):
        evaluate(FeatureSet(X, fs.y, fs.classes, None, fs.keys), "centroid")


def test_too_few_items_say_how_many_are_needed():
    fs = make_fs(n_per_class=3)
    with pytest.raises(FeatxError, match="cv=5 needs at least 5 labeled items per class.*has 3"):
        make_splits(fs, cv=5)
    y = fs.y.copy()
    y[y == 2] = -1
    y[fs.keys == fs.keys[fs.y == 2][0]] = 2  # class 2 keeps a single item
    msg = "at least 2 labeled items per class; class 'class_2' has 1"
    with pytest.raises(FeatxError, match=msg):
        make_splits(FeatureSet(fs.X, y, fs.classes, None, fs.keys))
    with pytest.raises(FeatxError, match="5-shot needs 5 training items per class"):
        evaluate(fs, "centroid", shots=5)
    with pytest.raises(FeatxError, match="exclude each other"):
        evaluate(make_fs(), "centroid", shots=1, cv=3)


def test_pca_larger_than_the_data_is_an_error_before_fitting():
    with pytest.raises(FeatxError, match="pca:64 needs at most .* = 8"):
        evaluate(make_fs(), "logreg", preprocess="standardize,pca:64")


def test_bad_arguments_are_one_line_errors():
    fs = make_fs()
    for kw, match in [
        ({"split": "random"}, "unknown split"),
        ({"test_size": 1.5}, "test_size"),
        ({"cv": 1}, "cv must be an integer >= 2"),
    ]:
        with pytest.raises(FeatxError, match=match):
            evaluate(fs, "centroid", **kw)


# --------------------------------------------------------------------------- metrics and results


def test_unlabeled_items_are_left_out_and_counted():
    fs = make_fs()
    y = fs.y.copy()
    y[::10] = -1
    r = evaluate(FeatureSet(fs.X, y, fs.classes, None, fs.keys), "centroid")
    assert r.n_unlabeled == 9 and r.n_labeled == 81 and r.n_train + r.n_test == 81


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 200)
    P = rng.dirichlet(np.ones(8), 200)
    P[np.arange(200), y] += 0.3
    P /= P.sum(axis=1, keepdims=True)
    pred = P.argmax(axis=1)
    classes = [f"c{i}" for i in range(8)]
    m = compute_metrics(y, pred, classes, scores=P, proba=P)
    assert m.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    assert m.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m.macro_f1 == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m.top5_accuracy == pytest.approx(skm.top_k_accuracy_score(y, P, k=5))
    assert m.log_loss == pytest.approx(skm.log_loss(y, P))
    np.testing.assert_array_equal(m.confusion_matrix, skm.confusion_matrix(y, pred))
    rec = skm.recall_score(y, pred, average=None)
    assert [c.name for c in m.per_class] == classes
    np.testing.assert_allclose([c.recall for c in m.per_class], rec)
    assert sum(c.support for c in m.per_class) == 200
    few = compute_metrics(y % 3, pred % 3, classes[:3], scores=P[:, :3], proba=None)
    assert few.top5_accuracy is None and few.log_loss is None  # <= 5 classes, no proba


def test_result_has_the_metrics_and_serializes_to_json():
    fs = make_fs(n_classes=7, n_per_class=20)
    r = evaluate(fs, "logreg", params={"device": "cpu", "Cs": "0.1,1"}, store="vit")
    d = json.loads(json.dumps(r.to_dict()))
    for k in ("head", "accuracy", "balanced_accuracy", "macro_f1", "fit_seconds"):
        assert k in d
    assert d["head"] == "logreg" and d["store"] == "vit" and d["label"] == "logreg(Cs=0.1,1)"
    assert d["top5_accuracy"] is not None and d["log_loss"] is not None  # 7 classes, probabilities
    assert d["fit_seconds"] > 0 and d["predict_seconds"] > 0
    assert len(d["per_class"]) == 7 and np.sum(d["confusion_matrix"]) == r.n_test
    assert d["preprocess"] == ["standardize"]
    ridge = evaluate(fs, "ridge")
    assert ridge.log_loss is None and ridge.top5_accuracy is not None  # scores, no proba


def test_every_head_is_evaluated_on_the_same_test_items():
    fs = make_fs(n_per_class=20, sep=1.0)
    a = evaluate(fs, "centroid")
    b = evaluate(fs, "knn")
    assert a.confusion_matrix.sum(axis=1).tolist() == b.confusion_matrix.sum(axis=1).tolist()


def test_evaluate_accepts_a_plain_sklearn_estimator():
    from sklearn.linear_model import LogisticRegression

    r = evaluate(make_fs(), LogisticRegression(max_iter=200), cv=3)
    assert r.head == "LogisticRegression" and r.n_runs == 3 and r.accuracy > 0.9


def test_fit_head_returns_the_estimator_its_result_measures():
    fs = make_fs(sep=1.0)
    fitted = fit_head(fs, "knn", params={"k": 3}, refit="train")  # (default: "all")
    (s,) = make_splits(fs)
    acc = np.mean(fitted.estimator.predict(fs.X[s.test]) == fs.y[s.test])
    assert fitted.result.accuracy == pytest.approx(acc)
    assert fitted.classes == fs.classes and fitted.head == "knn"
    everything = fit_head(fs, "knn", params={"k": 3}, refit="all")
    assert everything.estimator[-1].X_fit_.shape[0] == fs.n
