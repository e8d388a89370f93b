"""Stores that grow by segments: small commits write only the change, removed rows become
tombstones, compaction merges, old single-file stores upgrade, and kill -9 at every step of a
commit or a compaction leaves a store that the rerun completes exactly."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image

from featx.options import ExtractOptions
from featx.store import compact_store, load_features, open_features, store_info, verify_store
from featx.store.segments import (
    CRASH_AT_ENV,
    MERGE_TIERS_ENV,
    PART_SEGMENT_MIN_ROWS_ENV,
    choose_merges,
    segment_dir,
)

OPTS = ExtractOptions(batch_size=4, workers=0, checkpoint_every=4)
TESTS = Path(__file__).parent
# a `featx` process with the tiny test backbone registered (-b tiny), for kill tests
DRIVER = (
    f"import sys; sys.path.insert(0, {str(TESTS)!r}); from helpers import tiny_family; "
    "from featx.backbones import register_family; register_family(tiny_family()); "
    "from featx.cli import cli; cli()"
)


def _extract(src, store, backbone):
    from featx.extraction import extract

    return extract(src, backbone, store=store, options=OPTS)


def _same_rows(a_path: Path, b_path: Path) -> None:
    a, b = load_features(a_path), load_features(b_path)
    assert list(a.keys) == list(b.keys)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)
    assert [a.classes[v] for v in a.y] == [b.classes[v] for v in b.y]
    ia, ib = store_info(a_path), store_info(b_path)
    assert (ia["n_items"], ia["n_failed"]) == (ib["n_items"], ib["n_failed"])


def _folder(root: Path, n: int = 4) -> Path:
    for c, cls in enumerate(["cat", "dog", "eel"]):
        for i in range(n):
            write_image(root / cls / f"{i}.png", seed=10 * c + i)
    return root


def test_small_changes_are_segments_that_read_like_a_fresh_store(tmp_path, tiny_backbone):
    src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _extract(src, store, tiny_backbone)
    assert store_info(store)["layout"] == "single file"  # a new store is one file (schema 1)
    old_inode = os.stat(store).st_ino

    write_image(src / "dog" / "new.png", seed=99)  # +1 of 13: a segment, not a rewrite
    r = _extract(src, store, tiny_backbone)
    assert r.n_new == 1
    info = store_info(store)
    assert (info["layout"], info["segments"], info["dead_rows"]) == ("segments", 2, 0)
    first = sorted(segment_dir(store).iterdir())[0]
    assert os.stat(first).st_ino == old_inode  # the old file became segment 0 without a copy

    (src / "cat" / "1.png").unlink()  # a removed row is a tombstone: no new segment
    (src / "eel" / "2.png").write_bytes(b"not an image")  # a changed row fails: tombstone too
    _extract(src, store, tiny_backbone)
    info = store_info(store)
    assert (info["segments"], info["dead_rows"], info["n_failed"]) == (2, 2, 1)

    fresh = tmp_path / "fresh.h5"
    _extract(src, fresh, tiny_backbone)
    _same_rows(store, fresh)
    assert verify_store(store).ok
    lazy = open_features(store)  # the on-disk reader maps rows across segments
    np.testing.assert_array_equal(np.asarray(lazy.X), load_features(store).X)

    from featx.export import export_store

    a = np.load(export_store(store, tmp_path / "a.npz").out, allow_pickle=False)
    b = np.load(export_store(fresh, tmp_path / "b.npz").out, allow_pickle=False)
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])

    before = store.read_bytes()
    assert _extract(src, store, tiny_backbone).noop  # an unchanged source writes nothing
    assert store.read_bytes() == before

    out = compact_store(store)
    assert out["compacted"] and out["segments"] == 2 and out["dead_rows"] == 2
    assert store_info(store)["layout"] == "single file" and not segment_dir(store).exists()
    _same_rows(store, fresh)
    assert verify_store(store).ok
    assert not compact_store(store)["compacted"]


def test_many_dead_rows_compact_by_themselves(tmp_path, tiny_backbone):
    src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _extract(src, store, tiny_backbone)
    write_image(src / "dog" / "new.png", seed=99)
    _extract(src, store, tiny_backbone)
    assert store_info(store)["layout"] == "segments"
    for i in range(4):  # 4 of 13 rows removed: past the dead-row threshold
        (src / "cat" / f"{i}.png").unlink()
    _extract(src, store, tiny_backbone)
    assert store_info(store)["layout"] == "single file"
    fresh = tmp_path / "fresh.h5"
    _extract(src, fresh, tiny_backbone)
    _same_rows(store, fresh)


def _run_killed(src: Path, store: Path, step: str) -> None:
    cmd = [sys.executable, "-c", DRIVER, "extract", str(src), "--store", str(store), "-b",
           "tiny", "--workers", "0", "--batch-size", "4", "-q", "--json"]  # fmt: skip
    env = {**os.environ, CRASH_AT_ENV: step}  # (with the test's FEATX_PART_SEGMENT_MIN_ROWS)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, (step, proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize(
    ("step", "change"),
    [
        ("after-upgrade-link", "add"),  # the single file linked as segment 0, no index yet
        ("segment-write", "add"),  # inside the new segment's temporary file
        ("after-segment-rename", "add"),  # the segment complete, the index not renamed
        ("after-index-rename", "add"),  # committed, parts and orphans not yet removed
        ("after-part-link", "add"),  # a part linked as a segment, the index not renamed
        ("segment-write", "merge"),  # inside a segment that merges two small ones
        ("after-index-rename", "merge"),  # merged, the merged segments not yet removed
        ("full-write", "remove"),  # inside the compaction's temporary file
        ("after-full-rename", "remove"),  # compacted, the segments not yet removed
    ],
)
def test_kill_9_at_each_step_then_rerun_equals_an_uninterrupted_run(
    tmp_path, fake_backbone_family, step, change, monkeypatch
):
    tiny_backbone = "tiny"  # the same backbone in this process and in the killed one
    if step == "after-part-link":  # parts of any size become segments as they are
        monkeypatch.setenv(PART_SEGMENT_MIN_ROWS_ENV, "1")
    src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _extract(src, store, tiny_backbone)
    if change == "merge":  # a big segment and two small ones: the next commit merges these
        monkeypatch.setenv(MERGE_TIERS_ENV, "2,2")
        for name in ("new", "new2"):
            write_image(src / "dog" / f"{name}.png", seed=len(name))
            _extract(src, store, tiny_backbone)
        assert store_info(store)["segments"] == 3
        write_image(src / "eel" / "new.png", seed=98)
    elif change == "remove":  # make it segmented, then remove enough rows to compact
        write_image(src / "dog" / "new.png", seed=99)
        _extract(src, store, tiny_backbone)
        assert store_info(store)["layout"] == "segments"
        for i in range(4):
            (src / "cat" / f"{i}.png").unlink()
    else:
        write_image(src / "dog" / "new.png", seed=99)
        write_image(src / "eel" / "new.png", seed=98)
    _run_killed(src, store, step)
    load_features(store)  # whatever the kill left is a readable store
    r = _extract(src, store, tiny_backbone)  # the rerun
    assert r.n_items == {"remove": 9, "add": 14, "merge": 15}[change]
    if change == "merge":
        assert store_info(store)["segments"] == 2  # the big one, and the merged small ones
    fresh = tmp_path / "fresh.h5"
    _extract(src, fresh, tiny_backbone)
    _same_rows(store, fresh)
    assert verify_store(store).ok
    assert not list(tmp_path.glob("s.h5.tmp-*"))
    assert not store.with_name("s.h5.parts").exists()
    if segment_dir(store).exists():  # nothing left that the index does not name
        names = {p.name for p in segment_dir(store).iterdir()}
        assert len(names) == store_info(store)["segments"]
    assert _extract(src, store, tiny_backbone).noop


def test_relabelled_rows_are_rewritten_from_their_old_features(tmp_path, tiny_backbone):
    """A manifest that only relabels a row commits a one-row segment (the row's old features,
    its new label) and a tombstone; the plan's vectorized key match finds every other row."""
    from featx.extraction import _positions

    stored = np.array(["a", "b", "d"], dtype=object)
    assert _positions(stored, ["a", "c", "d", "e"]).tolist() == [0, -1, 2, -1]
    assert _positions(stored, ["a", "b", "d"]).tolist() == [0, 1, 2]

    imgs = _folder(tmp_path / "imgs")
    rows = [f"{c}/{i}.png,{c}" for c in ("cat", "dog", "eel") for i in range(4)]
    manifest = tmp_path / "imgs" / "m.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    store = tmp_path / "s.h5"
    _extract(manifest, store, tiny_backbone)
    manifest.write_text("path,label\n" + "\n".join(rows).replace("cat/0.png,cat", "cat/0.png,dog"))
    r = _extract(manifest, store, tiny_backbone)
    assert (r.n_new, r.noop) == (0, False)
    info = store_info(store)
    assert (info["layout"], info["segments"], info["dead_rows"]) == ("segments", 2, 1)
    fresh = tmp_path / "fresh.h5"
    _extract(manifest, fresh, tiny_backbone)
    _same_rows(store, fresh)
    fs = load_features(store)
    assert fs.classes[fs.y[list(fs.keys).index("cat/0.png")]] == "dog"
    assert _extract(manifest, store, tiny_backbone).noop
    assert imgs.is_dir()


