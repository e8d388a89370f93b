"""Stores that grow by segments: small commits write only the change, removed rows become
tombstones, compaction merges, old single-file stores upgrade, and kill -9 at every step of a
commit or a compaction leaves a store that the rerun completes exactly."""

from __future__ import annotations

import os
import pickle
import shutil
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


def _extract(src, store, backbone, opts=OPTS):
    from featx.extraction import extract

    if Path(str(backbone)).is_dir():  # a text encoder's folder (tiny_bert)
        backbone = f"hf:{backbone}"
        opts = ExtractOptions(batch_size=4, checkpoint_every=4, device="cpu")
    return extract(src, backbone, store=store, options=opts)


def _same_rows(a_path: Path, b_path: Path) -> None:
    a, b = load_features(a_path), load_features(b_path)
    assert list(a.keys) == list(b.keys)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)  # every layer's group too
    assert a.groups == b.groups
    assert [a.classes[v] for v in a.y] == [b.classes[v] for v in b.y]
    assert (a.texts is None) == (b.texts is None)
    if a.texts is not None:
        assert list(a.texts) == list(b.texts)
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


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from test_text import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def _texts(root: Path, n_extra: int = 0, drop: int = 0) -> Path:
    """A text table of 12 rows (+ ``n_extra`` new ones, - the first ``drop``), keys by content."""
    from test_text import TOPICS, write_table

    rows = [{"text": t, "label": lab} for lab, ts in TOPICS.items() for t in ts]
    rows += [{"text": f"the parcel was late {i}", "label": "delivery"} for i in range(n_extra)]
    root.mkdir(parents=True, exist_ok=True)
    return write_table(root / "t.csv", rows[drop:])


#: Each kind of store the kill tests run: (backbone for the CLI, extract options in-process).
LAYERS_OPTS = ExtractOptions(batch_size=4, workers=0, checkpoint_every=4, layers="0")


def _kind_run(kind: str, src: Path, store: Path, bert: Path | None):
    if kind == "text":
        return _extract(src, store, bert)
    return _extract(src, store, "tiny", LAYERS_OPTS if kind == "layers" else OPTS)


