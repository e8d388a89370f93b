"""The evaluation protocol: splits, metrics, few-shot sampling, and evaluating a head on features.

Everything here is deterministic given ``seed`` and depends on the items' keys and labels only,
never on row order: two stores of different backbones over the same source get the same splits,
so their heads are compared on the same test items.

Examples
--------
>>> import numpy as np
>>> from featx.features import FeatureSet
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(np.arange(3), 40)
>>> X = (rng.normal(size=(120, 8)) + 3 * np.eye(3, 8)[y]).astype(np.float32)
>>> fs = FeatureSet(X=X, y=y, classes=("a", "b", "c"), split=None,
...                 keys=np.array([f"img{i:03d}" for i in range(120)]))
>>> result = evaluate(fs, "centroid", seed=0)  # or protocol=EvalProtocol(seed=0)
>>> result.n_test, result.accuracy > 0.8
(24, True)
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.features import FeatureSet, RowMatrix
from featx.options import DEFAULT_HEAD, DEFAULT_REFIT, REFIT_MODES, SPLIT_MODES, EvalProtocol

logger = logging.getLogger(__name__)

__all__ = [
    "SPLIT_MODES",
    "ClassReport",
    "EvalProtocol",
    "FittedHead",
    "Metrics",
    "Result",
    "Split",
    "check_features",
    "compute_metrics",
    "describe_splits",
    "evaluate",
    "few_shot_splits",
    "fit_head",
    "head_label",
    "make_splits",
    "protocol_splits",
]
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


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassReport:
    """Precision, recall, F1 and support of one class on the test items."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Metrics:
    """The metrics of one fitted head on one test set.

    ``top5_accuracy`` is None with 5 classes or fewer or when the head gives no scores;
    ``log_loss`` is None when the head has no ``predict_proba``; ``roc_auc`` (of the second
    class's probability) is None unless there are two classes, probabilities, and test items of
    both classes. ``solver`` says how the head was fitted when it tells (its ``solver_``, e.g.
    ``"nystroem rank 1200 (cpu)"``), else ``""``.
    """

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    top5_accuracy: float | None
    log_loss: float | None
    per_class: tuple[ClassReport, ...]
    confusion_matrix: np.ndarray
    n_train: int = 0
    n_test: int = 0
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    split: str = ""
    roc_auc: float | None = None
    solver: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "top5_accuracy": self.top5_accuracy,
            "log_loss": self.log_loss,
            "roc_auc": self.roc_auc,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "solver": self.solver,
        }


