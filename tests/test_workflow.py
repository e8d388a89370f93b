"""End to end: extract -> fit -> compare -> predict -> run, through the CLI and real backbones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featx.cli import cli

BB = ["-b", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0", "-q"]


def _tinted(root: Path, n_per_class: int = 12, classes=("red", "green", "blue"), seed=0) -> Path:
    """Images whose dominant colour is the class: learnable from random-weight features."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 90, size=(28, 28, 3), dtype=np.uint8)
            arr[..., c] += 160
            Image.fromarray(arr).save(root / name / f"{i:02d}.png")
    return root


def _invoke(args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + (r.stderr or "")
    return r


@pytest.fixture
def store(tmp_path) -> Path:
    src = _tinted(tmp_path / "train")
    path = tmp_path / "train.h5"
    _invoke(["extract", src, *BB, "--store", path])
    return path


def test_fit_reports_metrics_and_writes_a_bundle(store, tmp_path):
    bundle = tmp_path / "head.joblib"
    r = _invoke(["fit", store, "--head", "logreg", "--out", bundle, "--json"])
    res = json.loads(r.stdout)
    for key in ("head", "accuracy", "balanced_accuracy", "macro_f1", "fit_seconds"):
        assert key in res
    assert res["accuracy"] >= 0.8 and res["n_test"] > 0
    assert bundle.is_file() and res["bundle"] == str(bundle)
    r = _invoke(
        [
            "fit",
            store,
            "--head",
            "knn",
            "--param",
            "k=3",
            "--cv",
            "3",
            "--out",
            tmp_path / "k.joblib",
        ]
    )
    assert "accuracy" in r.stdout and "±" in r.stdout


def test_compare_leaderboard_csv_and_report(store, tmp_path):
    report = tmp_path / "rep"
    r = _invoke(
        [
            "compare",
            store,
            "--heads",
            "logreg,knn,centroid,ridge",
            "--csv",
            tmp_path / "lb.csv",
            "--report",
            report,
        ]
    )
    assert r.stdout.count("resnet18") >= 4
    rows = list(csv.DictReader((tmp_path / "lb.csv").read_text().splitlines()))
    assert {row["head"] for row in rows} == {"logreg", "knn", "centroid", "ridge"}
    assert (report / "accuracy_vs_fit_time.png").read_bytes()[:4] == b"\x89PNG"
    assert (report / "confusion_matrix.png").is_file()
    r = _invoke(["compare", store, "--heads", "logreg,centroid", "--json"])
    assert len(json.loads(r.stdout)["results"]) == 2


def test_predict_from_raw_images_end_to_end(store, tmp_path):
    bundle = tmp_path / "head.joblib"
    _invoke(["fit", store, "--head", "logreg", "--out", bundle])
    new = _tinted(tmp_path / "new", n_per_class=3, seed=7)
    out = tmp_path / "preds.csv"
    r = _invoke(["predict", bundle, new, "--out", out, "--workers", "0", "-q", "--json"])
    res = json.loads(r.stdout)
    assert res["n_predicted"] == 9 and res["n_extracted"] == 9
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 9
    assert set(rows[0]) == {"path", "predicted", "true_label", "p_blue", "p_green", "p_red"}
    for row in rows:
        total = sum(float(row[f"p_{c}"]) for c in ("blue", "green", "red"))
        assert abs(total - 1) < 1e-4
    assert res["accuracy"] >= 0.75
    # The new images' store is cached: a second prediction extracts nothing.
    r = _invoke(["predict", bundle, new, "--out", out, "--workers", "0", "-q", "--json"])
    assert json.loads(r.stdout)["n_extracted"] == 0


def test_predict_refuses_bad_bundles(store, tmp_path):
    junk = tmp_path / "junk.joblib"
    junk.write_bytes(b"not a bundle")
    r = _invoke(["predict", junk, tmp_path], ok=False)
    assert r.exit_code == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    # A bundle whose feature dim differs from what its recorded backbone gives.
    from featx.bundle import save_bundle
    from featx.heads import make_head
    from featx.store import load_features

    fs = load_features(store)
    est = make_head("centroid").fit(fs.X[:, :5], fs.y)
    meta = {**fs.meta, "dim": 5}
    save_bundle(tmp_path / "small.joblib", est, fs.classes, meta)
    r = _invoke(["predict", tmp_path / "small.joblib", tmp_path / "train"], ok=False)
    assert r.exit_code == 1 and "5-d" in r.stderr


def test_fit_needs_labels(tmp_path):
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 20, 3), i * 30, np.uint8)).save(flat / f"{i}.png")
    path = tmp_path / "u.h5"
    _invoke(["extract", flat, *BB, "--store", path])
    r = _invoke(["fit", path], ok=False)
    assert r.exit_code == 1 and "label" in r.stderr.lower()
    r = _invoke(["fit", path, "--head", "nosuch"], ok=False)
    assert r.exit_code == 1


