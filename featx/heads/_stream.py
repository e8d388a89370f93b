"""Training heads from disk: a pipeline fitted on a :class:`~featx.features.RowStream`.

When a head's training data is larger than the memory budget, :mod:`featx.protocol` hands the
head a stream of numpy blocks instead of a matrix (the store reads them; heads never see h5py):

- preprocessing is fitted block by block: ``standardize`` by running means and variances
  (``StandardScaler.partial_fit``), ``pca:N`` by ``IncrementalPCA`` (stored as a plain ``PCA``
  afterwards, so bundles and predictions are the same as for an in-memory fit), ``l2`` needs no
  fit; the fitted steps are then applied to each block on the way to the head;
- the head's ``fit_stream(stream)`` trains from the blocks (logreg, linear-svm: a streamed
  L-BFGS on the exact objective, after choosing ``C`` on a sample that fits the budget; mlp:
  minibatches drawn from shuffled blocks; knn: a search over the blocks);
- predictions are made block by block too (:func:`predict_blocks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.features import RowMatrix, RowStream
from featx.memory import IN_MEMORY_COPIES

logger = logging.getLogger(__name__)

#: The heads that train from disk, for messages.
STREAMING_HEADS = ("logreg", "linear-svm", "mlp", "knn")


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------


def _fit_step(name: str, step: Any, stream: RowStream) -> tuple[Any, RowStream]:
    """Fit one preprocessing step on the stream; (fitted step, the stream it produces)."""
    kind = type(step).__name__
    if kind == "StandardScaler":
        for X, _ in stream:
            step.partial_fit(X)
        return step, stream.then(step.transform, stream.dim)
    if kind == "Normalizer":
        X, _ = stream.take(np.arange(min(stream.n, 2)))
        step.fit(X)
        return step, stream.then(step.transform, stream.dim)
    if kind == "PCA":
        n = step.n_components
        if not isinstance(n, int | np.integer):
            raise FeatxError(
                f"preprocess pca:{n} (a share of the variance) needs the training data in "
                "memory; above the memory budget give a number of components, e.g. pca:128, "
                "or raise --max-memory"
            )
        from sklearn.decomposition import PCA, IncrementalPCA

        n = int(min(n, stream.dim, stream.n))
        ipca = IncrementalPCA(n_components=n)
        carry: np.ndarray | None = None
        for X, _ in stream:  # each partial_fit needs at least n rows
            X = X if carry is None else np.concatenate([carry, X])
            if len(X) < n:
                carry = X
                continue
            ipca.partial_fit(X)
            carry = None
        # a last short remainder is left out of the components (it needs >= n rows), unless
        # it is all there is
        if carry is not None and (getattr(ipca, "n_samples_seen_", 0) == 0 or len(carry) >= n):
            ipca.partial_fit(carry)
        pca = PCA(n_components=n, random_state=getattr(step, "random_state", None))
        for attr in (
            "components_",
            "mean_",
            "explained_variance_",
            "explained_variance_ratio_",
            "singular_values_",
            "noise_variance_",
            "n_components_",
            "n_features_in_",
        ):
            setattr(pca, attr, getattr(ipca, attr))
        pca.n_samples_ = int(ipca.n_samples_seen_)
        return pca, stream.then(pca.transform, n)
    raise FeatxError(
        f"preprocess step {name!r} ({kind}) cannot be fitted from disk; use standardize, l2 or "
        "pca:N, or raise --max-memory"
    )


def fit_pipeline_stream(est: Any, stream: RowStream) -> Any:
    """Fit ``est`` (a head, or a Pipeline ending in one) on ``stream``; returns ``est``."""
    steps = list(getattr(est, "steps", [("head", est)]))
    for i, (name, step) in enumerate(steps[:-1]):
        if step is None or step == "passthrough":
            continue
        fitted, stream = _fit_step(name, step, stream)
        steps[i] = (name, fitted)
    name, head = steps[-1]
    if not hasattr(head, "fit_stream"):
        raise FeatxError(
            f"the {type(head).__name__} head needs its {stream.n} training rows in memory "
            f"({stream.n * stream.dim * 4 / 2**30:.1f} GiB as float32), more than the memory "
            f"budget ({stream.budget / 2**30:.1f} GiB); raise --max-memory, or use one of the "
            f"heads that train from disk: {', '.join(STREAMING_HEADS)}"
        )
    head.fit_stream(stream)
    if hasattr(est, "steps"):
        est.steps = steps
    return est


def predict_blocks(
    est: Any, matrix: RowMatrix, rows: np.ndarray, block_rows: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(predictions, ``predict_proba`` or None, ``decision_function`` or None) of ``rows``,
    read and predicted block by block."""
    preds, probas, scores = [], [], []
    has_proba = hasattr(est, "predict_proba")
    has_dec = not has_proba and hasattr(est, "decision_function")
    for X in matrix.blocks(rows, block_rows):
        preds.append(np.asarray(est.predict(X)))
        if has_proba:
            probas.append(np.asarray(est.predict_proba(X)))
        elif has_dec:
            scores.append(np.asarray(est.decision_function(X)))
    if not preds:
        return np.empty(0), None, None
    return (
        np.concatenate(preds),
        np.concatenate(probas) if has_proba else None,
        np.concatenate(scores) if has_dec else None,
    )


