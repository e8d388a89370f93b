"""Bundles: round trip, incompatible features, the files that are not bundles, and the safe
format: no bundle runs code when loaded unless pickle is trusted explicitly."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import joblib
import numpy as np
import pytest

import featx
from featx import bundle as bundle_mod
from featx.bundle import _MAGIC, BUNDLE_FORMAT, Bundle, load_bundle, save_bundle
from featx.errors import FeatxError
from featx.features import FeatureSet
from featx.heads import list_heads, make_head
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
        tmp_path / "head.npz",
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
    with pytest.raises(bundle_mod.UnsafeBundleError, match="--trust-pickle"):
        load_bundle(bad)
    with pytest.raises(FeatxError, match="not a readable head bundle"):
        load_bundle(bad, trust=True)
    foreign = tmp_path / "foreign.joblib"
    joblib.dump({"model": 1}, foreign)
    with pytest.raises(FeatxError, match="not a featx head bundle"):
        load_bundle(foreign, trust=True)
    other_zip = tmp_path / "other.npz"
    np.savez(other_zip, a=np.arange(3))
    with pytest.raises(FeatxError, match="zip file but not a featx head bundle"):
        load_bundle(other_zip)


def test_truncated_bundle_is_reported_as_corrupt(fs, fitted, tmp_path):
    path = save_bundle(tmp_path / "h.joblib", fitted.estimator, fs.classes, fs.meta)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FeatxError, match="corrupt"):
        load_bundle(path)


def _rewrite(path, edit):
    """Change a safe bundle's JSON with ``edit(meta)`` and fix its checksum (a forged file)."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["featx-bundle.json"])
    edit(meta)
    text = json.dumps(meta).encode()
    members["featx-bundle.json"] = text
    members["featx-bundle.sha256"] = hashlib.sha256(text).hexdigest().encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


@pytest.mark.parametrize("version, hint", [(BUNDLE_FORMAT + 1, "upgrade featx"), (0, "refit")])
def test_other_bundle_format_versions_are_refused(fs, fitted, tmp_path, version, hint):
    path = save_bundle(tmp_path / "h.npz", fitted.estimator, fs.classes, fs.meta)
    _rewrite(path, lambda m: m.update(format_version=version))
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
    b = load_bundle(save_bundle(tmp_path / "h.npz", est, fs.classes, fs.meta))
    P = b.predict_proba(fs.X[:10])
    assert P.shape == (10, len(fs.classes)) and np.allclose(P.sum(axis=1), 1.0)
    assert np.array_equal(np.asarray(fs.classes)[P.argmax(axis=1)], b.predict(fs.X[:10]))


# ---------------------------------------------------------------------------------------------
# the safe format
# ---------------------------------------------------------------------------------------------
class _Evil:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_bundle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.joblib"
    payload = {"magic": _MAGIC, "format_version": 1, "estimator": _Evil(str(marker))}
    payload.update(classes=("a",), dim=2)
    joblib.dump(payload, path)
    return path, marker


def test_a_malicious_pickle_bundle_runs_nothing_without_trust(tmp_path):
    from click.testing import CliRunner

    from featx.cli import cli

    path, marker = _evil_bundle(tmp_path)
    with pytest.raises(bundle_mod.UnsafeBundleError, match="can run any code.*--trust-pickle"):
        load_bundle(path)
    r = CliRunner().invoke(cli, ["predict", str(path), str(tmp_path)])
    assert r.exit_code == 1 and "--trust-pickle" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()  # nothing ran
    with pytest.raises(FeatxError, match="no estimator"):  # it is no head, but ...
        load_bundle(path, trust=True)
    assert marker.is_dir()  # ... the payload is real: trusting it does run it


def test_a_legacy_pickle_bundle_loads_when_trusted(fs, fitted, tmp_path):
    path = tmp_path / "old.joblib"
    payload = {
        "magic": _MAGIC,
        "format_version": bundle_mod.PICKLE_FORMAT,
        "estimator": fitted.estimator,
    }
    payload.update(classes=fs.classes, dim=12, store_meta=META, metrics={})
    joblib.dump(payload, path)
    with pytest.raises(bundle_mod.UnsafeBundleError):
        load_bundle(path)
    b = load_bundle(path, trust=True)
    assert b.format_version == bundle_mod.PICKLE_FORMAT
    np.testing.assert_array_equal(
        b.predict(fs.X), np.array(fs.classes)[fitted.estimator.predict(fs.X)]
    )


