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
from featx.diagnostics.neighbors import knn, resolve_index
from featx.diagnostics.oof import VOTE_NEIGHBOURS, head_names, neighbour_vote, oof_probabilities
from featx.errors import FeatxError
from featx.features import FeatureSet
from featx.options import DiagnoseOptions, EvalProtocol

log = logging.getLogger(__name__)

#: Similarity above which two embeddings count as the same item (an exact copy).
EXACT_SIMILARITY = 0.99999
#: Neighbours kept per item for duplicate groups (a bigger group is still found: it is
#: connected through its members' lists).
_DUP_NEIGHBOURS = 10
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
        The smallest similarity between two members (every pair is at least this similar:
        groups are joined by complete linkage, see
        :func:`~featx.diagnostics.checks.duplicate_groups`).
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


def _duplicates(
    good: np.ndarray,
    Xn: np.ndarray,
    nb_local: np.ndarray,
    nb_sim: np.ndarray,
    split: Sequence[str],
    keys: Sequence[str],
    label_of: Sequence[str],
    opts: DiagnoseOptions,
) -> tuple[list[DuplicateGroup], list[Flag]]:
    """Duplicate groups and a flag (leak or duplicate, action exclude) per member not kept.

    ``Xn``: the unit rows of ``good`` that ``nb_local`` / ``nb_sim`` index."""
    groups: list[DuplicateGroup] = []
    flags: list[Flag] = []
    for g_local in duplicate_groups(Xn, nb_local, nb_sim, opts.duplicate_threshold):
        rows = good[np.asarray(g_local)]
        S = Xn[g_local] @ Xn[g_local].T
        min_sim = float(S[np.triu_indices(len(g_local), 1)].min())
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


