"""featx diagnose: planted duplicates, leaks, flipped labels and outliers are found; a clean store
flags nearly nothing; the manifest cleans fit/compare; the report renders."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import cli
from featx.diagnostics.checks import confident_learning, duplicate_groups, robust_z
from featx.diagnostics.neighbors import knn, resolve_index, unit_rows
from featx.errors import FeatxError
from featx.features import FeatureSet

FAST = featx.DiagnoseOptions(map="none")  # the default heads (ridge,knn), no map


def clusters(n_per_class=80, K=4, dim=24, sep=1.5, seed=0, split=True):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    X = (rng.normal(size=(K, dim))[y] * sep + rng.normal(size=(len(y), dim))).astype(np.float32)
    keys = np.array([f"item{i:04d}" for i in range(len(y))])
    sp = np.where(rng.random(len(y)) < 0.75, "train", "test") if split else None
    return X, y, keys, sp


def planted(seed=0):
    """A store with 5 cross-split copies, 12 flipped labels, 3 junk items."""
    X, y, keys, sp = clusters(seed=seed)
    rng = np.random.default_rng(seed + 1)
    n = len(y)
    src = np.arange(200, 205)
    X[0:5] = X[src] * 1.0001  # the same embeddings (scaled: cosine 1), the same label
    y[0:5] = y[src]
    sp[0:5], sp[src] = "test", "train"
    flip = rng.choice(np.arange(10, 190), 12, replace=False)
    y_noisy = y.copy()
    y_noisy[flip] = (y[flip] + 1) % 4
    junk = np.array([n - 3, n - 2, n - 1])
    X[junk] = rng.normal(size=(3, X.shape[1])).astype(np.float32) * 12
    fs = FeatureSet(X=X, y=y_noisy, classes=("ant", "bee", "cat", "dog"), split=sp, keys=keys)
    return fs, keys[0:5].tolist(), set(keys[flip].tolist()), set(keys[junk].tolist())


# ---------------------------------------------------------------------------------------------
# the checks on numpy arrays
# ---------------------------------------------------------------------------------------------


def test_exact_knn_matches_brute_force():
    rng = np.random.default_rng(3)
    X = unit_rows(rng.normal(size=(300, 16)))
    idx, sim = knn(X, 5)
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    want = np.argsort(-S, axis=1)[:, :5]
    assert (idx == want).all()
    np.testing.assert_allclose(sim, np.take_along_axis(S, want, axis=1), rtol=1e-5)
    sub = np.arange(0, 300, 3)
    idx2, _ = knn(X, 3, rows=sub)
    assert np.isin(idx2, sub).all()  # searched among the given rows only, indices into X


def test_faiss_index_agrees_with_exact_search():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(20, 32))  # embeddings are clustered, not isotropic
    X = unit_rows(centres[rng.integers(0, 20, 2000)] * 2 + rng.normal(size=(2000, 32)))
    X[1000:1010] = X[:10]
    ie, _ = knn(X, 5, index="exact")
    assert resolve_index("faiss", 2000) == "exact"  # small searches stay exact
    ia, sa = knn(X, 5, index="faiss")
    assert (ia[:10, 0] == np.arange(1000, 1010)).all() and (sa[:10, 0] > 0.9999).all()
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ie, ia, strict=True)]) > 0.9


def test_ivf_index_agrees_with_exact_search():
    """The built-in inverted file: copies found, similarities exact, neighbours nearly all."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(20, 32))
    X = unit_rows(centres[rng.integers(0, 20, 2500)] * 2 + rng.normal(size=(2500, 32)))
    X[1000:1010] = X[:10]
    ie, _ = knn(X, 5, index="exact")
    ia, sa = knn(X, 5, index="ivf")
    assert (ia[:10, 0] == np.arange(1000, 1010)).all() and (sa[:10, 0] > 0.9999).all()
    np.testing.assert_allclose(sa, np.take_along_axis(X @ X.T, ia, axis=1), atol=1e-5)
    assert (ia != np.arange(2500)[:, None]).all()  # never its own neighbour
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ie, ia, strict=True)]) > 0.9
    assert resolve_index("auto", 30_000) == "ivf" and resolve_index("ivf", 2000) == "exact"


