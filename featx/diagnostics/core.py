"""``featx.diagnose``: data problems found from a store's cached embeddings.

One pass over a :class:`~featx.features.FeatureSet` (numpy only; the store is read by
:func:`featx.load_features`):

1. **Duplicates and leakage**: groups of items whose embeddings have cosine similarity at or above
   ``duplicate_threshold`` (cosine of the *centred* embeddings: the store's mean row is
   subtracted first, so a component that every item shares, such as the positive offset of
   post-ReLU features, does not make unrelated items look alike; neighbour search:
   :mod:`featx.diagnostics.neighbors`). A group whose items
   fall in different splits (train / val / test; for a store without a split, the seeded split
   ``featx compare`` would draw) is leakage.
2. **Label issues**: out-of-fold probabilities of a head (stratified K-fold over the labelled
   items), then confident learning (:func:`featx.diagnostics.checks.confident_learning`); every item
   gets a label-quality score (the probability of its given label), issues are ranked by it.
3. **Outliers**: the cosine distance to the k-th nearest neighbour, as a robust z-score over all
   items and within each class.
4. **Class overlap**: which pairs of classes share neighbourhoods and out-of-fold confusions.

Examples
--------
>>> import numpy as np, featx
>>> from featx.features import FeatureSet
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(np.arange(3), 60)
>>> X = (rng.normal(size=(3, 64))[y] * 3 + rng.normal(size=(180, 64))).astype(np.float32)
>>> X[1] = X[100]                     # a copy of item 100 (class 1) labelled class 0
>>> fs = FeatureSet(X=X, y=y, classes=("a", "b", "c"), split=None,
...                 keys=np.array([f"k{i:03d}" for i in range(180)]))
>>> d = featx.diagnose(fs, options=featx.DiagnoseOptions(head="centroid", map="none"))
>>> [sorted(g.keys) for g in d.duplicates], "k001" in d.label_issue_keys()
([['k001', 'k100']], True)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.diagnostics.checks import (
    confident_learning,
    duplicate_groups,
    neighbour_overlap,
    robust_z,
)
from featx.diagnostics.neighbors import knn, resolve_index, unit_rows
from featx.errors import FeatxError
from featx.features import FeatureSet
from featx.options import DiagnoseOptions, EvalProtocol

log = logging.getLogger(__name__)

#: Similarity above which two embeddings count as the same item (an exact copy).
EXACT_SIMILARITY = 0.99999
#: Neighbours kept per item for duplicate groups (a bigger group is still found: it is
#: connected through its members' lists).
_DUP_NEIGHBOURS = 10
#: Neighbours searched per item when ``knn`` is among the label-check heads: its out-of-sample
#: vote comes from this graph (leave-one-out), k chosen among ``_VOTE_KS``.
_VOTE_NEIGHBOURS = 50
_VOTE_KS = (1, 3, 5, 10, 20, 50)
#: Sharpness of the neighbour votes (the ``knn`` head's: DINO's value).
_VOTE_TEMPERATURE = 0.07
#: Order in which a duplicate group keeps one member: the training copy first.
_KEEP_ORDER = {"train": 0, "val": 1, "": 2, "test": 3}

__all__ = [
    "Diagnosis",
    "DuplicateGroup",
    "Flag",
    "diagnose",
    "effective_split",
    "leaked_keys",
]


@dataclass(frozen=True)
class DuplicateGroup:
    """Items whose embeddings are near-identical.

    Attributes
    ----------
    rows : tuple of int
        Rows of the feature set, sorted.
    keys, labels, splits : tuple of str
        Per member; label ``""`` for unlabelled items, split ``""`` without one.
    min_similarity : float
        The smallest similarity of the links that join the group (its weakest link).
    exact : bool
        Every link is an exact copy (similarity >= 0.99999).
    leak : bool
        The group spans a test (or val) item and a training item.
    keep : int
        The row a cleaned set keeps (a training copy first); the others are excluded.
    """

    rows: tuple[int, ...]
    keys: tuple[str, ...]
    labels: tuple[str, ...]
    splits: tuple[str, ...]
    min_similarity: float
    exact: bool
    leak: bool
    keep: int

    @property
    def conflicting_labels(self) -> bool:
        return len({lab for lab in self.labels if lab}) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "labels": list(self.labels),
            "splits": list(self.splits),
            "min_similarity": round(float(self.min_similarity), 6),
            "exact": self.exact,
            "leak": self.leak,
            "conflicting_labels": self.conflicting_labels,
            "keep": self.keys[self.rows.index(self.keep)],
        }


@dataclass(frozen=True)
class Flag:
    """One flagged item: what is wrong, how sure, and what to do about it.

    ``problem`` is ``leak``, ``duplicate``, ``label``, ``outlier`` or ``class_outlier``;
    ``score`` is higher for worse (label: 1 - p(given label); outliers: the robust z-score;
    duplicates: the similarity); ``action`` is ``exclude``, ``relabel`` (to ``suggested``) or
    ``review`` (kept out of the manifest).
    """

    row: int
    key: str
    problem: str
    score: float
    label: str
    suggested: str
    split: str
    action: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "problem": self.problem,
            "score": round(float(self.score), 6),
            "label": self.label,
            "suggested_label": self.suggested,
            "split": self.split,
            "action": self.action,
            "detail": self.detail,
        }


@dataclass(frozen=True, eq=False)
class Diagnosis:
    """What :func:`diagnose` found (arrays are per row of the feature set).

    Attributes
    ----------
    duplicates : list of DuplicateGroup
    flags : list of Flag
        Every flagged item, ordered by problem (leak, duplicate, label, outlier, class_outlier)
        and then by score, worst first; ties by key.
    label_quality : ndarray or None
        Out-of-fold probability of each item's given label (NaN where not computed).
    suggested : ndarray of int or None
        The out-of-fold predicted class per item (-1 where not computed).
    outlier_score, class_outlier_score : ndarray
        Robust z-score of the k-th neighbour distance, overall and within the item's class.
    kth_distance : ndarray
        Cosine distance to the k-th nearest neighbour.
    overlap : list of dict
        Class pairs that mix, most first: ``a``, ``b``, ``neighbour_share`` (share of the
        neighbours of a and b that carry the other label) and ``confused`` (out-of-fold).
    joint : ndarray or None
        Confident learning's estimated joint of given (rows) and true (columns) labels.
    notes : list of str
        What was skipped and why (no labels, a single class, no split, ...).
    """

    fs: FeatureSet
    options: DiagnoseOptions
    duplicates: list[DuplicateGroup]
    flags: list[Flag]
    label_quality: np.ndarray | None
    suggested: np.ndarray | None
    outlier_score: np.ndarray
    class_outlier_score: np.ndarray
    kth_distance: np.ndarray
    nn_similarity: np.ndarray
    overlap: list[dict[str, Any]]
    joint: np.ndarray | None
    split: np.ndarray
    index: str
    folds: int
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    store: str = ""

    # -- views -----------------------------------------------------------------------------------
    def flagged(self, problem: str | None = None) -> list[Flag]:
        return [f for f in self.flags if problem is None or f.problem == problem]

    def label_issue_keys(self) -> list[str]:
        return [f.key for f in self.flagged("label")]

    def leaked_keys(self) -> list[str]:
        """Keys of the test (or val) items that have a near-duplicate in training."""
        return [f.key for f in self.flagged("leak")]

    def counts(self) -> dict[str, int]:
        out = {p: 0 for p in ("leak", "duplicate", "label", "outlier", "class_outlier")}
        for f in self.flags:
            out[f.problem] += 1
        return out

    def summary(self) -> dict[str, Any]:
        c = self.counts()
        n_dup_items = sum(len(g.rows) for g in self.duplicates)
        return {
            "store": self.store,
            "items": self.fs.n,
            "dim": self.fs.dim,
            "labeled": int((self.fs.y >= 0).sum()),
            "classes": len(self.fs.classes),
            "duplicate_groups": len(self.duplicates),
            "duplicate_items": n_dup_items,
            "exact_duplicate_groups": sum(g.exact for g in self.duplicates),
            "leaked_groups": sum(g.leak for g in self.duplicates),
            "leaked_items": c["leak"],
            "label_issues": c["label"],
            "outliers": c["outlier"],
            "class_outliers": c["class_outlier"],
            "to_exclude": len({f.key for f in self.flags if f.action == "exclude"}),
            "to_relabel": len(
                {f.key for f in self.flags if f.action == "relabel"}
                - {f.key for f in self.flags if f.action == "exclude"}
            ),
            "index": self.index,
            "folds": self.folds,
            "head": self.options.head if self.label_quality is not None else None,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "options": self.options.to_dict(),
            "duplicates": [g.to_dict() for g in self.duplicates],
            "overlap": self.overlap,
            "flags": [f.to_dict() for f in self.flags],
        }

    def manifest_rows(self) -> list[dict[str, str]]:
        """The exclusion / relabel manifest: one row per key, exclusion winning over relabel."""
        rows: dict[str, dict[str, str]] = {}
        for f in self.flags:
            if f.action == "exclude" and (f.key not in rows or rows[f.key]["action"] != "exclude"):
                rows[f.key] = {"key": f.key, "action": "exclude", "label": "", "reason": f.problem}
            elif f.action == "relabel" and f.key not in rows:
                rows[f.key] = {
                    "key": f.key,
                    "action": "relabel",
                    "label": f.suggested,
                    "reason": f"label (p(given) {1 - f.score:.3f})",
                }
        return sorted(rows.values(), key=lambda r: r["key"])

    def write_report(self, folder: str | os.PathLike) -> dict[str, str]:
        """Write the report folder (see :func:`featx.diagnostics.report.write_report`)."""
        from featx.diagnostics.report import write_report

        return write_report(self, folder)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def effective_split(fs: FeatureSet, protocol: EvalProtocol | None = None) -> tuple[np.ndarray, str]:
    """The split each row is in: the store's, or the one ``featx compare`` draws (``protocol``).

    Returns ``(split, where)``: an array of ``"train"``, ``"val"``, ``"test"`` or ``""``, and a
    phrase saying where it came from.
    """
    if fs.split is not None and protocol is None:
        return np.asarray(fs.split).astype(str), "the store's split"
    proto = (protocol or EvalProtocol()).split_only()
    labeled = fs.y >= 0
    if labeled.sum() == 0 or len(np.unique(fs.y[labeled])) < 2:
        if fs.split is not None:
            return np.asarray(fs.split).astype(str), "the store's split"
        return np.full(fs.n, "", dtype=object).astype(str), "no split"
    from featx.protocol import make_splits

    try:
        sp = make_splits(fs, split=proto.split, test_size=proto.test_size, seed=proto.seed)[0]
    except FeatxError:
        if fs.split is not None:
            return np.asarray(fs.split).astype(str), "the store's split"
        return np.full(fs.n, "", dtype=object).astype(str), "no split"
    out = np.full(fs.n, "", dtype=object)
    if fs.split is not None and sp.name.startswith("store split"):
        return np.asarray(fs.split).astype(str), "the store's split"
    out[sp.train] = "train"
    out[sp.test] = "test"
    return out.astype(str), f"the {sp.name} that featx compare draws"


def _is_leak(splits: Sequence[str]) -> bool:
    s = set(splits)
    return ("test" in s and bool(s & {"train", "val"})) or ({"train", "val"} <= s)


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
    w_all = np.where(ok, np.exp((sim[rows].astype(np.float64) - 1.0) / _VOTE_TEMPERATURE), 0.0)
    best: tuple[float, int, np.ndarray] | None = None
    m = len(rows)
    for k in _VOTE_KS:
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


def _oof_probabilities(
    fs: FeatureSet,
    rows: np.ndarray,
    opts: DiagnoseOptions,
    folds: int,
    bar: Any,
    vote: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-fold class probabilities of ``rows`` (K columns, the store's classes): the mean of
    the heads named in ``opts.head`` (comma-separated), each fitted on the same folds. ``knn``
    is the leave-one-out neighbour vote ``vote`` (:func:`neighbour_vote`) when given: the same
    estimate as fitting the head per fold, from the neighbour search already done."""
    from sklearn.model_selection import StratifiedKFold

    from featx.heads import make_head

    K = len(fs.classes)
    y = fs.y[rows]
    X = fs.X[rows]
    heads = head_names(opts)
    P = np.zeros((len(rows), K), dtype=np.float64)
    if vote is not None and "knn" in heads:
        P += vote / len(heads)
    fitted = [h for h in heads if not (vote is not None and h == "knn")]
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=opts.seed)
    for tr, te in skf.split(np.zeros(len(rows)), y):
        for name in fitted:
            est = make_head(name, random_state=opts.seed)
            if not hasattr(est, "predict_proba"):
                raise FeatxError(
                    f"head {name!r} gives no probabilities; use e.g. --head ridge,knn or logreg"
                )
            est.fit(X[tr], y[tr])
            proba = np.asarray(est.predict_proba(X[te]), dtype=np.float64)
            cols = np.asarray(est.classes_, dtype=np.int64)
            P[np.ix_(te, cols)] += proba / len(heads)
            bar.update(1)
    P = np.clip(P, 0.0, None)
    s = P.sum(axis=1, keepdims=True)
    return np.divide(P, s, out=np.full_like(P, 1.0 / K), where=s > 0)


