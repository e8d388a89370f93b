"""Aligned plain-text tables for the terminal (Markdown stays for files).

Every command that prints rows and columns goes through :func:`render_table`: columns padded to
their widest cell, numbers right-aligned, a rule under the header, no pipes. Cells are turned
into text with ``str`` (``None`` prints as ``-``); wide characters count as one column each,
which is right for the names and numbers featx prints.

Examples
--------
>>> print(render_table(["head", "accuracy"], [["logreg", "0.9554"], ["knn", "0.8524"]]))
head    accuracy
------  --------
logreg    0.9554
knn       0.8524
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["human_bytes", "render_table"]


def _is_number(s: str) -> bool:
    t = s.strip().rstrip("%").replace(",", "").replace("±", "").split(" ")[0]
    if not t or t == "-":
        return False
    try:
        float(t)
    except ValueError:
        return False
    return True


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    align: str | None = None,
    indent: str = "",
) -> str:
    """``headers`` and ``rows`` as aligned text.

    ``align`` gives one letter per column, ``l`` or ``r``; by default a column is right-aligned
    when every non-empty cell in it is a number (``-`` counts as empty).
    """
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    n = len(headers)
    for row in cells:
        if len(row) != n:
            raise ValueError(f"a row has {len(row)} cells for {n} columns")
    if align is None:
        align = "".join(
            "r"
            if any(r[j] not in ("", "-") for r in cells)
            and all(r[j] in ("", "-") or _is_number(r[j]) for r in cells)
            else "l"
            for j in range(n)
        )
    widths = [max([len(str(headers[j]))] + [len(r[j]) for r in cells]) for j in range(n)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[j]) if align[j] == "r" else v.ljust(widths[j])
            for j, v in enumerate(values)
        ]
        return (indent + "  ".join(parts)).rstrip()

    out = [line([str(h) for h in headers]), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1000, as ``featx info`` prints MB)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover
