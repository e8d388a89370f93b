"""Input checks and splits: one split, cv folds, few-shot trials, all seeded by key."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.features import FeatureSet
from featx.options import SPLIT_MODES, EvalProtocol

logger = logging.getLogger(__name__)

_CHUNK = 8192


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def check_features(fs: FeatureSet, rows: np.ndarray | None = None) -> np.ndarray:
    """Validate a feature set for fitting; return the indices of its labeled rows.

    Raises
    ------
    FeatxError
        No labels at all, fewer than two classes among the labeled rows, NaN or inf in the
        features of labeled rows, or arrays whose shapes do not match.
    """
    X, y = fs.X, np.asarray(fs.y)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise FeatxError(
            f"features of shape {X.shape} do not match labels of shape {y.shape}; "
            "rebuild the feature store"
        )
    labeled = np.flatnonzero(y >= 0) if rows is None else rows
    if len(labeled) == 0:
        raise FeatxError(
            f"the store has no labeled items ({fs.n} items, all unlabeled); "
            "fit needs a labeled source (class folders or a CSV with a label column)"
        )
    if y.max(initial=-1) >= len(fs.classes):
        raise FeatxError(
            f"labels go up to {int(y.max())} but the store names {len(fs.classes)} classes; "
            "rebuild the feature store"
        )
    present = np.unique(y[labeled])
    if len(present) < 2:
        raise FeatxError(
            f"all {len(labeled)} labeled items are of one class ({fs.classes[present[0]]!r}); "
            "a classifier needs at least 2 classes"
        )
    bad: list[np.ndarray] = []
    for s in range(0, len(labeled), _CHUNK):
        r = labeled[s : s + _CHUNK]
        ok = np.isfinite(X[r]).all(axis=1)
        if not ok.all():
            bad.append(r[~ok])
    if bad:
        b = np.concatenate(bad)
        first = str(fs.keys[b[0]])
        raise FeatxError(
            f"features contain NaN or inf in {len(b)} labeled items (first: {first!r}); "
            "re-extract the store (e.g. in float32 instead of float16) or remove those items"
        )
    return labeled


@dataclass(frozen=True)
class Split:
    """One train/test partition of a feature set's rows.

    Attributes
    ----------
    train, test : ndarray of int64
        Row indices (sorted) into the feature set; labeled rows only.
    name : str
        What it is, e.g. ``"store split"``, ``"fold 2/5"``, ``"5-shot trial 3/10"``.
    """

    train: np.ndarray
    test: np.ndarray
    name: str

    def keys(self, fs: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        """The keys of the train and test items (to compare splits across stores)."""
        return fs.keys[self.train], fs.keys[self.test]


def _canonical(fs: FeatureSet, rows: np.ndarray) -> np.ndarray:
    """``rows`` in key order: a row order that every store of the same source shares."""
    return rows[np.argsort(fs.keys[rows], kind="stable")]


def _min_class(fs: FeatureSet, rows: np.ndarray) -> tuple[str, int, int]:
    counts = np.bincount(fs.y[rows], minlength=len(fs.classes))
    present = np.flatnonzero(counts)
    c = present[np.argmin(counts[present])]
    return fs.classes[c], int(counts[c]), present


def _store_split(fs: FeatureSet, labeled: np.ndarray) -> Split | None:
    if fs.split is None:
        return None
    s = np.asarray(fs.split).astype(str)[labeled]
    if (s == "test").any():
        train, test, name = labeled[np.isin(s, ["train", "val"])], labeled[s == "test"], "test"
    else:
        train, test, name = labeled[s == "train"], labeled[s == "val"], "val"
    if len(train) == 0 or len(test) == 0:
        return None
    n_other = int((~np.isin(s, ["train", "val", "test"])).sum())
    if n_other:
        logger.info("%d labeled items belong to no split and are left out", n_other)
    desc = "store split (train+val / test)" if name == "test" else "store split (train / val)"
    return Split(np.sort(train), np.sort(test), desc)


def make_splits(
    fs: FeatureSet,
    *,
    split: str = EvalProtocol.split,
    test_size: float = EvalProtocol.test_size,
    cv: int | None = EvalProtocol.cv,
    seed: int = EvalProtocol.seed,
) -> list[Split]:
    """The train/test splits of the protocol, over labeled rows only.

    Parameters
    ----------
    fs : FeatureSet
    split : {"auto", "store", "stratified"}, default="auto"
        ``"store"``: the store's own split (train and val are fitted on, test is tested on; a
        store without test items is tested on val). ``"stratified"``: a seeded split with
        ``test_size`` of each class held out. ``"auto"``: the store's split where it has one,
        else stratified.
    test_size : float, default=0.2
    cv : int, optional
        K stratified folds over all labeled items instead (the store's split is not used).
    seed : int, default=0

    Returns
    -------
    list of Split
        One split, or ``cv`` folds.

    Raises
    ------
    FeatxError
        Too few items per class for the split or the folds (the message says how many are
        needed), an unknown mode, or ``split="store"`` on a store without a usable split.
    """
    from featx.splits import stratified_holdout

    if split not in SPLIT_MODES:
        raise FeatxError(f"unknown split {split!r}; use one of {', '.join(SPLIT_MODES)}")
    labeled = check_features(fs)
    if cv is not None:
        if isinstance(cv, bool) or not isinstance(cv, int | np.integer) or cv < 2:
            raise FeatxError(f"cv must be an integer >= 2 folds; got {cv!r}")
        if split == "store":
            raise FeatxError("cv folds and split='store' exclude each other; choose one")
        name, n_min, _ = _min_class(fs, labeled)
        if n_min < cv:
            raise FeatxError(
                f"cv={cv} needs at least {cv} labeled items per class; class {name!r} has "
                f"{n_min}; use fewer folds or add items"
            )
        if fs.split is not None:
            logger.info("cv=%d folds over all labeled items; the store's split is not used", cv)
        from sklearn.model_selection import StratifiedKFold

        order = _canonical(fs, labeled)
        folds = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=seed)
        return [
            Split(np.sort(order[tr]), np.sort(order[te]), f"fold {i + 1}/{cv}")
            for i, (tr, te) in enumerate(folds.split(order, fs.y[order]))
        ]
    if split in ("auto", "store"):
        s = _store_split(fs, labeled)
        if s is not None:
            return [s]
        if split == "store":
            raise FeatxError(
                "the store has no usable split (labeled train and test/val items); "
                "use split='stratified' or 'auto'"
            )
    if not 0 < test_size < 1:
        raise FeatxError(f"test_size must be between 0 and 1; got {test_size!r}")
    name, n_min, present = _min_class(fs, labeled)
    if n_min < 2:
        n_small = int((np.bincount(fs.y[labeled])[present] < 2).sum())
        raise FeatxError(
            f"a stratified split needs at least 2 labeled items per class; class {name!r} has "
            f"{n_min} ({n_small} class(es) like it); add items or drop those classes"
        )
    order = _canonical(fs, labeled)
    keep, hold = stratified_holdout(fs.y[order], test_size, seed)
    desc = f"stratified split (test {test_size:g}, seed {seed})"
    return [Split(np.sort(order[keep]), np.sort(order[hold]), desc)]


def few_shot_splits(fs: FeatureSet, base: Split, shots: int, trials: int, seed: int) -> list[Split]:
    """``trials`` splits with ``shots`` training items per class drawn from ``base.train``.

    The test side stays ``base.test``. Trial ``t`` is seeded with ``(seed, t)`` and draws from the
    key-ordered training items, so every store of the same source gets the same shots.

    Raises
    ------
    FeatxError
        A class with fewer than ``shots`` training items (the message names it).
    """
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise FeatxError(f"shots must be a positive integer; got {shots!r}")
    if isinstance(trials, bool) or not isinstance(trials, int | np.integer) or trials < 1:
        raise FeatxError(f"trials must be a positive integer; got {trials!r}")
    order = _canonical(fs, base.train)
    y = fs.y[order]
    classes = np.unique(y)
    counts = np.bincount(y, minlength=len(fs.classes))
    short = [c for c in classes if counts[c] < shots]
    if short:
        c = min(short, key=lambda c: counts[c])
        raise FeatxError(
            f"{shots}-shot needs {shots} training items per class; class {fs.classes[c]!r} has "
            f"{counts[c]} ({len(short)} class(es) short); use fewer shots"
        )
    by_class = [order[y == c] for c in classes]
    out = []
    for t in range(trials):
        rng = np.random.default_rng([seed, t])
        train = np.concatenate([rng.choice(rows, size=shots, replace=False) for rows in by_class])
        out.append(Split(np.sort(train), base.test, f"{shots}-shot trial {t + 1}/{trials}"))
    return out


def protocol_splits(
    fs: FeatureSet, protocol: EvalProtocol | None = None, **overrides: Any
) -> list[Split]:
    """All the splits one evaluation runs over: one split, ``cv`` folds, or few-shot trials.

    ``protocol`` (default :class:`~featx.options.EvalProtocol`) with ``overrides`` applied;
    ``class_weight`` and ``preprocess`` play no part in the splits.
    """
    p = EvalProtocol.resolve(protocol, overrides)
    if p.shots is not None and p.cv is not None:
        raise FeatxError("few-shot (shots) and cv folds exclude each other; choose one")
    splits = make_splits(fs, split=p.split, test_size=p.test_size, cv=p.cv, seed=p.seed)
    if p.shots is not None:
        splits = few_shot_splits(fs, splits[0], p.shots, p.trials, p.seed)
    return splits


def describe_splits(splits: Sequence[Split], shots: int | None, cv: int | None) -> str:
    """A one-line description of the protocol, e.g. ``"5-fold stratified cv"``."""
    if shots is not None:
        base = splits[0].name.split(" trial ")[0]
        return f"{base} x {len(splits)} trials"
    if cv is not None:
        return f"{cv}-fold stratified cv"
    return splits[0].name