HEAD_CASES = [(name, {}) for name in list_heads()] + [
    ("logreg", {"backend": "sklearn", "Cs": "0.1,1"}),
    ("linear-svm", {"C": "1"}),
    ("svm", {"C": "1", "gamma": "scale"}),
    ("ridge", {"alpha": "1"}),
    ("knn", {"k": "3"}),
    ("centroid", {"metric": "euclidean"}),
]


@pytest.mark.parametrize("head, params", HEAD_CASES, ids=[f"{h}{p}" for h, p in HEAD_CASES])
def test_every_builtin_head_saves_safely_and_loads_without_pickle(
    fs, tmp_path, monkeypatch, head, params
):
    import pickle

    params = dict(params)
    if head in ("logreg", "mlp"):
        params["device"] = "cpu"
    if head == "mlp":
        params["max_epochs"] = "5"
    est = make_head(head, params, preprocess="standardize,l2,pca:6").fit(fs.X, fs.y)
    path = save_bundle(tmp_path / "h.npz", est, fs.classes, fs.meta)
    assert path.read_bytes()[:4] == b"PK\x03\x04"
    with np.load(path, allow_pickle=False) as z:  # plain numpy reads every array
        assert all(z[k].dtype != object for k in z.files if k.startswith("arrays/"))

    def no_pickle(*a, **k):
        raise AssertionError("the safe format must not unpickle")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(joblib, "load", no_pickle)
    b = load_bundle(path)
    monkeypatch.undo()
    assert type(b.estimator[-1]) is type(est[-1])
    assert [n for n, _ in b.estimator.steps] == ["standardize", "l2", "pca", "head"]
    np.testing.assert_array_equal(b.estimator.predict(fs.X), est.predict(fs.X))
    if hasattr(est, "predict_proba"):
        np.testing.assert_allclose(b.estimator.predict_proba(fs.X), est.predict_proba(fs.X))
    else:
        np.testing.assert_allclose(b.estimator.decision_function(fs.X), est.decision_function(fs.X))


def test_a_damaged_bundle_is_refused_by_its_checksums(fs, fitted, tmp_path):
    path = save_bundle(tmp_path / "h.npz", fitted.estimator, fs.classes, fs.meta)
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.startswith("arrays/"))
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(path.read_bytes())
    data[start + info.file_size - 3] ^= 0xFF  # one bit of one stored array
    path.write_bytes(bytes(data))
    with pytest.raises(FeatxError, match="corrupt"):
        load_bundle(path)


def test_a_forged_bundle_cannot_name_a_function(fs, fitted, tmp_path):
    path = save_bundle(tmp_path / "h.npz", fitted.estimator, fs.classes, fs.meta)

    def forge(meta):
        meta["estimator"] = {"$": "object", "cls": "os.system", "state": {"$": "dict", "v": []}}

    _rewrite(path, forge)
    with pytest.raises(FeatxError, match="os.system, which featx does not rebuild"):
        load_bundle(path)

    def forge_featx(meta):  # a featx class that is not an estimator is refused too
        meta["estimator"] = {"$": "object", "cls": "featx.cli.FeatxGroup", "state": {}}

    _rewrite(path, forge_featx)
    with pytest.raises(FeatxError, match="does not rebuild"):
        load_bundle(path)


def test_an_unknown_sklearn_step_goes_through_skops(fs, tmp_path):
    from sklearn.preprocessing import QuantileTransformer

    est = make_head("centroid", preprocess=[QuantileTransformer(n_quantiles=20)]).fit(fs.X, fs.y)
    b = load_bundle(save_bundle(tmp_path / "q.npz", est, fs.classes, fs.meta))
    np.testing.assert_allclose(b.estimator.predict_proba(fs.X), est.predict_proba(fs.X))


def test_objects_that_need_pickle_are_not_saved(fs, tmp_path):
    est = make_head("centroid").fit(fs.X, fs.y)
    est[-1].hook_ = lambda x: x  # a function: only pickle could store it
    with pytest.raises(FeatxError, match="never pickles"):
        save_bundle(tmp_path / "f.npz", est, fs.classes, fs.meta)
    assert not list(tmp_path.iterdir())
