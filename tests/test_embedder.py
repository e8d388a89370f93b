"""featx.Embedder: image paths -> embeddings as a scikit-learn transformer, cached in a store."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyBackbone, write_image

from featx.embedder import Embedder, embed_files
from featx.errors import FeatxError
from featx.store import load_features, read_index


def _reference(bb: TinyBackbone, paths: list[Path]) -> np.ndarray:
    """The tiny backbone run by hand on the preprocessed images (no store, no engine)."""
    import torch

    from featx.images import load_rgb

    rows = []
    for p in paths:
        x = bb.preprocess(load_rgb(str(p)))[None]
        with torch.no_grad():
            rows.append(bb.model(x).numpy()[0])
    return np.stack(rows)


@pytest.fixture
def labeled_paths(tmp_path) -> tuple[list[Path], np.ndarray]:
    """Two visually distinct classes: dark and bright noise images, 8 each."""
    from PIL import Image

    paths, y = [], []
    for c in range(2):
        for i in range(8):
            rng = np.random.default_rng(100 * c + i)
            lo, hi = (0, 90) if c == 0 else (160, 256)
            arr = rng.integers(lo, hi, size=(20, 24, 3), dtype=np.uint8)
            p = tmp_path / "imgs" / f"c{c}_{i}.png"
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(arr).save(p)
            paths.append(p)
            y.append(c)
    return paths, np.array(y)


def test_transform_matches_the_backbone_and_keeps_input_order(tmp_path, tiny_backbone):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    emb = Embedder(tiny_backbone, workers=0).fit(paths)
    ref = _reference(tiny_backbone, paths)
    order = [3, 0, 4, 1]
    X = emb.transform([str(paths[i]) for i in order])
    assert X.shape == (4, 8) and X.dtype == np.float32
    np.testing.assert_allclose(X, ref[order], rtol=1e-4, atol=1e-5)
    assert list(emb.get_feature_names_out()) == [f"emb{i}" for i in range(8)]


def test_second_call_reads_the_store_and_keeps_earlier_files(tmp_path, tiny_backbone):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(6)]
    store = tmp_path / "emb.h5"
    first = embed_files(paths[:4], tiny_backbone, store=store)
    assert first.n_extracted == 4
    again = embed_files(paths[2:], tiny_backbone, store=store)
    assert again.n_extracted == 2  # 2 and 3 were cached
    np.testing.assert_array_equal(again.X[:2], first.X[2:])
    # the store holds all six, keyed by absolute path: files of earlier calls are not dropped
    assert sorted(read_index(store).keys) == sorted(str(p.resolve()) for p in paths)
    # relative paths from another working directory hit the same rows
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rel = embed_files(["0.png", "5.png"], tiny_backbone, store=store)
    finally:
        os.chdir(cwd)
    assert rel.n_extracted == 0
    np.testing.assert_array_equal(rel.X, np.stack([first.X[0], again.X[-1]]))


def test_default_store_is_in_the_cache_folder(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "c"))
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(2)]
    emb = Embedder(tiny_backbone, workers=0).fit(paths)
    emb.transform(paths)
    assert Path(emb.store_).parent == tmp_path / "c"
    assert Path(emb.store_).name.startswith("files__test-tiny")
    assert load_features(emb.store_).n == 2


def test_pipeline_with_a_head_works_with_cross_val_score(labeled_paths, tiny_backbone, tmp_path):
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import Pipeline

    from featx.heads import make_head

    paths, y = labeled_paths
    store = tmp_path / "cv.h5"
    pipe = Pipeline(
        [
            ("emb", Embedder(tiny_backbone, store=store, workers=0)),
            ("clf", make_head("logreg", {"backend": "sklearn"})),
        ]
    )
    scores = cross_val_score(pipe, [str(p) for p in paths], y, cv=4)
    assert scores.shape == (4,)
    assert scores.mean() >= 0.75  # dark vs bright is easy even for a random 8-d conv
    assert load_features(store).n == len(paths)  # every image embedded once, then reused


def test_named_backbone_and_pickle_round_trip(tmp_path):
    paths = [write_image(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    emb = Embedder("resnet18", weights="none", image_size=32, workers=0).fit(paths)
    assert emb.backbone_.name == "resnet18" and emb.backbone_.dim == 512
    X = emb.transform(paths)
    back = pickle.loads(pickle.dumps(emb))
    np.testing.assert_array_equal(back.transform(paths), X)


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_backbone):
    from sklearn.exceptions import NotFittedError

    good = write_image(tmp_path / "ok.png", seed=1)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    emb = Embedder(tiny_backbone, store=tmp_path / "s.h5", workers=0)
    with pytest.raises(NotFittedError):
        emb.transform([good])
    emb.fit([good])
    with pytest.raises(FeatxError, match="does not exist"):
        emb.transform([tmp_path / "nope.png"])
    with pytest.raises(FeatxError, match="list of image paths"):
        emb.transform(str(good))
    with pytest.raises(FeatxError, match="image paths"):
        emb.transform(np.zeros((3, 4)))
    with pytest.raises(FeatxError, match="broken.png"):
        emb.transform([good, bad])
    X = emb.set_params(on_error="nan").transform([good, bad])
    assert np.isfinite(X[0]).all() and np.isnan(X[1]).all()


def test_estimator_api_checks():
    """The scikit-learn checks that apply to an estimator whose input is paths, not numbers."""
    from sklearn.utils import estimator_checks as ec

    est = Embedder()
    for check in (
        ec.check_estimator_cloneable,
        ec.check_estimator_tags_renamed,
        ec.check_valid_tag_types,
        ec.check_estimator_repr,
        ec.check_no_attributes_set_in_init,
        ec.check_do_not_raise_errors_in_init_or_set_params,
        ec.check_mixin_order,
        ec.check_get_params_invariance,
        ec.check_set_params,
        ec.check_parameters_default_constructible,
    ):
        check("Embedder", est)
