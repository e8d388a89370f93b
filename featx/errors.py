"""User-facing errors.

Every error a user can cause by bad input is a :class:`FeatxError` whose message is one line that
says what went wrong and what to do. The CLI prints it without a traceback (unless ``-v``) and
exits non-zero; library users catch it like any other exception.
"""

import os


class FeatxError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class StoreError(FeatxError):
    """A feature store is missing, foreign, or built with another configuration."""


class StoreLockedError(StoreError):
    """Another process is writing the same feature store."""


class StoreReadOnlyError(StoreError):
    """The store must be written but its folder is not writable."""


class DiskFullError(FeatxError):
    """The disk filled up while writing; nothing finished was lost."""


def disk_full_error(directory: str | os.PathLike, needed_bytes: int | None = None) -> DiskFullError:
    """The one-line error for ENOSPC/EDQUOT while writing into ``directory``.

    ``needed_bytes`` is an estimate of the space the operation needs in all; the message asks
    for what is missing from it (at least 1 MB).
    """
    import shutil

    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = 0
    mb = 1
    if needed_bytes:
        mb = max(1, -(-(int(needed_bytes) * 11 // 10 - free) // 1_000_000))
    return DiskFullError(
        f"the disk is full: free {mb} MB in {directory} and rerun; no finished work was lost"
    )


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSErrors that mean "no space" (ENOSPC, EDQUOT)."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
