"""The checks of :func:`featx.diagnose`, each on numpy arrays: duplicate groups, confident-learning
label issues, k-th-neighbour outliers and class overlap.

Examples
--------
>>> import numpy as np
>>> X = np.array([[1, 0], [0.9995, 0.0316], [0, 1]], np.float32)
>>> idx = np.array([[1], [0], [0]]); sim = np.array([[0.9995], [0.9995], [0.0]], np.float32)
>>> duplicate_groups(X, idx, sim, 0.99)
[[0, 1]]
>>> robust_z(np.array([1.0, 1.1, 0.9, 1.0, 5.0])).round(1).tolist()
[0.0, 0.7, -0.7, 0.0, 27.0]
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "confident_learning",
    "duplicate_groups",
    "neighbour_overlap",
    "robust_z",
]


# ---------------------------------------------------------------------------------------------
# duplicates
# ---------------------------------------------------------------------------------------------


def duplicate_groups(
    X: np.ndarray, idx: np.ndarray, sim: np.ndarray, threshold: float
) -> list[list[int]]:
    """Groups of near-duplicates: every two members of a group have similarity >= ``threshold``.

    Candidate links are "j is among i's neighbours (``idx``/``sim``) with similarity >=
    threshold", taken strongest first (ties by row); a link joins two groups only if every
    member of one is that similar to every member of the other (complete linkage, checked on
    the unit rows ``X``). Merely chaining the links (connected components) would put a whole
    tight cluster into one group, each item a near-duplicate only of its neighbours.

    Returns groups of at least two rows, each sorted, ordered by their first row.
    """
    rows, cols = np.nonzero((sim >= threshold) & (idx >= 0))
    if len(rows) == 0:
        return []
    a, b = rows, idx[rows, cols]
    w = sim[rows, cols].astype(np.float64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo, -w))
    group: dict[int, int] = {}  # row -> group id (the group's first row)
    members: dict[int, list[int]] = {}
    for i, j in zip(lo[order].tolist(), hi[order].tolist(), strict=True):
        gi, gj = group.get(i, i), group.get(j, j)
        if gi == gj:
            continue
        mi, mj = members.get(gi, [i]), members.get(gj, [j])
        if len(mi) * len(mj) > 1 and float((X[mi] @ X[mj].T).min()) < threshold:
            continue
        keep, drop = min(gi, gj), max(gi, gj)
        merged = mi + mj
        members[keep] = merged
        members.pop(drop, None)
        for r in merged:
            group[r] = keep
    return sorted((sorted(g) for g in members.values() if len(g) > 1), key=lambda g: g[0])


# ---------------------------------------------------------------------------------------------
# label issues (Northcutt, Jiang & Chuang, "Confident Learning", JAIR 2021)
# ---------------------------------------------------------------------------------------------


def _round_preserving_sum(row: np.ndarray) -> np.ndarray:
    """Round to integers keeping the (rounded) total: the largest remainders go up, the smallest
    down (cleanlab's ``round_preserving_sum``, so both count the same)."""
    ints = np.round(row)
    target = np.round(row.sum())
    while abs(ints.sum() - target) > 1e-6:
        diff = target - ints.sum()
        step = 1.0 if diff > 0 else -1.0
        changes = min(int(abs(np.round(diff))), len(row))
        order = np.argsort(row - ints)  # up: the largest remainders; down: the smallest
        for i in (order[::-1] if step > 0 else order)[:changes]:
            ints[i] += step
    return ints


def _round_rows(m: np.ndarray) -> np.ndarray:
    return np.vstack([_round_preserving_sum(r) for r in m]).astype(np.int64)


def confident_learning(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label issues from out-of-fold probabilities by confident learning ("prune by noise rate").

    Per-class thresholds ``t_j`` are the mean probability of class j over the items labelled j.
    An item labelled i is *confidently* of class j when ``p_j >= t_j`` (of several such classes,
    its most probable one); these counts form the confident joint, which is calibrated to the
    label counts. For every off-diagonal cell (i, j) the that-many items labelled i with the
    largest margin ``p_j - p_i`` are issues, unless their most probable class is their label.
    Counts are rounded as cleanlab rounds them
    (row totals kept), so on the same probabilities this gives the same set as cleanlab 2.x's
    ``find_label_issues(labels, pred_probs)`` (its default, ``filter_by="prune_by_noise_rate"``).

    Parameters
    ----------
    p : ndarray (n, K)
        Out-of-fold probabilities (rows sum to 1).
    y : ndarray (n,)
        Given labels in ``0..K-1``.

    Returns
    -------
    issue : ndarray (n,) of bool
    joint : ndarray (K, K)
        The calibrated, normalised joint of given (rows) and estimated true (columns) labels.
    thresholds : ndarray (K,)
    """
    n, K = p.shape
    counts = np.bincount(y, minlength=K).astype(float)
    thresholds = np.array(
        [p[y == j, j].mean() if counts[j] else 1.0 for j in range(K)], dtype=np.float64
    )
    above = p >= thresholds[None, :] - 1e-6
    n_above = above.sum(axis=1)
    guess = np.where(n_above > 1, p.argmax(axis=1), above.argmax(axis=1))
    ok = n_above > 0
    C = np.zeros((K, K), dtype=np.float64)
    np.add.at(C, (y[ok], guess[ok]), 1.0)
    np.fill_diagonal(C, np.maximum(C.diagonal(), 1.0))  # every class is right at least once
    # the same operations in the same memory order as cleanlab, so that ties at .5 round alike
    cal = (C.T / np.maximum(C.sum(axis=1), 1e-12) * counts).T
    cal = cal / max(np.sum(cal), 1e-12) * counts.sum()
    prune = _round_rows(cal).astype(np.float64)
    joint = prune / max(prune.sum(), 1e-12)
    # keep at least one item per class: raise the diagonal to 1, lower that row's noise counts
    diag = prune.diagonal().copy()
    need = np.maximum(diag, 1.0) - diag
    if need.any():
        off = np.count_nonzero(prune, axis=1) - 1.0
        prune = prune - (need / np.maximum(off, 1.0))[:, None]
        prune[prune < 0] = 0
        np.fill_diagonal(prune, np.maximum(diag, 1.0))
        prune = _round_rows(prune).astype(np.float64)
    issue = np.zeros(n, dtype=bool)
    for i in range(K):
        rows_i = np.flatnonzero(y == i)
        if len(rows_i) <= 1:
            continue
        for j in range(K):
            m = int(prune[i, j])
            if i == j or m <= 0:
                continue
            margin = p[rows_i, j] - p[rows_i, i]
            issue[rows_i[np.argsort(-margin)[:m]]] = True
    # an item whose most probable class is its label is no issue (a tie counts for the label)
    q = p.copy()
    q[np.arange(n), y] += 1e-6
    issue &= q.argmax(axis=1) != y
    return issue, joint, thresholds


# ---------------------------------------------------------------------------------------------
# outliers and overlap
# ---------------------------------------------------------------------------------------------


def robust_z(v: np.ndarray) -> np.ndarray:
    """``(v - median) / (1.4826 * MAD)``: a z-score that a few extreme values cannot inflate."""
    v = np.asarray(v, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros_like(v)
    med = np.median(v[finite])
    mad = 1.4826 * np.median(np.abs(v[finite] - med))
    if mad <= 1e-12:
        mad = max(np.std(v[finite]), 1e-12)
    z = (v - med) / mad
    return np.where(finite, z, 0.0)


def neighbour_overlap(idx: np.ndarray, y: np.ndarray, K: int) -> np.ndarray:
    """``share[a, b]``: of the neighbours of items labelled a, the share labelled b.

    Unlabelled items (y < 0) and missing neighbours (-1) are left out.
    """
    share = np.zeros((K, K), dtype=np.float64)
    lab = np.flatnonzero(y >= 0)
    if len(lab) == 0:
        return share
    nb = idx[lab]
    ok = nb >= 0
    ny = np.where(ok, y[np.maximum(nb, 0)], -1)
    ok &= ny >= 0
    src = np.repeat(y[lab][:, None], nb.shape[1], axis=1)
    np.add.at(share, (src[ok], ny[ok]), 1.0)
    tot = share.sum(axis=1, keepdims=True)
    return np.divide(share, tot, out=np.zeros_like(share), where=tot > 0)
