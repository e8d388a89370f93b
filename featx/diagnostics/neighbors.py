"""Cosine k-nearest-neighbour search over embeddings: exact, or an approximate faiss index.

Exact search multiplies blocks of rows by the whole (L2-normalised) matrix and keeps each row's
``k`` best; memory stays at one block of similarities (about 64 MB). Above
:data:`featx.options.DIAGNOSE_EXACT_MAX` rows ``index="auto"`` uses faiss (the optional extra
``featx[ann]``): an inverted-file index (k-means cells, a few probed per query) whose candidates
are re-scored exactly, chosen over HNSW indexes by measurement (BENCHMARKS.md, "diagnose").

Examples
--------
>>> import numpy as np
>>> X = unit_rows(np.array([[1, 0], [0.99, 0.1], [0, 1]], dtype=np.float32))
>>> idx, sim = knn(X, 1)
>>> idx[:, 0].tolist(), bool(sim[0, 0] > 0.99)
([1, 0, 1], True)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.options import DIAGNOSE_EXACT_MAX

log = logging.getLogger(__name__)

#: Rows below which every search is exact (per-class searches included).
_FAISS_MIN_ROWS = 10_000
#: Bytes of similarities held at once by the exact search.
_BLOCK_BYTES = 64 << 20
#: Cells of the built-in inverted file compared with each cell (its own and the nearest others).
IVF_PROBES = 8
#: Rows per cell that train its k-means (a seeded sample), and the k-means iterations.
_IVF_TRAIN_PER_CELL = 64
_IVF_ITERATIONS = 10


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_index(index: str, n: int) -> str:
    """The search that ``index`` means for ``n`` rows (``auto`` -> exact or ivf).

    Below 10,000 rows the search is always exact (an inverted file over a few hundred rows is
    slower than the exact product, and faiss warns about its k-means on them).
    """
    if n < _FAISS_MIN_ROWS:
        return "exact"
    if index == "auto":
        return "ivf" if n > DIAGNOSE_EXACT_MAX else "exact"
    if index == "faiss" and not faiss_available():
        raise FeatxError(
            "index 'faiss' needs faiss-cpu: pip install 'featx[ann]' (or use --index ivf)"
        )
    return index


def knn(
    X: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
    index: str = "exact",
    tick: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of every row of ``X`` (unit rows) by cosine similarity.

    Parameters
    ----------
    X : ndarray (n, d), unit rows
    k : int
        Neighbours per row (clipped to ``n - 1``).
    rows : ndarray of int, optional
        Search only among these rows (e.g. one class); the returned indices are into ``X``.
    index : {"exact", "faiss"}
    tick : callable, optional
        Called with the number of query rows done (progress).

    Returns
    -------
    idx : ndarray (m, k) of int64
        Neighbour row indices into ``X`` (``m`` = len(rows) or n), best first; -1 where fewer
        than ``k`` exist.
    sim : ndarray (m, k) of float32
        Their cosine similarities; -inf where ``idx`` is -1.
    """
    sub = X if rows is None else X[rows]
    m = sub.shape[0]
    kk = max(0, min(k, m - 1))
    idx = np.full((m, k), -1, dtype=np.int64)
    sim = np.full((m, k), -np.inf, dtype=np.float32)
    if kk == 0:
        return idx, sim
    if index == "faiss":
        i2, s2 = _faiss_knn(sub, kk, tick)
    elif index == "ivf":
        i2, s2 = _ivf_knn(sub, kk, tick)
    else:
        i2, s2 = _exact_knn(sub, kk, tick)
    idx[:, :kk] = i2 if rows is None else np.where(i2 >= 0, rows[np.maximum(i2, 0)], -1)
    sim[:, :kk] = s2
    return idx, sim


