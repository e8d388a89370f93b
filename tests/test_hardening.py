"""Hostile inputs and faults (issue #14): every one is recorded or refused, none crashes or
corrupts. Each test is the regression test of one defect; RELIABILITY.md cites them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import TinyBackbone, write_image

from featx import errors
from featx.errors import FeatxError, StoreLockedError
from featx.extraction import ExtractOptions, extract
from featx.sources import open_source
from featx.store import Rows, StoreConfig, StoreWriter, load_features, store_info

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _run(src, bb, store, **kw):
    opts = ExtractOptions(**{"batch_size": 4, "workers": 0, **kw})
    return extract(src, bb, store=store, options=opts)


def _py(code: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# scanning never dies on a file
# ---------------------------------------------------------------------------------------------
BAD_NAME = b"cat/caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8


def _hostile_folder(root: Path) -> dict[str, str]:
    """An ImageFolder with one of every bad entry; returns key -> expected reason fragment."""
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(3):
            write_image(root / cls / f"{i}.png", seed=10 * c + i)
    expect = {}
    (root / "cat" / "gone.png").symlink_to(root / "cat" / "nowhere.png")
    expect["cat/gone.png"] = "broken symlink"
    (root / "cat" / "a.png").symlink_to("b.png")
    (root / "cat" / "b.png").symlink_to("a.png")
    expect["cat/a.png"] = expect["cat/b.png"] = "symlink loop"
    (root / "dog" / "self.jpg").symlink_to("self.jpg")
    expect["dog/self.jpg"] = "symlink loop"
    (root / "dog" / "up").symlink_to("..")  # folder loop: dog/up -> the source root
    (root / "dog" / "deep").mkdir()
    (root / "dog" / "deep" / "back").symlink_to("../..")  # dog/deep/back -> the source root
    expect["dog/up"] = expect["dog/deep/back"] = "symlink loop"
    os.mkfifo(root / "dog" / "pipe.png")  # reading it would block forever
    expect["dog/pipe.png"] = "not a regular file"
    write_image(Path(os.fsdecode(bytes(root) + b"/" + BAD_NAME)), seed=99)
    return expect


def test_bad_entries_are_recorded_and_names_round_trip(tmp_path, tiny_backbone):
    root = tmp_path / "src"
    expect = _hostile_folder(root)
    unreadable = root / "dog" / "locked.png"
    write_image(unreadable, seed=5)
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads anything; the check only means something for others
        expect["dog/locked.png"] = "ermission denied"
    store = tmp_path / "s.h5"
    r = _run(root, tiny_backbone, store, checkpoint_every=3)
    info = store_info(store)
    reasons = {f["path"]: f["reason"] for f in info["failed"]}
    for key, fragment in expect.items():
        assert fragment in reasons[key], (key, reasons.get(key))
    assert set(reasons) == set(expect)
    assert r.n_failed == len(expect)
    fs = load_features(store)
    assert fs.X.shape[0] == 6 + 1 + (os.geteuid() == 0)
    bad = [k for k in fs.keys if os.fsencode(k) == BAD_NAME]
    assert len(bad) == 1, "the non-UTF-8 name must come back as the same bytes"
    assert _run(root, tiny_backbone, store).noop  # nothing is retried while unchanged
    unreadable.chmod(0o644)


def test_checkpoint_of_only_failures_and_folder_of_only_bad_files(tmp_path, tiny_backbone):
    root = tmp_path / "src"
    for i in range(4):  # sorted first: the first checkpoint holds failures only
        (root / "cls" / f"a{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (root / "cls" / f"a{i}.png").write_bytes(b"not an image")
    for i in range(3):
        write_image(root / "cls" / f"b{i}.png", seed=i)
    r = _run(root, tiny_backbone, tmp_path / "mixed.h5", checkpoint_every=2)
    assert (r.n_items, r.n_failed) == (3, 4)

    bad = tmp_path / "bad"
    for i in range(5):
        (bad / f"x{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (bad / f"x{i}.jpg").write_bytes(b"")
    (bad / "link.jpg").symlink_to("missing.jpg")
    r = _run(bad, tiny_backbone, tmp_path / "bad.h5", checkpoint_every=2)
    assert (r.n_items, r.n_failed, r.dim) == (0, 6, 8)
    fs = load_features(tmp_path / "bad.h5")
    assert fs.X.shape == (0, 8)
    assert _run(bad, tiny_backbone, tmp_path / "bad.h5").noop


def test_empty_part_keeps_the_feature_width(tmp_path):
    cfg = StoreConfig(source={"s": 1}, backbone={"b": 1})
    with StoreWriter(tmp_path / "s.h5", cfg) as w:
        part = w.write_part(
            Rows([], np.empty((0, 16), np.float32), [], [], [], ["x"], ["bad"], [1], [1], [""])
        )
        w.commit(
            rows={},
            failed={"x": ("bad", 1, 1, "", "")},
            labels={},
            split={},
            classes=(),
            fingerprints={},
            attrs={"dim": 16},
        )
    assert not part.exists()
    assert load_features(tmp_path / "s.h5").X.shape == (0, 16)


def test_images_up_to_twice_pillows_limit_are_accepted(tmp_path, monkeypatch):
    from PIL import Image

    from featx.images import ImageDecodeError, load_rgb

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # scaled down: 1x = 1000, 2x = 2000
    ok = write_image(tmp_path / "big.png", seed=1, size=(45, 40))  # 1800 px: warned, allowed
    assert load_rgb(ok).size == (45, 40)
    bomb = write_image(tmp_path / "bomb.png", seed=2, size=(50, 50))  # 2500 px: refused
    with pytest.raises(ImageDecodeError, match="decompression bomb|exceeds limit"):
        load_rgb(bomb)


# ---------------------------------------------------------------------------------------------
# CSV manifests
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["../outside.png", "ABS"])
def test_manifest_paths_outside_its_folder_are_refused(tmp_path, tiny_backbone, where):
    outside = write_image(tmp_path / "outside.png", seed=1)
    (tmp_path / "m").mkdir()
    write_image(tmp_path / "m" / "in.png", seed=2)
    p = str(outside) if where == "ABS" else where
    csv = tmp_path / "m" / "list.csv"
    csv.write_text(f"path,label\nin.png,a\n{p},b\n")
    with pytest.raises(FeatxError, match="outside the manifest's folder.*--allow-outside-root"):
        open_source(csv)
    src = open_source(csv, allow_outside_root=True)
    assert sorted(it.path for it in src.items) == sorted(
        [str(tmp_path / "m" / "in.png"), str(outside)]
    )
    r = extract(
        csv,
        tiny_backbone,
        store=tmp_path / "s.h5",
        options=ExtractOptions(workers=0, allow_outside_root=True),
    )
    assert r.n_items == 2


@pytest.mark.parametrize(
    "row, match",
    [("a.png", "1 field\\(s\\) but the header has 2"), ("a.png,x,extra", "3 field")],
)
def test_manifest_row_without_its_label_field_is_an_error(tmp_path, row, match):
    write_image(tmp_path / "a.png", seed=0)
    write_image(tmp_path / "b.png", seed=1)
    csv = tmp_path / "m.csv"
    csv.write_text(f"path,label\nb.png,x\n{row}\n")
    with pytest.raises(FeatxError, match=f"line 3: {match}"):
        open_source(csv)
    csv.write_text("path,label\nb.png,x\na.png,\n")  # an explicit empty label stays legal
    assert {it.key: it.label for it in open_source(csv).items} == {"a.png": -1, "b.png": 0}


# ---------------------------------------------------------------------------------------------
# locks and read-only folders
# ---------------------------------------------------------------------------------------------
_HOLD = """
import os, sys, time
from featx.store import StoreConfig, StoreWriter
cfg = StoreConfig(source={"s": 1}, backbone={"b": 1})
w = StoreWriter(sys.argv[1], cfg).__enter__()
if sys.argv[2] == "fork":
    if os.fork() == 0:  # like a DataLoader worker: inherits every descriptor, lives on
        time.sleep(60)
        os._exit(0)
