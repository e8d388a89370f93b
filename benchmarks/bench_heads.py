"""Linear-probe benchmark: the torch L-BFGS backend against scikit-learn's lbfgs, same sweep.

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
    a = ap.parse_args(argv)

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