def _angles(deg):
    """Unit vectors in the plane at these angles (cosine of two = cos of their difference)."""
    t = np.radians(np.asarray(deg, dtype=np.float64))
    return np.column_stack([np.cos(t), np.sin(t)]).astype(np.float32)


def test_duplicate_groups_need_every_pair_above_the_threshold():
    """A chain 0 - 12 - 30 degrees (cos 0.978 and 0.951 between neighbours, 0.866 end to end) at
    threshold 0.94: chaining the links would give one group of three; a group means every two
    members are near-duplicates, so 30 stays out. A close trio (0, 3, 6) is one group."""
    X = _angles([0, 12, 30, 90, 93, 96, 180])
    idx, sim = knn(X, 2)
    assert duplicate_groups(X, idx, sim, 0.94) == [[0, 1], [3, 4, 5]]
    assert duplicate_groups(X, idx, sim, 0.9999) == []


def test_a_tight_cluster_is_not_one_duplicate_group():
    """80 items spread along an arc, each within the threshold of its neighbours only: the
    groups stay small and every member of a group is similar to every other."""
    X = _angles(np.linspace(0, 40, 80))
    idx, sim = knn(X, 10)
    groups = duplicate_groups(X, idx, sim, 0.999)  # about 2.6 degrees
    assert groups and max(len(g) for g in groups) <= 6
    for g in groups:
        assert (X[g] @ X[g].T).min() >= 0.999 - 1e-6


def test_confident_learning_finds_confident_flips_only():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 50)
    p = np.full((150, 3), 0.05)
    p[np.arange(150), y] = 0.9
    p += rng.uniform(0, 0.02, size=p.shape)
    p[[3, 70], :] = [0.02, 0.03, 0.95]  # labelled 0 and 1, confidently class 2
    p[[100], :] = [0.4, 0.3, 0.3]  # labelled 2, unsure: not an issue
    p /= p.sum(axis=1, keepdims=True)
    issue, joint, thr = confident_learning(p, y)
    assert np.flatnonzero(issue).tolist() == [3, 70]
    assert joint.shape == (3, 3) and abs(joint.sum() - 1) < 1e-9 and (thr > 0.5).all()


def test_confident_learning_agrees_with_cleanlab():
    """On the same probabilities featx flags what cleanlab's find_label_issues flags (cleanlab
    is not a dependency: the check runs where it is installed, e.g. for the benchmarks)."""
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    rng = np.random.default_rng(0)
    same = 0
    for _ in range(40):
        n, K = int(rng.integers(60, 300)), int(rng.integers(2, 7))
        y = np.r_[np.arange(K), rng.integers(0, K, n - K)]
        logits = rng.normal(size=(n, K)) * rng.uniform(0.5, 3)
        logits[np.arange(n), y] += rng.uniform(0, 3)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        ours = confident_learning(p, y)[0]
        theirs = cleanlab_filter.find_label_issues(labels=y, pred_probs=p, n_jobs=1)
        assert (ours != theirs).sum() <= 1  # a count rounded the other way at an exact .5
        same += bool((ours == theirs).all())
    assert same >= 38


