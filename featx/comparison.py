"""Compare heads across feature stores on identical splits, and write a report a person can read.

:func:`compare` aligns the stores on their shared keys (stores of different backbones over the
same source hold the same items), draws the splits once, and evaluates every head on every store
with those same splits. The :class:`Leaderboard` renders as Markdown, JSON or CSV, and
:meth:`Leaderboard.write_report` writes the tables plus PNG plots (accuracy against fit time, the
confusion matrix of the best head, and a store x head accuracy grid); the rendering lives in
:mod:`featx.report`.

Examples
--------
>>> import numpy as np
>>> from featx.features import FeatureSet
>>> rng = np.random.default_rng(0)
>>> y = np.repeat(np.arange(3), 30)
>>> keys = np.array([f"img{i:03d}" for i in range(90)])
>>> stores = {
...     name: FeatureSet(X=(rng.normal(size=(90, 6)) + s * np.eye(3, 6)[y]).astype(np.float32),
...                      y=y, classes=("a", "b", "c"), split=None, keys=keys)
...     for name, s in [("small", 1.0), ("big", 4.0)]
... }
>>> board = compare(stores, ["centroid", ("knn", {"k": 5})])
>>> len(board.results), board.best.store
(4, 'big')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.features import FeatureSet, RowMatrix
from featx.options import DEFAULT_HEADS, ENGINES, EvalProtocol
from featx.protocol import Result, head_label, protocol_splits
from featx.protocol.evaluate import PreparedHead, prepare_head

logger = logging.getLogger(__name__)

HeadSpec = str | tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Any]


# ---------------------------------------------------------------------------------------------
# aligning stores
# ---------------------------------------------------------------------------------------------


def align(feature_sets: Mapping[str, FeatureSet]) -> dict[str, FeatureSet]:
    """Restrict every store to the keys they all hold, in key order, with one class list.

    After this, row ``i`` of every returned store is the same item, so row-index splits drawn on
    one apply to all.

    Raises
    ------
    FeatxError
        No stores, no shared keys, or stores that label a shared item differently.
    """
    if not feature_sets:
        raise FeatxError("compare needs at least one feature store")
    names = list(feature_sets)
    common: np.ndarray | None = None
    for fs in feature_sets.values():
        k = np.asarray(fs.keys).astype(str)
        if len(np.unique(k)) != len(k):
            raise FeatxError("a feature store has duplicate keys; rebuild it")
        common = k if common is None else np.intersect1d(common, k)
    assert common is not None
    common = np.sort(common)
    if len(common) == 0:
        raise FeatxError(
            f"the stores {', '.join(names)} share no items (keys); "
            "compare stores extracted from the same source"
        )
    classes: list[str] = []
    for fs in feature_sets.values():
        classes += [c for c in fs.classes if c not in classes]
    out: dict[str, FeatureSet] = {}
    ref_names: np.ndarray | None = None
    for name, fs in feature_sets.items():
        k = np.asarray(fs.keys).astype(str)
        dropped = len(k) - len(common)
        if dropped:
            logger.warning("store %r: %d items not in every store are left out", name, dropped)
        pos = np.argsort(k, kind="stable")
        rows = pos[np.searchsorted(k[pos], common)]
        y = np.asarray(fs.y)[rows]
        label_names = np.array([fs.classes[v] if v >= 0 else "" for v in y], dtype=object)
        if ref_names is None:
            ref_names, ref = label_names, name
        elif not np.array_equal(label_names, ref_names):
            bad = np.flatnonzero(label_names != ref_names)
            i = bad[0]
            raise FeatxError(
                f"stores {ref!r} and {name!r} disagree on the label of {len(bad)} shared items "
                f"(first: {str(common[i])!r}: {ref_names[i]!r} vs {label_names[i]!r}); "
                "compare stores built from the same source"
            )
        index = {c: i for i, c in enumerate(classes)}
        y_new = np.array([index[fs.classes[v]] if v >= 0 else -1 for v in y], dtype=np.int64)
        split = None if fs.split is None else np.asarray(fs.split)[rows]
        same = len(rows) == fs.n and np.array_equal(rows, np.arange(fs.n))
        out[name] = replace(  # groups, texts and group selection travel with the rows
            fs,
            # no copy when the store is already aligned; rows left on disk stay there
            X=fs.X if same else (fs.X.subset(rows) if isinstance(fs.X, RowMatrix) else fs.X[rows]),
            y=y_new,
            classes=tuple(classes),
            split=split,
            keys=common,
            texts=fs.texts if fs.texts is None or same else np.asarray(fs.texts)[rows],
        )
    ref_split = next(iter(out.values())).split
    for name, fs in out.items():
        if (
            fs.split is not None
            and ref_split is not None
            and not np.array_equal(fs.split.astype(str), ref_split.astype(str))
        ):
            logger.warning("store %r has another train/test split; the first store's is used", name)
    if ref_split is not None:
        out = {n: replace(fs, split=ref_split) for n, fs in out.items()}
    return out


# ---------------------------------------------------------------------------------------------
# leaderboard
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A head that failed on a store, and why."""

    store: str
    head: str
    error: str


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Leaderboard:
    """Results of every head on every store, best accuracy first.

    Attributes
    ----------
    results : tuple of Result
        Sorted by accuracy, then balanced accuracy, then fit time.
    failures : tuple of Failure
    protocol : str
        The split protocol all results share.
    n_items : int
        Items shared by the stores.
    """

    results: tuple[Result, ...]
    failures: tuple[Failure, ...] = ()
    protocol: str = ""
    n_items: int = 0
    stores: tuple[str, ...] = field(default=())

    @property
    def best(self) -> Result:
        """The most accurate head."""
        if not self.results:
            raise FeatxError("the leaderboard is empty: every head failed (see its failures)")
        return self.results[0]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per result with the leaderboard columns (plus ``*_std`` over runs)."""
        out = []
        for i, r in enumerate(self.results, 1):
            row = {
                "rank": i,
                "store": r.store,
                "head": r.label,
                "accuracy": r.accuracy,
                "balanced_accuracy": r.balanced_accuracy,
                "macro_f1": r.macro_f1,
                "top5_accuracy": r.top5_accuracy,
                "log_loss": r.log_loss,
                "roc_auc": r.roc_auc,
                "fit_seconds": r.fit_seconds,
                "predict_seconds": r.predict_seconds,
                "solver": r.solver,
            }
            for k in ("accuracy", "balanced_accuracy", "macro_f1"):
                if k in r.std:
                    row[f"{k}_std"] = r.std[k]
            out.append(row)
        return out

    # The leaderboard is plain data; featx.report draws it (the only module that imports
    # matplotlib). These methods are shortcuts to its functions; report never imports this module.
    def to_markdown(self) -> str:
        """The leaderboard as a Markdown table (mean ± std when there are several runs)."""
        from featx.report import leaderboard_markdown

        return leaderboard_markdown(self)

    def to_text(self) -> str:
        """The leaderboard as an aligned plain-text table (what the terminal shows)."""
        from featx.report import leaderboard_text

        return leaderboard_text(self)

    def to_json(self, *, details: bool = False, indent: int | None = 2) -> str:
        """JSON with the protocol, the rows and the failures (``details``: per-class, confusion)."""
        from featx.report import leaderboard_json

        return leaderboard_json(self, details=details, indent=indent)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The rows as CSV; written to ``path`` (atomically) when given. Returns the CSV text."""
        from featx.report import leaderboard_csv

        return leaderboard_csv(self, path)

    def write_report(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write ``leaderboard.md/.csv/.json`` and PNG plots into ``directory``.

        See :func:`featx.report.write_report`.
        """
        from featx.report import write_report

        return write_report(self, directory)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


def _parse_spec(spec: HeadSpec) -> tuple[str, dict[str, Any], Any]:
    if isinstance(spec, str):
        return spec, {}, "default"
    if isinstance(spec, tuple | list) and len(spec) in (2, 3) and isinstance(spec[0], str):
        params = dict(spec[1] or {})
        return spec[0], params, (spec[2] if len(spec) == 3 else "default")
    raise FeatxError(f"a head must be a name or (name, params[, preprocess]); got {spec!r}")


def _evaluate_pair(
    fs: FeatureSet,
    head: PreparedHead,
    params: dict[str, Any],
    proto: EvalProtocol,
    pre: Any,
    splits: Any,
    store: str,
) -> tuple[Result | None, Exception | None]:
    """One (store, head) fit: (result, None), or (None, the exception it raised)."""
    from featx.protocol import evaluate

    try:
        r = evaluate(
            fs, head, params=params, protocol=replace(proto, preprocess=pre), splits=splits,
            store=store,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the caller records or re-raises it
        return None, e
    return r, None


def _fan_out_ray(
    aligned: Mapping[str, FeatureSet],
    pairs: list[tuple[str, PreparedHead, dict[str, Any], Any, str]],
    proto: EvalProtocol,
    splits: Any,
    address: str | None,
    bar: Any,
) -> list[tuple[Result | None, Exception | None]]:
    """Every (store, head) fit as a Ray task; outcomes in the order of ``pairs``."""
    from featx.ray_engine import connect

    ray, started = connect(address)
    try:
        task = ray.remote(num_cpus=1)(_evaluate_pair)
        refs_fs = {store: ray.put(fs) for store, fs in aligned.items()}  # once per store
        ref_splits = ray.put(splits)
        refs = [
            task.remote(refs_fs[store], head, params, proto, pre, ref_splits, store)
            for store, head, params, pre, _ in pairs
        ]
        pending = list(refs)
        while pending:  # progress as tasks finish, in any order
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()


def compare(
    feature_sets: Mapping[str, FeatureSet],
    heads: Sequence[HeadSpec] = DEFAULT_HEADS,
    *,
    protocol: EvalProtocol | None = None,
    on_error: str = "continue",
    progress: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    **overrides: Any,
) -> Leaderboard:
    """Evaluate every head on every store with the same splits; rank them.

    Parameters
    ----------
    feature_sets : mapping of str to FeatureSet
        Stores by name (e.g. the backbone). They are aligned on their shared keys first.
    heads : sequence, default=featx.options.DEFAULT_HEADS
        Head names, ``(name, params)`` or ``(name, params, preprocess)`` tuples; the name
        ``"all"`` stands for every registered head.
    protocol : EvalProtocol, optional
        As in :func:`featx.protocol.evaluate`; the splits are drawn once for all. Its
        ``preprocess`` applies to heads given without their own.
    on_error : {"continue", "raise"}, default="continue"
        What a head that fails while fitting does: be listed under ``failures`` (and logged)
        while the others go on, or stop the comparison. Unknown heads and parameters always
        raise before anything is fitted.
    progress : bool, default=False
        Show a progress bar over the (store, head) fits on stderr and, with the local engine,
        one line per fitted head (accuracy, fit seconds, how it was fitted).
    engine : {"local", "ray"}, default="local"
        ``ray``: every (store, head) fit is a Ray task (1 CPU), the feature sets and splits go
        through the object store once (``pip install 'featx[ray]'``, docs/scale-out.md). The
        results are the same as locally; heads must be built-in or registered by a module the
        workers import.
    ray_address : str, optional
        With ``engine="ray"``: as ``featx extract --ray-address`` (None: a local Ray runtime).

    **overrides
        Fields of :class:`~featx.options.EvalProtocol` applied on top of ``protocol``.

    Returns
    -------
    Leaderboard
    """
    from featx.protocol import describe_splits

    proto = EvalProtocol.resolve(protocol, overrides)
    if on_error not in ("continue", "raise"):
        raise FeatxError(f"on_error must be 'continue' or 'raise'; got {on_error!r}")
    if engine not in ENGINES:
        raise FeatxError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "local" and ray_address is not None:
        raise FeatxError("--ray-address applies only with --engine ray")
    specs, prepared, labels = _prepare_heads(heads, proto)
    aligned = align(feature_sets)
    if proto.layers:  # one entry per (store, group choice): "store [each group / all / ...]"
        from featx.groups import choose_groups

        aligned = {
            f"{store} [{label}]": v
            for store, fs in aligned.items()
            for label, v in choose_groups(fs, proto.layers)
        }
        proto = replace(proto, layers=None)
    else:  # a set of several groups says which (a fusion's name already does)
        aligned = {
            (f"{store} [{'+'.join(g.name for g in fs.groups)}]" if len(fs.groups) > 1
             and "+" not in store else store): fs
            for store, fs in aligned.items()
        }  # fmt: skip
    ref = next(iter(aligned.values()))
    splits = protocol_splits(ref, proto)
    described = describe_splits(splits, proto.shots, proto.cv)

    from featx.progress import progress_bar

    bar = progress_bar(total=len(aligned) * len(specs), desc="fit", unit="head", enabled=progress)
    pairs = [
        (store, head, params, pre, label)
        for store in aligned
        for (_, params, pre), head, label in zip(specs, prepared, labels, strict=True)
    ]
    try:
        if engine == "ray":
            outcomes = _fan_out_ray(aligned, pairs, proto, splits, ray_address, bar)
        else:
            outcomes = _run_local(aligned, pairs, proto, splits, bar, progress, on_error)
    finally:
        bar.close()
    results: list[Result] = []
    failures: list[Failure] = []
    for (store, _, _, _, label), (r, e) in zip(pairs, outcomes, strict=True):
        if e is not None:  # recorded, logged, and re-raised on request
            if on_error == "raise":
                raise e
            msg = f"{type(e).__name__}: {e}".replace("\n", " ")
            logger.error("%s on %s failed: %s", label, store, msg)
            failures.append(Failure(store, label, msg))
            continue
        results.append(replace(r, protocol=described, label=label))
    results.sort(key=lambda r: (-r.accuracy, -r.balanced_accuracy, r.fit_seconds))
    return Leaderboard(
        results=tuple(results),
        failures=tuple(failures),
        protocol=described,
        n_items=ref.n,
        stores=tuple(aligned),
    )


def _prepare_heads(
    heads: Sequence[HeadSpec], proto: EvalProtocol
) -> tuple[list[tuple[str, dict[str, Any], Any]], list[PreparedHead], list[str]]:
    """(name, params, preprocess) of each head, each built once, and their unique labels.

    Building checks every name and parameter before anything is fitted.
    """
    from featx.heads import list_heads, parse_preprocess

    heads = [h for spec in heads for h in (list_heads() if spec == "all" else [spec])]
    specs = [_parse_spec(s) for s in heads]
    if not specs:
        raise FeatxError("compare needs at least one head")
    specs = [(n, p, proto.preprocess if pre == "default" else pre) for n, p, pre in specs]
    labels: list[str] = []
    prepared: list[PreparedHead] = []
    for name, params, pre in specs:
        prepared.append(prepare_head(name, params, pre, proto.class_weight, proto.seed))
        label = head_label(name, params)
        if not (isinstance(pre, str) and pre == "default"):
            tokens = [str(t) for t in parse_preprocess(pre, name)]
            label += f" [{'+'.join(tokens) or 'no preprocessing'}]"
        if label in labels:
            raise FeatxError(f"head {label!r} is listed twice; give each head once")
        labels.append(label)
    return specs, prepared, labels


def _run_local(
    aligned: Mapping[str, FeatureSet],
    pairs: list[tuple[str, PreparedHead, dict[str, Any], Any, str]],
    proto: EvalProtocol,
    splits: Any,
    bar: Any,
    progress: bool,
    on_error: str,
) -> list[tuple[Result | None, Exception | None]]:
    """Every (store, head) fit in this process, in order; stops at the first failure on
    ``on_error="raise"``."""
    outcomes = []
    for store, head, params, pre, label in pairs:
        bar.set_postfix_str(f"{label} on {store}", refresh=True)
        bar.update(0)
        outcome = _evaluate_pair(aligned[store], head, params, proto, pre, splits, store)
        r = outcome[0]
        if progress and r is not None:  # before update: the bar's last state shows once
            how = f" [{r.solver}]" if r.solver else ""
            bar.write(
                f"{label} on {store}: accuracy {r.accuracy:.4f}, fit {r.fit_seconds:.2f} s{how}",
                file=bar.fp,
            )
        bar.update(1)
        if outcome[1] is not None and on_error == "raise":
            raise outcome[1]
        outcomes.append(outcome)
    return outcomes