def test_run_pipeline(tmp_path):
    _tinted(tmp_path / "imgs")
    toml = tmp_path / "p.toml"
    toml.write_text(
        'name = "t"\nreport = "rep"\nsources = ["imgs"]\n'
        '[[backbones]]\nname = "resnet18"\nweights = "none"\nimage_size = 32\n'
        "[extract]\nworkers = 0\n"
        "[protocol]\nseed = 1\n"
        '[[heads]]\nname = "logreg"\n[[heads]]\nname = "knn"\nparams = { k = 3 }\n'
    )
    r = _invoke(["run", toml, "-q", "--json"])
    res = json.loads(r.stdout)
    rows = res["leaderboards"]["imgs"]["results"]
    assert {row["head"] for row in rows} == {"logreg", "knn"}
    assert (tmp_path / "rep" / "leaderboard.md").is_file()
    # the second run reuses the cached store
    store = next(iter(res["stores"]["imgs"].values()))
    mtime = Path(store).stat().st_mtime_ns
    _invoke(["run", toml, "-q"])
    assert Path(store).stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "body, match",
    [
        ('sources = ["x"]\nbackbones = ["resnet18"]\nheads = ["logreg"]\nfoo = 1\n', "unknown key"),
        ('sources = ["x"]\nbackbones = ["resnet18"]\nheads = ["nosuch"]\n', "nosuch"),
        ('sources = ["x"]\nheads = ["logreg"]\n', "backbones"),
        ("this is not toml =", "not valid TOML"),
    ],
)
def test_bad_pipeline_files(tmp_path, body, match):
    toml = tmp_path / "p.toml"
    toml.write_text(body)
    r = _invoke(["run", toml], ok=False)
    assert r.exit_code == 1 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_pipeline(tmp_path):
    """The embedded default experiment, exactly as `make demo` runs it (`featx demo`)."""
    r = _invoke(["demo", "-q", "--json", "--report", tmp_path / "demo"])
    rows = json.loads(r.stdout)["leaderboards"]["digits"]["results"]
    assert len({row["head"] for row in rows}) >= 4
    best = max(row["accuracy"] for row in rows)
    assert best > 0.9  # real ImageNet features separate handwritten digits
    assert (tmp_path / "demo" / "confusion_matrix.png").is_file()


@pytest.mark.parametrize(
    "path",
    sorted(
        [
            *(Path(__file__).resolve().parents[1] / "pipelines").glob("*.toml"),
            *(Path(__file__).resolve().parents[1] / "featx" / "examples").glob("*.toml"),
        ]
    ),
    ids=lambda p: p.name,
)
def test_shipped_pipelines_are_valid(path):
    from featx.pipeline import load_pipeline

    pl = load_pipeline(path)
    assert pl.sources and pl.backbones and len(pl.heads) >= 3
    from featx.backbones import resolve_name

    for b in pl.backbones:
        resolve_name(b["name"])  # every backbone exists in the registry