def compute_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    *,
    scores: np.ndarray | None = None,
    proba: np.ndarray | None = None,
) -> Metrics:
    """Metrics of predictions over class indices ``0..len(classes)-1``.

    Parameters
    ----------
    y_true, y_pred : ndarray of int
        True and predicted class indices.
    classes : sequence of str
        All class names (the confusion matrix and per-class report cover every one of them).
    scores : ndarray of shape (n, len(classes)), optional
        Any per-class scores (probabilities or decision values; ``-inf`` for classes the head
        never saw) for the top-5 accuracy.
    proba : ndarray of shape (n, len(classes)), optional
        Class probabilities for the log-loss.

    Examples
    --------
    >>> m = compute_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b"])
    >>> round(m.accuracy, 3), m.per_class[1].recall
    (0.667, 0.5)
    """
    from sklearn import metrics as skm

    K = len(classes)
    labels = np.arange(K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from y_true / y_pred: handled below
        acc = float(skm.accuracy_score(y_true, y_pred))
        bacc = float(skm.balanced_accuracy_score(y_true, y_pred))
        f1 = float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
        p, r, f, s = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
    top5 = None
    if scores is not None and K > 5:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        top5 = float(np.mean((top == np.asarray(y_true)[:, None]).any(axis=1)))
    ll = auc = None
    if proba is not None:
        eps = 1e-15
        pt = np.clip(proba[np.arange(len(y_true)), y_true], eps, 1.0)
        ll = float(-np.mean(np.log(pt)))
        if K == 2 and len(np.unique(y_true)) == 2:
            auc = float(skm.roc_auc_score(y_true, proba[:, 1]))
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    per_class = tuple(
        ClassReport(str(classes[i]), float(p[i]), float(r[i]), float(f[i]), int(s[i]))
        for i in range(K)
    )
    return Metrics(acc, bacc, f1, top5, ll, per_class, cm, roc_auc=auc)


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

_MEANED = ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy", "log_loss", "roc_auc")


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Result:
    """A head evaluated on a feature set: the mean over runs (folds, trials) and each run.

    Attributes
    ----------
    head : str
        Registry name of the head (or the estimator's class name).
    label : str
        ``head`` with its parameters, e.g. ``"mlp(hidden_sizes=256,128)"``.
    store : str or None
        Name of the feature set (e.g. the backbone).
    accuracy, balanced_accuracy, macro_f1 : float
        Means over runs.
    top5_accuracy, log_loss, roc_auc : float or None
        ``roc_auc`` for two classes only.
    solver : str
        How the head was fitted, when it says (e.g. ``"nystroem rank 1200 (cpu)"``, ``"exact
        SVC"``, ``"torch newton (cpu)"``); the distinct values of the runs joined by ``"; "``.
    std : dict of str to float
        Sample standard deviation (ddof=1) of each metric over runs; empty for a single run.
    fit_seconds, predict_seconds : float
        Mean per run (fit includes the head's own hyper-parameter sweep).
    per_class : tuple of ClassReport
        From the predictions of all runs pooled.
    confusion_matrix : ndarray of shape (n_classes, n_classes)
        Summed over runs; rows are true classes, columns predicted ones.
    n_unlabeled : int
        Unlabeled items of the store, which were left out.
    """

    head: str
    label: str
    store: str | None
    params: dict[str, Any]
    preprocess: tuple[str, ...]
    class_weight: str | None
    protocol: str
    classes: tuple[str, ...]
    n_labeled: int
    n_unlabeled: int
    n_train: int
    n_test: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    top5_accuracy: float | None
    log_loss: float | None
    fit_seconds: float
    predict_seconds: float
    std: dict[str, float]
    per_class: tuple[ClassReport, ...]
    confusion_matrix: np.ndarray
    runs: tuple[Metrics, ...] = field(default=())
    roc_auc: float | None = None
    solver: str = ""

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    def to_dict(self, *, details: bool = True) -> dict[str, Any]:
        """JSON-able dict; ``details=False`` leaves out per-class, confusion matrix and runs."""
        d: dict[str, Any] = {
            "head": self.head,
            "label": self.label,
            "store": self.store,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "top5_accuracy": self.top5_accuracy,
            "log_loss": self.log_loss,
            "roc_auc": self.roc_auc,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "solver": self.solver,
            "std": dict(self.std),
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "preprocess": list(self.preprocess),
            "class_weight": self.class_weight,
            "protocol": self.protocol,
            "n_runs": self.n_runs,
            "n_classes": len(self.classes),
            "n_labeled": self.n_labeled,
            "n_unlabeled": self.n_unlabeled,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }
        if details:
            d["classes"] = list(self.classes)
            d["per_class"] = [c.to_dict() for c in self.per_class]
            d["confusion_matrix"] = self.confusion_matrix.tolist()
            d["runs"] = [m.to_dict() for m in self.runs]
        return d


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple | list | np.ndarray):
        return [_jsonable(x) for x in v]
    return v


def head_label(head: str, params: Mapping[str, Any] | None) -> str:
    """``"mlp(hidden_sizes=256,128, lr=0.01)"``: a head name with the parameters given to it.

    ``device`` is left out: it changes where a head runs, not what it is.
    """
    params = {k: v for k, v in (params or {}).items() if k != "device"}
    if not params:
        return head

    def fmt(v: Any) -> str:
        if isinstance(v, tuple | list | np.ndarray):
            return ",".join(fmt(x) for x in v)
        return f"{v:g}" if isinstance(v, float) else str(v)

    return f"{head}({', '.join(f'{k}={fmt(v)}' for k, v in params.items())})"


# ---------------------------------------------------------------------------------------------
# fitting and evaluating
# ---------------------------------------------------------------------------------------------