def test_readers_racing_a_compaction_read_the_old_or_the_new_store(tmp_path, tiny_backbone):
    """A reader that opened the index before a compaction removed its segments reopens the
    index; a matrix opened before it keeps reading the segments it holds open."""
    from featx.store.read import _open_read, _rows

    src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _extract(src, store, tiny_backbone)
    write_image(src / "dog" / "new.png", seed=99)
    _extract(src, store, tiny_backbone)
    assert store_info(store)["layout"] == "segments"
    before = load_features(store)
    lazy = open_features(store)  # holds its segments open
    f = _open_read(store)  # the old index, open
    assert compact_store(store)["compacted"] and not segment_dir(store).exists()
    idx, matrix, _ = _rows(f, store)  # its segments are gone: the new index is read
    f.close()
    assert list(idx.keys) == list(before.keys)
    np.testing.assert_array_equal(np.asarray(matrix), before.X)
    np.testing.assert_array_equal(np.asarray(lazy.X), before.X)


def test_parts_become_segments_without_a_copy(tmp_path, tiny_backbone, monkeypatch):
    """Parts in key order that still carry the source's labels are linked in as segments: the
    features are written once (a new store made of its parts, then +1 row as a part)."""
    import h5py

    monkeypatch.setenv(PART_SEGMENT_MIN_ROWS_ENV, "1")
    src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _extract(src, store, tiny_backbone)  # 12 rows in parts of 4: three segments, no copy
    info = store_info(store)
    assert (info["layout"], info["segments"], info["dead_rows"]) == ("segments", 3, 0)
    write_image(src / "dog" / "new.png", seed=99)
    (src / "cat" / "1.png").unlink()
    _extract(src, store, tiny_backbone)
    info = store_info(store)
    assert (info["segments"], info["dead_rows"], info["n_items"]) == (4, 1, 12)
    for seg in segment_dir(store).iterdir():
        with h5py.File(seg, "r") as f:
            assert f.attrs["format"] == "featx-store-part"  # linked, never rewritten
    monkeypatch.delenv(PART_SEGMENT_MIN_ROWS_ENV)
    fresh = tmp_path / "fresh.h5"
    _extract(src, fresh, tiny_backbone)
    _same_rows(store, fresh)
    assert verify_store(store).ok
    assert _extract(src, store, tiny_backbone).noop


