"""Fitting and evaluating a head on features: :func:`evaluate`, :func:`fit_head`."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.features import FeatureSet, RowMatrix
from featx.options import DEFAULT_HEAD, DEFAULT_REFIT, REFIT_MODES, EvalProtocol
from featx.protocol.metrics import Metrics, compute_metrics
from featx.protocol.results import _MEANED, Result, head_label
from featx.protocol.splits import (
    Split,
    check_features,
    describe_splits,
    make_splits,
    protocol_splits,
)

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class PreparedHead:
    """A named head built once (:func:`prepare_head`); each run fits a clone of ``estimator``.

    :func:`featx.comparison.compare` builds every head once this way (checking its name and
    parameters before anything is fitted) and hands it to :func:`evaluate` for every store.
    """

    estimator: Any  # unfitted
    name: str
    tokens: tuple[str, ...]  # the preprocessing steps, as written in results


def prepare_head(
    head: str, params: Mapping[str, Any] | None, preprocess: Any, class_weight: Any, seed: int
) -> PreparedHead:
    """Build a registered head once: raises FeatxError on a bad name, parameter or step."""
    return PreparedHead(*_build(head, params, preprocess, class_weight, seed))


def _build(
    head: Any,
    params: Mapping[str, Any] | None,
    preprocess: Any,
    class_weight: Any,
    seed: int,
    fs: FeatureSet | None = None,
) -> tuple[Any, str, tuple[str, ...]]:
    """(unfitted estimator, head name, preprocessing tokens): built from a name, else cloned.

    With ``fs`` of several feature groups (or texts, or a group selection) the estimator starts
    with the group step (:func:`featx.heads.groups.with_group_step`).
    """
    from sklearn.base import clone

    named = isinstance(head, str | PreparedHead)
    if isinstance(head, PreparedHead):
        est, name, tokens = clone(head.estimator), head.name, head.tokens
    elif isinstance(head, str):
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
            if sparse and named:
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
    (:mod:`featx.heads._stream`); test rows are then predicted block by block. BLAS (and torch,
    when imported) use only the cores other processes leave free
    (:func:`featx.heads._torch.cpu_threads_for_load`).
    """
    ytr = fs.y[split.train]
    if len(np.unique(ytr)) < 2:
        raise FeatxError(
            f"the training items of {split.name} are all of class {fs.classes[ytr[0]]!r}; "
            "a classifier needs at least 2 classes"
        )
    _check_fit_size(est, len(split.train), fs.dim)
    from featx.heads._torch import cpu_threads_for_load

    with cpu_threads_for_load():
        return _fit_predict(est, fs, split, max_memory)


def _fit_predict(
    est: Any, fs: FeatureSet, split: Split, max_memory: Any
) -> tuple[Any, Metrics, np.ndarray]:
    """:func:`_run`'s fit and evaluation, inside its thread limit."""
    X, y, K = fs.inputs(), fs.y, len(fs.classes)
    ytr = y[split.train]
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
    head : str, estimator or PreparedHead, default="logreg"
        A registered head name (see :func:`featx.heads.list_heads`), any scikit-learn
        classifier (cloned for each run), or a head built once by :func:`prepare_head`.
    params : mapping, optional
        Passed to :func:`featx.heads.make_head` (with a PreparedHead: only reported).
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
    if isinstance(head, PreparedHead):  # built once for all stores: rebuilt where these differ
        chosen = follow_features(preprocess, head.name, fs)
        if chosen is not preprocess:
            head = prepare_head(head.name, params, chosen, class_weight, seed)
    else:
        preprocess = follow_features(preprocess, head, fs)
    runs, preds = [], []
    for s in splits:  # one build (or clone of a prepared head) per run
        est, name, tokens = _build(head, params, preprocess, class_weight, seed, fs)
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