def _duplicates(
    good: np.ndarray,
    nb_local: np.ndarray,
    nb_sim: np.ndarray,
    split: Sequence[str],
    keys: Sequence[str],
    label_of: Sequence[str],
    opts: DiagnoseOptions,
) -> tuple[list[DuplicateGroup], list[Flag]]:
    """Duplicate groups and a flag (leak or duplicate, action exclude) per member not kept."""
    k_all = nb_local.shape[1]
    groups: list[DuplicateGroup] = []
    flags: list[Flag] = []
    for g_local in duplicate_groups(nb_local, nb_sim, opts.duplicate_threshold):
        rows = good[np.asarray(g_local)]
        in_g = set(g_local)
        link = [
            float(nb_sim[a, c])
            for a in g_local
            for c in range(k_all)
            if nb_local[a, c] in in_g and nb_sim[a, c] >= opts.duplicate_threshold
        ]
        min_sim = min(link) if link else 1.0
        sp = tuple(split[r] for r in rows)
        keep = int(min(rows, key=lambda r: (_KEEP_ORDER.get(split[r], 2), keys[r])))
        grp = DuplicateGroup(
            rows=tuple(int(r) for r in rows),
            keys=tuple(keys[r] for r in rows),
            labels=tuple(label_of[r] for r in rows),
            splits=sp,
            min_similarity=min_sim,
            exact=min_sim >= EXACT_SIMILARITY,
            leak=_is_leak(sp),
            keep=keep,
        )
        groups.append(grp)
        gid = f"group of {len(rows)} (keeps {keys[keep]})"
        for r in rows:
            if r == keep:
                continue
            leak = grp.leak and split[r] in ("test", "val") and split[keep] != split[r]
            flags.append(
                Flag(
                    row=int(r),
                    key=keys[r],
                    problem="leak" if leak else "duplicate",
                    score=min_sim,
                    label=label_of[r],
                    suggested="",
                    split=split[r],
                    action="exclude",
                    detail=gid + (", labels differ" if grp.conflicting_labels else ""),
                )
            )
    groups.sort(key=lambda g: (not g.leak, -len(g.rows), g.keys[0]))
    return groups, flags


