"""Heads that train from disk (a store larger than --max-memory) agree with in-memory heads."""

from __future__ import annotations

import numpy as np
import pytest
from synth_store import blobs, write_store

from featx.features import RowMatrix
from featx.options import EvalProtocol
from featx.protocol import evaluate, fit_head
from featx.store import load_features, open_features

# a budget far below the training matrix: every head trains from disk in blocks of 256 rows
TINY = "48K"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X, y = blobs(n_per_class=150, n_classes=4, dim=24, sep=4.0, seed=1)
    # keys in random order (as ids or hashes give), so the classes interleave in key order: the
    # MLP mixes rows within a buffer of blocks, and with this budget a buffer is one block
    keys = [f"k{i:06d}" for i in np.random.default_rng(0).permutation(len(y))]
    return write_store(tmp_path_factory.mktemp("s") / "s.h5", X, y, keys=keys)


def test_open_features_reads_the_same_rows_as_load_features(store):
    full = load_features(store)
    lazy = open_features(store)
    assert isinstance(lazy.X, RowMatrix) and lazy.X.shape == full.X.shape
    rows = np.array([5, 3, 3, 599, 0])
    np.testing.assert_array_equal(lazy.X[rows], full.X[rows])
    np.testing.assert_array_equal(np.asarray(lazy.X), full.X)
    blocks = list(lazy.X.blocks(np.arange(100, 400), 128))
    assert [len(b) for b in blocks] == [128, 128, 44]
    np.testing.assert_array_equal(np.concatenate(blocks), full.X[100:400])
    np.testing.assert_array_equal(lazy.y, full.y)
    # the budget decides: above it, load_features leaves the features on disk
    assert isinstance(load_features(store, max_memory="10K").X, RowMatrix)
    assert isinstance(load_features(store, max_memory="1G").X, np.ndarray)


def _pair(store, head, params=None, preprocess="default"):
    mem = evaluate(load_features(store), head, params=params, preprocess=preprocess, seed=0)
    disk = evaluate(
        open_features(store), head, params=params, preprocess=preprocess, seed=0,
        max_memory=TINY,
    )  # fmt: skip
    return mem, disk


@pytest.mark.parametrize("head", ["logreg", "linear-svm"])
def test_streamed_linear_heads_reach_the_in_memory_optimum(store, head):
    # a fixed C: both minimize the same objective, so they agree to the solvers' tolerance
    mem, disk = _pair(store, head, {"C": 0.05, "tol": 1e-6})
    assert disk.solver.startswith("streamed lbfgs from disk"), disk.solver
    assert "lbfgs from disk" not in mem.solver
    assert abs(mem.accuracy - disk.accuracy) <= 0.01
    assert abs(mem.log_loss - disk.log_loss) < 0.02


def test_streamed_logreg_sweep_picks_c_on_a_sample_and_matches_accuracy(store):
    mem, disk = _pair(store, "logreg")
    assert "sample" in disk.solver
    assert disk.accuracy >= mem.accuracy - 0.03


def test_streamed_mlp_and_knn(store):
    mem, disk = _pair(store, "mlp", {"hidden_sizes": "32", "max_epochs": "30", "device": "cpu"})
    assert disk.solver.startswith("minibatches from disk"), disk.solver
    assert mem.solver.startswith("minibatches in memory")
    assert disk.accuracy >= mem.accuracy - 0.05
    mem, disk = _pair(store, "knn")
    assert disk.solver.startswith("chunked search"), disk.solver
    assert mem.solver == "search in memory"
    # the same neighbours and votes: identical predictions
    assert disk.accuracy == mem.accuracy and disk.log_loss == pytest.approx(mem.log_loss)


def test_streamed_pca_preprocessing_and_refit(store):
    mem, disk = _pair(store, "logreg", {"C": 0.05}, preprocess="standardize,pca:8")
    assert disk.solver.startswith("streamed")
    assert abs(mem.accuracy - disk.accuracy) <= 0.03
    fitted = fit_head(open_features(store), "logreg", params={"C": 0.05}, refit="all",
                      protocol=EvalProtocol(max_memory=TINY))  # fmt: skip
    X = load_features(store).X
    assert fitted.estimator.predict(X[:50]).shape == (50,)


def test_a_head_without_a_streamed_path_says_what_to_do(store):
    r = evaluate(open_features(store), "ridge", max_memory="1G")  # fits the budget: in memory
    assert r.accuracy > 0.5
    from featx.errors import FeatxError

    with pytest.raises(FeatxError, match="--max-memory.*logreg, linear-svm, mlp, knn"):
        evaluate(open_features(store), "ridge", max_memory=TINY)


def test_cli_fit_above_the_budget_says_so_and_ships_a_working_bundle(store, tmp_path):
    from click.testing import CliRunner

    from featx.bundle import load_bundle
    from featx.cli import cli

    X = load_features(store).X
    for head in ("logreg", "knn"):
        out = tmp_path / f"{head}.npz"
        r = CliRunner().invoke(
            cli, ["fit", str(store), "--head", head, "--max-memory", TINY, "--out", str(out)]
        )
        assert r.exit_code == 0, r.output
        assert "from disk" in r.output or "on disk" in r.output
        b = load_bundle(out)  # a k-NN bundle holds its training rows, read in from disk
        assert (
            b.predict(X[:40]) == np.array([f"c{v}" for v in load_features(store).y[:40]])
        ).mean() > 0.8
    r = CliRunner().invoke(cli, ["fit", str(store), "--max-memory", "lots"])
    assert r.exit_code != 0 and "cannot read the memory size 'lots'" in r.output
