"""Small torch helpers for the torch-backed heads (imported only when such a head is fitted)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from featx.errors import FeatxError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    ``"auto"`` is CUDA when available, else CPU. Asking for CUDA on a machine without it is an
    error rather than a silent fall-back to the CPU.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise FeatxError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FeatxError(
            f"device={device!r} was requested but CUDA is not available; use device='auto' or 'cpu'"
        )
    if dev.type not in ("cpu", "cuda"):
        raise FeatxError(f"device {device!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"float32"`` everywhere; ``"float64"`` (slower, tighter) where the device does it well."""
    import torch

    if dtype == "float32":
        return torch.float32
    if dtype == "float64":
        if device.type != "cpu":
            logger.info("float64 on %s is slow on most GPUs; float32 is the usual choice", device)
        return torch.float64
    raise FeatxError(f"unknown dtype {dtype!r}; use 'float32' or 'float64'")


# Below this many multiply-adds per matrix product, extra CPU threads cost more than they give.
SMALL_WORK = 100_000_000


@contextlib.contextmanager
def cpu_threads(device: torch.device, work: float) -> Iterator[None]:
    """Inside the block, run small problems on one CPU thread; leave large ones alone.

    Below ``SMALL_WORK`` multiply-adds per product, OpenMP's fork/join and barrier spinning cost
    more than extra threads give. Large problems keep the thread count set with
    ``torch.set_num_threads`` (all cores by default), as numpy and scikit-learn do; on a machine
    shared with other jobs, lower it there (or with ``OMP_NUM_THREADS``). An earlier version also
    capped threads by the load average, which counted featx's own recent work (an extraction a
    minute before) and dropped fits to one thread. Restores the count afterwards.
    """
    import torch

    before = torch.get_num_threads()
    want = before
    if device.type == "cpu" and before > 1:
        want = 1 if work < SMALL_WORK else before
    if want == before:
        yield
        return
    logger.debug("torch CPU threads: %d for this fit (was %d)", want, before)
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)
