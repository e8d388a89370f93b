"""Non-parametric heads: a cosine k-nearest-neighbour vote and the nearest class mean.

Both are standard evaluations of frozen embeddings. The kNN vote is the one of DINO (Caron et
al., 2021): neighbours by cosine similarity, each votes for its class with weight
``exp(similarity / temperature)``, and the normalized votes are the class probabilities.
"""

from __future__ import annotations

import logging
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads._weights import class_weight_vector, encode_class_weight, selection_score
from featx.splits import stratified_holdout

logger = logging.getLogger(__name__)

#: k values tried by the kNN head's validation sweep.
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 20, 50, 100)
# Elements of the (queries x train) similarity block computed at once (float32: 256 MiB), and of
# the (queries x k x dim) gather of the candidates that are re-scored (float32: 64 MiB).
_BLOCK = 64 * 1024 * 1024
_GATHER = 16 * 1024 * 1024


def _l2_normalize(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


class CosineKNNClassifier(ClassifierMixin, BaseEstimator):
    """k-nearest neighbours by cosine similarity with a similarity-weighted vote.

    Parameters
    ----------
    ks : array-like of int or None, default=None
        k values to choose from on a validation split; None is ``(1, 3, 5, 10, 20, 50, 100)``.
    k : int or None, default=None
        A fixed k: skips the sweep.
    weights : {"similarity", "uniform"}, default="similarity"
        ``"similarity"``: neighbour j votes ``exp(cos(x, x_j) / temperature)``;
        ``"uniform"``: one vote each.
    temperature : float, default=0.07
        Sharpness of the similarity weights (DINO's value).
    val_size : float, default=0.2
        Share of each class held out to choose k.
    class_weight : dict, "balanced" or None, default=None
        Multiplies each neighbour's vote by its class's weight (``"balanced"``: inversely
        proportional to the class frequency in the fitted data), which keeps big classes from
        outvoting small ones. k is then chosen by the class-weighted validation accuracy (the
        balanced accuracy for ``"balanced"``).
    random_state : int, RandomState or None, default=None
        Seed of the validation split.

    Attributes
    ----------
    k_ : int
        The chosen (or fixed) k, at most the number of fitted samples.
    val_scores_ : dict of int to float or None
        Validation score per k; None without a sweep.
    X_fit_ : ndarray of shape (n_samples, n_features), float32
        The fitted samples, L2-normalized (the index searched at predict time).
    y_fit_ : ndarray of shape (n_samples,)
        Their encoded labels.
    class_vote_weights_ : ndarray of shape (n_classes,) or None
    classes_ : ndarray
    n_features_in_ : int

    Notes
    -----
    ``predict_proba`` is the normalized vote mass: a class with no vote among the k neighbours
    gets probability 0, so the log-loss punishes a confident miss hard (as it should).

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, y = make_blobs(n_samples=120, centers=3, n_features=5, random_state=0)
    >>> knn = CosineKNNClassifier(ks=[1, 5, 10], random_state=0).fit(X, y)
    >>> knn.k_ in (1, 5, 10), knn.predict_proba(X[:2]).shape
    (True, (2, 3))
    """

    _parameter_constraints: dict = {
        "ks": ["array-like", None],
        "k": [Interval(Integral, 1, None, closed="left"), None],
        "weights": [StrOptions({"similarity", "uniform"})],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        ks: Any = None,
        k: int | None = None,
        weights: str = "similarity",
        temperature: float = 0.07,
        val_size: float = 0.2,
        class_weight: dict | str | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.ks = ks
        self.k = k
        self.weights = weights
        self.temperature = temperature
        self.val_size = val_size
        self.class_weight = class_weight
        self.random_state = random_state

    def _choose_k(self, y_enc: np.ndarray, K: int, cw: Any, search: Any) -> int:
        """The k of ``self.ks`` that scores best on a stratified validation split (the first
        when ``ks`` holds one value); ``search(val, train, kmax)`` returns the (indices,
        similarities) of each validation row's ``kmax`` nearest training rows. Sets
        ``val_scores_``."""
        ks = self._ks()
        self.val_scores_: dict[int, float] | None = None
        k = ks[0]
        if len(ks) > 1:
            train, val = stratified_holdout(y_enc, self.val_size, self.random_state)
            if len(val):
                cls_w = class_weight_vector(y_enc[train], K, cw)
                kmax = min(max(ks), len(train))
                idx, sim = search(val, train, kmax)
                self.val_scores_ = {}
                best = -np.inf
                for kk in ks:
                    kk_eff = min(kk, kmax)
                    P = self._vote(idx[:, :kk_eff], sim[:, :kk_eff], y_enc[train], K, cls_w)
                    score = selection_score(y_enc[val], P.argmax(axis=1), K, cw)
                    self.val_scores_[int(kk)] = score
                    if score > best + 1e-12:
                        best, k = score, kk
        return k

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> CosineKNNClassifier:
        """Store the L2-normalized samples; choose k on a validation split unless fixed."""
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        y_enc = y_enc.astype(np.int64)
        K = len(self.classes_)
        cw = encode_class_weight(self.class_weight, self.classes_)
        Xn = _l2_normalize(X.astype(np.float32))
        k = self._choose_k(y_enc, K, cw, lambda val, train, kmax: _topk(Xn[val], Xn[train], kmax))
        self.X_fit_ = Xn
        self.y_fit_ = y_enc
        self.class_vote_weights_ = class_weight_vector(y_enc, K, cw)
        self.k_ = int(min(k, len(y_enc)))
        self.solver_ = "search in memory"
        logger.info("knn: k=%d on %d samples", self.k_, len(y_enc))
        return self

    def fit_stream(self, stream: Any) -> CosineKNNClassifier:
        """Fit on a :class:`~featx.features.RowStream` too large for memory: the training rows
        stay on disk and every search (the k sweep, predictions) scans them block by block,
        keeping each query's k best (same neighbours, similarities and ties as :meth:`fit`)."""
        self.classes_ = np.unique(stream.y)
        y_enc = np.searchsorted(self.classes_, stream.y).astype(np.int64)
        K = len(self.classes_)
        cw = encode_class_weight(self.class_weight, self.classes_)
        self.n_features_in_ = int(stream.dim)
        k = self._choose_k(
            y_enc, K, cw,
            lambda val, train, kmax: _search_stream(stream.subset(val), stream.subset(train), kmax),
        )  # fmt: skip
        self.X_fit_ = None
        self.fit_stream_ = stream
        self.y_fit_ = y_enc
        self.class_vote_weights_ = class_weight_vector(y_enc, K, cw)
        self.k_ = int(min(k, len(y_enc)))
        self.solver_ = f"chunked search over {stream.n} rows on disk"
        logger.info("knn: k=%d, %s", self.k_, self.solver_)
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Pickles and bundles hold the training rows; rows left on disk are read in here (a
        bundle of a k-NN is its training matrix, whichever way it was fitted)."""
        state = super().__getstate__()
        stream = state.pop("fit_stream_", None)
        if stream is not None and state.get("X_fit_") is None:
            X, _ = stream.take(np.arange(stream.n))
            state["X_fit_"] = _l2_normalize(X.astype(np.float32))
        return state

    def _ks(self) -> list[int]:
        if self.k is not None:
            return [int(self.k)]
        ks = DEFAULT_KS if self.ks is None else self.ks
        ks = sorted({int(v) for v in np.asarray(ks).ravel()})
        if not ks or ks[0] < 1:
            raise ValueError("CosineKNNClassifier: ks must be a non-empty list of positive ints")
        return ks

    def _vote(self, idx, sim, y_fit, K, cls_w) -> np.ndarray:
        if self.weights == "similarity":
            w = np.exp((sim - 1.0) / self.temperature)  # shifted by the max similarity: no overflow
        else:
            w = np.ones_like(sim)
        labels = y_fit[idx]
        if cls_w is not None:
            w = w * cls_w[labels]
        P = np.zeros((idx.shape[0], K))
        np.add.at(P, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), labels.ravel()), w.ravel())
        total = P.sum(axis=1, keepdims=True)
        return P / np.where(total > 0, total, 1.0)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Normalized (similarity-weighted) votes of the k nearest neighbours per class."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        Q = _l2_normalize(X.astype(np.float32))
        if self.X_fit_ is None:  # fitted by fit_stream: search the rows on disk
            idx, sim = _search_blocks(Q, self.fit_stream_, self.k_)
        else:
            idx, sim = _topk(Q, self.X_fit_, self.k_)
        return self._vote(idx, sim, self.y_fit_, len(self.classes_), self.class_vote_weights_)

    def predict(self, X: Any) -> np.ndarray:
        """The class with the most vote mass (ties: the first class)."""
        idx = self.predict_proba(X).argmax(axis=1)
        return self.classes_[idx]


def _search_blocks(Q: np.ndarray, stream: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_topk` of normalized queries ``Q`` over the rows of ``stream``, read block by
    block: each block's k best are merged into the running k best (ties by position)."""
    k = min(k, stream.n)
    best_i = np.zeros((len(Q), 0), dtype=np.int64)
    best_s = np.zeros((len(Q), 0), dtype=np.float64)
    offset = 0
    for Xb, _ in stream.blocks():
        Xb = _l2_normalize(Xb.astype(np.float32))
        i, sv = _topk(Q, Xb, min(k, len(Xb)))
        cand_i = np.concatenate([best_i, i + offset], axis=1)
        cand_s = np.concatenate([best_s, sv], axis=1)
        order = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]
        best_i = np.take_along_axis(cand_i, order, axis=1)
        best_s = np.take_along_axis(cand_s, order, axis=1)
        offset += len(Xb)
    return best_i, best_s


def _search_stream(queries: Any, stream: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_search_blocks` for queries that are themselves a stream (read block by block)."""
    out_i, out_s = [], []
    for Qb, _ in queries.blocks():
        i, sv = _search_blocks(_l2_normalize(Qb.astype(np.float32)), stream, k)
        out_i.append(i)
        out_s.append(sv)
    return np.concatenate(out_i), np.concatenate(out_s)


def _topk(Q: np.ndarray, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the k most similar rows of X for each row of Q.

    Candidates come from a blocked float32 matrix product; their similarities are then
    recomputed row by row (``einsum``), so a query's result does not depend on which other
    queries share its block (BLAS may round differently for different block shapes). Sorted by
    decreasing similarity, ties by increasing index.
    """
    n_q, n = Q.shape[0], X.shape[0]
    idx = np.empty((n_q, k), dtype=np.int64)
    sim = np.empty((n_q, k), dtype=np.float64)
    step = max(1, _BLOCK // max(n, 1))
    sub = max(1, _GATHER // max(k * X.shape[1], 1))
    Xt = X.T
    for s in range(0, n_q, step):
        block = Q[s : s + step] @ Xt
        if k < n:
            cand = np.argpartition(-block, k - 1, axis=1)[:, :k]
        else:
            cand = np.broadcast_to(np.arange(n), (block.shape[0], n))
        for t in range(0, len(cand), sub):
            c = cand[t : t + sub]
            exact = np.einsum("qd,qkd->qk", Q[s + t : s + t + len(c)], X[c]).astype(np.float64)
            order = np.lexsort((c, -exact), axis=1)
            idx[s + t : s + t + len(c)] = np.take_along_axis(c, order, axis=1)
            sim[s + t : s + t + len(c)] = np.take_along_axis(exact, order, axis=1)
    return idx, sim


class CentroidClassifier(ClassifierMixin, BaseEstimator):
    """Nearest class mean, by cosine similarity or Euclidean distance.

    Parameters
    ----------
    metric : {"cosine", "euclidean"}, default="cosine"
        ``"cosine"``: samples and class means are L2-normalized and scored by their dot product;
        ``"euclidean"``: scored by minus the squared distance to each class mean.

    Attributes
    ----------
    centroids_ : ndarray of shape (n_classes, n_features)
    temperature_ : float
        Softmax temperature of ``predict_proba``, fitted on the training data by minimizing the
        log-loss, so the probabilities are calibrated rather than an arbitrary squashing.
    classes_ : ndarray
    n_features_in_ : int

    Notes
    -----
    The class means do not depend on how many items each class has, so this head needs no
    ``class_weight``: it is balanced by construction.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, y = make_blobs(n_samples=90, centers=3, n_features=4, random_state=0)
    >>> CentroidClassifier(metric="euclidean").fit(X, y).score(X, y) > 0.9
    True
    """

    _parameter_constraints: dict = {"metric": [StrOptions({"cosine", "euclidean"})]}

    def __init__(self, metric: str = "cosine") -> None:
        self.metric = metric

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> CentroidClassifier:
        """Compute the class means and the temperature of the probabilities."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"CentroidClassifier needs samples of at least 2 classes; "
                f"got 1 class ({self.classes_[0]!r})"
            )
        X = np.asarray(X, dtype=np.float64)
        if self.metric == "cosine":
            X = _l2_normalize(X)
        M = np.stack([X[y_enc == c].mean(axis=0) for c in range(len(self.classes_))])
        self.centroids_ = _l2_normalize(M) if self.metric == "cosine" else M
        self.temperature_ = _fit_temperature(self._scores(X), y_enc)
        return self

    def _scores(self, X: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            return X @ self.centroids_.T
        sq = (X * X).sum(axis=1, keepdims=True)
        return -(sq - 2 * X @ self.centroids_.T + (self.centroids_**2).sum(axis=1))

    def _transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        X = np.asarray(X, dtype=np.float64)
        return _l2_normalize(X) if self.metric == "cosine" else X

    def decision_function(self, X: Any) -> np.ndarray:
        """Similarity to each class mean (shape (n,) for two classes: class 1 minus class 0)."""
        S = self._scores(self._transform(X)) / self.temperature_
        return S[:, 1] - S[:, 0] if S.shape[1] == 2 else S

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of the scores at the fitted temperature."""
        S = self._scores(self._transform(X)) / self.temperature_
        E = np.exp(S - S.max(axis=1, keepdims=True))
        return E / E.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The class of the nearest mean."""
        idx = self._scores(self._transform(X)).argmax(axis=1)
        return self.classes_[idx]


def _fit_temperature(S: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimizing the mean log-loss of softmax(S / T) (searched on log T)."""
    from scipy.optimize import minimize_scalar

    spread = float(np.std(S)) or 1.0

    def nll(log_t: float) -> float:
        Z = S / np.exp(log_t)
        Z = Z - Z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(Z).sum(axis=1))
        return float(np.mean(lse - Z[np.arange(len(y)), y]))

    c = np.log(spread)
    res = minimize_scalar(nll, bounds=(c - 12, c + 6), method="bounded")
    return float(np.exp(res.x))