def leaked_keys(
    fs: FeatureSet,
    *,
    options: DiagnoseOptions | None = None,
    protocol: EvalProtocol | None = None,
) -> list[str]:
    """Keys of the test items that have a near-duplicate among the training items of the split
    ``protocol`` makes (the duplicate check of :func:`diagnose` alone, no label checks)."""
    opts = options or DiagnoseOptions()
    split_arr, _ = effective_split(fs, protocol or EvalProtocol())
    split = [str(v) for v in split_arr.tolist()]
    good = np.flatnonzero(np.isfinite(fs.X).all(axis=1))
    if len(good) < 2:
        return []
    Xn = unit_rows(fs.X[good] - fs.X[good].mean(axis=0, dtype=np.float64).astype(np.float32))
    nb_local, nb_sim = knn(Xn, _DUP_NEIGHBOURS, index=resolve_index(opts.index, len(good)))
    keys = [str(k) for k in np.asarray(fs.keys).tolist()]
    _, flags = _duplicates(good, nb_local, nb_sim, split, keys, [""] * fs.n, opts)
    return sorted(f.key for f in flags if f.problem == "leak" and f.split == "test")


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------


def diagnose(
    features: FeatureSet | str | os.PathLike,
    *,
    options: DiagnoseOptions | None = None,
    report: str | os.PathLike | None = None,
    progress: bool = False,
    protocol: EvalProtocol | None = None,
    **overrides: Any,
) -> Diagnosis:
    """Find duplicates and leakage, likely label errors, outliers and class overlap.

    Parameters
    ----------
    features : FeatureSet or path of a store
    options : DiagnoseOptions, optional
        Thresholds, the head and folds, the neighbour index, the map; ``**overrides`` replace
        single fields (``diagnose(fs, duplicate_threshold=0.99)``).
    report : path, optional
        Also write the report folder there (Markdown, HTML, CSV/JSON, manifest, map).
    progress : bool
        Progress bars on stderr.
    protocol : EvalProtocol, optional
        For a store without its own split: the protocol whose split defines leakage (default:
        the one ``featx compare`` uses by default).

    Returns
    -------
    Diagnosis

    Raises
    ------
    FeatxError
        An empty store, or labels of only one class (label checks need two).
    """
    from featx.progress import progress_bar

    opts = DiagnoseOptions.resolve(options, overrides)
    head_names(opts)  # an unknown head fails now, not after the neighbour search
    store = ""
    if not isinstance(features, FeatureSet):
        from featx.store import load_features

        store = str(features)
        features = load_features(features)
    fs = features
    notes: list[str] = []
    seconds: dict[str, float] = {}
    n = fs.n
    if n < 2:
        raise FeatxError(f"the store has {n} item(s); diagnose needs at least 2")
    if fs.dim == 0:
        raise FeatxError("the feature set has no dense features to compare items by")
    y = np.asarray(fs.y, dtype=np.int64)
    labeled = np.flatnonzero(y >= 0)
    present = np.unique(y[labeled])
    if len(labeled) and len(present) < 2:
        raise FeatxError(
            f"all {len(labeled)} labeled items are of one class ({fs.classes[present[0]]!r}); "
            "label checks need at least 2 classes (remove the labels to check only duplicates "
            "and outliers)"
        )
    finite = np.isfinite(fs.X).all(axis=1)
    if not finite.all():
        notes.append(
            f"{int((~finite).sum())} items with NaN or inf features were left out of every check"
        )
    good = np.flatnonzero(finite)
    keys = [str(k) for k in np.asarray(fs.keys).tolist()]
    names = np.array([*fs.classes, ""], dtype=object)  # names[-1] == "" for unlabelled
    label_of = [str(v) for v in names[np.where(y >= 0, y, -1)].tolist()]
    split_arr, split_from = effective_split(fs, protocol)
    split = [str(v) for v in split_arr.tolist()]
    if split_from == "no split":
        notes.append("no split: duplicate groups are reported, leakage needs a split")
    elif fs.split is None:
        notes.append(f"the store has no split; leakage is judged on {split_from}")

    t0 = time.perf_counter()
    centre = fs.X[good].mean(axis=0, dtype=np.float64).astype(np.float32)
    Xn = unit_rows(fs.X[good] - centre)
    index = resolve_index(opts.index, len(good))
    vote_wanted = len(labeled) > 0 and "knn" in head_names(opts)
    k_all = max(opts.neighbors, _DUP_NEIGHBOURS, _VOTE_NEIGHBOURS if vote_wanted else 0)
    with progress_bar(total=len(good), desc="neighbours", unit="item", enabled=progress) as bar:
        nb_local, nb_sim = knn(Xn, k_all, index=index, tick=bar.update)
    nb = np.full((n, k_all), -1, dtype=np.int64)  # per row of fs (-1: none, or a NaN row)
    nb[good] = np.where(nb_local >= 0, good[np.maximum(nb_local, 0)], -1)
    seconds["neighbours"] = time.perf_counter() - t0

    # -- duplicates and leakage ----------------------------------------------------------------
    t0 = time.perf_counter()
    groups, flags = _duplicates(good, nb_local, nb_sim, split, keys, label_of, opts)
    seconds["duplicates"] = time.perf_counter() - t0

    # -- outliers ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    kth = np.full(n, np.nan)
    kcol = min(opts.neighbors, k_all) - 1
    kth[good] = 1.0 - nb_sim[:, kcol].astype(np.float64)
    kth[good[~np.isfinite(nb_sim[:, kcol])]] = np.nan
    out_z = np.full(n, np.nan)
    out_z[good] = robust_z(kth[good])
    cls_z = np.full(n, np.nan)
    good_lab = good[y[good] >= 0]
    for c in present:
        rows_c = good_lab[y[good_lab] == c]
        if len(rows_c) < 3:
            continue
        kc = min(opts.neighbors, len(rows_c) - 1)
        ic, sc = knn(
            Xn[np.searchsorted(good, rows_c)], kc, index=resolve_index(opts.index, len(rows_c))
        )
        d = 1.0 - sc[:, kc - 1].astype(np.float64)
        cls_z[rows_c] = robust_z(d)
    seconds["outliers"] = time.perf_counter() - t0

    # -- label issues --------------------------------------------------------------------------
    t0 = time.perf_counter()
    quality = suggested = joint = None
    folds = 0
    confusion = None
    if len(labeled) == 0:
        notes.append(
            "the store has no labels: label errors and class overlap need labels (class "
            "folders or a label column); duplicates and outliers were checked"
        )
    else:
        lab_rows = np.intersect1d(labeled, good)
        counts = np.bincount(y[lab_rows], minlength=len(fs.classes))
        small = [c for c in present if counts[c] < 2]
        if small:
            notes.append(
                f"{len(small)} class(es) with fewer than 2 items (e.g. {fs.classes[small[0]]!r}) "
                "were left out of the label checks"
            )
            lab_rows = lab_rows[counts[y[lab_rows]] >= 2]
        in_check = np.unique(y[lab_rows])
        if len(in_check) < 2:
            notes.append("label checks skipped: fewer than 2 classes with 2 or more items")
        else:
            folds = int(min(opts.folds, counts[in_check].min()))
            if folds < opts.folds:
                notes.append(
                    f"{folds} folds instead of {opts.folds}: the smallest class has {folds} items"
                )
            vote = None
            if vote_wanted:
                nb_sim_full = np.full((n, k_all), -np.inf, dtype=np.float32)
                nb_sim_full[good] = nb_sim
                vote, vote_k = neighbour_vote(nb, nb_sim_full, y, lab_rows, len(fs.classes))
                log.info("knn: leave-one-out vote of the %d nearest neighbours", vote_k)
            n_fits = len([h for h in head_names(opts) if not (vote is not None and h == "knn")])
            with progress_bar(
                total=max(1, folds * n_fits),
                desc=f"{opts.head} folds",
                unit="fit",
                enabled=progress,
            ) as bar:
                P = _oof_probabilities(fs, lab_rows, opts, folds, bar, vote=vote)
            # confident learning over the classes present in the check
            Pc = P[:, in_check]
            Pc = Pc / np.maximum(Pc.sum(axis=1, keepdims=True), 1e-12)
            remap = np.full(len(fs.classes), -1, dtype=np.int64)
            remap[in_check] = np.arange(len(in_check))
            yc = remap[y[lab_rows]]
            issue, joint_c, _ = confident_learning(Pc, yc)
            joint = np.zeros((len(fs.classes), len(fs.classes)))
            joint[np.ix_(in_check, in_check)] = joint_c
            quality = np.full(n, np.nan)
            suggested = np.full(n, -1, dtype=np.int64)
            quality[lab_rows] = Pc[np.arange(len(lab_rows)), yc]
            suggested[lab_rows] = in_check[Pc.argmax(axis=1)]
            confusion = np.zeros((len(fs.classes), len(fs.classes)))
            np.add.at(confusion, (y[lab_rows], suggested[lab_rows]), 1.0)
            for r in lab_rows[issue]:
                flags.append(
                    Flag(
                        row=int(r),
                        key=keys[r],
                        problem="label",
                        score=1.0 - float(quality[r]),
                        label=label_of[r],
                        suggested=str(fs.classes[suggested[r]]),
                        split=split[r],
                        action="relabel",
                        detail=f"p(given) {quality[r]:.3f}, "
                        f"p(suggested) {P[np.searchsorted(lab_rows, r), suggested[r]]:.3f}",
                    )
                )
    seconds["labels"] = time.perf_counter() - t0

    # -- outlier flags (after label issues: an item far from its class but flagged as a label
    #    error is reported once, as a label error) -------------------------------------------
    label_flagged = {f.row for f in flags if f.problem == "label"}
    for r in np.flatnonzero(out_z >= opts.outlier_z):
        flags.append(
            Flag(
                row=int(r),
                key=keys[r],
                problem="outlier",
                score=float(out_z[r]),
                label=label_of[r],
                suggested="",
                split=split[r],
                action="exclude",
                detail=f"k-th neighbour distance {kth[r]:.3f} (k={opts.neighbors})",
            )
        )
    out_rows = {f.row for f in flags if f.problem == "outlier"}
    for r in np.flatnonzero(cls_z >= opts.outlier_z):
        if int(r) in out_rows or int(r) in label_flagged:
            continue
        flags.append(
            Flag(
                row=int(r),
                key=keys[r],
                problem="class_outlier",
                score=float(cls_z[r]),
                label=label_of[r],
                suggested="",
                split=split[r],
                action="review",
                detail="far from the other items of its class",
            )
        )

    # -- class overlap -------------------------------------------------------------------------
    overlap: list[dict[str, Any]] = []
    if len(labeled) and len(present) >= 2:
        share = neighbour_overlap(nb, y, len(fs.classes))
        for ai, a in enumerate(present):
            for b in present[ai + 1 :]:
                s = (share[a, b] + share[b, a]) / 2
                conf = 0.0
                if confusion is not None:
                    tot = confusion[a].sum() + confusion[b].sum()
                    conf = (confusion[a, b] + confusion[b, a]) / tot if tot else 0.0
                if s > 0 or conf > 0:
                    overlap.append(
                        {
                            "a": fs.classes[a],
                            "b": fs.classes[b],
                            "neighbour_share": round(float(s), 4),
                            "confused": round(float(conf), 4),
                        }
                    )
        overlap.sort(key=lambda o: (-(o["neighbour_share"] + o["confused"]), o["a"], o["b"]))

    order = {"leak": 0, "duplicate": 1, "label": 2, "outlier": 3, "class_outlier": 4}
    flags.sort(key=lambda f: (order[f.problem], -f.score, f.key))
    nn_sim = np.full(n, np.nan)
    nn_sim[good] = nb_sim[:, 0]
    result = Diagnosis(
        fs=fs,
        options=opts,
        duplicates=groups,
        flags=flags,
        label_quality=quality,
        suggested=suggested,
        outlier_score=out_z,
        class_outlier_score=cls_z,
        kth_distance=kth,
        nn_similarity=nn_sim,
        overlap=overlap,
        joint=joint,
        split=split_arr,
        index=index,
        folds=folds,
        seconds=seconds,
        notes=notes,
        store=store,
    )
    if report is not None:
        t0 = time.perf_counter()
        result.write_report(report)
        seconds["report"] = time.perf_counter() - t0
    return result
