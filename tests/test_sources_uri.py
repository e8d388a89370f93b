"""CSV manifests behind a pyarrow filesystem URI (file:// here; s3://, gs://, ... on a cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_image

from featx.errors import FeatxError
from featx.extraction import extract
from featx.options import ExtractOptions
from featx.sources import is_uri, open_source
from featx.store import load_features


@pytest.fixture
def manifest(tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        write_image(root / "img" / f"{i}.png", seed=i)
    (root / "img" / "bad.jpg").write_bytes(b"not a jpeg")
    csv = root / "labels.csv"
    csv.write_text("path,label,split\nimg/0.png,a,train\nimg/1.png,b,train\n"
                   "img/2.png,a,test\nimg/3.png,b,test\nimg/bad.jpg,a,train\n")  # fmt: skip
    return csv


def test_is_uri():
    assert is_uri("s3://bucket/x.csv") and is_uri("file:///tmp/x.csv") and is_uri("gs://b/k")
    assert not is_uri("/tmp/x.csv") and not is_uri("sklearn:digits") and not is_uri("torchvision:X")


def test_file_uri_manifest_matches_the_local_path(manifest, tiny_backbone, tmp_path):
    src = open_source(manifest.as_uri())
    local = open_source(manifest)
    assert (src.kind, src.uri, src.name) == ("csv", manifest.as_uri(), "labels")
    assert [it.key for it in src.items] == [it.key for it in local.items]
    assert [(it.label, it.split, it.size, it.mtime_ns) for it in src.items] == [
        (it.label, it.split, it.size, it.mtime_ns) for it in local.items
    ]
    assert src.items[0].path == (manifest.parent / "img" / "0.png").as_uri()
    opts = ExtractOptions(batch_size=2, workers=0)
    r = extract(manifest.as_uri(), tiny_backbone, store=tmp_path / "u.h5", options=opts)
    assert (r.n_items, r.n_failed) == (4, 1)
    extract(manifest, tiny_backbone, store=tmp_path / "p.h5", options=opts)
    a, b = load_features(tmp_path / "u.h5"), load_features(tmp_path / "p.h5")
    assert list(a.keys) == list(b.keys)
    np.testing.assert_allclose(a.X, b.X, atol=1e-6)
    # content hashing reads through the filesystem too
    hashed = open_source(manifest.as_uri(), content_hash=True)
    assert hashed.items[0].sha256 == open_source(manifest, content_hash=True).items[0].sha256


def test_uri_errors_are_one_line(manifest, tmp_path):
    with pytest.raises(FeatxError, match="must be a CSV manifest"):
        open_source((tmp_path / "data").as_uri())
    with pytest.raises(FeatxError, match="cannot read CSV"):
        open_source((tmp_path / "nope.csv").as_uri())
    manifest.write_text("path,label\nimg/0.png,a\nimg/missing.png,b\n")
    with pytest.raises(FeatxError, match="line 3: file img/missing.png not found"):
        open_source(manifest.as_uri())
