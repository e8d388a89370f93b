"""CSV cells that a spreadsheet will not execute.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
formula by Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``, ``=cmd|...``). Every CSV
featx writes passes its cells through :func:`safe_cell`, which prefixes such a cell with a single
quote (OWASP's advice); numbers, negative ones included, are left as they are.

Examples
--------
>>> [safe_cell(v) for v in ("=HYPERLINK(1)", "-0.5", "cat", 3, "@SUM(A1)")]
["'=HYPERLINK(1)", '-0.5', 'cat', 3, "'@SUM(A1)"]
"""

from __future__ import annotations

from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` unchanged unless it is a string a spreadsheet would run as a formula."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    try:
        float(value)
        return value  # a plain number such as -0.5 or +3
    except ValueError:
        return "'" + value