@pytest.mark.parametrize("K, offset", [(2, 50.0), (4, 0.0)])
def test_ridge_oof_is_the_ridge_head_per_fold(K, offset):
    """diagnose's ridge from fold statistics: the head's alpha (leave-one-out on the first
    fold) and, in every fold, the head's decision values and probabilities at that alpha on the
    held-out rows (a large common offset and a constant column included)."""
    from sklearn.model_selection import StratifiedKFold

    from featx.diagnostics.oof import ridge_oof
    from featx.heads import make_head

    rng = np.random.default_rng(K)
    y = rng.integers(0, K, 240)
    X = (rng.normal(size=(K, 12))[y] + 2 * rng.normal(size=(240, 12)) + offset).astype(np.float32)
    X[:, 3] = 7.0
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    P, alpha, scores = ridge_oof(X, y, folds)
    assert alpha == make_head("ridge").fit(X[folds[0][0]], y[folds[0][0]])[-1].alpha_
    for tr, te in folds:
        head = make_head("ridge", {"alpha": alpha}).fit(X[tr], y[tr])
        ref = head.decision_function(X[te])
        np.testing.assert_allclose(scores[te].reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(P[te], head.predict_proba(X[te]), atol=1e-4)


def test_robust_z_ignores_the_outliers_it_scores():
    z = robust_z(np.r_[np.linspace(1, 2, 99), 50.0])
    assert z[-1] > 20 and np.abs(z[:-1]).max() < 2


# ---------------------------------------------------------------------------------------------
# diagnose on a FeatureSet
# ---------------------------------------------------------------------------------------------


def test_planted_problems_are_found():
    fs, leaked, flipped, junk = planted()
    d = featx.diagnose(fs, options=FAST)
    assert sorted(d.leaked_keys()) == leaked
    assert all(g.leak and g.exact for g in d.duplicates[:5]) and len(d.duplicates) == 5
    for g in d.duplicates:  # the training copy is kept, the test copy excluded
        assert d.split[g.keep] == "train"
    found = set(d.label_issue_keys())
    assert len(found & flipped) >= 10, (found, flipped)  # recall >= 10/12
    assert len(found - flipped) <= 4, found - flipped  # few false alarms
    for f in d.flagged("label"):
        if f.key in flipped:  # the suggested label is the true one
            i = int(f.key[4:])
            assert f.suggested == fs.classes[(fs.y[i] - 1) % 4]
    assert junk <= {f.key for f in d.flagged("outlier")}
    scores = [f.score for f in d.flagged("label")]
    assert scores == sorted(scores, reverse=True)  # worst first
    assert d.overlap and {"a", "b", "neighbour_share", "confused"} <= set(d.overlap[0])


def test_a_clean_store_flags_nearly_nothing():
    X, y, keys, sp = clusters(n_per_class=100, seed=5, sep=2.0)
    fs = FeatureSet(X=X, y=y, classes=("a", "b", "c", "d"), split=sp, keys=keys)
    d = featx.diagnose(fs, options=FAST)
    assert not d.duplicates
    assert len(d.flags) <= 0.01 * fs.n, [f.to_dict() for f in d.flags]


def test_unlabeled_store_gets_duplicates_and_outliers_with_a_note():
    fs, _, _, junk = planted()
    fs = FeatureSet(X=fs.X, y=np.full(fs.n, -1), classes=(), split=None, keys=fs.keys, meta={})
    d = featx.diagnose(fs, options=FAST)
    assert d.label_quality is None and not d.flagged("label")
    assert len(d.duplicates) == 5 and not d.leaked_keys()  # no split: duplicates, not leaks
    assert junk <= {f.key for f in d.flagged("outlier")}
    assert any("no labels" in n for n in d.notes)


def test_one_class_is_a_one_line_error(tmp_path):
    X, _, keys, _ = clusters()
    fs = FeatureSet(X=X, y=np.zeros(len(X), dtype=np.int64), classes=("a",), split=None, keys=keys)
    with pytest.raises(FeatxError, match="one class") as exc:
        featx.diagnose(fs, options=FAST)
    assert "\n" not in str(exc.value)


def test_without_a_store_split_leakage_is_judged_on_compares_split():
    fs, *_ = planted()
    fs = FeatureSet(X=fs.X, y=fs.y, classes=fs.classes, split=None, keys=fs.keys)
    d = featx.diagnose(fs, options=FAST)
    assert set(np.unique(d.split)) <= {"train", "test"}
    assert any("no split" in n for n in d.notes)
    for key in d.leaked_keys():
        assert d.split[list(fs.keys).index(key)] == "test"


def test_nan_rows_are_left_out_with_a_note():
    fs, *_ = planted()
    X = fs.X.copy()
    X[7] = np.nan
    d = featx.diagnose(
        FeatureSet(X=X, y=fs.y, classes=fs.classes, split=fs.split, keys=fs.keys), options=FAST
    )
    assert any("NaN" in n for n in d.notes) and "item0007" not in {f.key for f in d.flags}


def test_options_are_checked():
    with pytest.raises(FeatxError, match="duplicate_threshold"):
        featx.DiagnoseOptions(duplicate_threshold=1.5)
    with pytest.raises(FeatxError, match="unknown head 'ridg'"):
        featx.diagnose(planted()[0], head="ridge,ridg")
    with pytest.raises(FeatxError, match="unknown option"):
        featx.diagnose(planted()[0], thresold=0.9)


# ---------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------


def test_manifest_round_trip_cleans_the_feature_set(tmp_path):
    fs, leaked, flipped, junk = planted()
    d = featx.diagnose(fs, options=FAST, report=tmp_path / "rep")
    m = featx.read_manifest(tmp_path / "rep" / "manifest.csv")
    assert set(leaked) | junk <= m.exclude
    assert len(set(m.relabel) & flipped) >= 10
    clean = featx.apply_manifest(fs, m)
    assert clean.n == fs.n - len(m.exclude)
    assert not set(leaked) & set(clean.keys.tolist())
    d2 = featx.diagnose(clean, options=FAST)
    assert not d2.leaked_keys() and len(d2.flagged("label")) < len(d.flagged("label"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("key,label\nx,a\n", "'key' and 'action'"),
        ("key,action,label\nitem0001,delete,\n", "unknown action 'delete'"),
        ("key,action,label\nitem0001,relabel,\n", "names no label"),
        ("key,action,label\nitem0001,relabel,zebra\n", "not a class"),
        ("key,action,label\nnope,exclude,\n", "none of them in this store"),
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path, text, match):
    p = tmp_path / "m.csv"
    p.write_text(text)
    with pytest.raises(FeatxError, match=match) as exc:
        featx.apply_manifest(planted()[0], p)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# the command line on a real (tiny) image store
# ---------------------------------------------------------------------------------------------


def _colour_image(path, rgb, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.array(rgb) + rng.uniform(-50, 50, size=3)  # every image its own shade
    arr = np.clip(base[None, None, :] + rng.normal(0, 20, size=(20, 20, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "RGB").save(path)


@pytest.fixture
def image_store(tmp_path, fake_backbone_family):
    """A CSV image source: 3 colour classes, a train image copied into test, a flipped label."""
    root = tmp_path / "src"
    colours = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}
    rows = []
    for c, (name, rgb) in enumerate(colours.items()):
        for i in range(14):
            p = root / name / f"{i:02d}.png"
            _colour_image(p, rgb, seed=100 * c + i)
            rows.append((f"{name}/{i:02d}.png", name, "test" if i >= 11 else "train"))
    shutil.copy(root / "red" / "00.png", root / "copy_of_red00.png")
    rows.append(("copy_of_red00.png", "red", "test"))
    rows[20] = (rows[20][0], "red", "train")  # a green image labelled red
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    store = tmp_path / "s.h5"
    r = CliRunner().invoke(
        cli,
        [
            "extract",
            str(root / "manifest.csv"),
            "-b",
            "tiny",
            "--store",
            str(store),
            "--workers",
            "0",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    return store


def test_cli_diagnose_report_and_cleaned_compare(image_store, tmp_path):
    runner = CliRunner()
    rep = tmp_path / "rep"
    # the 8-d toy embedding puts shades of a colour close together: only copies pass 0.9999
    args = [
        "diagnose",
        str(image_store),
        "--report",
        str(rep),
        "--head",
        "ridge",
        "--map",
        "pca",
        "--folds",
        "3",
        "--duplicate-threshold",
        "0.9999",
        "-q",
    ]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "leaked test items" in r.output and "copy_of_red00.png" in r.output
    for name in (
        "report.md",
        "report.html",
        "flagged.csv",
        "diagnosis.json",
        "manifest.csv",
        "map.png",
    ):
        assert (rep / name).stat().st_size > 0, name
    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3  # the map and thumbnails, inline
    assert "<script" not in page and "http" not in page  # static and self-contained
    data = json.loads((rep / "diagnosis.json").read_text())
    assert data["summary"]["leaked_items"] == 1
    labels = {f["key"]: f for f in data["flags"] if f["problem"] == "label"}
    assert labels["green/06.png"]["suggested_label"] == "green"

    r = runner.invoke(
        cli,
        [
            "diagnose",
            str(image_store),
            "--json",
            "-q",
            "--head",
            "ridge",
            "--map",
            "none",
            "--folds",
            "3",
            "--duplicate-threshold",
            "0.9999",
        ],
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["summary"]["leaked_items"] == 1

    manifest = rep / "manifest.csv"
    before = runner.invoke(
        cli, ["compare", str(image_store), "--heads", "centroid", "--json", "-q"]
    )
    r = runner.invoke(
        cli,
        [
            "compare",
            str(image_store),
            "--heads",
            "centroid",
            "--manifest",
            str(manifest),
            "--json",
            "-q",
        ],
    )
    assert r.exit_code == 0 and before.exit_code == 0, r.output
    before, after = json.loads(before.stdout), json.loads(r.stdout)
    with open(manifest, newline="") as f:
        n_excluded = sum(row["action"] == "exclude" for row in csv.DictReader(f))
    assert n_excluded >= 1 and after["n_items"] == before["n_items"] - n_excluded
    assert after["results"][0]["accuracy"] >= before["results"][0]["accuracy"]
    r = runner.invoke(
        cli, ["fit", str(image_store), "--head", "centroid", "--manifest", str(manifest), "--json"]
    )
    assert r.exit_code == 0, r.output

    r = runner.invoke(
        cli,
        [
            "compare",
            str(image_store),
            "--heads",
            "centroid",
            "--drop-leaked",
            "--duplicate-threshold",
            "0.9999",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "without 1 leaked test item(s)" in r.output and "without leaked" in r.output
    # the change table is aligned text like the leaderboards, not raw Markdown
    lines = r.output.splitlines()
    top = next(i for i, ln in enumerate(lines) if ln.startswith("store") and "change" in ln)
    assert "|" not in "".join(lines[top : top + 3])
    assert len(lines[top + 2]) == len(lines[top])  # numbers right-aligned under the header


def test_extract_with_a_manifest_stores_the_cleaned_source(image_store, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "key,action,label,reason\ncopy_of_red00.png,exclude,,leak\n"
        "green/06.png,relabel,green,label\n"
    )
    src = tmp_path / "src" / "manifest.csv"
    args = ["extract", str(src), "-b", "tiny", "--store", str(image_store), "--workers", "0"]
    r = CliRunner().invoke(cli, [*args, "-q", "--manifest", str(manifest)])
    assert r.exit_code == 0, r.output
    fs = featx.load_features(image_store)
    keys = fs.keys.tolist()
    assert "copy_of_red00.png" not in keys and len(keys) == 42
    assert fs.classes[fs.y[keys.index("green/06.png")]] == "green"
    r = CliRunner().invoke(cli, [*args, "-q"])  # without the manifest: the source as it is
    assert r.exit_code == 0 and featx.load_features(image_store).n == 43
    manifest.write_text("key,action,label\nnot/there.png,exclude,\n")
    r = CliRunner().invoke(cli, [*args, "-q", "--manifest", str(manifest)])
    assert r.exit_code == 1 and "none of them in source" in r.output


def test_pipeline_diagnose_step(image_store, tmp_path):
    src = tmp_path / "src" / "manifest.csv"
    toml = tmp_path / "p.toml"
    toml.write_text(
        f'name = "t"\nreport = "rep"\nsources = ["{src.as_posix()}"]\n'
        '[[backbones]]\nname = "tiny"\n[extract]\nworkers = 0\n'
        '[[heads]]\nname = "centroid"\n'
        '[diagnose]\nhead = "ridge"\nfolds = 3\nmap = "none"\nduplicate_threshold = 0.9999\n'
    )
    r = CliRunner().invoke(cli, ["run", str(toml), "-q", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)["diagnose"]["manifest.csv"]["tiny"]
    assert summary["leaked_items"] == 1
    assert (tmp_path / "rep" / "diagnose" / "tiny" / "report.html").is_file()
    toml.write_text(toml.read_text().replace("folds = 3", "fold = 3"))
    r = CliRunner().invoke(cli, ["run", str(toml), "-q"])
    assert r.exit_code == 1 and "unknown key 'fold' in [diagnose]" in r.output


def test_torchvision_store_report_shows_thumbnails(tmp_path, fake_backbone_family):
    """A torchvision source (a tiny MNIST planted in a temporary root, one test image a copy of
    a training image): the report reopens the dataset from the root the store recorded."""
    pytest.importorskip("torchvision")
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    test[0] = train[2]
    for prefix, imgs in (("train", train), ("t10k", test)):
        labels = np.arange(len(imgs), dtype=np.uint8) % 2
        labels[0] = 0 if prefix == "t10k" else labels[0]
        hdr = np.array([0x0803, len(imgs), 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(hdr + imgs.tobytes())
        hdr = np.array([0x0801, len(imgs)], dtype=">i4").tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(hdr + labels.tobytes())
    store, rep = tmp_path / "m.h5", tmp_path / "rep"
    runner = CliRunner()
    r = runner.invoke(
        cli,
        ["extract", "torchvision:MNIST", "--root", str(tmp_path / "mnist"), "-b", "tiny"]
        + ["--store", str(store), "--workers", "0", "-q"],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        cli,
        ["diagnose", str(store), "--report", str(rep), "--head", "centroid", "--map", "none"]
        + ["--folds", "2", "--duplicate-threshold", "0.9999", "-q"],
    )
    assert r.exit_code == 0, r.output
    page = (rep / "report.html").read_text()
    assert "could not be opened" not in page and "keys only" not in page
    assert 'alt="test/0000000" src="data:image/png;base64,' in page


def test_cli_one_class_store_is_a_one_line_error(tmp_path, fake_backbone_family):
    root = tmp_path / "one"
    for i in range(4):
        _colour_image(root / "only" / f"{i}.png", (100, 100, 100), i)
    store = tmp_path / "one.h5"
    runner = CliRunner()
    r = runner.invoke(
        cli, ["extract", str(root), "-b", "tiny", "--store", str(store), "--workers", "0", "-q"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["diagnose", str(store), "-q"])
    assert r.exit_code == 1
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
    assert "Traceback" not in r.output


# ---------------------------------------------------------------------------------------------
# the HTML page as a user sees it (headless Chromium; skipped where none is installed)
# ---------------------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium installed")
def test_report_html_renders_in_a_browser(image_store, tmp_path):
    from PIL import Image

    rep = tmp_path / "rep"
    opts = featx.DiagnoseOptions(head="ridge", map="pca", folds=3, duplicate_threshold=0.9999)
    d = featx.diagnose(image_store, options=opts, report=rep)
    assert d.leaked_keys()
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            (rep / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1000
    dark = (img.sum(axis=2) < 200).mean()  # text
    reddish = ((img[..., 0] > 150) & (img[..., 1] < 90) & (img[..., 2] < 90)).mean()
    assert dark > 0.002, "no text rendered"
    assert reddish > 0.0005, "no red thumbnails / leak badges rendered"