# ---------------------------------------------------------------------------------------------
# linear models: the exact objective, its gradient accumulated block by block, L-BFGS
# ---------------------------------------------------------------------------------------------


def logistic_terms(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, sw: np.ndarray | None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Summed (weighted) cross-entropy of one block and its gradient in (W, b).

    ``W`` has one row for two classes (binomial loss of class 1, as scikit-learn) and
    ``n_classes`` rows otherwise; ``y`` are encoded labels.
    """
    Z = X @ W.T + b
    if W.shape[0] == 1:
        z = Z[:, 0]
        yf = y.astype(np.float64)
        yf = yf.astype(z.dtype)
        li = np.logaddexp(z.dtype.type(0), z) - yf * z
        dZ = (1 / (1 + np.exp(-z)) - yf)[:, None]
    else:
        m = Z.max(axis=1, keepdims=True)
        E = np.exp(Z - m)
        tot = E.sum(axis=1, keepdims=True)
        li = (m + np.log(tot))[:, 0] - Z[np.arange(len(y)), y]
        dZ = E / tot
        dZ[np.arange(len(y)), y] -= 1.0
    if sw is not None:
        li = li * sw
        dZ *= sw[:, None]
    return float(li.sum(dtype=np.float64)), dZ.T @ X, dZ.sum(axis=0, dtype=np.float64)


def squared_hinge_terms(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, sw: np.ndarray | None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Summed (weighted) one-vs-rest squared hinge of one block and its gradient in (W, b)."""
    Z = X @ W.T + b
    if W.shape[0] == 1:
        T = np.where(y == 1, 1.0, -1.0)[:, None]
    else:
        T = -np.ones_like(Z)
        T[np.arange(len(y)), y] = 1.0
    T = T.astype(Z.dtype, copy=False)
    M = np.maximum(0, 1 - T * Z)
    li = (M * M).sum(axis=1)
    dZ = -2 * T * M
    if sw is not None:
        li = li * sw
        dZ *= sw[:, None]
    return float(li.sum(dtype=np.float64)), dZ.T @ X, dZ.sum(axis=0, dtype=np.float64)


def streamed_lbfgs(
    stream: RowStream,
    terms: Callable[..., tuple[float, np.ndarray, np.ndarray]],
    y_enc_of: Callable[[np.ndarray], np.ndarray],
    W0: np.ndarray,
    b0: np.ndarray,
    C: float,
    weights: np.ndarray | None,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, int, int, bool]:
    """Minimize ``sum_i s_i loss_i / S + ||W||^2 / (2 C S)`` over the stream by L-BFGS.

    Each evaluation of the objective is one pass over the stream (float64 sums of float32
    blocks), so the optimum is that of the in-memory objective; the stopping rule is scipy's
    ``gtol`` on the largest gradient entry, as the in-memory solvers do. Returns (W, b,
    iterations, passes, converged).
    """
    from scipy.optimize import minimize

    k, d = W0.shape
    S = 0.0
    for _, y in stream.blocks():
        ye = y_enc_of(y)
        S += float(len(ye) if weights is None else weights[ye].sum())
    passes = [0]

    def objective(dtype: Any) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
        def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W = theta[: k * d].reshape(k, d)
            b = theta[k * d :]
            Wt, bt = W.astype(dtype), b.astype(dtype)
            total, gW, gb = 0.0, np.zeros((k, d)), np.zeros(k)
            for X, y in stream.blocks():
                ye = y_enc_of(y)
                sw = None if weights is None else weights[ye].astype(dtype)
                li, dW, db = terms(np.asarray(X, dtype=dtype), ye, Wt, bt, sw)
                total += li
                gW += dW
                gb += db
            passes[0] += 1
            value = total / S + float((W * W).sum()) / (2 * C * S)
            grad = np.concatenate([(gW / S + W / (C * S)).ravel(), gb / S])
            return value, grad

        return f

    opts = {"maxiter": int(max_iter), "gtol": float(tol), "ftol": 1e-12, "maxcor": 10}
    theta = np.concatenate([np.asarray(W0, np.float64).ravel(), np.asarray(b0, np.float64)])
    # First in float32, as the blocks are read: half the time of float64 and no float64 copy
    # of each block (sums still in float64). Near the optimum float32 rounding can stop the
    # line search early: the float64 objective then finishes from there, in a few passes.
    nit = 0
    for dtype in (np.float32, np.float64):
        res = minimize(objective(dtype), theta, jac=True, method="L-BFGS-B", options=opts)
        theta, nit = res.x, nit + int(res.nit)
        converged = bool(res.success) or float(np.abs(res.jac).max()) <= tol
        if converged or nit >= max_iter:
            break
        opts["maxiter"] = max(1, int(max_iter) - nit)
    W, b = theta[: k * d].reshape(k, d), theta[k * d :]
    return W, b, nit, passes[0], converged


def encoder(classes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Labels -> indices into ``classes`` (sorted)."""

    def enc(y: np.ndarray) -> np.ndarray:
        return np.searchsorted(classes, y).astype(np.int64)

    return enc


def sample_in_memory(est: Any, stream: RowStream, copies: float, seed: Any) -> np.ndarray:
    """Positions of a stratified sample of ``stream`` that fits the budget ``copies`` times."""
    seed = seed if isinstance(seed, int | np.integer) or seed is None else 0
    return stream.sample(stream.rows_in_budget(copies), seed)


# ---------------------------------------------------------------------------------------------
# what the protocol calls
# ---------------------------------------------------------------------------------------------


def fit_linear_stream(
    est: Any, stream: RowStream, terms: Callable[..., Any], name: str, max_iter: int
) -> Any:
    """The streamed fit of a linear head (``LinearProbe``, ``LinearSVM``): ``C`` swept by the
    head's own :meth:`fit` on a stratified sample that fits the stream's memory budget, then the
    head's objective (``terms``: :func:`logistic_terms` or :func:`squared_hinge_terms`) on every
    row by :func:`streamed_lbfgs` with that ``C``, warm-started from the sample's solution.
    Sets ``coef_``, ``intercept_``, ``n_iter_`` and ``solver_``; warns if it did not converge."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from featx.heads._weights import class_weight_vector, encode_class_weight

    classes = np.unique(stream.y)
    pos = sample_in_memory(est, stream, 8.0, est.random_state)  # the sweep copies it
    Xs, ys = stream.take(pos)
    est.fit(Xs, ys)
    if len(pos) == stream.n:
        return est
    if len(est.classes_) != len(classes):
        raise ValueError(f"{name}: the in-memory sample lacks a class of the stream")
    enc = encoder(est.classes_)
    cw = encode_class_weight(est.class_weight, est.classes_)
    w = class_weight_vector(enc(stream.y), len(classes), cw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow of far-off rows
        W, b, nit, passes, ok = streamed_lbfgs(
            stream, terms, enc, est.coef_, est.intercept_, est.C_, w, max_iter, est.tol
        )
    est.coef_, est.intercept_, est.n_iter_ = W, b, nit
    est.solver_ = (
        f"streamed lbfgs from disk: {passes} passes over {stream.n} rows "
        f"(C from a {len(pos)}-row sample)"
    )
    if not ok:
        warnings.warn(
            f"{name} (streamed) did not converge in max_iter={max_iter} iterations at C={est.C_:g}",
            ConvergenceWarning,
            stacklevel=3,
        )
    logger.info("%s: %s", name, est.solver_)
    return est


def block_rows_for(matrix: RowMatrix, budget: int) -> int:
    """Rows per block: a 1/16 of the budget as float32, between 256 and 65,536 rows."""
    d = max(1, int(matrix.shape[1]))
    return int(np.clip(budget // (16 * 4 * d), 256, 65536))


def fits_in_memory(n_rows: int, dim: int, budget: int) -> bool:
    """Whether ``n_rows`` x ``dim`` float32, :data:`IN_MEMORY_COPIES` times, fit in ``budget``."""
    return n_rows * dim * 4 * IN_MEMORY_COPIES <= budget


def fit_rows(est: Any, matrix: RowMatrix, rows: np.ndarray, y: np.ndarray, budget: int) -> str:
    """Fit ``est`` on rows ``rows`` of ``matrix``: in memory when they fit the budget, else from
    disk; returns ``"memory"`` or ``"disk"``."""
    if fits_in_memory(len(rows), matrix.shape[1], budget):
        est.fit(matrix.read(rows), y)
        return "memory"
    stream = RowStream(matrix, np.asarray(rows, np.int64), np.asarray(y),
                       block_rows_for(matrix, budget), int(budget))  # fmt: skip
    logger.info(
        "training from disk: %d rows x %d dims (%.1f GiB as float32) above the memory budget "
        "(%.1f GiB), in blocks of %d rows",
        len(rows),
        matrix.shape[1],
        len(rows) * matrix.shape[1] * 4 / 2**30,
        budget / 2**30,
        stream.block_rows,
    )
    fit_pipeline_stream(est, stream)
    return "disk"
