"""Progress bars on stderr that print their final line once.

A tqdm bar renders its state on ``update`` and again on ``close``; when the last ``update``
already showed 100%, a log file or CI console (where ``\\r`` does not overwrite) got the final
line twice. :func:`progress_bar` leaves the final state to ``close`` alone.
"""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(*, total: int, desc: str, unit: str, enabled: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr (``enabled=False``: a silent one with the same methods)."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):  # type: ignore[misc, valid-type]
        def update(self, n: float | None = 1) -> bool | None:
            if not self.disable and self.total is not None and self.n + (n or 0) >= self.total:
                self.n += n or 0  # the final state: close() renders it, once
                return None
            return super().update(n)

    return _Bar(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        **kw,
    )
