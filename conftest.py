"""Root conftest: applies to the tests and to the docstring examples under featx/."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Point every user path at a temp dir so tests never touch real caches."""
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("FEATX_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("FEATX_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
