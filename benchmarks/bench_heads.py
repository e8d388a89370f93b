"""Heads benchmarks: the linear probe's sweep, and every head against scikit-learn.

Every head (issue #9), on a store's real embeddings or the synthetic problem below: the featx
head with its default sweep (seconds, CPU seconds, test accuracy, the solver that ran), then the
featx head and its scikit-learn equivalent both at the hyper-parameters the sweep chose::

    python benchmarks/bench_heads.py --all-heads all --store digits.h5
    python benchmarks/bench_heads.py --all-heads all --n 10000 --dim 2048 --classes 100

"Equivalent" is exact for logreg, ridge and centroid (same objective); linear-svm's twin is
LinearSVC, which penalizes the bias; svm's is the exact SVC (hinge loss, one-vs-one) where featx
ran the Nystroem path; knn's is a cosine k-NN with distance weights (featx weights votes by
exp(similarity / T)); mlp's is scikit-learn's MLP with the same widths.

The linear-probe sweep, torch L-BFGS backend against scikit-learn's lbfgs:

    python benchmarks/bench_heads.py --n 50000 --dim 2048 --classes 100
    python benchmarks/bench_heads.py --n 10000 --dim 512 --classes 100 --stride 1

Both backends run ``LinearProbe`` (``backend="torch"`` / ``"sklearn"``) with the protocol's
validation split, the sweep over ``C`` warm-started from strong to weak regularization, and the
final refit on train + val; each reports fit seconds, the chosen ``C`` and the accuracy on a
held-out test set drawn from the same distribution.

``--stride K`` sweeps every K-th value of the 45-value grid (``--stride 1``: the full grid), for
sizes where scikit-learn on the full grid would take hours on a small machine; both backends then
run the same sub-grid, so the ratio is measured, not extrapolated. ``--full-torch`` adds a torch
run of the full grid at the same size for reference.

The problem is synthetic but not trivially separable: class means lie in a low-rank subspace
(``--rank``), features get correlated low-rank nuisance plus isotropic noise, and a ReLU-like
shift makes them non-negative and skewed like pooled CNN features; the Bayes accuracy is well
below 100 %. Prints one JSON object.

Threads: scikit-learn's lbfgs runs its matrix products in numpy's OpenBLAS on every core, and so
does the torch backend for problems of this size (``featx.heads._torch.cpu_threads`` only drops
small problems to one thread); each row reports the thread count it got and the load average it
started under.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from typing import Any

import numpy as np


def make_problem(
    n: int, n_test: int, dim: int, classes: int, rank: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T  # (rank, dim) orthonormal
    means = rng.standard_normal((classes, rank)) @ basis * 0.5
    nuisance = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T * 1.5

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, m)
        # within-class spread in the class subspace (classes overlap), plus nuisance directions
        X = means[y] + rng.standard_normal((m, rank)) @ basis
        X += rng.standard_normal((m, rank)) @ nuisance
        X += rng.standard_normal((m, dim)) * 0.25
        X = np.log1p(np.exp(X * 2.0)) / 2.0  # softplus: non-negative, skewed, like pooled ReLUs
        return X.astype(np.float32), y

    X, y = draw(n)
    Xt, yt = draw(n_test)
    return X, y, Xt, yt


class _ThreadLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "threads" in record.getMessage():
            self.seen.append(record.getMessage())


def _threads(backend: str, seen: list[str]) -> str:
    import torch

    if backend != "torch":
        return "numpy OpenBLAS, all cores"
    return seen[-1] if seen else f"{torch.get_num_threads()} (no cap)"


def run_probe(backend: str, X, y, Xt, yt, Cs, threads: int | None, device: str = "cpu") -> dict:
    import warnings

    import torch

    from featx.heads.linear import LinearProbe

    if threads:
        torch.set_num_threads(threads)
    log = logging.getLogger("featx.heads._torch")
    handler = _ThreadLog()
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    load = os.getloadavg()[0]
    probe = LinearProbe(backend=backend, Cs=Cs, random_state=0, device=device)
    if device.startswith("cuda") and backend == "torch":  # CUDA context and kernels warm
        LinearProbe(backend="torch", C=1.0, device=device, max_iter=2).fit(X[:256], y[:256])
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            probe.fit(X, y)
    finally:
        log.removeHandler(handler)
    if device.startswith("cuda") and backend == "torch":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    acc = float((probe.predict(Xt) == yt).mean())
    return {
        "backend": backend,
        "device": device if backend == "torch" else "cpu",
        "n_C": len(probe.Cs_),
        "seconds": round(seconds, 2),
        "test_accuracy": round(acc, 4),
        "best_val_accuracy": round(float(np.nanmax(probe.val_scores_)), 4),
        "C": probe.C_,
        "final_fit_iterations": probe.n_iter_,
        "load_average_at_start": round(load, 2),
        "threads": _threads(backend, handler.seen),
        "warnings": sorted({str(w.message)[:120] for w in caught}),
    }


# ---------------------------------------------------------------------------------------------
# every head against its scikit-learn equivalent (issue #9)
# ---------------------------------------------------------------------------------------------


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2)


def _acc(est, X, y) -> float:
    return round(float((np.asarray(est.predict(X)) == y).mean()), 4)


def _sklearn_twin(head: str, est: Any, n_classes: int) -> tuple[str, Any, bool]:
    """(description, the scikit-learn estimator at the fitted head's hyper-parameters, exact?)."""
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
    from sklearn.neural_network import MLPClassifier as SkMLP
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer
    from sklearn.svm import SVC, LinearSVC

    if head == "logreg":
        return f"LogisticRegression(C={est.C_:.3g})", LogisticRegression(C=est.C_), True
    if head == "linear-svm":
        desc = f"LinearSVC(C={est.C_:.3g}) (penalizes the bias)"
        return desc, LinearSVC(C=est.C_, max_iter=2000), False
    if head == "svm":
        desc = f"SVC(C={est.C_:.3g}, gamma={est.gamma_:.3g}) (exact kernel, hinge, one-vs-one)"
        return desc, SVC(C=est.C_, gamma=est.gamma_), False
    if head == "knn":
        k = est.k_
        desc = f"KNeighborsClassifier({k}, cosine, distance weights) (featx: exp(sim/T) votes)"
        return desc, KNeighborsClassifier(k, metric="cosine", weights="distance"), False
    if head == "ridge":
        alpha = _ridge_alpha(est)
        return f"RidgeClassifier(alpha={alpha:.3g})", RidgeClassifier(alpha=alpha), True
    if head == "centroid":
        return (
            "NearestCentroid on L2-normalized rows",
            make_pipeline(Normalizer(), NearestCentroid()),
            True,
        )
    if head == "mlp":
        sizes = tuple(est.hidden_sizes)
        desc = f"sklearn MLPClassifier({sizes}, adam, early stopping)"
        return desc, SkMLP(sizes, early_stopping=True, max_iter=100, random_state=0), False
    raise ValueError(head)


def _ridge_alpha(est: Any) -> float:
    """The ridge head's chosen alpha: ``RidgeLOOClassifier.alpha_`` (a head that wraps its
    estimator keeps it on ``estimator_``)."""
    inner = getattr(est, "estimator_", est)
    return float(getattr(inner, "alpha_", getattr(inner, "alpha", 1.0)))


def _fixed_params(head: str, est: Any) -> dict:
    """The featx head's chosen hyper-parameters, as a fixed (no sweep) parameter dict."""
    dev = os.environ.get("FEATX_BENCH_DEVICE", "cpu")
    if head == "logreg":
        return {"C": est.C_, "device": dev}
    if head == "linear-svm":
        return {"C": est.C_, "device": dev}
    if head == "svm":
        return {"C": est.C_, "gamma": est.gamma_, "solver": "nystroem", "device": dev}
    if head == "knn":
        return {"k": est.k_}
    if head == "ridge":
        alpha = _ridge_alpha(est)
        return {"alpha": alpha}
    if head == "mlp":
        return {"device": dev}
    return {}


def run_all_heads(X, y, Xt, yt, heads: list[str], sklearn_max_s: float) -> dict:
    """Each head: its default sweep, then featx and scikit-learn at the hyper-parameters chosen."""
    import warnings

    from featx.heads import make_head

    rows = {}
    K = int(y.max()) + 1
    dev = os.environ.get("FEATX_BENCH_DEVICE", "cpu")  # cuda: the torch heads on the GPU
    for head in heads:
        device = {"device": dev} if head in ("logreg", "linear-svm", "svm", "mlp") else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe, s_wall, s_cpu = _timed(lambda h=head, d=device: make_head(h, d).fit(X, y))
            est = pipe[-1]
            row = {
                "featx_sweep": {
                    "seconds": s_wall,
                    "cpu_seconds": s_cpu,
                    "test_accuracy": _acc(pipe, Xt, yt),
                    "solver": getattr(est, "solver_", ""),
                }
            }
            fixed = make_head(head, _fixed_params(head, est))
            fixed, f_wall, f_cpu = _timed(lambda p=fixed: p.fit(X, y))
            row["featx_fixed"] = {
                "params": {k: v for k, v in _fixed_params(head, est).items() if k != "device"},
                "seconds": f_wall,
                "cpu_seconds": f_cpu,
                "test_accuracy": _acc(fixed, Xt, yt),
                "solver": getattr(fixed[-1], "solver_", ""),
            }
            desc, twin, exact = _sklearn_twin(head, est, K)
            steps = [s for _, s in pipe.steps[:-1]]
            from sklearn.base import clone
            from sklearn.pipeline import make_pipeline

            twin = make_pipeline(*[clone(s) for s in steps], twin)
            if head in ("svm", "linear-svm") and len(y) * X.shape[1] * K > sklearn_max_s * 2e6:
                row["sklearn_fixed"] = {"estimator": desc, "skipped": "too slow on 2 cores"}
            else:
                twin, k_wall, k_cpu = _timed(lambda t=twin: t.fit(X, y))
                row["sklearn_fixed"] = {
                    "estimator": desc,
                    "same_objective": exact,
                    "seconds": k_wall,
                    "cpu_seconds": k_cpu,
                    "test_accuracy": _acc(twin, Xt, yt),
                }
                row["ratio_sklearn_over_featx_fixed"] = round(k_wall / max(f_wall, 1e-3), 2)
        rows[head] = row
        print(json.dumps({head: row}), file=sys.stderr, flush=True)
    return rows


def load_store(path: str, seed: int = 0):
    """A store's train/test split (the protocol's stratified 80/20) as arrays."""
    from featx.protocol import make_splits
    from featx.store import load_features

    fs = load_features(path)
    s = make_splits(fs, split="stratified", seed=seed)[0]
    return fs.X[s.train], fs.y[s.train], fs.X[s.test], fs.y[s.test]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="featx linear-probe benchmark")
    ap.add_argument("--n", type=int, default=50000, help="training rows")
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--stride", type=int, default=1, help="sweep every K-th C of the 45")
    ap.add_argument("--backends", default="torch,sklearn")
    ap.add_argument("--full-torch", action="store_true", help="also torch on all 45 values")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    ap.add_argument("--device", default="cpu", help="torch backend's device: cpu, cuda")
    ap.add_argument(
        "--all-heads",
        default=None,
        help="every head vs scikit-learn at the same hyper-parameters: 'all' or a list",
    )
    ap.add_argument("--store", default=None, help="--all-heads on a feature store's embeddings")
    ap.add_argument(
        "--sklearn-max",
        type=float,
        default=60.0,
        help="--all-heads: skip the scikit-learn SVM twins above about this many seconds",
    )
    a = ap.parse_args(argv)

    if a.all_heads:
        from featx.heads import list_heads

        heads = list_heads() if a.all_heads == "all" else a.all_heads.split(",")
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        t0 = time.perf_counter()
        if a.store:
            X, y, Xt, yt = load_store(a.store)
            data = {"store": a.store}
        else:
            X, y, Xt, yt = make_problem(a.n, a.n_test, a.dim, a.classes, a.rank)
            data = {"synthetic": f"{a.n} x {a.dim} x {a.classes}, rank {a.rank}"}
        data.update(n_train=len(y), n_test=len(yt), dim=X.shape[1], classes=int(y.max()) + 1)
        data["load_seconds"] = round(time.perf_counter() - t0, 1)
        data["load_average_at_start"] = round(os.getloadavg()[0], 2)
        rows = run_all_heads(X, y, Xt, yt, heads, a.sklearn_max)
        print(
            json.dumps(
                {"benchmark": "all-heads", **data, "rows": rows, "versions": _versions()}, indent=2
            )
        )
        return 0

    from featx.heads.linear import DEFAULT_CS

    t0 = time.perf_counter()
    X, y, Xt, yt = make_problem(a.n, a.n_test, a.dim, a.classes, a.rank)
    gen_s = time.perf_counter() - t0
    Cs = list(DEFAULT_CS[:: a.stride])
    rows = {}
    for b in a.backends.split(","):
        rows[b] = run_probe(b, X, y, Xt, yt, Cs, a.threads, a.device)
        print(json.dumps({b: rows[b]}), file=sys.stderr, flush=True)
    if a.full_torch and a.stride != 1:
        rows["torch-full-grid"] = run_probe(
            "torch", X, y, Xt, yt, list(DEFAULT_CS), a.threads, a.device
        )
    out = {
        "benchmark": "heads",
        "n_train": a.n,
        "n_test": a.n_test,
        "dim": a.dim,
        "classes": a.classes,
        "grid": f"every {a.stride} of 45 -> {len(Cs)} values" if a.stride > 1 else "45 values",
        "generate_seconds": round(gen_s, 1),
        "rows": rows,
        "versions": _versions(),
    }
    if "torch" in rows and "sklearn" in rows:
        out["speedup_torch_vs_sklearn"] = round(
            rows["sklearn"]["seconds"] / rows["torch"]["seconds"], 2
        )
        out["accuracy_gap"] = round(
            rows["torch"]["test_accuracy"] - rows["sklearn"]["test_accuracy"], 4
        )
    print(json.dumps(out, indent=2))
    return 0


def _versions() -> dict:
    import sklearn
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    sys.exit(main())
