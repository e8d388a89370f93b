"""Compare heads across feature stores on identical splits, and write a report a person can read.

:func:`compare` aligns the stores on their shared keys (stores of different backbones over the
same source hold the same items), draws the splits once, and evaluates every head on every store
with those same splits. The :class:`Leaderboard` renders as Markdown, JSON or CSV, and
:meth:`Leaderboard.write_report` writes the tables plus PNG plots (accuracy against fit time, the
confusion matrix of the best head, and a store x head accuracy grid).

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

import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.features import FeatureSet
from featx.protocol import Result, head_label, protocol_splits

logger = logging.getLogger(__name__)

HeadSpec = str | tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Any]

COLUMNS = (
    "rank",
    "store",
    "head",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "top5_accuracy",
    "log_loss",
    "fit_seconds",
    "predict_seconds",
)


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
        out[name] = FeatureSet(
            X=fs.X if same else fs.X[rows],  # no copy when the store is already aligned
            y=y_new,
            classes=tuple(classes),
            split=split,
            keys=common,
            meta=fs.meta,
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
                "fit_seconds": r.fit_seconds,
                "predict_seconds": r.predict_seconds,
            }
            for k in ("accuracy", "balanced_accuracy", "macro_f1"):
                if k in r.std:
                    row[f"{k}_std"] = r.std[k]
            out.append(row)
        return out

    def to_markdown(self) -> str:
        """The leaderboard as a Markdown table (mean ± std when there are several runs)."""
        lines = [
            "| # | store | head | accuracy | bal. acc. | macro F1 | top-5 | log-loss | fit s "
            "| predict s |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, r in enumerate(self.results, 1):

            def pm(k: str, r: Result = r) -> str:
                v = getattr(r, k)
                if v is None:
                    return "–"
                s = r.std.get(k)
                return f"{v:.4f} ± {s:.4f}" if s is not None else f"{v:.4f}"

            lines.append(
                f"| {i} | {_md(r.store)} | {_md(r.label)} | {pm('accuracy')} | "
                f"{pm('balanced_accuracy')} | {pm('macro_f1')} | {pm('top5_accuracy')} | "
                f"{pm('log_loss')} | {_secs(r.fit_seconds)} | {_secs(r.predict_seconds)} |"
            )
        if self.failures:
            lines.append("")
            lines.append("Failed:")
            lines += [f"- {_md(f.store)} / {_md(f.head)}: {_md(f.error)}" for f in self.failures]
        return "\n".join(lines) + "\n"

    def to_json(self, *, details: bool = False, indent: int | None = 2) -> str:
        """JSON with the protocol, the rows and the failures (``details``: per-class, confusion)."""
        doc = {
            "protocol": self.protocol,
            "n_items": self.n_items,
            "stores": list(self.stores),
            "results": [r.to_dict(details=details) for r in self.results],
            "failures": [f.__dict__ for f in self.failures],
        }
        return json.dumps(doc, indent=indent, allow_nan=False, default=_json_default)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The rows as CSV; written to ``path`` when given. Returns the CSV text."""
        from featx.csvsafe import safe_cell

        buf = io.StringIO()
        cols = list(COLUMNS) + ["accuracy_std", "balanced_accuracy_std", "macro_f1_std"]
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow(
                {k: ("" if row.get(k) is None else safe_cell(row.get(k, ""))) for k in cols}
            )
        text = buf.getvalue()
        if path is not None:
            _atomic_write(Path(path), text)
        return text

    def write_report(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write ``leaderboard.md/.csv/.json`` and PNG plots into ``directory``.

        Returns
        -------
        dict of str to Path
            ``markdown``, ``csv``, ``json``, ``accuracy_vs_fit_time``, ``confusion_matrix`` and,
            with several stores and heads, ``accuracy_grid``.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        if self.results:
            paths["accuracy_vs_fit_time"] = _plot_accuracy_vs_time(
                self, d / "accuracy_vs_fit_time.png"
            )
            paths["confusion_matrix"] = _plot_confusion(self.best, d / "confusion_matrix.png")
            n_stores = len({r.store for r in self.results})
            n_heads = len({r.label for r in self.results})
            if n_stores > 1 and n_heads > 1:
                paths["accuracy_grid"] = _plot_grid(self, d / "accuracy_grid.png")
        paths["csv"] = d / "leaderboard.csv"
        self.to_csv(paths["csv"])
        paths["json"] = d / "leaderboard.json"
        _atomic_write(paths["json"], self.to_json(details=True))
        paths["markdown"] = d / "leaderboard.md"
        _atomic_write(paths["markdown"], self._report_markdown(paths))
        logger.info("report written to %s", d)
        return paths

    def _report_markdown(self, paths: Mapping[str, Path]) -> str:
        parts = ["# featx leaderboard", ""]
        parts.append(
            f"{len(self.results)} results, {len(set(self.stores))} store(s), "
            f"{self.n_items} shared items; protocol: {self.protocol}."
        )
        parts += ["", self.to_markdown()]
        for key, title in [
            ("accuracy_vs_fit_time", "Accuracy against fit time"),
            ("accuracy_grid", "Accuracy by store and head"),
            ("confusion_matrix", "Confusion matrix of the best head"),
        ]:
            if key in paths:
                parts += [f"## {title}", "", f"![{title}]({paths[key].name})", ""]
        if self.results:
            b = self.best
            parts += [f"## Per-class report: {_md(b.label)} on {_md(b.store)}", ""]
            parts += ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
            parts += [
                f"| {_md(c.name)} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |"
                for c in b.per_class
            ]
            parts.append("")
            pairs = most_confused(b, 10)
            if pairs:
                parts += [f"## Most confused classes: {_md(b.label)} on {_md(b.store)}", ""]
                parts += ["| true class | predicted as | count |", "|---|---|---:|"]
                parts += [f"| {_md(t)} | {_md(p)} | {n} |" for t, p, n in pairs]
                parts.append("")
        return "\n".join(parts)


def most_confused(result: Result, n: int = 10) -> list[tuple[str, str, int]]:
    """The ``n`` largest off-diagonal confusion-matrix cells as (true, predicted, count)."""
    cm = np.asarray(result.confusion_matrix).copy()
    np.fill_diagonal(cm, 0)
    flat = np.argsort(-cm, axis=None, kind="stable")[:n]
    out = []
    for i, j in zip(*np.unravel_index(flat, cm.shape), strict=True):
        if cm[i, j] > 0:
            out.append((result.classes[i], result.classes[j], int(cm[i, j])))
    return out


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _secs(s: float) -> str:
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _atomic_write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# plots (matplotlib's object API with the Agg canvas: no pyplot, no global backend change)
# ---------------------------------------------------------------------------------------------


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _atomic_write(path, buf.getvalue())
    return path


def _plot_accuracy_vs_time(board: Leaderboard, path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    res = board.results
    stores = list(dict.fromkeys(r.store for r in res))
    labels = list(dict.fromkeys(r.label for r in res))
    colors = colormaps["tab10"]
    markers = "osD^vP*Xh<>p8"
    annotate = len(labels) > len(markers)  # markers alone cannot tell the heads apart
    fig = _figure(9.5, 5.4)
    ax = fig.subplots()
    for r in res:
        c = colors(stores.index(r.store) % 10)
        m = markers[labels.index(r.label) % len(markers)]
        x = max(r.fit_seconds, 1e-4)
        yerr = r.std.get("accuracy")
        ax.errorbar(x, r.accuracy, yerr=yerr, fmt=m, color=c, ms=9, mec="black", mew=0.6, capsize=3)
        if annotate:
            ax.annotate(
                _short(r.label, 24),
                (x, r.accuracy),
                xytext=(6, 4),
                textcoords="offset points",
                fontsize=7,
            )
    b = board.best
    ax.scatter(
        [max(b.fit_seconds, 1e-4)],
        [b.accuracy],
        s=420,
        facecolors="none",
        edgecolors="gold",
        linewidths=2.5,
        zorder=3,
    )
    ax.annotate(
        f"best: {_short(b.label, 28)}\n{b.store}, {b.accuracy:.4f}",
        (max(b.fit_seconds, 1e-4), b.accuracy),
        xytext=(12, -22),
        textcoords="offset points",
        fontsize=8,
        fontweight="bold",
    )
    ax.set_xscale("log")
    ax.set_xlabel("fit time per run, seconds (log scale; includes the hyper-parameter sweep)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Accuracy vs fit time: {b.n_test} test items, {board.protocol}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles = [
        Line2D([], [], marker="o", ls="", color=colors(i % 10), mec="black", mew=0.6, label=s)
        for i, s in enumerate(stores)
    ]
    store_legend = ax.legend(
        handles=handles,
        fontsize=8,
        title="store",
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    ax.add_artist(store_legend)
    handles = [
        Line2D(
            [],
            [],
            marker=markers[i % len(markers)],
            ls="",
            color="gray",
            mec="black",
            mew=0.6,
            label=_short(h, 30),
        )
        for i, h in enumerate(labels)
    ]
    ax.legend(
        handles=handles,
        fontsize=8,
        title="head",
        title_fontsize=8,
        loc="lower left",
        bbox_to_anchor=(1.01, 0.0),
    )
    lo = min(r.accuracy - r.std.get("accuracy", 0.0) for r in res)
    hi = max(r.accuracy + r.std.get("accuracy", 0.0) for r in res)
    pad = max(0.02, 0.08 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi) + pad)
    return _save(fig, path)


def _plot_confusion(r: Result, path: Path) -> Path:
    cm = np.asarray(r.confusion_matrix, dtype=np.float64)
    present = np.flatnonzero(cm.sum(axis=1) + cm.sum(axis=0) > 0)
    cm = cm[np.ix_(present, present)]
    names = [r.classes[i] for i in present]
    K = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = float(np.clip(0.32 * K + 3.0, 5.0, 18.0))
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class (row-normalized)")
    fs = float(np.clip(11 - K / 6, 4.5, 10))
    if K <= 120:
        ax.set_xticks(range(K), [_short(n) for n in names], rotation=60, ha="right", fontsize=fs)
        ax.set_yticks(range(K), [_short(n) for n in names], fontsize=fs)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if K <= 25:
        for i in range(K):
            for j in range(K):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{int(cm[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=fs,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"{r.label} on {r.store}: accuracy {r.accuracy:.4f} ({int(cm.sum())} predictions)",
        fontsize=12,
    )
    return _save(fig, path)


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _plot_grid(board: Leaderboard, path: Path) -> Path:
    stores = sorted(
        {r.store for r in board.results},
        key=lambda s: -max(r.accuracy for r in board.results if r.store == s),
    )
    heads = sorted(
        {r.label for r in board.results},
        key=lambda h: -max(r.accuracy for r in board.results if r.label == h),
    )
    A = np.full((len(stores), len(heads)), np.nan)
    for r in board.results:
        A[stores.index(r.store), heads.index(r.label)] = r.accuracy
    fig = _figure(max(5.0, 1.1 * len(heads) + 2.5), max(2.8, 0.55 * len(stores) + 1.8))
    ax = fig.subplots()
    finite = A[np.isfinite(A)]
    im = ax.imshow(
        A, cmap="viridis", vmin=float(finite.min()), vmax=float(finite.max()), aspect="auto"
    )
    fig.colorbar(im, ax=ax, label="test accuracy")
    ax.set_xticks(
        range(len(heads)), [_short(h, 24) for h in heads], rotation=30, ha="right", fontsize=9
    )
    ax.set_yticks(range(len(stores)), [_short(s, 28) for s in stores], fontsize=9)
    mid = (finite.min() + finite.max()) / 2
    for i in range(len(stores)):
        for j in range(len(heads)):
            if math.isfinite(A[i, j]):
                ax.text(
                    j,
                    i,
                    f"{A[i, j]:.3f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="black" if A[i, j] > mid else "white",
                )
    ax.set_title("Test accuracy by store (rows) and head (columns)", fontsize=10)
    return _save(fig, path)


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


def compare(
    feature_sets: Mapping[str, FeatureSet],
    heads: Sequence[HeadSpec] = ("logreg",),
    *,
    preprocess: str | Sequence[Any] | None = "default",
    class_weight: str | None = None,
    split: str = "auto",
    test_size: float = 0.2,
    cv: int | None = None,
    shots: int | None = None,
    trials: int = 5,
    seed: int = 0,
    on_error: str = "continue",
    progress: bool = False,
) -> Leaderboard:
    """Evaluate every head on every store with the same splits; rank them.

    Parameters
    ----------
    feature_sets : mapping of str to FeatureSet
        Stores by name (e.g. the backbone). They are aligned on their shared keys first.
    heads : sequence
        Head names, ``(name, params)`` or ``(name, params, preprocess)`` tuples.
    preprocess : str, list or None, default="default"
        Preprocessing of heads given without their own.
    class_weight, split, test_size, cv, shots, trials, seed
        As in :func:`featx.protocol.evaluate`; the splits are drawn once for all.
    on_error : {"continue", "raise"}, default="continue"
        What a head that fails while fitting does: be listed under ``failures`` (and logged)
        while the others go on, or stop the comparison. Unknown heads and parameters always
        raise before anything is fitted.
    progress : bool, default=False
        Show a progress bar over the (store, head) fits on stderr.

    Returns
    -------
    Leaderboard
    """
    from featx.heads import make_head, parse_preprocess
    from featx.protocol import describe_splits, evaluate

    if on_error not in ("continue", "raise"):
        raise FeatxError(f"on_error must be 'continue' or 'raise'; got {on_error!r}")
    specs = [_parse_spec(s) for s in heads]
    if not specs:
        raise FeatxError("compare needs at least one head")
    specs = [(n, p, preprocess if pre == "default" else pre) for n, p, pre in specs]
    labels = []
    for name, params, pre in specs:  # fail fast on names and parameters
        make_head(name, params, pre, class_weight, seed)
        label = head_label(name, params)
        if not (isinstance(pre, str) and pre == "default"):
            tokens = [str(t) for t in parse_preprocess(pre, name)]
            label += f" [{'+'.join(tokens) or 'no preprocessing'}]"
        if label in labels:
            raise FeatxError(f"head {label!r} is listed twice; give each head once")
        labels.append(label)
    aligned = align(feature_sets)
    ref = next(iter(aligned.values()))
    splits = protocol_splits(
        ref, split=split, test_size=test_size, cv=cv, shots=shots, trials=trials, seed=seed
    )
    protocol = describe_splits(splits, shots, cv)
    results: list[Result] = []
    failures: list[Failure] = []
    import sys

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(aligned) * len(specs),
        desc="fit",
        unit="head",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    for store, fs in aligned.items():
        for (name, params, pre), label in zip(specs, labels, strict=True):
            bar.set_postfix_str(f"{label} on {store}", refresh=True)
            bar.update(0)
            try:
                r = evaluate(
                    fs,
                    name,
                    params=params,
                    preprocess=pre,
                    class_weight=class_weight,
                    splits=splits,
                    seed=seed,
                    store=store,
                )
            except Exception as e:  # noqa: BLE001  (recorded, logged, and re-raised on request)
                if on_error == "raise":
                    raise
                msg = f"{type(e).__name__}: {e}".replace("\n", " ")
                logger.error("%s on %s failed: %s", label, store, msg)
                failures.append(Failure(store, label, msg))
                continue
            finally:
                bar.update(1)
            r = replace(r, protocol=protocol, label=label)
            results.append(r)
    bar.close()
    results.sort(key=lambda r: (-r.accuracy, -r.balanced_accuracy, r.fit_seconds))
    return Leaderboard(
        results=tuple(results),
        failures=tuple(failures),
        protocol=protocol,
        n_items=ref.n,
        stores=tuple(aligned),
    )
