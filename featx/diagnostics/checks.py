"""The checks of :func:`featx.diagnose`, each on numpy arrays: duplicate groups, confident-learning
label issues, k-th-neighbour outliers and class overlap.

Examples
--------
>>> import numpy as np
>>> idx = np.array([[1], [0], [0]]); sim = np.array([[0.999], [0.999], [0.2]], np.float32)
>>> duplicate_groups(idx, sim, 0.99)
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


def duplicate_groups(idx: np.ndarray, sim: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of the graph "j is among i's neighbours with similarity >= threshold".

    Returns groups of at least two rows, each sorted, ordered by their first row.
    """
    n = idx.shape[0]
    parent = np.arange(n)

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    rows, cols = np.nonzero((sim >= threshold) & (idx >= 0))
    for i, j in zip(rows.tolist(), idx[rows, cols].tolist(), strict=True):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    if len(rows) == 0:
        return []
    members: dict[int, list[int]] = {}
    for i in np.unique(np.concatenate([rows, idx[rows, cols]])).tolist():
        members.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in members.values() if len(g) > 1), key=lambda g: g[0])


# ---------------------------------------------------------------------------------------------
# label issues (Northcutt, Jiang & Chuang, "Confident Learning", JAIR 2021)
# ---------------------------------------------------------------------------------------------


def confident_learning(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label issues from out-of-fold probabilities by confident learning.

    Per-class thresholds ``t_j`` are the mean probability of class j over the items labelled j.
    An item labelled i is *confidently* of class j when ``p_j >= t_j`` (the largest such j); these
    counts form the confident joint, which is calibrated to the label counts and normalised. For
    every off-diagonal cell (i, j) the ``n * Q[i, j]`` items labelled i with the largest margin
    ``p_j - p_i`` are issues ("prune by noise rate"), except items whose predicted class is their
    label.

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
    above = p >= thresholds[None, :] - 1e-12
    masked = np.where(above, p, -np.inf)
    confident = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    C = np.zeros((K, K), dtype=np.float64)
    ok = confident >= 0
    np.add.at(C, (y[ok], confident[ok]), 1.0)
    # rows with no confident item: put their label count on the diagonal (no evidence of noise)
    row = C.sum(axis=1)
    for i in np.flatnonzero(row == 0):
        C[i, i] = 1.0
    calibrated = C / C.sum(axis=1, keepdims=True) * counts[:, None]
    joint = calibrated / max(calibrated.sum(), 1e-12)
    issue = np.zeros(n, dtype=bool)
    prune = np.rint(joint * n).astype(np.int64)
    pred = p.argmax(axis=1)
    for i in range(K):
        rows_i = np.flatnonzero(y == i)
        if len(rows_i) == 0:
            continue
        for j in range(K):
            if i == j or prune[i, j] <= 0:
                continue
            margin = p[rows_i, j] - p[rows_i, i]
            m = min(int(prune[i, j]), len(rows_i))
            pick = rows_i[np.argsort(-margin, kind="stable")[:m]]
            issue[pick] = True
    issue &= pred != y
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
