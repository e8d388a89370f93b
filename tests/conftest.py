"""Shared fixtures: isolated user state, tiny images, a tiny deterministic backbone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from featx.preprocess import Preprocess


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Point every user path at a temp dir so tests never touch real caches."""
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("FEATX_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("FEATX_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


def write_image(path: Path, seed: int, size=(24, 20), mode="RGB", fmt=None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """ImageFolder layout: 3 classes x 4 images, mixed PNG and JPEG."""
    root = tmp_path / "imgs"
    for c, cls in enumerate(["cat", "dog", "eel"]):
        for i in range(4):
            ext = "png" if i % 2 else "jpg"
            write_image(root / cls / f"{i}.{ext}", seed=10 * c + i)
    return root


class TinyBackbone:
    """A deterministic 8-d conv embedding at 16 px: fast stand-in for a real backbone."""

    def __init__(self, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
            conv.bias.zero_()
        self.model = torch.nn.Sequential(
            conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        ).eval()
        self.name = "test/tiny"
        self.weights = f"seed{seed}"
        self.weights_sha256 = None
        self.layer = ""
        self.pool = "avg"
        self.dim = 8
        self.preprocess = Preprocess(crop_size=16, resize_size=18)

    def config(self) -> dict:
        return {
            "name": self.name,
            "weights": self.weights,
            "layer": self.layer,
            "pool": self.pool,
            "preprocess": self.preprocess.to_dict(),
        }


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cpu_count() -> int:
    return os.cpu_count() or 1