def unit_norm_rows(X: np.ndarray, tol: float = 5e-3, sample: int = 2048) -> bool:
    """Whether the rows of ``X`` are L2-normalized already (a sample of at most ``sample``
    rows, within ``tol``: float16 stores round norms by ~1e-3)."""
    if not isinstance(X, np.ndarray) or X.ndim != 2 or len(X) == 0:
        return False
    idx = np.linspace(0, len(X) - 1, num=min(sample, len(X))).astype(np.int64)
    norms = np.linalg.norm(np.asarray(X[idx], dtype=np.float64), axis=1)
    return bool(np.all(np.abs(norms - 1.0) < tol))


#: Heads whose default standardization gives way to ``l2`` on unit-norm rows, by measurement on
#: BBC headlines and articles with MiniLM (BENCHMARKS.md, "Preprocessing defaults"): logreg,
#: ridge and mlp gained 0.5-1.6 points on headlines and lost at most 2 test items on articles;
#: svm (+1 item, -2 items) and linear-svm (-1.35 and -0.45 points) keep standardizing.
FOLLOW_UNIT_NORM = ("logreg", "ridge", "mlp")


def follow_features(preprocess: Any, head: Any, fs: FeatureSet) -> Any:
    """The ``"default"`` preprocessing, chosen for these features.

    The heads of :data:`FOLLOW_UNIT_NORM`, whose own default standardizes each feature, get
    ``l2`` instead when every row is already unit-norm, as the embeddings of sentence encoders
    that normalize their output are: standardizing stretches the directions those encoders leave
    nearly constant (logreg lost 1.6 points to it on BBC headlines). Any other request is
    returned as it is.
    """
    if not (isinstance(preprocess, str) and preprocess.strip().lower() == "default"):
        return preprocess
    if head not in FOLLOW_UNIT_NORM or not unit_norm_rows(fs.X):
        return preprocess
    from featx.heads import get_head_info

    tokens = [str(t) for t in get_head_info(head).default_preprocess]
    if "standardize" not in tokens:
        return preprocess
    chosen = ",".join("l2" if t == "standardize" else t for t in tokens)
    logger.info("%s: rows are unit-norm, preprocessing %s instead of %s", head, chosen, tokens)
    return chosen


def _build(
    head: Any,
    params: Mapping[str, Any] | None,
    preprocess: Any,
    class_weight: Any,
    seed: int,
    fs: FeatureSet | None = None,
) -> tuple[Any, str, tuple[str, ...]]:
    """(unfitted estimator, head name, preprocessing tokens).

    With ``fs`` of several feature groups (or texts, or a group selection) the estimator starts
    with the group step (:func:`featx.heads.groups.with_group_step`).
    """
    from sklearn.base import clone

    if isinstance(head, str):
        from featx.heads import make_head, parse_preprocess

        est = make_head(head, params, preprocess, class_weight=class_weight, random_state=seed)
        tokens = tuple(str(t) for t in parse_preprocess(preprocess, head))
        name = head
    else:
        if not hasattr(head, "fit") or not hasattr(head, "predict"):
            raise FeatxError(f"head must be a head name or a scikit-learn classifier; got {head!r}")
        if params:
            raise FeatxError("params apply to named heads; set them on the estimator instead")
        last = head.steps[-1][1] if hasattr(head, "steps") else head
        est, name, tokens = clone(head), type(last).__name__, ()
    if fs is not None:
        from featx.groups import needs_group_step

        if needs_group_step(fs):
            from featx.heads.groups import with_group_step

            sparse = [g.name for g in fs.groups if g.kind == "text" and g.name.endswith("sparse")]
            if sparse and isinstance(head, str):
                raise FeatxError(
                    f"group {sparse[0]!r} is a sparse matrix and featx's heads take dense input; "
                    "use the group 'tfidf' (dense), or a scikit-learn estimator that takes sparse "
                    "input (e.g. LinearSVC) as the head in Python"
                )

            est = with_group_step(est, fs, seed)
            tokens = ("groups", *(t for t in tokens if t != "standardize"))
    return est, name, tokens