def test_tiered_merges_leave_big_segments_alone_and_cost_the_change():
    """The merge policy on row counts: nightly +1 % on a 1M-row store for 300 nights rewrites
    each added row a few times (not the store), leaves the big segment alone until the store
    has grown by much more than itself, and keeps the segment count bounded; a segment with
    many dead rows is merged; parts fill a tier's room."""
    floor, k = 6553, 16  # 16 MB of 1280-d float16 rows
    live, written, most, big_until = [1_000_000], 0, 0, None
    for night in range(300):
        mp = choose_merges(live, [0] * len(live), 10_000, floor=floor, per_tier=k)
        written += mp.rows
        if 0 in mp.merge and big_until is None:
            big_until = night
        live = [v for i, v in enumerate(live) if i not in mp.merge] + [mp.rows]
        most = max(most, len(live))
    assert big_until is not None and big_until > 200  # merged once 2.7M rows were added
    assert written <= 4 * 300 * 10_000 and most <= 2 * k  # ~3 writes per added row
    assert choose_merges([1000, 100], [400, 0], 1, floor=1, per_tier=k).merge == {0}
    # a full tier whose big segment has no peers yet: only the small ones merge
    mp = choose_merges([100_000] + [1000] * 15, [0] * 16, 1000, floor=floor, per_tier=k)
    assert mp.merge == set(range(1, 16)) and mp.rows == 16_000
    mp = choose_merges([1000], [0], 0, [(50, 0)] * 20, floor=10, per_tier=k)
    assert len(mp.link) == k - 1 and mp.rows == 5 * 50  # the rest is copied


