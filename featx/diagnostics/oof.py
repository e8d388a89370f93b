"""Out-of-fold class probabilities for :func:`featx.diagnose`'s label checks.

- :func:`oof_probabilities`: the mean of the heads named in ``DiagnoseOptions.head``, each
  fitted on the same stratified folds;
- :func:`ridge_oof`: the ``ridge`` head's out-of-fold probabilities from sufficient statistics:
  one pass over the rows gives every fold's Gram matrix (``X^T X`` of the held-out rows; a fold's
  training Gram is the total less its own), alpha is chosen once (on the first fold, by the
  head's own exact leave-one-out error, estimated on a sample of its rows) and every fold is one
  ``d x d`` solve. Fitting the head per fold instead repeats an eigendecomposition, two
  ``n x d x d`` products and an ``n x d x K`` product per alpha (17 alphas) in every fold;
- :func:`neighbour_vote`: the ``knn`` head's leave-one-out vote from the neighbour graph that
  diagnose has already searched.

Examples
--------
>>> import numpy as np
>>> from sklearn.model_selection import StratifiedKFold
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(np.arange(3), 40)
>>> X = (rng.normal(size=(3, 16))[y] + rng.normal(size=(120, 16))).astype(np.float32)
>>> folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
>>> P, alpha, scores = ridge_oof(X, y, folds)
>>> P.shape, bool(np.allclose(P.sum(axis=1), 1)), float((P.argmax(1) == y).mean()) > 0.9
((120, 3), True, True)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.options import DiagnoseOptions

log = logging.getLogger(__name__)

#: Rows of a fold's training set whose exact leave-one-out values choose the ridge alpha (first
#: fold) and calibrate the fold's probabilities (a seeded sample; all rows when fewer).
RIDGE_SAMPLE = 4000
#: Rows per block of the passes over the data (float32 products, ~40 MB at 1280 dims).
_BLOCK = 8192
#: Sharpness of the neighbour votes (the ``knn`` head's: DINO's value).
VOTE_TEMPERATURE = 0.07
#: Neighbour counts among which the leave-one-out vote chooses k.
VOTE_KS = (1, 3, 5, 10, 20, 50)
#: Neighbours searched per item when ``knn`` is among the label-check heads.
VOTE_NEIGHBOURS = 50

__all__ = [
    "RIDGE_SAMPLE",
    "head_names",
    "neighbour_vote",
    "oof_probabilities",
    "ridge_oof",
]


def head_names(opts: DiagnoseOptions) -> list[str]:
    """The heads of ``opts.head`` (``"ridge,knn"`` -> ``["ridge", "knn"]``), checked by name."""
    from featx.heads import list_heads

    names = [h.strip() for h in str(opts.head).split(",") if h.strip()]
    known = set(list_heads())
    for h in names:
        if h not in known:
            raise FeatxError(
                f"unknown head {h!r} in --head; choose from {', '.join(sorted(known))}"
            )
    if not names:
        raise FeatxError("--head names no head; e.g. --head ridge,knn")
    return names


def neighbour_vote(
    nb: np.ndarray, sim: np.ndarray, y: np.ndarray, rows: np.ndarray, K: int
) -> tuple[np.ndarray, int]:
    """Leave-one-out class probabilities of ``rows`` from the neighbour graph: the
    similarity-weighted vote (``exp((cos - 1) / 0.07)``, as the ``knn`` head weighs) of each
    item's k nearest other items among ``rows``, k chosen among 1..50 by leave-one-out accuracy
    against the given labels.

    ``nb`` / ``sim``: neighbours (row indices of the feature set, -1 for none) of every row.
    """
    inside = np.zeros(len(y), dtype=bool)
    inside[rows] = True
    idx = nb[rows]
    ok = (idx >= 0) & inside[np.maximum(idx, 0)]
    lab = np.where(ok, y[np.maximum(idx, 0)], 0)
    w_all = np.where(ok, np.exp((sim[rows].astype(np.float64) - 1.0) / VOTE_TEMPERATURE), 0.0)
    best: tuple[float, int, np.ndarray] | None = None
    m = len(rows)
    for k in VOTE_KS:
        if k > idx.shape[1]:
            break
        P = np.zeros((m, K))
        np.add.at(P, (np.repeat(np.arange(m), k), lab[:, :k].ravel()), w_all[:, :k].ravel())
        tot = P.sum(axis=1, keepdims=True)
        P = np.divide(P, tot, out=np.full_like(P, 1.0 / K), where=tot > 0)
        acc = float((P.argmax(axis=1) == y[rows]).mean())
        if best is None or acc > best[0] + 1e-12:
            best = (acc, k, P)
    assert best is not None
    return best[2], best[1]


# ---------------------------------------------------------------------------------------------
# ridge from sufficient statistics
# ---------------------------------------------------------------------------------------------


def _targets(y: np.ndarray, C: int) -> np.ndarray:
    """The ridge head's +-1 targets (one column, class 1's, for two classes)."""
    Y = -np.ones((len(y), C))
    Y[np.arange(len(y)), y] = 1.0
    return Y[:, 1:] if C == 2 else Y


def ridge_oof(
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    rows: np.ndarray | None = None,
    alphas: Sequence[float] | None = None,
    seed: int = 0,
    tick: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Out-of-fold probabilities of the ``ridge`` head (standardize, then ridge on +-1 targets).

    Each fold's model is the head's model at one alpha: the same standardization (mean and
    population standard deviation of the fold's training rows), the same objective and
    intercept, so its decision values equal ``make_head("ridge", {"alpha": alpha})``'s on the
    held-out rows (a test checks it). Alpha is chosen once, on the first fold, by the head's
    mean squared leave-one-out error over its alphas, the exact leave-one-out residuals of a
    seeded sample of :data:`RIDGE_SAMPLE` training rows estimating the mean (all rows when
    fewer). Each fold's probabilities are calibrated as the head calibrates them: one
    temperature (Platt scaling for two classes) fitted on the leave-one-out decision values of
    the training rows (the same-sized sample), so with at most that many training rows they are
    the head's probabilities at that alpha.

    Parameters
    ----------
    X : ndarray (n, d)
    y : ndarray (m,) of int in ``0..C-1``; every class in every fold's training rows
    folds : (train, test) indices into ``y``, the test rows covering every row once
    rows : ndarray (m,) of int, optional
        The rows of ``X`` that ``y`` labels (default: all; no copy of ``X`` is made)
    alphas : the alphas to choose from (default: the ridge head's)
    tick : called with 1 after each fold (progress)

    Returns
    -------
    P : ndarray (m, C) of float64
    alpha : float
    scores : ndarray (m, C), or (m, 1) for two classes
        The out-of-fold decision values.
    """
    import scipy.linalg

    from featx.heads.builtin import RIDGE_ALPHAS
    from featx.heads.calibration import ScoreCalibrator

    y = np.asarray(y, dtype=np.int64)
    m, d = len(y), X.shape[1]
    rows = np.arange(m) if rows is None else np.asarray(rows)
    C = int(y.max()) + 1
    alphas_arr = np.asarray(RIDGE_ALPHAS if alphas is None else alphas, dtype=np.float64)
    # rows shifted by the mean of all rows, so that the fold statistics lose no precision when
    # features have a large common offset (post-ReLU features)
    centre = np.zeros(d)
    for s in range(0, m, _BLOCK):
        centre += np.asarray(X[rows[s : s + _BLOCK]]).sum(axis=0, dtype=np.float64)
    centre /= m
    centre32 = centre.astype(np.float32)

    def block(r: np.ndarray) -> np.ndarray:
        return np.asarray(X[rows[r]], dtype=np.float32) - centre32

    # one pass: per fold, the Gram, sums and class sums of its held-out rows
    stats = []
    for _, te in folds:
        S = np.zeros((d, d))
        s1 = np.zeros(d)
        Cs = np.zeros((C, d))
        for s in range(0, len(te), _BLOCK):
            r = te[s : s + _BLOCK]
            B = block(r)
            S += B.T @ B
            s1 += B.sum(axis=0, dtype=np.float64)
            onehot = np.zeros((len(r), C), dtype=np.float32)
            onehot[np.arange(len(r)), y[r]] = 1.0
            Cs += onehot.T @ B
        stats.append((S, s1, Cs, np.bincount(y[te], minlength=C).astype(np.float64)))
    S_all = sum(st[0] for st in stats)
    s1_all = sum(st[1] for st in stats)
    C_all = sum(st[2] for st in stats)
    n_all = np.bincount(y, minlength=C).astype(np.float64)

    def fold_system(f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        S_f, s1_f, C_f, n_f = stats[f]
        cnt = n_all - n_f
        n = cnt.sum()
        mu = (s1_all - s1_f) / n  # the training rows' mean (shifted coordinates)
        cov = (S_all - S_f) / n - np.outer(mu, mu)
        var = np.clip(cov.diagonal(), 0.0, None)
        sd = np.sqrt(var)
        sd[var <= 1e-12 * max(1.0, float(var.max(initial=0.0)))] = 1.0  # constant columns
        G = n * cov / np.outer(sd, sd)  # Z^T Z of the standardized training rows
        # Z^T Y for the +-1 targets: sum_i (x_i - mu) y_i^T with y_i = 2 onehot_i - 1 (the
        # "- 1" part vanishes: sum_i (x_i - mu) = 0)
        XY = 2.0 * (C_all - C_f).T - np.outer(mu, 2.0 * cnt)  # (d, C): sum (x - mu) onehot^T
        ZY = XY / sd[:, None]
        ymean = 2.0 * cnt / n - 1.0
        if C == 2:
            ZY, ymean = ZY[:, 1:], ymean[1:]
        return G, ZY, ymean, mu, sd

    rng = np.random.default_rng(seed)

    def sample_of(tr: np.ndarray) -> np.ndarray:
        tr = np.asarray(tr)
        if len(tr) <= RIDGE_SAMPLE:
            return tr
        return np.sort(rng.choice(tr, RIDGE_SAMPLE, replace=False))

    # alpha once: the first fold's exact leave-one-out errors on a sample of its rows
    G, ZY, ymean, mu, sd = fold_system(0)
    lam, V = np.linalg.eigh(G)
    lam = np.clip(lam, 0.0, None)
    P0 = V.T @ ZY
    n0 = len(folds[0][0])
    sample = sample_of(folds[0][0])
    A = ((block(sample).astype(np.float64) - mu) / sd) @ V
    A2 = A * A
    Yc = _targets(y[sample], C) - ymean
    errors = np.empty(len(alphas_arr))
    for i, a in enumerate(alphas_arr):
        f = 1.0 / (lam + a)
        resid = Yc - A @ (f[:, None] * P0)
        denom = 1.0 - A2 @ f - 1.0 / n0
        loo = resid / np.where(np.abs(denom) > 1e-12, denom, 1e-12)[:, None]
        errors[i] = float(np.mean(loo**2))
    alpha = float(alphas_arr[int(np.argmin(errors))])  # ties: the first
    log.info("ridge: alpha %.4g by leave-one-out on %d rows of fold 1", alpha, len(sample))

    scores = np.empty((m, ZY.shape[1]), dtype=np.float64)
    P = np.empty((m, C), dtype=np.float64)
    for f, (tr, te) in enumerate(folds):
        if f:
            G, ZY, ymean, mu, sd = fold_system(f)
            sample = sample_of(tr)
        G[np.diag_indices_from(G)] += alpha
        factor = scipy.linalg.cho_factor(G, check_finite=False)
        W = scipy.linalg.cho_solve(factor, ZY, check_finite=False)
        # the head's calibration: on leave-one-out decision values of (a sample of) the
        # training rows, y - (y - fit) / (1 - h), with h the hat matrix's diagonal
        Zs = (block(sample).astype(np.float64) - mu) / sd
        h = np.einsum("ij,ji->i", Zs, scipy.linalg.cho_solve(factor, Zs.T, check_finite=False))
        Ys = _targets(y[sample], C)
        resid = Ys - (Zs @ W + ymean)
        denom = 1.0 - h - 1.0 / len(tr)
        loo = Ys - resid / np.where(np.abs(denom) > 1e-12, denom, 1e-12)[:, None]
        cal = ScoreCalibrator().fit(loo[:, 0] if C == 2 else loo, y[sample])
        Wx = W / sd[:, None]  # on shifted rows: (x - mu) / sd @ W
        b = ymean - mu @ Wx
        Wx32 = Wx.astype(np.float32)
        for s in range(0, len(te), _BLOCK):
            r = te[s : s + _BLOCK]
            scores[r] = (block(r) @ Wx32).astype(np.float64) + b
            P[r] = cal.predict_proba(scores[r, 0] if C == 2 else scores[r])
        if tick is not None:
            tick(1)
    return P, alpha, scores


# ---------------------------------------------------------------------------------------------
# every head
# ---------------------------------------------------------------------------------------------


def oof_probabilities(
    X: np.ndarray,
    rows: np.ndarray,
    y: np.ndarray,
    K: int,
    opts: DiagnoseOptions,
    folds: int,
    bar: Any,
    vote: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-fold class probabilities (K columns) of ``X[rows]``, labelled ``y``: the mean
    of the heads named in ``opts.head`` (comma-separated), each fitted on the same stratified
    folds. ``knn`` is the leave-one-out neighbour vote ``vote`` (:func:`neighbour_vote`) when
    given; ``ridge`` comes from :func:`ridge_oof` when the rows outnumber the dimensions (else,
    like every other head, it is fitted per fold)."""
    from sklearn.model_selection import StratifiedKFold

    from featx.heads import make_head

    heads = head_names(opts)
    P = np.zeros((len(y), K), dtype=np.float64)
    if vote is not None and "knn" in heads:
        P += vote / len(heads)
    fitted = [h for h in heads if not (vote is not None and h == "knn")]
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=opts.seed)
    splits = list(skf.split(np.zeros(len(y)), y))
    if "ridge" in fitted and len(y) * (folds - 1) / folds > X.shape[1]:  # else the dual is cheap
        present, yc = np.unique(y, return_inverse=True)
        Pr, _, _ = ridge_oof(X, yc, splits, rows=rows, seed=opts.seed, tick=bar.update)
        P[:, present] += Pr / len(heads)
        fitted.remove("ridge")
    Xr = X[rows] if fitted else None
    for tr, te in splits:
        for name in fitted:
            est = make_head(name, random_state=opts.seed)
            if not hasattr(est, "predict_proba"):
                raise FeatxError(
                    f"head {name!r} gives no probabilities; use e.g. --head ridge,knn or logreg"
                )
            est.fit(Xr[tr], y[tr])
            proba = np.asarray(est.predict_proba(Xr[te]), dtype=np.float64)
            cols = np.asarray(est.classes_, dtype=np.int64)
            P[np.ix_(te, cols)] += proba / len(heads)
            bar.update(1)
    P = np.clip(P, 0.0, None)
    s = P.sum(axis=1, keepdims=True)
    return np.divide(P, s, out=np.full_like(P, 1.0 / K), where=s > 0)
