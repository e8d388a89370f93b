"""The default preprocessing follows the features: unit-norm rows (normalized sentence
embeddings) get l2 instead of per-feature standardization."""

from __future__ import annotations

import numpy as np

from featx.features import FeatureSet
from featx.protocol import evaluate, fit_head, unit_norm_rows


def _fs(normalize: bool) -> FeatureSet:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    X = rng.normal(size=(90, 16)) + y[:, None] * 0.8
    if normalize:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    keys = np.array([f"k{i}" for i in range(90)], dtype=object)
    return FeatureSet(X=X.astype(np.float32), y=y, classes=("a", "b", "c"), split=None, keys=keys)


def test_unit_norm_rows():
    assert unit_norm_rows(_fs(True).X) and not unit_norm_rows(_fs(False).X)
    assert unit_norm_rows(_fs(True).X.astype(np.float16))  # half-precision stores too
    assert not unit_norm_rows(np.zeros((0, 4)))


def test_default_preprocessing_follows_the_features():
    assert evaluate(_fs(False), "ridge", seed=0).preprocess == ("standardize",)
    assert evaluate(_fs(True), "ridge", seed=0).preprocess == ("l2",)
    assert evaluate(_fs(True), "knn", seed=0).preprocess == ()  # its own default is not scaling
    # the SVMs measured better standardized on unit-norm text embeddings: they keep that
    from featx.protocol import follow_features

    assert follow_features("default", "linear-svm", _fs(True)) == "default"
    assert follow_features("default", "svm", _fs(True)) == "default"
    assert follow_features("default", "logreg", _fs(True)) == "l2"
    # an explicit choice stands
    got = evaluate(_fs(True), "ridge", seed=0, preprocess="standardize").preprocess
    assert got == ("standardize",)
    fitted = fit_head(_fs(True), "ridge", seed=0)
    assert fitted.result.preprocess == ("l2",)
