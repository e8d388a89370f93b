"""The shipped timm listing (featx/backbones/timm_catalog.json) lists what timm itself lists."""

from __future__ import annotations

import pytest

from featx.backbones import catalog


@pytest.fixture
def snapshot():
    catalog._load_timm.cache_clear()
    if catalog._load_timm() is None:
        pytest.skip("timm_catalog.json is absent or for another timm version (listing is live)")
    yield
    catalog._load_timm.cache_clear()


@pytest.mark.parametrize("pattern", ["*vit*", "resnet18*", "resnet18.*"])
def test_timm_snapshot_matches_the_live_listing(snapshot, pattern):
    from featx.backbones import _timm

    fast = catalog.list_timm_infos(pattern)
    if fast is None:  # a short listing shows sizes, and this snapshot was written without them
        assert "dim" not in catalog._load_timm()["archs"][0]
        pytest.skip("timm_catalog.json has no embedding sizes (--timm-names)")
    assert fast == _timm.list_infos(pattern), (
        "featx/backbones/timm_catalog.json is stale: run "
        "`python tools/gen_backbone_catalog.py --timm`"
    )
    assert fast


def test_timm_snapshot_is_not_used_for_another_timm_version(monkeypatch):
    catalog._load_timm.cache_clear()
    monkeypatch.setattr(catalog.importlib.metadata, "version", lambda name: "0.0.1")
    try:
        assert catalog.list_timm_infos("resnet18*") is None
    finally:
        catalog._load_timm.cache_clear()