def _top_k(S: Any, k: int, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest entries of ``S`` (numpy or torch), best first, ties by column
    (stable): ``(columns, values)``; ``cols`` maps ``S``'s columns to row indices.
    ``torch.topk`` (both cores; numpy's ``argpartition`` is ~7x slower per element here)
    picks, a lexsort orders."""
    import torch

    T = S if isinstance(S, torch.Tensor) else torch.from_numpy(S)
    v, i = torch.topk(T, k, dim=1, sorted=False)
    part, ps = i.numpy(), v.numpy()
    if cols is not None:
        part = cols[part]
    order = np.lexsort((part, -ps), axis=1)  # best first; ties by row index (stable)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(ps, order, axis=1)


def _exact_knn(
    X: np.ndarray, k: int, tick: Callable[[int], None] | None
) -> tuple[np.ndarray, np.ndarray]:
    n = X.shape[0]
    block = max(16, min(n, _BLOCK_BYTES // (4 * max(n, 1))))
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for s in range(0, n, block):
        e = min(n, s + block)
        S = X[s:e] @ X.T
        S[np.arange(e - s), np.arange(s, e)] = -np.inf  # not your own neighbour
        idx[s:e], sim[s:e] = _top_k(S, k)
        if tick is not None:
            tick(e - s)
    return idx, sim


def _spherical_kmeans(X: np.ndarray, cells: int, seed: int) -> np.ndarray:
    """``cells`` unit centroids by spherical k-means (cosine) on a seeded sample of the rows."""
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    sample = (
        X
        if n <= _IVF_TRAIN_PER_CELL * cells
        else X[np.sort(rng.choice(n, _IVF_TRAIN_PER_CELL * cells, replace=False))]
    )
    cent = sample[rng.choice(len(sample), cells, replace=False)].copy()
    for _ in range(_IVF_ITERATIONS):
        a = _nearest(sample, cent)
        onehot = np.zeros((cells, len(sample)), dtype=np.float32)
        onehot[a, np.arange(len(sample))] = 1.0
        new = onehot @ sample  # the sum of each cell's rows (a product: np.add.at is slow)
        empty = np.bincount(a, minlength=cells) == 0
        new[empty] = sample[rng.choice(len(sample), int(empty.sum()), replace=False)]
        cent = unit_rows(new)
    return cent


def _nearest(X: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """Index of each row's most similar centroid (blocked products)."""
    out = np.empty(X.shape[0], dtype=np.int64)
    block = max(16, _BLOCK_BYTES // (4 * cent.shape[0]))
    for s in range(0, X.shape[0], block):
        out[s : s + block] = np.argmax(X[s : s + block] @ cent.T, axis=1)
    return out


def _nearest_cells(X: np.ndarray, cent: np.ndarray, m: int) -> np.ndarray:
    """Each row's ``m`` most similar centroids, most similar first (blocked products)."""
    import torch

    out = np.empty((X.shape[0], m), dtype=np.int64)
    block = max(16, _BLOCK_BYTES // (4 * cent.shape[0]))
    C = torch.from_numpy(np.ascontiguousarray(cent))
    for s in range(0, X.shape[0], block):
        S = torch.from_numpy(X[s : s + block]) @ C.T
        out[s : s + block] = torch.topk(S, m, dim=1, sorted=True).indices.numpy()
    return out


def _ivf_knn(
    X: np.ndarray,
    k: int,
    tick: Callable[[int], None] | None,
    *,
    probes: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Inverted-file search done as matrix products: the rows are split into ~sqrt(n) cells by
    spherical k-means, and each row probes the ``probes`` cells whose centroids are nearest to
    it (as faiss's IVF does). The rows of one cell are compared, as one float32 product per
    cell (in blocks of ~64 MB), with every row of the cells that any of them probes (and more
    cells near this one while they hold fewer than ``max(4k, 256)`` rows), and keep their ``k``
    best. Similarities are exact; a neighbour outside the probed cells is missed (recall on
    real embeddings in BENCHMARKS.md, "diagnose": probing by the cell's centroid instead of by
    each row's own nearest cells lost a neighbour in 8-18 % of rows)."""
    import torch

    n, d = X.shape
    X = np.ascontiguousarray(X, dtype=np.float32)
    cells = max(1, int(round(math.sqrt(n))))
    probes = min(cells, probes or IVF_PROBES)
    cent = _spherical_kmeans(X, cells, seed)
    top = _nearest_cells(X, cent, probes)  # each row's `probes` nearest cells, nearest first
    cell = top[:, 0]
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(cells + 1))
    size = np.diff(bounds)
    near = np.argsort(-(cent @ cent.T), axis=1, kind="stable")
    want = max(4 * k, 256)
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    for c in range(cells):
        if size[c] == 0:
            continue
        # the cells nearest to any of this cell's rows (its own first), as an inverted file
        # probes per query; then more cells near this one while they hold too few rows
        mine = top[order[bounds[c] : bounds[c + 1]]]
        probe = np.unique(mine[mine != c])
        seen = {c, *probe.tolist()}
        nc = [c, *probe.tolist(), *(j for j in near[c].tolist() if j not in seen)]
        take = 1 + len(probe)
        while take < cells and size[nc[:take]].sum() < want:
            take += 1
        cand = np.concatenate([order[bounds[j] : bounds[j + 1]] for j in nc[:take]])
        Xc = torch.from_numpy(X[cand])  # torch: ~2x numpy's speed on these small products
        kk = min(k, len(cand) - 1)
        queries = order[bounds[c] : bounds[c + 1]]  # the first len(queries) of cand
        block = max(16, _BLOCK_BYTES // (4 * len(cand)))
        for s in range(0, len(queries), block):
            q = queries[s : s + block]
            S = Xc[s : s + len(q)] @ Xc.T
            S[torch.arange(len(q)), torch.arange(s, s + len(q))] = -torch.inf  # not its own
            if kk > 0:
                idx[q, :kk], sim[q, :kk] = _top_k(S, kk, cand)
        if tick is not None:
            tick(int(size[c]))
    return idx, sim


def _faiss_knn(
    X: np.ndarray, k: int, tick: Callable[[int], None] | None
) -> tuple[np.ndarray, np.ndarray]:
    """IVF-flat inner-product search with ~sqrt(n) cells and 1/16 of them probed (at least 8).

    Candidates come back with exact inner products (flat codes), so similarities are exact;
    only a neighbour outside the probed cells can be missed.
    """
    import faiss

    n, d = X.shape
    X = np.ascontiguousarray(X, dtype=np.float32)
    nlist = max(1, int(math.sqrt(n)))
    quant = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
    train = X
    if n > 64 * nlist:  # faiss's own advice: at most ~256 points per cell to train on
        train = X[np.random.default_rng(0).choice(n, 64 * nlist, replace=False)]
    ivf.train(train)
    ivf.add(X)
    ivf.nprobe = max(8, nlist // 16)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    block = 8192
    for s in range(0, n, block):
        e = min(n, s + block)
        S, Ib = ivf.search(X[s:e], k + 1)
        own = Ib == np.arange(s, e)[:, None]
        # drop each row itself (or, when it is missing among equal-scored copies, the last)
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones_like(own)
        keep[np.arange(e - s), drop] = False
        Ib = Ib[keep].reshape(e - s, k)
        S = S[keep].reshape(e - s, k)
        S[Ib < 0] = -np.inf
        idx[s:e], sim[s:e] = Ib, S
        if tick is not None:
            tick(e - s)
    return idx, sim