def _groups_used(est: Any) -> str:
    """``groups: a+b`` when the head's group step selected among groups, else ""."""
    first = est.steps[0][1] if hasattr(est, "steps") else None
    used = getattr(first, "groups_", None)
    if used is None or getattr(first, "select", None) is None:
        return ""
    return "groups: " + "+".join(used)


def _check_fit_size(est: Any, n_train: int, dim: int) -> None:
    """PCA asked for more components than the training data can give: say so before fitting."""
    for _, step in getattr(est, "steps", []):
        n = getattr(step, "n_components", None)
        if type(step).__name__ == "PCA" and isinstance(n, int) and n > min(n_train, dim):
            raise FeatxError(
                f"pca:{n} needs at most min(training items, feature dim) = {min(n_train, dim)} "
                f"components here; use pca:N with N <= {min(n_train, dim)}"
            )


def _full_columns(est: Any, values: np.ndarray, K: int, fill: float) -> np.ndarray:
    """Per-class outputs of ``est`` (columns ``est.classes_``) spread over all K classes."""
    cls = np.asarray(est.classes_)
    if values.ndim == 1:  # binary decision_function: score of classes_[1]
        values = np.column_stack([-values, values])
    out = np.full((values.shape[0], K), fill, dtype=np.float64)
    out[:, cls] = values
    return out


def _run(
    est: Any, fs: FeatureSet, split: Split, max_memory: Any = None
) -> tuple[Any, Metrics, np.ndarray]:
    """Fit on split.train, evaluate on split.test; (fitted estimator, metrics, predictions).

    Features left on disk (``fs.X`` a RowMatrix) are fitted in memory when the training rows fit
    ``max_memory`` (:func:`featx.memory.memory_budget`), else from disk block by block
    (:mod:`featx.heads._stream`); test rows are then predicted block by block.
    """
    X, y, K = fs.inputs(), fs.y, len(fs.classes)
    ytr = y[split.train]
    if len(np.unique(ytr)) < 2:
        raise FeatxError(
            f"the training items of {split.name} are all of class {fs.classes[ytr[0]]!r}; "
            "a classifier needs at least 2 classes"
        )
    _check_fit_size(est, len(split.train), fs.dim)
    yte = y[split.test]
    raw_proba = raw_dec = None
    if isinstance(X, RowMatrix):
        from featx.heads._stream import block_rows_for, fit_rows, predict_blocks
        from featx.memory import memory_budget

        budget = memory_budget(max_memory)
        t0 = time.perf_counter()
        fit_rows(est, X, split.train, ytr, budget)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        y_pred, raw_proba, raw_dec = predict_blocks(est, X, split.test, block_rows_for(X, budget))
        pred_s = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        est.fit(X[split.train], ytr)
        fit_s = time.perf_counter() - t0
        Xte = X[split.test]
        t0 = time.perf_counter()
        y_pred = np.asarray(est.predict(Xte))
        pred_s = time.perf_counter() - t0
        if hasattr(est, "predict_proba"):
            raw_proba = np.asarray(est.predict_proba(Xte))
        elif hasattr(est, "decision_function"):
            raw_dec = np.asarray(est.decision_function(Xte))
    proba = scores = None
    if raw_proba is not None:
        proba = _full_columns(est, raw_proba, K, 0.0)
        scores = proba
    elif raw_dec is not None:
        scores = _full_columns(est, raw_dec, K, -np.inf)
    last = est.steps[-1][1] if hasattr(est, "steps") else est
    m = replace(
        compute_metrics(yte, y_pred, fs.classes, scores=scores, proba=proba),
        n_train=len(split.train),
        n_test=len(split.test),
        fit_seconds=fit_s,
        predict_seconds=pred_s,
        split=split.name,
        solver="; ".join(s for s in (_groups_used(est), str(getattr(last, "solver_", ""))) if s),
    )
    return est, m, y_pred


