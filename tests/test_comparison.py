"""Compare: identical splits across stores, the leaderboard, and the report folder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from featx.comparison import align, compare
from featx.errors import FeatxError
from featx.features import FeatureSet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_store(sep, seed, n_per_class=25, n_classes=7, dim=12, order=None, extra=0):
    """Items ``img0000..`` of one source; ``sep`` sets how good this "backbone" is."""
    rng = np.random.default_rng(seed)
    n = n_per_class * n_classes + extra
    y = np.arange(n) % n_classes
    X = (rng.normal(size=(n_classes, dim))[y] * sep + rng.normal(size=(n, dim))).astype(np.float32)
    keys = np.array([f"img{i:04d}" for i in range(n)])
    if order is not None:
        X, y, keys = X[order], y[order], keys[order]
    classes = tuple(f"class {i}" for i in range(n_classes))
    return FeatureSet(X=X, y=y.astype(np.int64), classes=classes, split=None, keys=keys)


@pytest.fixture(scope="module")
def board():
    stores = {
        "weak": make_store(0.6, 1),
        "strong": make_store(1.5, 2, order=np.random.default_rng(0).permutation(175)),
    }
    return compare(stores, ["centroid", ("knn", {"k": 5}), ("ridge", {"alpha": 1.0})], seed=0)


def test_every_head_on_every_store_ranked_by_accuracy(board):
    assert len(board.results) == 6 and not board.failures
    accs = [r.accuracy for r in board.results]
    assert accs == sorted(accs, reverse=True)
    assert {(r.store, r.label) for r in board.results} == {
        (s, h) for s in ("weak", "strong") for h in ("centroid", "knn(k=5)", "ridge(alpha=1)")
    }
    assert board.best.store == "strong"  # the better "backbone" wins
    assert {r.n_test for r in board.results} == {35}


def test_all_results_share_the_same_test_items(board):
    support = {tuple(int(c.support) for c in r.per_class) for r in board.results}
    assert len(support) == 1  # same test items per class in every store and head


def test_leaderboard_rows_and_formats(board, tmp_path):
    rows = board.rows()
    assert [r["rank"] for r in rows] == list(range(1, 7))
    for k in ("store", "head", "accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy"):
        assert k in rows[0]
    assert rows[0]["fit_seconds"] >= 0 and rows[0]["predict_seconds"] >= 0
    md = board.to_markdown()
    assert md.splitlines()[0].startswith("| # | store | head | accuracy")
    assert len(md.strip().splitlines()) == 2 + 6
    doc = json.loads(board.to_json())
    assert doc["protocol"].startswith("stratified") and len(doc["results"]) == 6
    path = tmp_path / "board.csv"
    board.to_csv(path)
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and float(table[0]["accuracy"]) == pytest.approx(rows[0]["accuracy"])


def test_write_report_writes_tables_and_readable_pngs(board, tmp_path):
    import matplotlib.image as mpimg

    paths = board.write_report(tmp_path / "report")
    for key in (
        "markdown",
        "csv",
        "json",
        "accuracy_vs_fit_time",
        "confusion_matrix",
        "accuracy_grid",
    ):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    for key in ("accuracy_vs_fit_time", "confusion_matrix", "accuracy_grid"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(paths[key])
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05  # not a blank canvas
    md = paths["markdown"].read_text()
    assert "accuracy_vs_fit_time.png" in md and "confusion_matrix.png" in md
    assert "Per-class report" in md and "class 6" in md
    details = json.loads(paths["json"].read_text())
    assert len(details["results"][0]["confusion_matrix"]) == 7
    assert not list((tmp_path / "report").glob(".*.tmp"))  # atomic writes left no temp files


def test_align_restricts_to_shared_keys_in_key_order():
    a = make_store(1.0, 1, extra=3)  # 3 items only this store has
    b = make_store(1.0, 2, order=np.random.default_rng(1).permutation(175))
    out = align({"a": a, "b": b})
    assert out["a"].n == out["b"].n == 175
    np.testing.assert_array_equal(out["a"].keys, out["b"].keys)
    np.testing.assert_array_equal(out["a"].y, out["b"].y)
    assert list(out["a"].keys) == sorted(out["a"].keys)


def test_stores_that_disagree_on_labels_are_an_error():
    a = make_store(1.0, 1)
    y = a.y.copy()
    y[3] = (y[3] + 1) % 7
    b = FeatureSet(a.X, y, a.classes, None, a.keys)
    with pytest.raises(FeatxError, match="disagree on the label of 1 shared items.*'img0003'"):
        compare({"a": a, "b": b}, ["centroid"])


def test_unknown_head_fails_before_any_fitting():
    with pytest.raises(FeatxError, match="unknown head 'nope'"):
        compare({"a": make_store(1.0, 1)}, ["centroid", "nope"])
    with pytest.raises(FeatxError, match="listed twice"):
        compare({"a": make_store(1.0, 1)}, ["centroid", "centroid"])


def test_a_failing_head_is_recorded_and_the_rest_go_on():
    stores = {"a": make_store(1.0, 1)}
    heads = ["centroid", ("centroid", {"metric": "euclidean"}, "pca:500")]
    b = compare(stores, heads)
    assert [r.label for r in b.results] == ["centroid"]
    assert len(b.failures) == 1 and "pca:500" in b.failures[0].error
    assert "Failed:" in b.to_markdown()
    with pytest.raises(FeatxError, match="pca:500"):
        compare(stores, heads, on_error="raise")


def test_cv_and_few_shot_comparisons_report_std():
    stores = {"a": make_store(1.0, 1), "b": make_store(0.5, 2)}
    b = compare(stores, ["centroid"], cv=3)
    assert all(r.n_runs == 3 and "accuracy" in r.std for r in b.results)
    assert "±" in b.to_markdown()
    fs = compare(stores, ["centroid"], shots=2, trials=3)
    assert all(r.n_train == 14 for r in fs.results)


def test_all_heads_report_probabilities_fit_seconds_and_their_solver(capsys):
    from featx.heads import list_heads

    stores = {"only": make_store(1.5, 3, n_per_class=20, n_classes=4)}
    board = compare(stores, ["all"], seed=0, progress=True)
    assert not board.failures
    assert sorted(r.head for r in board.results) == list_heads()
    for r in board.results:
        assert r.log_loss is not None, r.head  # every head has predict_proba
        assert r.fit_seconds > 0
    solvers = {r.head: r.solver for r in board.results}
    assert solvers["svm"] == "exact SVC" and solvers["linear-svm"].startswith("torch newton")
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    for name in list_heads():  # one progress line per head, with its fit time
        assert any(ln.startswith(f"{name} on only: accuracy ") and " s" in ln for ln in lines)
    md = board.to_markdown()
    assert "| solver |" in md and "exact SVC" in md
    rows = board.rows()
    assert {"solver", "roc_auc", "fit_seconds"} <= set(rows[0])


def test_each_head_is_built_once_per_compare(monkeypatch):
    """compare builds each head once (which also checks its name and parameters up front) and
    fits a clone of it in every run; evaluate builds a named head once per run."""
    import featx.heads
    from featx.protocol import evaluate

    real, calls = featx.heads.make_head, []

    def counting(name, *a, **kw):
        calls.append(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(featx.heads, "make_head", counting)
    stores = {"a": make_store(1.0, 1), "b": make_store(1.5, 2)}
    board = compare(stores, ["centroid", ("knn", {"k": 3})], cv=3, seed=0)
    assert len(board.results) == 4 and not board.failures
    assert sorted(calls) == ["centroid", "knn"]  # 2 stores x 3 folds, yet one build per head
    calls.clear()
    evaluate(stores["a"], "centroid", cv=3, seed=0)
    assert calls == ["centroid"] * 3  # one per fold, none extra for the name