def _run_killed(src: Path, store: Path, step: str, backbone: list[str] | None = None) -> None:
    cmd = [sys.executable, "-c", DRIVER, "extract", str(src), "--store", str(store),
           *(backbone or ["-b", "tiny", "--workers", "0"]), "--batch-size", "4", "-q",
           "--json"]  # fmt: skip
    env = {**os.environ, CRASH_AT_ENV: step}  # (with the test's FEATX_PART_SEGMENT_MIN_ROWS)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, (step, proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize(
    ("kind", "step", "change"),
    [
        ("image", "after-upgrade-link", "add"),  # the single file linked as segment 0, no index
        ("image", "segment-write", "add"),  # inside the new segment's temporary file
        ("image", "after-segment-rename", "add"),  # the segment complete, the index not renamed
        ("image", "after-index-rename", "add"),  # committed, parts and orphans not yet removed
        ("image", "after-part-link", "add"),  # a part linked as a segment, the index not renamed
        ("image", "segment-write", "merge"),  # inside a segment that merges two small ones
        ("image", "after-index-rename", "merge"),  # merged, the merged segments not yet removed
        ("image", "full-write", "remove"),  # inside the compaction's temporary file
        ("image", "after-full-rename", "remove"),  # compacted, the segments not yet removed
        # stores with more per row: every layer's output (--layers), the texts (text stores)
        ("layers", "after-segment-rename", "add"),
        ("layers", "full-write", "remove"),
        ("text", "segment-write", "merge"),  # new texts and the merged segments' texts
        ("text", "after-full-rename", "remove"),
    ],
)
def test_kill_9_at_each_step_then_rerun_equals_an_uninterrupted_run(
    tmp_path, fake_backbone_family, kind, step, change, monkeypatch, request
):
    # the same backbone in this process and in the killed one
    bert = request.getfixturevalue("tiny_bert") if kind == "text" else None
    cli_bb = {"image": ["-b", "tiny", "--workers", "0"],
              "layers": ["-b", "tiny", "--workers", "0", "--layers", "0"],
              "text": ["-b", f"hf:{bert}", "--device", "cpu"]}[kind]  # fmt: skip
    if step == "after-part-link":  # parts of any size become segments as they are
        monkeypatch.setenv(PART_SEGMENT_MIN_ROWS_ENV, "1")
    if kind == "text":
        src = _texts(tmp_path / "texts")
    else:
        src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _kind_run(kind, src, store, bert)
    if change == "merge":  # a big segment and two small ones: the next commit merges these
        monkeypatch.setenv(MERGE_TIERS_ENV, "2,2")
        for i, name in enumerate(("new", "new2")):
            if kind == "text":
                _texts(src.parent, n_extra=i + 1)
            else:
                write_image(src / "dog" / f"{name}.png", seed=len(name))
            _kind_run(kind, src, store, bert)
        assert store_info(store)["segments"] == 3
        if kind == "text":
            _texts(src.parent, n_extra=3)
        else:
            write_image(src / "eel" / "new.png", seed=98)
    elif change == "remove":  # make it segmented, then remove enough rows to compact
        if kind == "text":
            _texts(src.parent, n_extra=1)
        else:
            write_image(src / "dog" / "new.png", seed=99)
        _kind_run(kind, src, store, bert)
        assert store_info(store)["layout"] == "segments"
        if kind == "text":
            _texts(src.parent, n_extra=1, drop=4)
        else:
            for i in range(4):
                (src / "cat" / f"{i}.png").unlink()
    elif kind == "text":
        _texts(src.parent, n_extra=2)
    else:
        write_image(src / "dog" / "new.png", seed=99)
        write_image(src / "eel" / "new.png", seed=98)
    _run_killed(src, store, step, cli_bb)
    load_features(store)  # whatever the kill left is a readable store
    r = _kind_run(kind, src, store, bert)  # the rerun
    assert r.n_items == {"remove": 9, "add": 14, "merge": 15}[change]
    if change == "merge":
        assert store_info(store)["segments"] == 2  # the big one, and the merged small ones
    fresh = tmp_path / "fresh.h5"
    _kind_run(kind, src, fresh, bert)
    _same_rows(store, fresh)
    assert verify_store(store).ok
    assert not list(tmp_path.glob("s.h5.tmp-*"))
    assert not store.with_name("s.h5.parts").exists()
    if segment_dir(store).exists():  # nothing left that the index does not name
        names = {p.name for p in segment_dir(store).iterdir()}
        assert len(names) == store_info(store)["segments"]
    assert _kind_run(kind, src, store, bert).noop


