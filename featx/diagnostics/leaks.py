"""``featx compare --drop-leaked``: the leaderboard again without the leaked test items.

A test item is leaked when it has a near-duplicate among the training items of the split that
``compare`` uses (the duplicate check of :func:`featx.diagnose`). The rescoring keeps every
training item and every head fit the same: the split is fixed (the store's, or the seeded
stratified one written out as an explicit split), and only the leaked test items leave. With
several stores, the union of their leaked keys leaves every store, so all are scored on the same
test items.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featx.errors import FeatxError
from featx.options import DiagnoseOptions, EvalProtocol

if TYPE_CHECKING:  # pragma: no cover
    from featx.comparison import Leaderboard
    from featx.features import FeatureSet

__all__ = ["LeakRescore", "compare_without_leaks", "without_leaked"]


@dataclass(frozen=True)
class LeakRescore:
    """The leaderboard without leaked test items, and which keys left."""

    board: Leaderboard
    leaked: list[str]

    def delta_rows(self, before: Leaderboard) -> list[tuple[str, str, str, str, str]]:
        """Per (store, head): accuracy with and without the leaked test items, and the change."""
        after = {(r.store, r.label): r for r in self.board.results}
        rows = []
        for r in before.results:
            a = after.get((r.store, r.label))
            if a is not None:
                rows.append(
                    (
                        r.store,
                        r.label,
                        f"{100 * r.accuracy:.2f}",
                        f"{100 * a.accuracy:.2f}",
                        f"{100 * (a.accuracy - r.accuracy):+.2f}",
                    )
                )
        return rows

    def delta_table(self, before: Leaderboard, *, markdown: bool = False) -> str:
        """Accuracy (%) of each (store, head) with and without the leaked test items: aligned
        text for the terminal, or a Markdown table (``markdown=True``) for files."""
        headers = ("store", "head", "accuracy %", "without leaked %", "change")
        rows = self.delta_rows(before)
        if markdown:
            lines = [
                "| " + " | ".join(headers) + " |",
                "| " + " | ".join("---" for _ in headers) + " |",
            ]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            return "\n".join(lines)
        from featx.console import render_table

        return render_table(headers, rows, align="llrrr")


def without_leaked(fs: FeatureSet, protocol: EvalProtocol, keys: Sequence[str]) -> FeatureSet:
    """``fs`` with the protocol's split written out and the test items in ``keys`` removed."""
    from featx.diagnostics.core import effective_split

    split, where = effective_split(fs, protocol)
    if where == "no split":
        raise FeatxError("--drop-leaked needs labels of at least 2 classes to draw a split")
    from featx.diagnostics.manifest import take_rows

    drop = np.isin(np.asarray(fs.keys).astype(str), list(keys)) & (split == "test")
    return take_rows(dataclasses.replace(fs, split=split), ~drop)


def compare_without_leaks(
    stores: Sequence[str | os.PathLike],
    heads: Sequence[Any],
    *,
    protocol: EvalProtocol | None = None,
    options: DiagnoseOptions | None = None,
    manifest: str | os.PathLike | None = None,
    progress: bool = False,
) -> LeakRescore:
    """Run :func:`featx.compare` on ``stores`` without their leaked test items.

    Raises
    ------
    FeatxError
        With ``cv`` or ``shots`` (leakage is defined for one train/test split).
    """
    from featx.comparison import compare
    from featx.diagnostics.core import leaked_keys
    from featx.train import _load, store_labels

    proto = protocol or EvalProtocol()
    if proto.cv or proto.shots:
        raise FeatxError(
            "--drop-leaked rescores one train/test split; drop --cv / --shots to use it"
        )
    loaded = [(p, _load(p, manifest)) for p in stores]
    leaked: set[str] = set()
    for _, fs in loaded:
        leaked.update(leaked_keys(fs, options=options, protocol=proto))
    labels = store_labels([fs.meta for _, fs in loaded], [Path(p).stem for p, _ in loaded])
    sets = {
        lab: without_leaked(fs, proto, sorted(leaked))
        for lab, (_, fs) in zip(labels, loaded, strict=True)
    }
    board = compare(
        sets, list(heads), protocol=dataclasses.replace(proto, split="store"), progress=progress
    )
    return LeakRescore(board=board, leaked=sorted(leaked))
