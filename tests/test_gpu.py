"""CUDA paths. Skipped without CUDA (see conftest); run them on a GPU machine with
`pytest -m gpu`."""

from __future__ import annotations

import numpy as np
import pytest

from featx.extract import ExtractOptions, extract
from featx.store import load_features

pytestmark = pytest.mark.gpu


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_extraction_matches_cpu(image_folder, tmp_path, precision):
    cpu = extract(
        image_folder,
        "resnet18",
        weights=None,
        image_size=64,
        store=tmp_path / "cpu.h5",
        options=ExtractOptions(device="cpu", workers=0, batch_size=4),
    )
    gpu = extract(
        image_folder,
        "resnet18",
        weights=None,
        image_size=64,
        store=tmp_path / f"gpu-{precision}.h5",
        options=ExtractOptions(device="cuda", precision=precision, workers=2, batch_size=4),
    )
    assert gpu.device.startswith("cuda") and gpu.precision == precision
    a, b = load_features(cpu.store), load_features(gpu.store)
    assert list(a.keys) == list(b.keys)
    floor = 0.9999 if precision == "fp32" else 0.99
    assert _cos(a.X, b.X).min() > floor


def test_auto_precision_is_bf16_on_cuda(image_folder, tmp_path):
    r = extract(
        image_folder,
        "resnet18",
        weights=None,
        image_size=64,
        store=tmp_path / "a.h5",
        options=ExtractOptions(workers=0),
    )
    assert r.device.startswith("cuda") and r.precision == "bf16"


def test_linear_probe_on_cuda_agrees_with_sklearn():
    from sklearn.datasets import make_classification

    from featx.heads import LinearProbe

    X, y = make_classification(
        n_samples=600, n_features=32, n_informative=16, n_classes=4, random_state=0
    )
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    gpu = LinearProbe(backend="torch", C=1.0, device="cuda", tol=1e-6).fit(X, y)
    ref = LinearProbe(backend="sklearn", C=1.0, tol=1e-6).fit(X, y)
    assert abs(gpu.score(X, y) - ref.score(X, y)) <= 0.01
    rel = np.linalg.norm(gpu.coef_ - ref.coef_) / np.linalg.norm(ref.coef_)
    assert rel < 1e-2


def test_mlp_trains_on_cuda():
    from sklearn.datasets import make_classification

    from featx.heads import MLPClassifier

    X, y = make_classification(
        n_samples=400, n_features=16, n_classes=3, n_informative=8, random_state=0
    )
    clf = MLPClassifier(max_epochs=30, device="cuda", random_state=0).fit(X.astype(np.float32), y)
    assert clf.score(X.astype(np.float32), y) > 0.8
