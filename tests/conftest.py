"""Shared fixtures: isolated user state, tiny images, a tiny deterministic backbone, a fake
backbone family. Plain helpers live in tests/helpers.py (import them from there).

The docstring examples under featx/ (--doctest-modules) write no user state: they use temp
folders, random-init or package-embedded weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TinyBackbone, tiny_family, write_image  # noqa: F401  (re-exported)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Point every user path at a temp dir so tests never touch real caches."""
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("FEATX_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("FEATX_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """ImageFolder layout: 3 classes x 4 images, mixed PNG and JPEG."""
    root = tmp_path / "imgs"
    for c, cls in enumerate(["cat", "dog", "eel"]):
        for i in range(4):
            ext = "png" if i % 2 else "jpg"
            write_image(root / cls / f"{i}.{ext}", seed=10 * c + i)
    return root


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


@pytest.fixture
def fake_backbone_family():
    """Register the ``test`` backbone family (``-b tiny``) for one test, then remove it."""
    from featx.backbones import register_family, unregister_family

    fam = tiny_family()
    register_family(fam)
    yield fam
    unregister_family(fam.name)


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