def test_minor_merge_rewrites_only_the_small_segments(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setenv(MERGE_TIERS_ENV, "2,2")  # tiers of 2 segments; 12 rows: a big one
    src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _extract(src, store, tiny_backbone)
    base = os.stat(store).st_ino
    for i in range(3):
        write_image(src / "dog" / f"new{i}.png", seed=90 + i)
        _extract(src, store, tiny_backbone)
    (src / "cat" / "0.png").unlink()  # a tombstone in the big segment: it stays
    _extract(src, store, tiny_backbone)
    info = store_info(store)
    assert (info["layout"], info["segments"], info["dead_rows"]) == ("segments", 2, 1)
    assert sorted(info["segment_rows"]) == [3, 11]  # featx info: live rows per segment
    inodes = {os.stat(p).st_ino for p in segment_dir(store).iterdir()}
    assert base in inodes and len(inodes) == 2  # the big segment untouched, the rest merged
    fresh = tmp_path / "fresh.h5"
    _extract(src, fresh, tiny_backbone)
    _same_rows(store, fresh)
    assert verify_store(store).ok


def test_segment_keys_merge_as_bytes_and_decode_on_first_use():
    """The index read keeps keys as the stored bytes (decoded when first used) and merges the
    segments' sorted keys in str order: as bytes when ASCII, as str otherwise (a surrogate-
    escaped file name sorts differently as bytes)."""
    from featx.store import StoreIndex
    from featx.store.layout import encode_keys
    from featx.store.segments import _keys_in_order

    for names in (["a/1", "b/0", "c"], ["a", "\udcf5", "\ue000", "z"]):
        segs = [encode_keys(sorted(names[::2])), encode_keys(sorted(names[1::2]))]
        keys, order = _keys_in_order(segs)
        idx = StoreIndex(keys[order], *[np.zeros(len(names))] * 3, *[np.zeros(0)] * 5,
                         np.zeros(len(names)), np.zeros(len(names)), ())  # fmt: skip
        assert idx.n_rows == len(names)
        assert idx.keys_equal(sorted(names)) and not idx.keys_equal(sorted(names)[::-1])
        again = pickle.loads(pickle.dumps(idx))
        assert idx.keys.tolist() == sorted(names) and idx.keys.dtype == object
        assert again.keys.tolist() == sorted(names) and again.n_rows == len(names)
        assert idx.keys_equal(sorted(names)) and not idx.keys_equal(sorted(names)[:-1])

    from featx.extraction import _same_keys

    z = np.zeros(2)
    idx = StoreIndex(encode_keys(["a", "c"]), z, z, z, np.array(["b"], dtype=object),
                     *[np.zeros(1)] * 4, z, z, ())  # fmt: skip
    assert _same_keys(idx, ["a", "b", "c"]).tolist() == [0, -1, 1]  # a failure among them
    assert _same_keys(idx, ["a", "x", "c"]) is None and _same_keys(idx, ["a", "c"]) is None
