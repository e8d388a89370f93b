"""CUDA paths. Skipped without CUDA (see conftest); run them on a GPU machine with
`pytest -m gpu`."""

from __future__ import annotations

import numpy as np
import pytest

from featx.extraction import ExtractOptions, extract
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


def test_nvjpeg_decode_matches_cpu_decode(tmp_path):
    """--decode device on CUDA (nvJPEG, EXIF orientation and resize on the GPU) against Pillow."""
    from test_jpeg import _jpeg, _photo

    root = tmp_path / "imgs"
    for i in range(12):
        _jpeg(root / "a" / f"{i}.jpg", _photo(120 + 7 * i, 160, i), orientation=1 + i % 8)
    _jpeg(root / "b" / "cmyk.jpg", _photo(90, 100, 20), mode="CMYK")  # CPU fallback
    (root / "b" / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x01" * 64 + b"\xff\xd9")
    stores = {}
    for decode in ("cpu", "device"):
        r = extract(
            root,
            "resnet18",
            weights=None,
            image_size=64,
            store=tmp_path / f"{decode}.h5",
            options=ExtractOptions(
                device="cuda", precision="fp32", workers=2, batch_size=5, decode=decode
            ),
        )
        assert r.decode == decode and (r.n_items, r.n_failed) == (13, 1)
        stores[decode] = load_features(r.store)
    a, b = stores["cpu"], stores["device"]
    assert list(a.keys) == list(b.keys)
    assert _cos(a.X, b.X).min() > 0.995


def test_nvjpeg_pixels_close_to_pillow(tmp_path):
    import torch
    from test_jpeg import _jpeg, _photo

    from featx.jpeg import decode_batch, sniff
    from featx.preprocess import Preprocess

    pre = Preprocess(crop_size=224, resize_size=256)
    found = [sniff(str(_jpeg(tmp_path / f"{i}.jpg", _photo(375, 500, i)))) for i in range(4)]
    datas, orients = [f[0] for f in found], [f[1] for f in found]
    gpu, ok, rejected = decode_batch(datas, orients, pre, torch.device("cuda"))
    cpu, _, _ = decode_batch(datas, orients, pre, torch.device("cpu"))
    assert ok == [0, 1, 2, 3] and not rejected and gpu.is_cuda
    diff = (gpu.cpu().int() - cpu.int()).abs().float()
    assert diff.mean() < 1.0 and diff.max() <= 8