def _centred_unit_rows(X: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Unit rows of ``X[good]`` less their mean: the space every similarity is taken in."""
    Xg = np.asarray(X[good], dtype=np.float32)  # a copy: centred and scaled in place
    Xg -= Xg.mean(axis=0, dtype=np.float64).astype(np.float32)
    norms = np.linalg.norm(Xg, axis=1, keepdims=True)
    Xg /= np.where(norms > 0, norms, 1.0)
    return Xg


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
    Xn = _centred_unit_rows(fs.X, good)
    nb_local, nb_sim = knn(Xn, _DUP_NEIGHBOURS, index=resolve_index(opts.index, len(good)))
    keys = [str(k) for k in np.asarray(fs.keys).tolist()]
    _, flags = _duplicates(good, Xn, nb_local, nb_sim, split, keys, [""] * fs.n, opts)
    return sorted(f.key for f in flags if f.problem == "leak" and f.split == "test")


# ---------------------------------------------------------------------------------------------
# the steps of diagnose
# ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the steps of :func:`diagnose` share: the inputs, read once, and what each adds."""

    fs: FeatureSet
    opts: DiagnoseOptions
    progress: bool
    y: np.ndarray  # labels per row (-1: none)
    labeled: np.ndarray  # rows with a label
    present: np.ndarray  # classes with a labelled row
    good: np.ndarray  # rows with finite features
    keys: list[str]
    label_of: list[str]  # class name per row ("" unlabelled)
    split_arr: np.ndarray
    split: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    # the neighbour graph (_neighbours)
    Xn: np.ndarray | None = None  # centred unit rows of good
    index: str = "exact"
    nb_local: np.ndarray | None = None  # per row of good, into good
    nb_sim: np.ndarray | None = None
    nb: np.ndarray | None = None  # per row of fs, into fs (-1: none)


def _start(fs: FeatureSet, opts: DiagnoseOptions, progress: bool, protocol: Any) -> _Run:
    """Check the feature set, read labels, keys and the split once; notes for what is skipped."""
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
    notes: list[str] = []
    finite = np.isfinite(fs.X).all(axis=1)
    if not finite.all():
        notes.append(
            f"{int((~finite).sum())} items with NaN or inf features were left out of every check"
        )
    names = np.array([*fs.classes, ""], dtype=object)  # names[-1] == "" for unlabelled
    split_arr, split_from = effective_split(fs, protocol)
    if split_from == "no split":
        notes.append("no split: duplicate groups are reported, leakage needs a split")
    elif fs.split is None:
        notes.append(f"the store has no split; leakage is judged on {split_from}")
    return _Run(
        fs=fs,
        opts=opts,
        progress=progress,
        y=y,
        labeled=labeled,
        present=present,
        good=np.flatnonzero(finite),
        keys=[str(k) for k in np.asarray(fs.keys).tolist()],
        label_of=[str(v) for v in names[np.where(y >= 0, y, -1)].tolist()],
        split_arr=split_arr,
        split=[str(v) for v in split_arr.tolist()],
        notes=notes,
    )


def _neighbours(run: _Run) -> None:
    """One neighbour search over the centred unit rows: enough neighbours for the duplicates,
    the outlier distance and (when ``knn`` is a label head) the leave-one-out vote."""
    from featx.progress import progress_bar

    t0 = time.perf_counter()
    opts, good = run.opts, run.good
    run.Xn = _centred_unit_rows(run.fs.X, good)
    run.index = resolve_index(opts.index, len(good))
    vote_wanted = len(run.labeled) > 0 and "knn" in head_names(opts)
    k_all = max(opts.neighbors, _DUP_NEIGHBOURS, VOTE_NEIGHBOURS if vote_wanted else 0)
    with progress_bar(total=len(good), desc="neighbours", unit="item", enabled=run.progress) as bar:
        run.nb_local, run.nb_sim = knn(run.Xn, k_all, index=run.index, tick=bar.update)
    nb = np.full((run.fs.n, k_all), -1, dtype=np.int64)
    nb[good] = np.where(run.nb_local >= 0, good[np.maximum(run.nb_local, 0)], -1)
    run.nb = nb
    run.seconds["neighbours"] = time.perf_counter() - t0


def _outlier_scores(run: _Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k-th neighbour distance and its robust z-score, overall and within each class."""
    t0 = time.perf_counter()
    opts, good, y, n = run.opts, run.good, run.y, run.fs.n
    assert run.nb_sim is not None and run.Xn is not None
    kth = np.full(n, np.nan)
    kcol = min(opts.neighbors, run.nb_sim.shape[1]) - 1
    kth[good] = 1.0 - run.nb_sim[:, kcol].astype(np.float64)
    kth[good[~np.isfinite(run.nb_sim[:, kcol])]] = np.nan
    out_z = np.full(n, np.nan)
    out_z[good] = robust_z(kth[good])
    cls_z = np.full(n, np.nan)
    good_lab = good[y[good] >= 0]
    for c in run.present:
        rows_c = good_lab[y[good_lab] == c]
        if len(rows_c) < 3:
            continue
        kc = min(opts.neighbors, len(rows_c) - 1)
        _, sc = knn(
            run.Xn[np.searchsorted(good, rows_c)],
            kc,
            index=resolve_index(opts.index, len(rows_c)),
        )
        cls_z[rows_c] = robust_z(1.0 - sc[:, kc - 1].astype(np.float64))
    run.seconds["outliers"] = time.perf_counter() - t0
    return kth, out_z, cls_z


@dataclass
class _Labels:
    quality: np.ndarray | None = None
    suggested: np.ndarray | None = None
    joint: np.ndarray | None = None
    confusion: np.ndarray | None = None
    folds: int = 0


def _label_checks(run: _Run) -> _Labels:
    """Out-of-fold probabilities, then confident learning; a ``label`` flag per issue."""
    out = _Labels()
    fs, opts, y = run.fs, run.opts, run.y
    if len(run.labeled) == 0:
        run.notes.append(
            "the store has no labels: label errors and class overlap need labels (class "
            "folders or a label column); duplicates and outliers were checked"
        )
        return out
    lab_rows = np.intersect1d(run.labeled, run.good)
    counts = np.bincount(y[lab_rows], minlength=len(fs.classes))
    small = [c for c in run.present if counts[c] < 2]
    if small:
        run.notes.append(
            f"{len(small)} class(es) with fewer than 2 items (e.g. {fs.classes[small[0]]!r}) "
            "were left out of the label checks"
        )
        lab_rows = lab_rows[counts[y[lab_rows]] >= 2]
    in_check = np.unique(y[lab_rows])
    if len(in_check) < 2:
        run.notes.append("label checks skipped: fewer than 2 classes with 2 or more items")
        return out
    out.folds = int(min(opts.folds, counts[in_check].min()))
    if out.folds < opts.folds:
        run.notes.append(
            f"{out.folds} folds instead of {opts.folds}: the smallest class has {out.folds} items"
        )
    P = _probabilities(run, lab_rows, out.folds)
    # confident learning over the classes present in the check
    K = len(fs.classes)
    Pc = P[:, in_check]
    Pc = Pc / np.maximum(Pc.sum(axis=1, keepdims=True), 1e-12)
    remap = np.full(K, -1, dtype=np.int64)
    remap[in_check] = np.arange(len(in_check))
    yc = remap[y[lab_rows]]
    issue, joint_c, _ = confident_learning(Pc, yc)
    out.joint = np.zeros((K, K))
    out.joint[np.ix_(in_check, in_check)] = joint_c
    out.quality = np.full(fs.n, np.nan)
    out.suggested = np.full(fs.n, -1, dtype=np.int64)
    out.quality[lab_rows] = Pc[np.arange(len(lab_rows)), yc]
    out.suggested[lab_rows] = in_check[Pc.argmax(axis=1)]
    out.confusion = np.zeros((K, K))
    np.add.at(out.confusion, (y[lab_rows], out.suggested[lab_rows]), 1.0)
    for i in np.flatnonzero(issue):
        r = int(lab_rows[i])
        s = int(out.suggested[r])
        run.flags.append(
            Flag(
                row=r,
                key=run.keys[r],
                problem="label",
                score=1.0 - float(out.quality[r]),
                label=run.label_of[r],
                suggested=str(fs.classes[s]),
                split=run.split[r],
                action="relabel",
                detail=f"p(given) {out.quality[r]:.3f}, p(suggested) {P[i, s]:.3f}",
            )
        )
    return out


def _probabilities(run: _Run, lab_rows: np.ndarray, folds: int) -> np.ndarray:
    """Out-of-fold probabilities of ``lab_rows`` from the label heads (knn: the graph's vote)."""
    from featx.progress import progress_bar

    fs, opts, y, n = run.fs, run.opts, run.y, run.fs.n
    assert run.nb is not None and run.nb_sim is not None
    vote = None
    if "knn" in head_names(opts):
        nb_sim_full = np.full((n, run.nb.shape[1]), -np.inf, dtype=np.float32)
        nb_sim_full[run.good] = run.nb_sim
        vote, vote_k = neighbour_vote(run.nb, nb_sim_full, y, lab_rows, len(fs.classes))
        log.info("knn: leave-one-out vote of the %d nearest neighbours", vote_k)
    n_fits = len([h for h in head_names(opts) if not (vote is not None and h == "knn")])
    with progress_bar(
        total=max(1, folds * n_fits), desc=f"{opts.head} folds", unit="fit", enabled=run.progress
    ) as bar:
        return oof_probabilities(
            fs.X, lab_rows, y[lab_rows], len(fs.classes), opts, folds, bar, vote=vote
        )


def _outlier_flags(run: _Run, kth: np.ndarray, out_z: np.ndarray, cls_z: np.ndarray) -> None:
    """Outlier flags, after the label issues: an item far from its class but flagged as a label
    error is reported once, as a label error."""
    opts = run.opts
    label_flagged = {f.row for f in run.flags if f.problem == "label"}
    out_rows = set()
    for r in np.flatnonzero(out_z >= opts.outlier_z).tolist():
        out_rows.add(r)
        run.flags.append(
            Flag(
                row=r,
                key=run.keys[r],
                problem="outlier",
                score=float(out_z[r]),
                label=run.label_of[r],
                suggested="",
                split=run.split[r],
                action="exclude",
                detail=f"k-th neighbour distance {kth[r]:.3f} (k={opts.neighbors})",
            )
        )
    for r in np.flatnonzero(cls_z >= opts.outlier_z).tolist():
        if r in out_rows or r in label_flagged:
            continue
        run.flags.append(
            Flag(
                row=r,
                key=run.keys[r],
                problem="class_outlier",
                score=float(cls_z[r]),
                label=run.label_of[r],
                suggested="",
                split=run.split[r],
                action="review",
                detail="far from the other items of its class",
            )
        )


def _class_overlap(run: _Run, confusion: np.ndarray | None) -> list[dict[str, Any]]:
    """Class pairs that share neighbourhoods or out-of-fold confusions, most first."""
    fs, present = run.fs, run.present
    overlap: list[dict[str, Any]] = []
    if not (len(run.labeled) and len(present) >= 2):
        return overlap
    assert run.nb is not None
    share = neighbour_overlap(run.nb, run.y, len(fs.classes))
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
    return overlap


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
    opts = DiagnoseOptions.resolve(options, overrides)
    head_names(opts)  # an unknown head fails now, not after the neighbour search
    store = ""
    if not isinstance(features, FeatureSet):
        from featx.store import load_features

        store = str(features)
        features = load_features(features)
    from featx.heads._torch import cpu_threads_for_load

    with cpu_threads_for_load() as threads:
        result = _diagnose(features, opts, progress, protocol, store)
        log.info("diagnose used %d CPU thread(s)", threads)
    if report is not None:
        t0 = time.perf_counter()
        result.write_report(report)
        result.seconds["report"] = time.perf_counter() - t0
    return result


def _diagnose(
    features: FeatureSet, opts: DiagnoseOptions, progress: bool, protocol: Any, store: str
) -> Diagnosis:
    """The steps of :func:`diagnose`, in order."""
    run = _start(features, opts, progress, protocol)
    _neighbours(run)
    t0 = time.perf_counter()
    assert run.Xn is not None and run.nb_local is not None and run.nb_sim is not None
    groups, run.flags = _duplicates(
        run.good, run.Xn, run.nb_local, run.nb_sim, run.split, run.keys, run.label_of, opts
    )
    run.seconds["duplicates"] = time.perf_counter() - t0
    kth, out_z, cls_z = _outlier_scores(run)
    t0 = time.perf_counter()
    labels = _label_checks(run)
    run.seconds["labels"] = time.perf_counter() - t0
    _outlier_flags(run, kth, out_z, cls_z)
    overlap = _class_overlap(run, labels.confusion)
    order = {"leak": 0, "duplicate": 1, "label": 2, "outlier": 3, "class_outlier": 4}
    run.flags.sort(key=lambda f: (order[f.problem], -f.score, f.key))
    nn_sim = np.full(run.fs.n, np.nan)
    nn_sim[run.good] = run.nb_sim[:, 0]
    return Diagnosis(
        fs=run.fs,
        options=opts,
        duplicates=groups,
        flags=run.flags,
        label_quality=labels.quality,
        suggested=labels.suggested,
        outlier_score=out_z,
        class_outlier_score=cls_z,
        kth_distance=kth,
        nn_similarity=nn_sim,
        overlap=overlap,
        joint=labels.joint,
        split=run.split_arr,
        index=run.index,
        folds=labels.folds,
        seconds=run.seconds,
        notes=run.notes,
        store=store,
    )
