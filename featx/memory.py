"""Memory budgets: how many bytes a head may hold in memory before it trains from disk.

``--max-memory`` (:attr:`featx.options.EvalProtocol.max_memory`) takes ``2G``, ``512M``,
``1.5GB``, ``300k`` or a plain number of bytes; unset, the budget is half of this machine's
memory (the smaller of the physical memory and a cgroup limit). Standard library only.

Examples
--------
>>> parse_bytes("2G"), parse_bytes("512m"), parse_bytes("1.5GB"), parse_bytes(4096)
(2147483648, 536870912, 1610612736, 4096)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from featx.errors import FeatxError

#: Copies of the float32 training matrix an in-memory fit may hold at once (the data, its
#: preprocessed copy, the solver's own): the data may take a third of the budget.
IN_MEMORY_COPIES = 3

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(value: str | int | float) -> int:
    """A size such as ``"2G"`` or ``"512M"`` (powers of 1024) as a number of bytes."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise FeatxError(f"a memory size must be positive; got {value}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(value).lower())
    if m is None or float(m.group(1)) <= 0:
        raise FeatxError(
            f"cannot read the memory size {value!r}; give e.g. 2G, 512M, 1.5GB or bytes"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or a smaller cgroup limit."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux/macOS
        total = 8 << 30
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return int(total)


def memory_budget(value: str | int | float | None) -> int:
    """The budget in bytes: ``value`` parsed, or half of :func:`machine_memory` when None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return machine_memory() // 2
    return parse_bytes(value)


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
