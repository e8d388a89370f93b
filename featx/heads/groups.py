"""The group step of a head: per-group standardization, TF-IDF of texts, Head2Toe-style selection.

A feature set with several named groups (layers of one pass, stores fused by key, TF-IDF of the
texts; :class:`featx.features.FeatureGroup`) gets :class:`GroupFeatures` as the first step of
every head's pipeline. Fitted on the training rows only, it

1. standardizes every column of each dense group and scales the group by ``1/sqrt(d)``, so each
   group brings the same total variance: a 112-d early block is not drowned by a 1280-d last
   layer (a TF-IDF reduction is centred and scaled as a whole instead, which keeps the
   decreasing variances of its components: standardizing them would blow up the noisy ones);
2. fits the TF-IDF of a ``text`` group on the training texts (:class:`featx.text.tfidf.
   TfidfFeatures`; a dense reduction is treated as one more dense group, a sparse matrix is
   passed on sparse);
3. with ``select`` set, keeps the best groups in the spirit of Head2Toe (Evci et al., 2022): a
   relevance score per group computed on the inner training rows (the closed-form
   leave-one-out R^2 of a ridge regression of the one-hot classes on that group alone), then
   the number ``k`` of top groups whose ridge classifier does best on the inner validation
   rows (the smallest ``k`` within one standard error of the best; ``select=k`` fixes it).
   Inner training and validation rows are a seeded stratified split of the head's training
   rows, never its test rows.

``groups_`` (the names kept, in order) tells reports which groups a head used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

#: Largest number of training rows the selection's ridge fits look at (a seeded subsample).
SELECT_MAX_ROWS = 3000
#: Share of the training rows held out to choose k.
SELECT_VAL_SHARE = 0.25


class GroupFeatures(TransformerMixin, BaseEstimator):
    """Scale, build and select feature groups before a head.

    Parameters
    ----------
    groups : tuple of (name, start, stop, kind)
        ``kind="dense"``: columns ``start:stop`` of the input; ``kind="text"``: TF-IDF of the
        input's texts (the input is then a :class:`featx.features.TextRows`).
    standardize : bool, default=True
        Per-group standardization (see the module docstring). Off: dense columns pass as they are.
    select : int or None, default=None
        None: keep every group; 0: choose how many on the inner validation rows; k >= 1: keep
        the k most relevant.
    tfidf : dict, optional
        Group name -> parameters of :class:`featx.text.tfidf.TfidfFeatures` for text groups.
    random_state : int, default=0
    """

    def __init__(
        self,
        groups: tuple = (),
        standardize: bool = True,
        select: int | None = None,
        tfidf: dict | None = None,
        random_state: int = 0,
    ) -> None:
        self.groups = groups
        self.standardize = standardize
        self.select = select
        self.tfidf = tfidf
        self.random_state = random_state

    # -- helpers --------------------------------------------------------------------------
    def _split_input(self, X: Any) -> tuple[np.ndarray, Any]:
        texts = getattr(X, "texts", None)
        dense = np.asarray(getattr(X, "X", X), dtype=np.float32)
        if dense.ndim == 1:
            dense = dense[None, :]
        return dense, texts

    def _blocks(self, dense: np.ndarray, texts: Any, names: list[str]) -> list[Any]:
        out = []
        for name in names:
            g = self._spec[name]
            if g[3] == "text":
                if texts is None:
                    raise ValueError(f"group {name!r} needs the texts (a TextRows input)")
                Z = self.tfidf_[name].transform(texts)
                if not hasattr(Z, "tocsr"):
                    Z = (Z - self.mean_[name]) * self.scale_[name]
                out.append(Z)
            else:
                Z = dense[:, g[1] : g[2]]
                if self.standardize:
                    Z = (Z - self.mean_[name]) * self.scale_[name]
                out.append(np.asarray(Z, dtype=np.float32))
        return out

    @staticmethod
    def _stack(blocks: list[Any]) -> Any:
        if any(hasattr(b, "tocsr") for b in blocks):
            import scipy.sparse as sp

            return sp.hstack([sp.csr_matrix(b) for b in blocks], format="csr", dtype=np.float32)
        if len(blocks) == 1:
            return blocks[0]
        return np.concatenate(blocks, axis=1)

    # -- fitting --------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> GroupFeatures:
        from featx.text.tfidf import TfidfFeatures

        if not self.groups:
            raise ValueError("GroupFeatures needs at least one group")
        dense, texts = self._split_input(X)
        self._spec = {str(g[0]): tuple(g) for g in self.groups}
        self.n_features_in_ = int(dense.shape[1])
        self.mean_: dict[str, Any] = {}
        self.scale_: dict[str, Any] = {}
        self.tfidf_: dict[str, Any] = {}
        for name, g in self._spec.items():
            if g[3] == "text":
                if texts is None:
                    raise ValueError(f"group {name!r} needs the texts (a TextRows input)")
                kw = dict((self.tfidf or {}).get(name) or {})
                t = TfidfFeatures(**kw, random_state=self.random_state)
                Z = t.fit(texts).transform(texts)
                self.tfidf_[name] = t
                if hasattr(Z, "tocsr"):  # sparse: unit-norm rows already, left as they are
                    continue
            else:
                Z = dense[:, g[1] : g[2]].astype(np.float64)
            mean = Z.mean(axis=0)
            if g[3] == "text":  # an LSA basis: keep its components' relative variances
                total = float(np.sqrt(((Z - mean) ** 2).sum(axis=1).mean()))
                scale = np.full(Z.shape[1], 1.0 / max(total, 1e-12))
            else:  # every column standardized, the group scaled to total variance 1
                std = Z.std(axis=0)
                std[std < 1e-12] = 1.0
                scale = 1.0 / (std * np.sqrt(max(1, Z.shape[1])))
            self.mean_[name] = mean.astype(np.float32)
            self.scale_[name] = scale.astype(np.float32)
        names = list(self._spec)
        self.relevance_: dict[str, float] = {}
        if self.select is not None and len(names) > 1 and y is not None:
            names = self._choose(dense, texts, np.asarray(y), names)
        self.groups_ = tuple(names)
        self.n_features_out_ = int(
            sum(
                self.tfidf_[n].n_features_out_
                if n in self.tfidf_
                else self._spec[n][2] - self._spec[n][1]
                for n in names
            )
        )
        return self

    def _choose(self, dense: np.ndarray, texts: Any, y: np.ndarray, names: list[str]) -> list[str]:
        from featx.splits import stratified_holdout

        rng = np.random.default_rng(self.random_state)
        rows = np.arange(len(y))
        if len(rows) > SELECT_MAX_ROWS:
            rows = np.sort(rng.choice(rows, SELECT_MAX_ROWS, replace=False))
        classes, counts = np.unique(y[rows], return_counts=True)
        if len(classes) < 2 or counts.min() < 2:
            return names  # too few rows to hold any out: keep every group
        tr, va = stratified_holdout(y[rows], SELECT_VAL_SHARE, self.random_state)
        if len(va) == 0:
            return names
        sub_texts = None if texts is None else np.asarray(texts, dtype=object)[rows]
        blocks = dict(zip(names, self._blocks(dense[rows], sub_texts, names), strict=True))
        if any(hasattr(b, "tocsr") for b in blocks.values()):
            raise ValueError(
                "group selection needs dense groups; use the dense TF-IDF (tfidf dim > 0)"
            )
        y = y[rows]
        onehot = (y[:, None] == classes[None, :]).astype(np.float64)
        Yc = onehot - onehot[tr].mean(axis=0)
        # relevance: how well each group alone predicts the classes of the inner training rows,
        # by the closed-form leave-one-out error of a ridge fit (training rows only)
        for n in names:
            self.relevance_[n] = _loo_r2(blocks[n][tr].astype(np.float64), Yc[tr])
        ranked = sorted(names, key=lambda n: -self.relevance_[n])
        if self.select:  # a fixed k
            keep = ranked[: min(int(self.select), len(ranked))]
        else:  # choose k on the inner validation rows: the smallest k within one standard
            # error of the best accuracy (the one-standard-error rule), so a group that only
            # adds noise is not kept for a lucky validation row or two
            accs = []
            for k in range(1, len(ranked) + 1):
                Zk = np.concatenate([blocks[n] for n in ranked[:k]], axis=1).astype(np.float64)
                Wk = _ridge(Zk[tr], Yc[tr], alpha=1.0)
                mu = Zk[tr].mean(axis=0)
                pred = classes[np.argmax((Zk[va] - mu) @ Wk, axis=1)]
                accs.append(float((pred == y[va]).mean()))
            best = max(accs)
            se = float(np.sqrt(best * (1.0 - best) / len(va)))
            k = next(i + 1 for i, a in enumerate(accs) if a >= best - se)
            keep = ranked[:k]
            self.select_val_accuracy_ = accs[k - 1]
        return [n for n in names if n in keep]  # the groups' own order

    def transform(self, X: Any) -> Any:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "groups_")
        dense, texts = self._split_input(X)
        if dense.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {dense.shape[1]} features, but GroupFeatures expects {self.n_features_in_}"
            )
        return self._stack(self._blocks(dense, texts, list(self.groups_)))

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.string = True
        return tags

    # -- bundle state ---------------------------------------------------------------------
    def _featx_state_(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "groups": [list(g) for g in self.groups],
            "standardize": self.standardize,
            "select": self.select,
            "tfidf": {str(k): dict(v) for k, v in (self.tfidf or {}).items()},
            "random_state": self.random_state,
        }
        if hasattr(self, "groups_"):
            state.update(
                groups_=list(self.groups_),
                n_features_in_=self.n_features_in_,
                n_features_out_=self.n_features_out_,
                mean_=dict(self.mean_),
                scale_=dict(self.scale_),
                tfidf_=dict(self.tfidf_),
                relevance_=dict(self.relevance_),
            )
        return state

    @classmethod
    def _featx_from_state_(cls, state: dict[str, Any]) -> GroupFeatures:
        obj = cls(
            groups=tuple(
                (str(n), int(a), int(b), str(k)) for n, a, b, k in state.get("groups", [])
            ),
            standardize=bool(state.get("standardize", True)),
            select=state.get("select"),
            tfidf=dict(state.get("tfidf") or {}) or None,
            random_state=int(state.get("random_state", 0)),
        )
        obj._spec = {g[0]: g for g in obj.groups}
        if "groups_" in state:
            obj.groups_ = tuple(str(n) for n in state["groups_"])
            obj.n_features_in_ = int(state["n_features_in_"])
            obj.n_features_out_ = int(state["n_features_out_"])
            obj.mean_ = {str(k): np.asarray(v, np.float32) for k, v in state["mean_"].items()}
            obj.scale_ = {str(k): np.asarray(v, np.float32) for k, v in state["scale_"].items()}
            obj.tfidf_ = dict(state["tfidf_"])
            obj.relevance_ = {str(k): float(v) for k, v in state["relevance_"].items()}
        return obj


def _loo_r2(Z: np.ndarray, Y: np.ndarray, alpha: float = 1.0) -> float:
    """1 - (leave-one-out squared error of a ridge fit) / (that of predicting the mean)."""
    Zc = Z - Z.mean(axis=0)
    Yc = Y - Y.mean(axis=0)
    n, d = Zc.shape
    lam = alpha * max(float(np.einsum("ij,ij->", Zc, Zc)) / max(1, n), 1e-12)
    if d <= n:
        A = np.linalg.inv(Zc.T @ Zc + lam * np.eye(d))
        fit = Zc @ (A @ (Zc.T @ Yc))
        h = np.einsum("ij,jk,ik->i", Zc, A, Zc)
    else:
        A = np.linalg.inv(Zc @ Zc.T + lam * np.eye(n))
        K = Zc @ Zc.T
        fit = K @ (A @ Yc)
        h = np.einsum("ij,ji->i", K, A)
    loo = (Yc - fit) / np.maximum(1.0 - h, 1e-6)[:, None]
    return float(1.0 - (loo**2).sum() / max((Yc**2).sum(), 1e-12))


def _ridge(Z: np.ndarray, Y: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge weights (d, C) of centred ``Z`` on ``Y``, solved in the smaller of the two forms."""
    Zc = Z - Z.mean(axis=0)
    n, d = Zc.shape
    scale = float(np.einsum("ij,ij->", Zc, Zc)) / max(1, n)  # trace(Z'Z)/n: alpha relative to it
    lam = alpha * max(scale, 1e-12)
    if d <= n:
        return np.linalg.solve(Zc.T @ Zc + lam * np.eye(d), Zc.T @ Y)
    return Zc.T @ np.linalg.solve(Zc @ Zc.T + lam * np.eye(n), Y)


def with_group_step(est: Any, fs: Any, random_state: int = 0) -> Any:
    """``est`` with :class:`GroupFeatures` for the groups of ``fs`` (a FeatureSet) in front.

    The head's own ``standardize`` step is dropped: the group step standardizes per group, and a
    plain standardization after it would undo the equal weight of the groups.
    """
    from sklearn.pipeline import Pipeline

    from featx.groups import TEXT_GROUPS

    groups = tuple(g.to_tuple() for g in fs.groups) or tuple(
        g.to_tuple() for g in fs.feature_groups
    )
    tfidf = {g[0]: dict(TEXT_GROUPS.get(g[0], {})) for g in groups if g[3] == "text"}
    step = GroupFeatures(
        groups=groups, select=fs.select, tfidf=tfidf or None, random_state=random_state
    )
    rest = list(est.steps) if isinstance(est, Pipeline) else [("head", est)]
    rest = [(n, s) for n, s in rest if n != "standardize"]
    return Pipeline([("groups", step), *rest])