def _same_export(a: Path, b: Path, tmp_path: Path) -> None:
    from featx.export import export_store

    ea = np.load(export_store(a, tmp_path / "a.npz").out, allow_pickle=False)
    eb = np.load(export_store(b, tmp_path / "b.npz").out, allow_pickle=False)
    assert sorted(ea.files) == sorted(eb.files)
    for name in ea.files:  # features: batch padding may change the last bit
        if ea[name].dtype.kind == "f":
            np.testing.assert_allclose(ea[name], eb[name], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(ea[name], eb[name])


def _doc_reader():
    """docs/store.md's plain-h5py ``read_store``, executed as written there."""
    text = (TESTS.parent / "docs" / "store.md").read_text()
    block = next(b for b in text.split("```python")[1:] if "def read_store" in b)
    ns: dict = {}
    exec(block.split("```")[0], ns)
    return ns["read_store"]


def _newest_segment(store: Path) -> Path:
    return max(segment_dir(store).iterdir(), key=lambda p: int(p.name.split("-")[1]))


def test_text_stores_grow_by_segments_with_their_texts(tmp_path, tiny_bert, monkeypatch):
    """+1 text and a relabelled row: a segment holding only those two rows' features, token
    counts and texts; the texts read across segments like a fresh store's, and compaction
    (or a fresh extract) gives the same single file."""
    import h5py
    from test_text import TOPICS, WORDS, write_table

    rows = [{"text": t, "label": lab} for lab, ts in TOPICS.items() for t in ts]
    rows.append({"text": " ".join(WORDS * 2), "label": "account"})  # longer than 64 tokens
    table = write_table(tmp_path / "t.csv", rows)
    store = tmp_path / "s.h5"
    _extract(table, store, tiny_bert)
    rows.append({"text": "the parcel was late again", "label": "delivery"})
    rows[0] = {**rows[0], "label": "account"}  # same text (same key), another label
    write_table(table, rows)
    import featx.text.tokens as tokens

    counted, count = [], tokens.count_tokens
    monkeypatch.setattr(
        tokens, "count_tokens", lambda t, x, n: counted.append(len(x)) or count(t, x, n)
    )
    r = _extract(table, store, tiny_bert)
    assert (r.n_new, r.n_truncated) == (1, 1)  # the kept long text still counts
    assert counted == [2]  # the commit tokenizes the written rows' texts, not the store's
    monkeypatch.undo()
    info = store_info(store)
    assert (info["layout"], info["segments"], info["dead_rows"]) == ("segments", 2, 1)
    assert info["has_texts"]
    with h5py.File(_newest_segment(store), "r") as f:  # only the written rows' texts
        texts = sorted(f["text/texts"].asstr()[()])
        assert texts == sorted([rows[0]["text"], "the parcel was late again"])
        assert f["text/n_tokens"].shape == (2,)
    del rows[5]  # a removed text is a tombstone
    write_table(table, rows)
    _extract(table, store, tiny_bert)
    assert (store_info(store)["segments"], store_info(store)["dead_rows"]) == (2, 2)
    fresh = tmp_path / "fresh.h5"
    _extract(table, fresh, tiny_bert)
    _same_rows(store, fresh)
    assert store_info(store)["text"] == store_info(fresh)["text"]  # token counts, truncation
    assert load_features(store).meta["n_truncated"] == load_features(fresh).meta["n_truncated"]
    plain = _doc_reader()(str(store))  # docs/store.md's plain-h5py reader
    assert list(plain["texts"]) == list(load_features(fresh).texts)
    assert list(plain["keys"]) == list(load_features(fresh).keys)
    assert verify_store(store).ok
    copy = tmp_path / "copy" / "s.h5"  # verify: a segment that lost its texts is damage
    shutil.copytree(segment_dir(store), segment_dir(copy))
    shutil.copy(store, copy)
    with h5py.File(_newest_segment(copy), "r+") as f:
        del f["text/texts"]
    assert any("has no text/texts" in p for p in verify_store(copy).problems)
    _same_export(store, fresh, tmp_path)
    assert _extract(table, store, tiny_bert).noop
    assert compact_store(store)["compacted"]
    _same_rows(store, fresh)
    with h5py.File(store, "r") as f, h5py.File(fresh, "r") as g:
        assert list(f["text/texts"].asstr()[()]) == list(g["text/texts"].asstr()[()])
        assert list(f["text/n_tokens"][()]) == list(g["text/n_tokens"][()])
    assert verify_store(store).ok


def test_multi_layer_stores_grow_by_segments_with_every_output(tmp_path, fake_backbone_family):
    """--layers: a segment carries every layer's output for its rows; read_output, grouped
    features, export and compaction read them across segments like a fresh store's."""
    import h5py

    from featx.store import read_output

    src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _extract(src, store, "tiny", LAYERS_OPTS)
    write_image(src / "dog" / "new.png", seed=99)
    (src / "cat" / "1.png").unlink()
    assert _extract(src, store, "tiny", LAYERS_OPTS).n_new == 1
    info = store_info(store)
    assert (info["layout"], info["segments"], info["dead_rows"]) == ("segments", 2, 1)
    with h5py.File(_newest_segment(store), "r") as f:
        assert f["outputs/0"].shape == (1, 8) and f["outputs/0"].fletcher32
    fresh = tmp_path / "fresh.h5"
    _extract(src, fresh, "tiny", LAYERS_OPTS)
    _same_rows(store, fresh)
    assert [g.name for g in load_features(store).groups] == ["features", "0"]
    np.testing.assert_allclose(read_output(store, "0"), read_output(fresh, "0"), rtol=1e-6)
    plain = _doc_reader()(str(store))  # docs/store.md's plain-h5py reader
    np.testing.assert_allclose(plain["0"], read_output(fresh, "0"), rtol=1e-6)
    np.testing.assert_allclose(plain["features"], load_features(fresh).X[:, :8], rtol=1e-6)
    assert verify_store(store).ok
    _same_export(store, fresh, tmp_path)
    assert _extract(src, store, "tiny", LAYERS_OPTS).noop
    assert compact_store(store)["compacted"]
    _same_rows(store, fresh)
    assert verify_store(store).ok


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


def test_whole_state_commits_compare_the_texts_of_kept_rows(tmp_path):
    """StoreWriter.commit (every row's state) on a text-carrying store: a kept row whose text
    changed is written again into the segment, the others stay where they are."""
    from featx.store import Rows, StoreConfig, StoreWriter

    keys = [f"k{i:03d}" for i in range(20)]
    texts = {k: f"text {k}" for k in keys}
    cfg = StoreConfig(source={"synthetic": "t"}, backbone={"dim": 4})
    X = np.arange(80, dtype=np.float32).reshape(20, 4)

    def commit(rows, texts):
        w.commit(
            rows=rows, failed={}, labels={}, split={}, classes=(),
            fingerprints={k: (1, 1, "") for k in rows}, attrs={"dim": 4},
            per_row={"text/texts": texts, "text/n_tokens": {k: len(v) for k, v in texts.items()}},
        )  # fmt: skip

    store = tmp_path / "s.h5"
    with StoreWriter(store, cfg) as w:
        part = w.write_part(Rows(keys, X, [1] * 20, [1] * 20, [""] * 20, [], [], [], [], []))
        commit({k: (str(part), i) for i, k in enumerate(keys)}, texts)
    texts = {**texts, "k003": "an edited text"}
    with StoreWriter(store, cfg) as w:
        commit({k: ("store", i) for i, k in enumerate(keys)}, texts)
    info = store_info(store)
    assert (info["layout"], info["segments"], info["dead_rows"]) == ("segments", 2, 1)
    fs = load_features(store)
    assert list(fs.texts) == [texts[k] for k in keys]
    np.testing.assert_array_equal(fs.X, X)
    assert verify_store(store).ok


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


def test_parts_of_a_multi_layer_store_become_segments(tmp_path, fake_backbone_family, monkeypatch):
    """Parts hold every layer's output as a segment does (chunked, Fletcher-32, the layer's
    attributes), so a --layers store's parts are linked in too: each byte written once."""
    import h5py

    monkeypatch.setenv(PART_SEGMENT_MIN_ROWS_ENV, "1")
    src = _folder(tmp_path / "imgs")
    store = tmp_path / "s.h5"
    _extract(src, store, "tiny", LAYERS_OPTS)  # 12 rows in parts of 4: three segments
    info = store_info(store)
    assert (info["layout"], info["segments"]) == ("segments", 3)
    for seg in segment_dir(store).iterdir():
        with h5py.File(seg, "r") as f:
            assert f.attrs["format"] == "featx-store-part"  # linked, never rewritten
            assert f["outputs/0"].fletcher32 and f["outputs/0"].attrs["layer"] == "0"
    monkeypatch.delenv(PART_SEGMENT_MIN_ROWS_ENV)
    fresh = tmp_path / "fresh.h5"
    _extract(src, fresh, "tiny", LAYERS_OPTS)
    assert store_info(fresh)["layout"] == "single file"
    _same_rows(store, fresh)
    assert verify_store(store).ok