print(os.getpid(), flush=True)
time.sleep(60)
"""


def _start_holder(store: Path, mode: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(store), mode],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pid = int(proc.stdout.readline())
    return proc, pid


def test_held_lock_names_the_holder_pid(tmp_path):
    store = tmp_path / "s.h5"
    proc, pid = _start_holder(store, "plain")
    try:
        cfg = StoreConfig(source={"s": 1}, backbone={"b": 1})
        with pytest.raises(StoreLockedError, match=f"featx process {pid} is writing"):
            StoreWriter(store, cfg).__enter__()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def test_lock_is_not_inherited_by_forked_workers(tmp_path):
    """kill -9 of the writer frees the store at once, although its forked child lives on."""
    store = tmp_path / "s.h5"
    proc, pid = _start_holder(store, "fork")
    try:
        os.kill(pid, signal.SIGKILL)
        proc.wait()
        cfg = StoreConfig(source={"s": 1}, backbone={"b": 1})
        with StoreWriter(store, cfg):  # no "another featx process" while the child sleeps
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()


@contextlib.contextmanager
def _read_only(folder: Path):
    """Make ``folder`` read-only: a read-only bind mount as root (root ignores modes), else
    chmod. Skips when neither is possible."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & 0o555)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    mnt = ["mount", "--bind", str(folder), str(folder)]
    if subprocess.run(mnt, capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only folder here (no bind mount)")
    try:
        ro = ["mount", "-o", "remount,bind,ro", str(folder)]
        if subprocess.run(ro, capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_noop_run_needs_no_write_access(image_folder, tiny_backbone, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    store = out / "s.h5"
    _run(image_folder, tiny_backbone, store)
    (out / "s.h5.lock").unlink(missing_ok=True)  # a copied store has no lock file (nor, now, any)
    with _read_only(out):
        assert _run(image_folder, tiny_backbone, store).noop
        write_image(image_folder / "cat" / "new.png", seed=50)
        with pytest.raises(errors.StoreReadOnlyError, match="cannot write .*--store PATH"):
            _run(image_folder, tiny_backbone, store)
    assert _run(image_folder, tiny_backbone, store).n_new == 1


# ---------------------------------------------------------------------------------------------
# disk full
# ---------------------------------------------------------------------------------------------
class WideBackbone(TinyBackbone):
    """TinyBackbone with 2048 dense (no ReLU: incompressible) features per image."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        g = torch.Generator().manual_seed(0)
        conv = torch.nn.Conv2d(3, 2048, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
        self.model = torch.nn.Sequential(
            conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        ).eval()
        self.dim = 2048


_FULL = """
import sys
from pathlib import Path
from test_hardening import WideBackbone
from featx.extraction import ExtractOptions, extract
try:
    extract(sys.argv[1], WideBackbone(), store=sys.argv[2],
            options=ExtractOptions(batch_size=8, workers=0, checkpoint_every=40))
except Exception as exc:
    if type(exc).__name__ != "DiskFullError":
        raise
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


@contextlib.contextmanager
def _tiny_disk(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if subprocess.run(mnt, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_disk_full_in_the_final_merge_is_one_line_not_a_segfault(tmp_path):
    """A real full disk (a 1 MB tmpfs): the parts fit, the merged store does not. Before the
    fix HDF5 kept the half-written file open and the process died with SIGSEGV (exit 139)."""
    src = tmp_path / "src"
    for i in range(80):
        write_image(src / f"{i:03d}.png", seed=i, size=(8, 8))
    with _tiny_disk(tmp_path / "disk", "1m") as disk:
        store = disk / "s.h5"
        r = _py(_FULL, str(src), str(store), timeout=300)
        assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
        msg = r.stderr.strip().splitlines()[-1]
        assert "the disk is full: free" in msg and f"MB in {disk}" in msg
        assert "no finished work was lost" in msg
        parts = sorted((disk / "s.h5.parts").glob("part-*.h5"))
        assert len(parts) == 2 and not store.exists()
        assert not list(disk.glob("s.h5.tmp-*"))
        moved = tmp_path / "big" / "s.h5"  # room again: the run resumes from its parts
        moved.parent.mkdir()
        shutil.copytree(disk / "s.h5.parts", moved.parent / "s.h5.parts")
    r = _py(_FULL, str(src), str(moved))
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_features(moved).X.shape == (80, 2048)


_FSIZE = """
import resource, signal, sys
import numpy as np
from featx.store import Rows, StoreConfig, StoreWriter
cfg = StoreConfig(source={"s": 1}, backbone={"b": 1})
n, d = 600, 512
rng = np.random.default_rng(0)
with StoreWriter(sys.argv[1], cfg) as w:
    rows = {}
    for p in range(3):
        keys = [f"k{p}-{i:04d}" for i in range(n)]
        X = rng.normal(size=(n, d)).astype(np.float32)
        part = w.write_part(Rows(keys, X, [1] * n, [1] * n, [""] * n, [], [], [], [], []))
        rows.update({k: (str(part), i) for i, k in enumerate(keys)})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, resource.RLIM_INFINITY))
    try:
        w.commit(rows=rows, failed={}, labels={}, split={}, classes=(),
                 fingerprints={k: (1, 1, "") for k in rows}, attrs={"dim": d})
    except OSError as exc:
        print(exc.errno, file=sys.stderr)
        sys.exit(3)
"""


def test_a_failed_write_in_the_merge_closes_the_file_before_removing_it(tmp_path):
    """Any user can make writes fail (RLIMIT_FSIZE: EFBIG past 2 MB): same crash path as a full
    disk. The error surfaces, the process exits normally, old store and parts are intact."""
    store = tmp_path / "s.h5"
    r = _py(_FSIZE, str(store))
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip() == "27"  # EFBIG
    assert len(list(tmp_path.glob("s.h5.parts/part-*.h5"))) == 3
    assert not store.exists() and not list(tmp_path.glob("s.h5.tmp-*"))


def test_disk_full_while_writing_parts_says_what_to_free(
    image_folder, tiny_backbone, tmp_path, monkeypatch
):
    def full(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StoreWriter, "write_part", full)
    store = tmp_path / "s.h5"
    with pytest.raises(
        errors.DiskFullError, match=f"free \\d+ MB in {tmp_path} and rerun; no finished"
    ):
        _run(image_folder, tiny_backbone, store, checkpoint_every=4)
    assert not store.exists()


# ---------------------------------------------------------------------------------------------
# integrity
# ---------------------------------------------------------------------------------------------
def _random_store(path: Path, n: int = 1500, dim: int = 64) -> None:
    cfg = StoreConfig(source={"s": 1}, backbone={"b": 1})
    rng = np.random.default_rng(0)
    keys = [f"c{i % 3}/img_{i:05d}.png" for i in range(n)]
    X = rng.normal(size=(n, dim)).astype(np.float32)
    with StoreWriter(path, cfg) as w:
        part = w.write_part(
            Rows(keys, X, [1] * n, [2] * n, [""] * n, ["bad.png"], ["empty"], [0], [0], [""])
        )
        w.commit(
            rows={k: (str(part), i) for i, k in enumerate(keys)},
            failed={"bad.png": ("empty", 0, 0, "", "")},
            labels={k: i % 3 for i, k in enumerate(keys)},
            split={},
            classes=("a", "b", "c"),
            fingerprints={k: (1, 2, "") for k in keys},
            attrs={"dim": dim, "backbone": "test"},
        )


_DAMAGE = """
import json, os, shutil, sys
import numpy as np
from featx.store import load_features, verify_store
path, trials = sys.argv[1], int(sys.argv[2])
ref = load_features(path)
size = os.path.getsize(path)
rng = np.random.default_rng(1)
out = {"detected": 0, "intact": 0, "silent": []}
for t in range(trials):
    bad = path + ".damaged"
    shutil.copy(path, bad)
    off = int(rng.integers(0, size // 4096 + 1)) * 4096
    with open(bad, "r+b") as f:
        f.seek(off)
        f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    if not verify_store(bad).ok:
        out["detected"] += 1
        continue
    fs = load_features(bad)  # verify said ok: then every value must be the original one
    same = (np.array_equal(fs.X, ref.X) and list(fs.keys) == list(ref.keys)
            and np.array_equal(fs.y, ref.y) and fs.classes == ref.classes and fs.meta == ref.meta)
    out["intact" if same else "silent"] += 1 if same else [off]
print(json.dumps(out))
"""


def test_verify_catches_random_4k_damage(tmp_path):
    """40 random 4 KB blocks of garbage, one per copy: verify flags the copy, or the copy reads
    back identical (the block hit unused space). Nothing is silently wrong, nothing crashes."""
    import h5py

    store = tmp_path / "s.h5"
    _random_store(store)
    with h5py.File(store) as f:
        assert f["features"].fletcher32 and f["labels"].fletcher32
    r = _py(_DAMAGE, str(store), "40")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["silent"] == []
    assert out["detected"] + out["intact"] == 40 and out["detected"] >= 30


def test_verify_and_info_verify_exit_codes(tmp_path):
    from click.testing import CliRunner

    from featx.cli import cli

    store = tmp_path / "s.h5"
    _random_store(store, n=300)
    runner = CliRunner()
    r = runner.invoke(cli, ["verify", str(store)])
    assert r.exit_code == 0 and ": ok (300 rows x 64" in r.stdout
    data = bytearray(store.read_bytes())
    with __import__("h5py").File(store) as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    data[offset + 100 : offset + 104] = b"\x00\xff\x00\xff"
    store.write_bytes(bytes(data))
    for args in (["verify", str(store)], ["info", "--verify", str(store)]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 1, args
        assert "damaged" in r.stderr and "Traceback" not in r.stderr
    r = runner.invoke(cli, ["fit", str(store)])  # reading it names the damage, not a crash
    assert r.exit_code == 1 and "featx verify" in r.stderr


# ---------------------------------------------------------------------------------------------
# CSV outputs
# ---------------------------------------------------------------------------------------------
def test_csv_cells_that_start_a_formula_are_neutralised(tmp_path):
    import csv

    from featx.comparison import compare
    from featx.csvsafe import safe_cell
    from featx.features import FeatureSet

    for bad in ('=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert safe_cell(bad) == "'" + bad
    for fine in ("-0.5", "+3", "1e-3", "cat", "", 7, None):
        assert safe_cell(fine) == fine
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    X = (rng.normal(size=(60, 4)) + y[:, None] * 3).astype(np.float32)
    keys = np.array([f"k{i:02d}" for i in range(60)], dtype=object)
    fs = FeatureSet(X, y, ("a", "b"), None, keys, {})
    board = compare({'=HYPERLINK("http://evil")': fs}, ["centroid"])
    rows = list(csv.DictReader(board.to_csv(tmp_path / "lb.csv").splitlines()))
    assert rows[0]["store"] == """'=HYPERLINK("http://evil")"""
    assert not any(v.startswith(("=", "+", "@")) for row in rows for v in row.values())


def test_predict_quotes_formulas_and_works_from_a_read_only_cache(tmp_path):
    """Class and file names that start a formula are quoted in preds.csv; with the cache folder
    read-only, an up-to-date cached store is used and new images go to a temporary store."""
    import csv

    from click.testing import CliRunner
    from PIL import Image

    from featx.cli import cli

    def invoke(*args):
        r = CliRunner().invoke(cli, [str(a) for a in args])
        assert r.exit_code == 0, r.output + (r.stderr or "")
        return r

    bb = ["-b", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0", "-q"]
    classes = ("=red", "green", "@blue")
    for split, n in (("train", 6), ("new", 2)):
        for c, name in enumerate(classes):
            for i in range(n):
                arr = np.random.default_rng(i + 10 * c).integers(0, 90, (28, 28, 3), np.uint8)
                arr[..., c] += 160
                (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(tmp_path / split / name / f"{i}.png")
    store = tmp_path / "train.h5"
    invoke("extract", tmp_path / "train", *bb, "--store", store)
    bundle = tmp_path / "h.npz"
    invoke("fit", store, "--head", "centroid", "--out", bundle)
    out = tmp_path / "p.csv"
    invoke("predict", bundle, tmp_path / "new", "--out", out, "--workers", "0", "-q")
    rows = list(csv.reader(out.read_text().splitlines()))
    cells = [c for row in rows[1:] for c in row]
    assert not [c for c in cells if c.startswith(("=", "+", "@"))]
    assert "'=red" in cells and "'@blue" in cells
    assert os.path.join(str(tmp_path / "new"), "=red", "0.png") in cells  # paths as reachable
    cache = Path(os.environ["FEATX_CACHE_DIR"])
    before = sorted(p.name for p in cache.iterdir())
    with _read_only(cache):
        r = invoke(
            "predict", bundle, tmp_path / "new", "--out", out, "--workers", "0", "-q", "--json"
        )
        assert json.loads(r.stdout)["n_extracted"] == 0  # the cached store, read without a lock
        write_image(tmp_path / "new" / "green" / "extra.png", seed=3)
        r = invoke(
            "predict", bundle, tmp_path / "new", "--out", out, "--workers", "0", "-q", "--json"
        )
        res = json.loads(r.stdout)
        assert res["n_predicted"] == 7 and res["n_extracted"] == 7  # into a temporary store
    assert sorted(p.name for p in cache.iterdir()) == before
