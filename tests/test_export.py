"""featx export (npz, Parquet, CSV) and featx predict on single files and glob patterns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_image

from featx.cli import cli
from featx.store import load_features


def _invoke(args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + (r.stderr or "")
    return r


@pytest.fixture
def split_store(tmp_path, tiny_backbone) -> Path:
    """A store with labels, splits, one unlabeled item and one failed item."""
    from featx.extraction import extract
    from featx.options import ExtractOptions

    root = tmp_path / "src"
    rows = [("path", "label", "split")]
    for i in range(6):
        write_image(root / f"{i}.png", seed=i)
        rows.append(
            (f"{i}.png", ["cat", "dog"][i % 2] if i != 5 else "", "train" if i < 4 else "test")
        )
    (root / "bad.png").write_bytes(b"junk")
    rows.append(("bad.png", "cat", "train"))
    manifest = root / "m.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    store = tmp_path / "s.h5"
    extract(str(manifest), tiny_backbone, store=store, options=ExtractOptions(workers=0))
    return store


def _expected(store: Path):
    fs = load_features(store)
    labels = [fs.classes[y] if y >= 0 else "" for y in fs.y]
    return fs, labels


def test_export_npz(split_store, tmp_path):
    r = _invoke(["export", split_store, "--json"])
    res = json.loads(r.stdout)
    out = Path(res["out"])
    assert out == split_store.with_suffix(".npz") and res["format"] == "npz"
    assert res["n_items"] == 6 and res["dim"] == 8 and res["n_failed_left_out"] == 1
    fs, labels = _expected(split_store)
    with np.load(out) as z:  # no pickles: plain string and float arrays
        np.testing.assert_array_equal(z["features"], fs.X)
        assert list(z["ids"]) == list(fs.keys)
        assert list(z["label"]) == labels and labels[-1] == ""  # 5.png is unlabeled
        assert list(z["split"]) == list(fs.split)
        assert list(z["label_index"]) == list(fs.y)
        assert list(z["classes"]) == ["cat", "dog"]


def test_export_parquet_reads_back_in_pandas(split_store, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    out = tmp_path / "out" / "feats.parquet"
    r = _invoke(["export", split_store, "--out", out])  # format from the suffix
    assert "parquet" in r.stdout
    df = pd.read_parquet(out)
    fs, labels = _expected(split_store)
    assert list(df.columns) == ["id", "label", "split", "features"]
    np.testing.assert_array_equal(np.stack(df["features"]), fs.X)
    assert df["label"].isna().tolist() == [lab == "" for lab in labels]
    assert df["label"].fillna("").tolist() == labels
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(out).metadata[b"featx"])
    assert meta["backbone"] == "test/tiny" and meta["classes"] == ["cat", "dog"]


def test_export_csv_round_trips_float32_exactly(split_store, tmp_path):
    out = tmp_path / "feats.txt"
    _invoke(["export", split_store, "--format", "csv", "--out", out])
    rows = list(csv.reader(out.read_text().splitlines()))
    fs, labels = _expected(split_store)
    assert rows[0] == ["id", "label", "split"] + [f"f{j}" for j in range(8)]
    X = np.array([[float(v) for v in r[3:]] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(X, fs.X)
    assert [r[1] for r in rows[1:]] == labels


def test_export_errors_leave_nothing_behind(split_store, tmp_path):
    r = _invoke(["export", tmp_path / "missing.h5"], ok=False)
    assert r.exit_code == 1 and "does not exist" in r.stderr
    r = _invoke(["export", split_store, "--out", split_store, "--format", "npz"], ok=False)
    assert r.exit_code == 1 and "the store itself" in r.stderr
    assert load_features(split_store).n == 6  # untouched
    assert not list(tmp_path.glob("*.tmp-*"))


def test_an_export_sweeps_what_a_killed_export_left(split_store, tmp_path):
    """A killed export cannot remove its temporary; the next write of that file does (only the
    dead writer's: a live writer's temporary stays)."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = tmp_path / "x.npz"
    killed = tmp_path / f"x.npz.tmp-{dead.stdout.strip()}-abc123"
    legacy = tmp_path / f"x.npz.tmp-{dead.stdout.strip()}"  # the name older featx used
    live = tmp_path / f"x.npz.tmp-{os.getppid()}-def456"
    for p in (killed, legacy, live):
        p.write_bytes(b"half")
    _invoke(["export", split_store, "--out", out])
    assert out.is_file() and not killed.exists() and not legacy.exists()
    assert live.exists()


def test_export_formats_are_one_registry():
    import click

    from featx.export import ExportFormat, export_formats, register_export_format

    assert export_formats()[0] == "npz" and {"parquet", "csv"} <= set(export_formats())
    fmt = next(p for p in cli.commands["export"].params if p.name == "fmt")
    assert isinstance(fmt.type, click.Choice) and tuple(fmt.type.choices) == export_formats()
    with pytest.raises(ValueError, match="already registered"):
        register_export_format(ExportFormat("csv", ".csv", lambda *a: None))


def test_export_parquet_without_pyarrow_says_what_to_install(split_store, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    r = _invoke(["export", split_store, "--format", "parquet"], ok=False)
    assert r.exit_code == 1 and "featx[parquet]" in r.stderr
    assert not split_store.with_suffix(".parquet").exists()


def test_predict_a_single_file_and_a_glob(tmp_path):
    from test_workflow import BB, _tinted

    train = _tinted(tmp_path / "train")
    store = tmp_path / "train.h5"
    _invoke(["extract", train, *BB, "--store", store])
    bundle = tmp_path / "head.joblib"
    _invoke(["fit", store, "--head", "logreg", "--out", bundle])
    new = _tinted(tmp_path / "new", n_per_class=2, seed=3)
    (new / "notes.txt").write_text("not an image")
    out = tmp_path / "one.csv"
    one = new / "green" / "00.png"
    r = _invoke(["predict", bundle, one, "--out", out, "--workers", "0", "-q", "--json"])
    res = json.loads(r.stdout)
    assert res["n_predicted"] == 1 and res["n_extracted"] == 1
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [row["path"] for row in rows] == [str(one)]
    assert rows[0]["predicted"] == "green"

    pattern = str(new / "*" / "*.png")
    r = _invoke(["predict", bundle, pattern, "--out", out, "--workers", "0", "-q", "--json"])
    res = json.loads(r.stdout)
    assert res["n_predicted"] == 6 and res["n_extracted"] == 5  # the single file was cached
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [row["path"] for row in rows] == sorted(str(p) for p in new.glob("*/*.png"))
    assert sum(row["predicted"] == Path(row["path"]).parent.name for row in rows) >= 5

    r = _invoke(["predict", bundle, str(new / "**"), "--out", out, "-q", "--json"])
    assert json.loads(r.stdout)["n_failed"] == 1  # notes.txt: recorded, not predicted
    r = _invoke(["predict", bundle, str(new / "*.jpeg"), "--out", out, "-q"], ok=False)
    assert r.exit_code == 1 and "no file matches" in r.stderr