def _aggregate(
    fs: FeatureSet,
    runs: list[Metrics],
    preds: list[np.ndarray],
    tests: list[np.ndarray],
    *,
    head: str,
    params: Mapping[str, Any] | None,
    preprocess: tuple[str, ...],
    class_weight: Any,
    protocol: str,
    store: str | None,
) -> Result:
    means: dict[str, Any] = {}
    std: dict[str, float] = {}
    for k in (*_MEANED, "fit_seconds", "predict_seconds"):
        vals = [getattr(m, k) for m in runs]
        if any(v is None for v in vals):
            means[k] = None
            continue
        means[k] = float(np.mean(vals))
        if len(vals) > 1:
            std[k] = float(np.std(vals, ddof=1))
    y_true = np.concatenate([fs.y[t] for t in tests])
    pooled = compute_metrics(y_true, np.concatenate(preds), fs.classes)
    n_labeled = int((fs.y >= 0).sum())
    if isinstance(head, str) and params:  # report values typed (--param k=5 -> 5, not "5")
        from featx.heads.registry import coerce_params

        params = coerce_params(head, params)
    return Result(
        head=head,
        label=head_label(head, params),
        store=store,
        params=dict(params or {}),
        preprocess=preprocess,
        class_weight=class_weight if isinstance(class_weight, str | None) else "custom",
        protocol=protocol,
        classes=tuple(fs.classes),
        n_labeled=n_labeled,
        n_unlabeled=fs.n - n_labeled,
        n_train=int(round(np.mean([m.n_train for m in runs]))),
        n_test=int(round(np.mean([m.n_test for m in runs]))),
        accuracy=means["accuracy"],
        balanced_accuracy=means["balanced_accuracy"],
        macro_f1=means["macro_f1"],
        top5_accuracy=means["top5_accuracy"],
        log_loss=means["log_loss"],
        fit_seconds=means["fit_seconds"],
        predict_seconds=means["predict_seconds"],
        std=std,
        per_class=pooled.per_class,
        confusion_matrix=pooled.confusion_matrix,
        runs=tuple(runs),
        roc_auc=means["roc_auc"],
        solver="; ".join(dict.fromkeys(m.solver for m in runs if m.solver)),
    )


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


def evaluate(
    fs: FeatureSet,
    head: Any = DEFAULT_HEAD,
    *,
    params: Mapping[str, Any] | None = None,
    protocol: EvalProtocol | None = None,
    store: str | None = None,
    splits: Sequence[Split] | None = None,
    **overrides: Any,
) -> Result:
    """Fit a head on the training items and measure it on the test items.

    Parameters
    ----------
    fs : FeatureSet
        Unlabeled items (``y == -1``) are left out; the result counts them.
    head : str or estimator, default="logreg"
        A registered head name (see :func:`featx.heads.list_heads`) or any scikit-learn
        classifier (cloned for each run).
    params : mapping, optional
        Passed to :func:`featx.heads.make_head`.
    protocol : EvalProtocol, optional
        Split, test size, cv folds, few-shot shots and trials, seed, class weights and
        preprocessing (see :class:`~featx.options.EvalProtocol` for the defaults).
    store : str, optional
        Name of the feature set in the result.
    splits : sequence of Split, optional
        Precomputed splits (what :func:`featx.comparison.compare` passes so every head and store
        uses the same ones); overrides split/test_size/cv/shots.
    **overrides
        Fields of :class:`~featx.options.EvalProtocol` (``split=``, ``cv=``, ``shots=``,
        ``trials=``, ``seed=``, ``test_size=``, ``class_weight=``, ``preprocess=``), applied on
        top of ``protocol``.

    Returns
    -------
    Result

    Raises
    ------
    FeatxError
        For every bad input: no labels, one class, too few items for the split, folds or shots,
        NaN/inf features, unknown head, parameter or option.
    """
    p = EvalProtocol.resolve(protocol, overrides)
    if p.layers:
        from featx.groups import one_choice

        fs = one_choice(fs, p.layers, "evaluate")
    check_features(fs)
    if splits is None:
        splits = protocol_splits(fs, p)
    splits = list(splits)
    preprocess, class_weight, seed = p.preprocess, p.class_weight, p.seed
    preprocess = follow_features(preprocess, head, fs)
    _, name, tokens = _build(head, params, preprocess, class_weight, seed, fs)
    runs, preds = [], []
    for s in splits:
        est, _, _ = _build(head, params, preprocess, class_weight, seed, fs)
        _, m, y_pred = _run(est, fs, s, p.max_memory)
        logger.info(
            "%s on %s [%s]: accuracy %.4f (fit %.2fs)",
            name,
            store or "features",
            s.name,
            m.accuracy,
            m.fit_seconds,
        )
        runs.append(m)
        preds.append(y_pred)
    return _aggregate(
        fs,
        runs,
        preds,
        [s.test for s in splits],
        head=name,
        params=params,
        preprocess=tokens,
        class_weight=class_weight,
        protocol=describe_splits(splits, p.shots, p.cv),
        store=store,
    )


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class FittedHead:
    """A head fitted by :func:`fit_head`, with the evaluation of that very estimator.

    Attributes
    ----------
    estimator : sklearn estimator
        Fitted on class indices into ``classes``.
    classes : tuple of str
    result : Result
        Metrics on the held-out test items of the estimator fitted on the training items.
    head : str
    params : dict
    """

    estimator: Any
    classes: tuple[str, ...]
    result: Result | None
    head: str
    params: dict[str, Any]
    features: FeatureSet | None = None  # the set (groups chosen) the head was fitted on


