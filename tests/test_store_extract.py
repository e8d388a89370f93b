"""The extraction pipeline and the store: incremental runs, failures, config checks, locking."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
from helpers import TinyBackbone, write_image

from featx.errors import FeatxError, StoreError, StoreLockedError
from featx.extraction import ExtractOptions, extract
from featx.store import StoreWriter, load_features, read_config, store_info

OPTS = ExtractOptions(batch_size=4, workers=0)


def _run(src, bb, store, **kw):
    opts = ExtractOptions(**{"batch_size": 4, "workers": 0, **kw})
    return extract(src, bb, store=store, options=opts)


def test_first_run_writes_every_item(image_folder, tiny_backbone, tmp_path):
    store = tmp_path / "s.h5"
    r = _run(image_folder, tiny_backbone, store)
    assert (r.n_items, r.n_new, r.n_failed, r.dim, r.noop) == (12, 12, 0, 8, False)
    fs = load_features(store)
    assert fs.X.shape == (12, 8) and fs.X.dtype == np.float32
    assert fs.classes == ("cat", "dog", "eel")
    assert list(fs.keys) == sorted(fs.keys)
    assert fs.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert np.isfinite(fs.X).all() and fs.X.std() > 0
    assert not (tmp_path / "s.h5.parts").exists()


def test_features_equal_a_direct_forward_pass(image_folder, tiny_backbone, tmp_path):
    import torch

    from featx.images import load_rgb

    store = tmp_path / "s.h5"
    _run(image_folder, tiny_backbone, store)
    fs = load_features(store)
    key = fs.keys[5]
    x = tiny_backbone.preprocess(load_rgb(image_folder / key)).unsqueeze(0)
    with torch.no_grad():
        ref = tiny_backbone.model(x).numpy()[0]
    np.testing.assert_allclose(fs.X[5], ref, rtol=1e-5, atol=1e-6)


def test_unchanged_rerun_is_noop_and_leaves_file_untouched(image_folder, tiny_backbone, tmp_path):
    store = tmp_path / "s.h5"
    _run(image_folder, tiny_backbone, store)
    before = os.stat(store).st_mtime_ns, os.stat(store).st_ino
    r = _run(image_folder, tiny_backbone, store)
    assert r.noop and r.n_new == 0 and r.n_items == 12
    assert (os.stat(store).st_mtime_ns, os.stat(store).st_ino) == before


def test_incremental_add_change_remove_matches_fresh_run(image_folder, tiny_backbone, tmp_path):
    store = tmp_path / "s.h5"
    _run(image_folder, tiny_backbone, store)
    write_image(image_folder / "dog" / "new.png", seed=99)  # add
    os.remove(image_folder / "cat" / "0.jpg")  # remove
    changed = image_folder / "eel" / "1.png"
    write_image(changed, seed=1234)  # change content (and size/mtime)
    os.utime(changed, ns=(1, 2_000_000_000))
    r = _run(image_folder, tiny_backbone, store)
    assert (r.n_new, r.n_removed, r.n_items) == (2, 1, 12)
    fresh = tmp_path / "fresh.h5"
    _run(image_folder, tiny_backbone, fresh, batch_size=5)
    a, b = load_features(store), load_features(fresh)
    assert list(a.keys) == list(b.keys)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)
    assert a.y.tolist() == b.y.tolist()


def test_content_hash_detects_same_size_same_mtime_edit(image_folder, tiny_backbone, tmp_path):
    store = tmp_path / "s.h5"
    _run(image_folder, tiny_backbone, store, content_hash=True)
    target = image_folder / "cat" / "1.png"
    st = os.stat(target)
    data = bytearray(target.read_bytes())
    # Rewrite pixels of the same size: a different image with identical size and mtime.
    write_image(target, seed=4321)
    assert os.path.getsize(target) == len(data) or True
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = _run(image_folder, tiny_backbone, store, content_hash=True)
    assert r.n_new == 1
    info = store_info(store)
    assert info["n_items"] == 12


def test_bad_files_are_recorded_not_fatal(image_folder, tiny_backbone, tmp_path):
    (image_folder / "cat" / "empty.png").write_bytes(b"")
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    good = (image_folder / "dog" / "0.jpg").read_bytes()
    (image_folder / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (image_folder / "dog" / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    store = tmp_path / "s.h5"
    r = _run(image_folder, tiny_backbone, store)
    assert (r.n_items, r.n_failed) == (12, 4)
    info = store_info(store)
    reasons = {f["path"]: f["reason"] for f in info["failed"]}
    assert set(reasons) == {"cat/empty.png", "cat/notes.txt", "dog/truncated.jpg", "dog/fake.png"}
    assert "empty" in reasons["cat/empty.png"]
    # Recorded failures are not retried while unchanged ...
    assert _run(image_folder, tiny_backbone, store).noop
    # ... and --strict turns them into an error that names the file.
    with pytest.raises(FeatxError, match="strict"):
        _run(image_folder, tiny_backbone, store, strict=True)
    assert store_info(store)["n_items"] == 12  # store untouched


def test_strict_on_first_run_fails_without_a_store(image_folder, tiny_backbone, tmp_path):
    (image_folder / "cat" / "bad.jpg").write_bytes(b"nope")
    store = tmp_path / "s.h5"
    with pytest.raises(FeatxError, match="bad.jpg"):
        _run(image_folder, tiny_backbone, store, strict=True)
    assert not store.exists()


def test_modes_become_rgb(tmp_path, tiny_backbone):
    from PIL import Image

    root = tmp_path / "modes"
    write_image(root / "gray.png", 1, mode="L")
    write_image(root / "pal.png", 2, mode="P")
    write_image(root / "rgba.png", 3, mode="RGBA")
    write_image(root / "cmyk.jpg", 4, mode="CMYK")
    arr16 = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 100).astype(np.uint16)
    Image.fromarray(arr16).save(root / "deep.png")
    write_image(root / "pic.bmp", 5)
    write_image(root / "pic.tiff", 6)
    write_image(root / "pic.webp", 7)
    r = _run(root, tiny_backbone, tmp_path / "s.h5")
    assert (r.n_items, r.n_failed) == (8, 0)
    fs = load_features(tmp_path / "s.h5")
    assert fs.classes == () and (fs.y == -1).all()


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from featx.images import load_rgb

    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "o.jpg").size == (10, 30)


def test_float16_store(image_folder, tiny_backbone, tmp_path):
    store = tmp_path / "s16.h5"
    _run(image_folder, tiny_backbone, store, dtype="float16")
    with h5py.File(store) as f:
        assert f["features"].dtype == np.float16
    fs = load_features(store)
    assert fs.X.dtype == np.float32


def test_store_with_other_configuration_is_refused(image_folder, tiny_backbone, tmp_path):
    store = tmp_path / "s.h5"
    _run(image_folder, tiny_backbone, store)
    before = store.read_bytes()
    with pytest.raises(StoreError, match="another configuration.*weights"):
        _run(image_folder, TinyBackbone(seed=1), store)
    assert store.read_bytes() == before


def test_not_a_store(tmp_path, image_folder, tiny_backbone):
    junk = tmp_path / "junk.h5"
    junk.write_text("hello")
    with pytest.raises(StoreError, match="not a featx store"):
        store_info(junk)
    with pytest.raises(StoreError, match="not a featx store"):
        _run(image_folder, tiny_backbone, junk)
    assert junk.read_text() == "hello"
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a featx store"):
        load_features(other)
    with pytest.raises(StoreError, match="does not exist"):
        store_info(tmp_path / "missing.h5")


def test_second_writer_gets_a_clear_error(image_folder, tiny_backbone, tmp_path):
    from featx.extraction import store_config
    from featx.sources import open_source

    store = tmp_path / "s.h5"
    cfg = store_config(open_source(image_folder), tiny_backbone)
    with StoreWriter(store, cfg), pytest.raises(StoreLockedError, match="already writing"):
        _run(image_folder, tiny_backbone, store)
    _run(image_folder, tiny_backbone, store)  # lock released afterwards
    assert read_config(store).hash == cfg.hash


def test_resume_from_parts_after_interruption(image_folder, tiny_backbone, tmp_path, monkeypatch):
    """An exception mid-run leaves finished parts; the next run reuses them."""
    import featx.engine as engine

    store = tmp_path / "s.h5"
    real = engine.DecodeDataset.__getitem__
    calls = {"n": 0}

    def flaky(self, i):
        calls["n"] += 1
        if calls["n"] > 9:
            raise KeyboardInterrupt
        return real(self, i)

    monkeypatch.setattr(engine.DecodeDataset, "__getitem__", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(image_folder, tiny_backbone, store, checkpoint_every=4)
    assert not store.exists()
    assert len(list((tmp_path / "s.h5.parts").glob("part-*.h5"))) == 2
    with pytest.raises(StoreError, match="unfinished extraction"):
        store_info(store)
    monkeypatch.setattr(engine.DecodeDataset, "__getitem__", real)
    r = _run(image_folder, tiny_backbone, store, checkpoint_every=4)
    assert (r.n_resumed, r.n_new, r.n_items) == (8, 4, 12)
    fresh = tmp_path / "fresh.h5"
    _run(image_folder, tiny_backbone, fresh)
    np.testing.assert_allclose(load_features(store).X, load_features(fresh).X, atol=1e-6)


def test_csv_source_with_splits(tmp_path, image_folder, tiny_backbone):
    lines = ["path,label,split"]
    for i, p in enumerate(sorted(image_folder.rglob("*.*"))):
        rel = os.path.relpath(p, tmp_path)
        label = "" if i == 0 else p.parent.name
        lines.append(f"{rel},{label},{['train', 'val', 'test'][i % 3]}")
    csv = tmp_path / "m.csv"
    csv.write_text("\n".join(lines) + "\n")
    store = tmp_path / "c.h5"
    r = _run(csv, tiny_backbone, store)
    assert r.n_items == 12
    fs = load_features(store)
    assert fs.split is not None and set(fs.split) == {"train", "val", "test"}
    assert (fs.y == -1).sum() == 1
    # relabel in the CSV: metadata update without re-extraction
    csv.write_text(csv.read_text().replace(",cat,", ",dog,"))
    r = _run(csv, tiny_backbone, store)
    assert r.n_new == 0 and not r.noop
    assert "cat" not in load_features(store).classes


@pytest.mark.parametrize(
    "content, match",
    [
        ("file,label\na.png,x\n", "lacks the column"),
        ("path,label\nmissing.png,x\n", "not found"),
        ("path,label\n", "no images"),
        ("path,label,split\na.png,x,holdout\n", "unknown split"),
    ],
)
def test_bad_csv(tmp_path, tiny_backbone, content, match):
    write_image(tmp_path / "a.png", 0)
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    with pytest.raises(FeatxError, match=match):
        _run(csv, tiny_backbone, tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


def test_missing_and_empty_sources(tmp_path, tiny_backbone):
    with pytest.raises(FeatxError, match="does not exist"):
        _run(tmp_path / "nope", tiny_backbone, tmp_path / "s.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatxError, match="no files"):
        _run(tmp_path / "empty", tiny_backbone, tmp_path / "s.h5")


def test_torchvision_dataset_source(tmp_path, tiny_backbone):
    import torchvision

    # MNIST reads the raw idx files when they are present: plant a tiny copy.
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        hdr = np.array([0x0803, n, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(hdr + imgs.tobytes())
        hdr = np.array([0x0801, n], dtype=">i4").tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(hdr + labels.tobytes())
    assert torchvision.datasets.MNIST(str(tmp_path / "mnist"), train=True).data.shape[0] == 6
    store = tmp_path / "m.h5"
    r = extract(
        "torchvision:MNIST", tiny_backbone, store=store, options=OPTS, root=str(tmp_path / "mnist")
    )
    assert r.n_items == 9
    fs = load_features(store)
    assert sorted(set(fs.split)) == ["test", "train"] and len(fs.classes) == 10
    with pytest.raises(FeatxError, match="--download"):
        extract("torchvision:MNIST", tiny_backbone, options=OPTS, root=str(tmp_path / "none"))
    with pytest.raises(FeatxError, match="did you mean"):
        extract("torchvision:MNISTT", tiny_backbone, options=OPTS)


def test_default_store_path_is_readable_and_under_cache(image_folder, tiny_backbone, tmp_path):
    r = _run(image_folder, tiny_backbone, None)
    path = r.store
    assert path.startswith(os.environ["FEATX_CACHE_DIR"])
    assert os.path.basename(path).startswith("imgs__test-tiny-seed0")
    shutil.rmtree(os.environ["FEATX_CACHE_DIR"])


def test_parts_are_written_in_the_background(image_folder, tiny_backbone, tmp_path, monkeypatch):
    """Part writes run on their own thread while extraction goes on; the run waits for each
    before the next and for the last before the commit, so the store still has every row."""
    import threading
    import time

    real = StoreWriter.write_part
    seen = []

    def slow(self, rows):
        seen.append(threading.current_thread().name)
        time.sleep(0.05)
        return real(self, rows)

    monkeypatch.setattr(StoreWriter, "write_part", slow)
    store = tmp_path / "s.h5"
    r = _run(image_folder, tiny_backbone, store, checkpoint_every=4)
    assert len(seen) == 3 and all(name.startswith("featx-part") for name in seen)
    assert r.n_items == 12 and r.store_seconds > 0
    fresh = tmp_path / "fresh.h5"
    monkeypatch.setattr(StoreWriter, "write_part", real)
    _run(image_folder, tiny_backbone, fresh)
    np.testing.assert_array_equal(load_features(store).X, load_features(fresh).X)


def test_a_failed_part_write_fails_the_run_and_leaves_no_store(
    image_folder, tiny_backbone, tmp_path, monkeypatch
):
    def full(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StoreWriter, "write_part", full)
    store = tmp_path / "s.h5"
    with pytest.raises(FeatxError, match="the disk is full: free"):
        _run(image_folder, tiny_backbone, store, checkpoint_every=4)
    assert not store.exists()
