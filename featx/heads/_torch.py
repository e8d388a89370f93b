"""Small torch helpers for the torch-backed heads (imported only when such a head is fitted)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
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


# Below this many multiply-adds per matrix product, extra CPU threads cost more than they give
# (benchmarks/bench_threads.py; BENCHMARKS.md "Torch heads on a busy machine").
SMALL_WORK = 100_000_000

#: Where the kernel's run-queue counts and this process's threads are read (a test points it
#: at a fake folder).
PROC = Path("/proc")


def _own_running() -> int:
    """Threads of this process that are running or runnable right now (Linux)."""
    n = 0
    try:
        tasks = list((PROC / "self" / "task").iterdir())
    except OSError:
        return 1
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        # "pid (comm) S ...": the state is the first field after the last ')'
        if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R":
            n += 1
    return max(n, 1)  # the reading thread itself is running


def busy_elsewhere(samples: int = 8, interval: float = 0.002) -> float | None:
    """How many CPUs other processes keep busy right now (a mean over a few milliseconds).

    On Linux this is the kernel's instantaneous count of runnable threads (the fourth field of
    ``/proc/loadavg``) minus this process's own running threads, averaged over ``samples``
    readings ``interval`` seconds apart: unlike the load *average*, it does not remember featx's
    own work of the last minutes (an extraction just before a fit), and a busy core shows at
    once. Elsewhere it falls back to the 1-minute ``os.getloadavg()`` less one (this process).
    None when neither is available.
    """
    loadavg = PROC / "loadavg"
    total = 0.0
    got = 0
    for i in range(samples):
        try:
            field = loadavg.read_text().split()[3]
            running = int(field.split("/")[0])
        except (OSError, IndexError, ValueError):
            break
        total += max(0, running - _own_running())
        got += 1
        if i + 1 < samples:
            time.sleep(interval)
    if got:
        return total / got
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):  # not on every platform
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(work: float, before: int, busy: float | None, cpus: int) -> int:
    """The thread count for a CPU fit whose products have ``work`` multiply-adds each.

    One thread below ``SMALL_WORK``; above it, no more than the CPUs that other processes leave
    free (``cpus - busy``, rounded, at least one), and never more than ``before`` (the count set
    with ``torch.set_num_threads``, so a user's lower setting stands).
    """
    if before <= 1 or work < SMALL_WORK:
        return 1
    if busy is None:
        return before
    free = max(1, int(cpus - busy + 0.5))
    return min(before, free)


@contextlib.contextmanager
def cpu_threads(device: torch.device, work: float) -> Iterator[None]:
    """Inside the block, use only as many CPU threads as the work and the machine's load allow.

    torch's OpenMP workers meet at a barrier after every operation; when a core is taken by
    another process, a descheduled worker stalls the others while they spin, and a fit with
    thousands of small products (the MLP's steps) runs 3-10x slower than on one thread (measured
    on a 2-core machine with one busy core). So: one thread below ``SMALL_WORK`` multiply-adds
    per product, and above it at most the cores that other processes leave free right now
    (:func:`busy_elsewhere`: the run queue, not the load average, which would count featx's own
    work of the minutes before). Only ever lowers the count set with ``torch.set_num_threads``
    (or ``OMP_NUM_THREADS``), and restores it afterwards.
    """
    import torch

    before = torch.get_num_threads()
    want = before
    if device.type == "cpu" and before > 1:
        busy = busy_elsewhere() if work >= SMALL_WORK else None
        want = threads_for(work, before, busy, usable_cpus())
        logger.debug(
            "torch CPU threads: %d for this fit (was %d; %.3g multiply-adds per product, "
            "%s CPUs busy elsewhere)",
            want,
            before,
            work,
            "?" if busy is None else f"{busy:.1f}",
        )
    if want == before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cpu_threads_for_load() -> Iterator[int]:
    """Inside the block, numpy's BLAS and torch use only the cores other processes leave free
    right now (:func:`busy_elsewhere`; at least one, never more than torch's setting), and both
    are restored afterwards. Yields the thread count.

    For long CPU work that mixes BLAS calls, LAPACK and torch ops (``featx diagnose``, every
    head's fit and prediction in ``featx.protocol``; torch's count only when torch is already
    imported, else a torch head's :func:`cpu_threads` decides): with a core taken by another
    process, two BLAS threads meet at every call's barrier while one is
    descheduled, and the other spins. Measured on the 2-core machine at load ~9 (BENCHMARKS.md,
    "diagnose"): the ridge out-of-fold pass of 50,000 x 1280 rows took 24 CPU-s with two
    OpenBLAS threads and 8 with one (a 1280 x 1280 Cholesky factorization: 1.4 vs 0.06 CPU-s).
    """
    import sys

    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # not imported for it: a torch head's own cpu_threads
    before = torch.get_num_threads() if torch is not None else usable_cpus()  # decides then
    want = threads_for(float("inf"), before, busy_elsewhere(), usable_cpus())
    logger.debug("CPU threads (BLAS and torch): %d (torch had %d)", want, before)
    with threadpool_limits(limits=want, user_api="blas"):
        if torch is not None and want != before:
            torch.set_num_threads(want)
        try:
            yield want
        finally:
            if torch is not None and want != before:
                torch.set_num_threads(before)