def fit_head(
    fs: FeatureSet,
    head: Any = DEFAULT_HEAD,
    *,
    params: Mapping[str, Any] | None = None,
    protocol: EvalProtocol | None = None,
    refit: str = DEFAULT_REFIT,
    store: str | None = None,
    **overrides: Any,
) -> FittedHead:
    """Fit one head to ship (e.g. in a bundle), evaluated on the protocol's test items.

    Parameters
    ----------
    refit : {"all", "train"}, default="all"
        ``"all"`` (:data:`featx.options.DEFAULT_REFIT`): after the evaluation, refit on every
        labeled item (more data; ``result`` then describes the train-only fit that preceded it).
        ``"train"``: the returned estimator is the one fitted on the training items and
        ``result`` measures exactly it.
    protocol, **overrides
        As in :func:`evaluate`, with one split: ``cv`` and ``shots`` are refused here (evaluate
        with them, then fit on the plain split, as :func:`featx.train.fit_store` does).

    Other parameters are those of :func:`evaluate`.

    Returns
    -------
    FittedHead
    """
    if refit not in REFIT_MODES:
        raise FeatxError(f"refit must be one of {', '.join(REFIT_MODES)}; got {refit!r}")
    p = EvalProtocol.resolve(protocol, overrides)
    if p.cv is not None or p.shots is not None:
        raise FeatxError(
            "fit_head fits on one split; evaluate cv folds or few-shot trials with evaluate()"
        )
    if p.layers:
        from featx.groups import one_choice

        fs = one_choice(fs, p.layers, "fit")
    preprocess, class_weight, seed = p.preprocess, p.class_weight, p.seed
    labeled = check_features(fs)
    preprocess = follow_features(preprocess, head, fs)
    s = make_splits(fs, split=p.split, test_size=p.test_size, seed=seed)[0]
    est, name, tokens = _build(head, params, preprocess, class_weight, seed, fs)
    est, m, y_pred = _run(est, fs, s, p.max_memory)
    result = _aggregate(
        fs,
        [m],
        [y_pred],
        [s.test],
        head=name,
        params=params,
        preprocess=tokens,
        class_weight=class_weight,
        protocol=s.name,
        store=store,
    )
    if refit == "all":
        est, _, _ = _build(head, params, preprocess, class_weight, seed, fs)
        _check_fit_size(est, len(labeled), fs.dim)
        if isinstance(fs.X, RowMatrix):
            from featx.heads._stream import fit_rows
            from featx.memory import memory_budget

            fit_rows(est, fs.X, labeled, fs.y[labeled], memory_budget(p.max_memory))
        else:
            est.fit(fs.inputs()[labeled], fs.y[labeled])
    return FittedHead(est, tuple(fs.classes), result, name, dict(params or {}), fs)
