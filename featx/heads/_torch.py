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


# Below this many multiply-adds per matrix product, extra CPU threads cost more than they give:
# torch's OpenMP workers spin at every barrier, and on a shared or busy machine a descheduled
# worker stalls the others (measured 10-60x slow-downs on a loaded 2-core box).
SMALL_WORK = 100_000_000


@contextlib.contextmanager
def cpu_threads(device: torch.device, work: float) -> Iterator[None]:
    """Use one CPU thread inside the block for small problems on the CPU; restore afterwards."""
    import torch

    if device.type != "cpu" or work >= SMALL_WORK or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
