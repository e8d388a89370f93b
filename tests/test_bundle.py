"""Bundles: round trip, incompatible features, and the files that are not bundles."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

import featx
from featx.bundle import BUNDLE_FORMAT, Bundle, load_bundle, save_bundle
from featx.errors import FeatxError
from featx.features import FeatureSet
from featx.heads import make_head
from featx.protocol import fit_head

META = {
    "backbone": "resnet18",
    "weights": "IMAGENET1K_V1",
    "layer": "avgpool",
    "pool": "avg",
    "preprocess": {"crop_size": 224, "resize_size": 256},
    "dim": 12,
    "backbone_config": {"arch": "resnet18"},
}


@pytest.fixture(scope="module")
def fs():
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    X = (rng.normal(size=(3, 12))[y] * 2 + rng.normal(size=(150, 12))).astype(np.float32)
    keys = np.array([f"img{i:03d}" for i in range(150)])
    return FeatureSet(X, y.astype(np.int64), ("cat", "dog", "fox"), None, keys, dict(META))


@pytest.fixture(scope="module")
def fitted(fs):
    return fit_head(fs, "logreg", params={"device": "cpu", "Cs": "0.1,1"})


def test_round_trip_predicts_class_names(fs, fitted, tmp_path):
    path = save_bundle(
        tmp_path / "head.joblib",
        fitted.estimator,
        fs.classes,
        fs.meta,
        fitted.result.to_dict(details=False),
    )
    b = load_bundle(path)
    assert isinstance(b, Bundle)
    assert b.classes == ("cat", "dog", "fox") and b.dim == 12
    assert b.store_meta == META and b.metrics["accuracy"] == fitted.result.accuracy
    assert b.featx_version == featx.__version__ and b.format_version == BUNDLE_FORMAT
    expected = np.array(fs.classes)[fitted.estimator.predict(fs.X)]
    np.testing.assert_array_equal(b.predict(fs.X), expected)
    P = b.predict_proba(fs.X[:5])
    assert P.shape == (5, 3)
    np.testing.assert_allclose(P, fitted.estimator.predict_proba(fs.X[:5]))
    assert b.predict(fs.X[0]).tolist() == [expected[0]]  # one feature vector
    assert not list(tmp_path.glob(".*.tmp"))


def test_classes_the_head_never_saw_get_probability_zero(fs, tmp_path):
    keep = fs.y < 2
    est = make_head("knn", {"k": 3}).fit(fs.X[keep], fs.y[keep])
    b = load_bundle(save_bundle(tmp_path / "b.joblib", est, fs.classes, fs.meta))
    P = b.predict_proba(fs.X[:4])
    assert P.shape == (4, 3) and np.all(P[:, 2] == 0)
    assert set(b.predict(fs.X)) <= {"cat", "dog"}


def test_incompatible_dim_is_an_error(fs, fitted, tmp_path):
    b = load_bundle(save_bundle(tmp_path / "h.joblib", fitted.estimator, fs.classes, fs.meta))
    b.check_compatible(12)
    with pytest.raises(FeatxError, match="takes 12-dim features but got 768-dim.*resnet18"):
        b.check_compatible(768)
    with pytest.raises(FeatxError, match="12-dim"):
        b.predict(np.zeros((2, 768)))
    with pytest.raises(FeatxError, match="NaN or inf"):
        b.predict(np.full((1, 12), np.nan))
    with pytest.raises(FeatxError, match="store's dim is 512"):
        save_bundle(tmp_path / "x.joblib", fitted.estimator, fs.classes, {**META, "dim": 512})


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(FeatxError, match="no head bundle at"):
        load_bundle(tmp_path / "nope.joblib")
    bad = tmp_path / "corrupt.joblib"
    bad.write_bytes(b"\x80\x04this is not a pickle" + bytes(range(256)))
    with pytest.raises(FeatxError, match="not a readable head bundle"):
        load_bundle(bad)
    foreign = tmp_path / "foreign.joblib"
    joblib.dump({"model": 1}, foreign)
    with pytest.raises(FeatxError, match="not a featx head bundle"):
        load_bundle(foreign)


def test_truncated_bundle_is_reported_as_corrupt(fs, fitted, tmp_path):
    path = save_bundle(tmp_path / "h.joblib", fitted.estimator, fs.classes, fs.meta)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FeatxError, match="corrupt"):
        load_bundle(path)


@pytest.mark.parametrize("version, hint", [(BUNDLE_FORMAT + 1, "upgrade featx"), (0, "refit")])
def test_other_bundle_format_versions_are_refused(fs, fitted, tmp_path, version, hint):
    path = save_bundle(tmp_path / "h.joblib", fitted.estimator, fs.classes, fs.meta)
    payload = joblib.load(path)
    payload["format_version"] = version
    joblib.dump(payload, path)
    with pytest.raises(FeatxError, match=f"bundle format {version}.*{hint}"):
        load_bundle(path)


def test_saving_needs_a_fitted_head_and_overwrites_atomically(fs, fitted, tmp_path):
    with pytest.raises(FeatxError, match="not fitted"):
        save_bundle(tmp_path / "u.joblib", make_head("logreg"), fs.classes, fs.meta)
    path = tmp_path / "sub" / "h.joblib"
    save_bundle(path, fitted.estimator, fs.classes, fs.meta, {"accuracy": 0.1})
    save_bundle(path, fitted.estimator, fs.classes, fs.meta, {"accuracy": 0.2})
    assert load_bundle(path).metrics == {"accuracy": 0.2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["h.joblib"]


def test_heads_without_probabilities_say_so(fs, tmp_path):
    from sklearn.linear_model import RidgeClassifier

    est = RidgeClassifier(alpha=1.0).fit(fs.X, fs.y)  # a custom estimator: no predict_proba
    b = load_bundle(save_bundle(tmp_path / "r.joblib", est, fs.classes, fs.meta))
    assert set(b.predict(fs.X[:10])) <= set(fs.classes)
    with pytest.raises(FeatxError, match="no probabilities"):
        b.predict_proba(fs.X[:2])


@pytest.mark.parametrize("head", ["ridge", "linear-svm", "svm"])
def test_every_builtin_head_gives_probabilities(fs, tmp_path, head):
    est = make_head(head, {"device": "cpu"} if head != "ridge" else None).fit(fs.X, fs.y)
    b = load_bundle(save_bundle(tmp_path / "h.joblib", est, fs.classes, fs.meta))
    P = b.predict_proba(fs.X[:10])
    assert P.shape == (10, len(fs.classes)) and np.allclose(P.sum(axis=1), 1.0)
    assert np.array_equal(np.asarray(fs.classes)[P.argmax(axis=1)], b.predict(fs.X[:10]))
