"""Presentation of comparison results: Markdown, JSON and CSV tables, PNG plots, the report folder.

This is the only featx module that imports matplotlib (inside the plot functions, with the Agg
canvas: no pyplot, no global backend change). :class:`featx.comparison.Leaderboard` is plain
data: the functions here draw anything shaped like it (:class:`LeaderboardLike`), and its
``to_markdown``/``to_json``/``to_csv``/``write_report`` call them. This module imports no
comparison code (it sits below it in the layers of docs/architecture.md).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from featx.files import atomic_write
from featx.protocol import Result

logger = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "LeaderboardLike",
    "leaderboard_csv",
    "leaderboard_json",
    "leaderboard_markdown",
    "leaderboard_text",
    "most_confused",
    "protocol_line",
    "write_report",
]

COLUMNS = (
    "rank",
    "store",
    "head",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "top5_accuracy",
    "log_loss",
    "roc_auc",
    "fit_seconds",
    "predict_seconds",
    "solver",
)


class LeaderboardLike(Protocol):
    """What the functions here draw: :class:`featx.comparison.Leaderboard` or the like."""

    results: Sequence[Result]
    failures: Sequence[Any]  # each with .store, .head, .error
    protocol: str
    n_items: int
    stores: Sequence[str]

    @property
    def best(self) -> Result: ...

    def rows(self) -> list[dict[str, Any]]: ...


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


def _leaderboard_cells(board: LeaderboardLike) -> tuple[list[str], str, list[list[str]]]:
    """Header, column alignment (``l``/``r`` per column) and cells of the leaderboard."""
    auc = any(r.roc_auc is not None for r in board.results)
    solver = any(r.solver for r in board.results)
    header = ["#", "store", "head", "accuracy", "bal. acc.", "macro F1", "top-5", "log-loss"]
    header += (["ROC-AUC"] if auc else []) + ["fit s", "predict s"] + (["solver"] if solver else [])
    align = "rll" + "r" * (5 + auc + 2) + ("l" if solver else "")
    rows = []
    for i, r in enumerate(board.results, 1):

        def pm(k: str, r: Result = r) -> str:
            v = getattr(r, k)
            if v is None:
                return "–"
            s = r.std.get(k)
            return f"{v:.4f} ± {s:.4f}" if s is not None else f"{v:.4f}"

        row = [str(i), str(r.store), str(r.label)]
        row += [pm(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy")]
        row += [pm("log_loss")] + ([pm("roc_auc")] if auc else [])
        row += [_secs(r.fit_seconds), _secs(r.predict_seconds)]
        row += [str(r.solver or "")] if solver else []
        rows.append(row)
    return header, align, rows


def protocol_line(board: LeaderboardLike) -> str:
    """``protocol: stratified split (test 0.2, seed 0): 4313 train / 1078 test``: the split every
    row was measured on (printed with every leaderboard)."""
    sizes = ""
    if board.results:
        r = board.results[0]
        sizes = f": {r.n_train} train / {r.n_test} test"
    return f"protocol: {board.protocol or '-'}{sizes}"


def leaderboard_markdown(board: LeaderboardLike) -> str:
    """The leaderboard as a Markdown table (mean ± std when there are several runs)."""
    header, align, rows = _leaderboard_cells(board)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    if board.failures:
        lines.append("")
        lines.append("Failed:")
        lines += [f"- {_md(f.store)} / {_md(f.head)}: {_md(f.error)}" for f in board.failures]
    return "\n".join(lines) + "\n"


def leaderboard_text(board: LeaderboardLike) -> str:
    """The leaderboard as an aligned plain-text table for the terminal."""
    from featx.console import render_table

    header, align, rows = _leaderboard_cells(board)
    lines = [protocol_line(board), "", render_table(header, rows, align=align)]
    if board.failures:
        lines += ["", "failed:"]
        lines += [f"  {f.store} / {f.head}: {f.error}" for f in board.failures]
    return "\n".join(lines) + "\n"


def leaderboard_json(
    board: LeaderboardLike, *, details: bool = False, indent: int | None = 2
) -> str:
    """JSON with the protocol, the rows and the failures (``details``: per-class, confusion)."""
    doc = {
        "protocol": board.protocol,
        "n_items": board.n_items,
        "stores": list(board.stores),
        "results": [r.to_dict(details=details) for r in board.results],
        "failures": [f.__dict__ for f in board.failures],
    }
    return json.dumps(doc, indent=indent, allow_nan=False, default=_json_default)


def leaderboard_csv(board: LeaderboardLike, path: str | os.PathLike | None = None) -> str:
    """The rows as CSV; written to ``path`` when given. Returns the CSV text.

    Cells a spreadsheet would run as formulas get a leading quote (:func:`featx.csvsafe.safe_cell`).
    """
    from featx.csvsafe import safe_cell

    buf = io.StringIO()
    cols = list(COLUMNS) + ["accuracy_std", "balanced_accuracy_std", "macro_f1_std"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in board.rows():
        writer.writerow(
            {k: ("" if row.get(k) is None else safe_cell(row.get(k, ""))) for k in cols}
        )
    text = buf.getvalue()
    if path is not None:
        atomic_write(Path(path), text)
    return text


def write_report(board: LeaderboardLike, directory: str | os.PathLike) -> dict[str, Path]:
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
    if board.results:
        paths["accuracy_vs_fit_time"] = _plot_accuracy_vs_time(
            board, d / "accuracy_vs_fit_time.png"
        )
        paths["confusion_matrix"] = _plot_confusion(board.best, d / "confusion_matrix.png")
        n_stores = len({r.store for r in board.results})
        n_heads = len({r.label for r in board.results})
        if n_stores > 1 and n_heads > 1:
            paths["accuracy_grid"] = _plot_grid(board, d / "accuracy_grid.png")
    paths["csv"] = d / "leaderboard.csv"
    leaderboard_csv(board, paths["csv"])
    paths["json"] = d / "leaderboard.json"
    atomic_write(paths["json"], leaderboard_json(board, details=True))
    paths["markdown"] = d / "leaderboard.md"
    atomic_write(paths["markdown"], _report_markdown(board, paths))
    logger.info("report written to %s", d)
    return paths


def _report_markdown(board: LeaderboardLike, paths: Mapping[str, Path]) -> str:
    parts = ["# featx leaderboard", ""]
    parts.append(
        f"{len(board.results)} results, {len(set(board.stores))} store(s), "
        f"{board.n_items} shared items; protocol: {board.protocol}."
    )
    parts += ["", leaderboard_markdown(board)]
    for key, title in [
        ("accuracy_vs_fit_time", "Accuracy against fit time"),
        ("accuracy_grid", "Accuracy by store and head"),
        ("confusion_matrix", "Confusion matrix of the best head"),
    ]:
        if key in paths:
            parts += [f"## {title}", "", f"![{title}]({paths[key].name})", ""]
    if board.results:
        b = board.best
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


# ---------------------------------------------------------------------------------------------
# plots (matplotlib's object API with the Agg canvas: no pyplot, no global backend change)
# ---------------------------------------------------------------------------------------------


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
    return path


def _plot_accuracy_vs_time(board: LeaderboardLike, path: Path) -> Path:
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


def _plot_grid(board: LeaderboardLike, path: Path) -> Path:
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
