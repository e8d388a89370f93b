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


def os_error_message(exc: OSError, doing: str = "") -> str:
    """One line for an ``OSError``: the path, what went wrong, and what to do about it.

    This is the message the CLI prints for every ``OSError`` that reaches it (see
    ``featx.cli``), so a file-system fault on any path reads the same way:
    ``cannot write 'out/x.csv': read-only file system; choose a folder you can write``.
    ``doing`` (e.g. ``"write"``) is the verb; without it the message says "cannot use".
    """
    import errno

    code = exc.errno
    path = exc.filename
    if path is None:  # h5py and some libraries keep the name only in the text
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{first}; check the path and its permissions (run with -v for details)"
    where = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    if exc.filename2:
        where += f" -> {exc.filename2}"
    why = (exc.strerror or type(exc).__name__).lower()
    hints = {
        errno.EACCES: "choose a location you may write (or read), or change its permissions",
        errno.EPERM: "choose a location you may write (or read), or change its permissions",
        errno.EROFS: "the file system is read-only; choose a folder you can write",
        errno.ENOENT: "check the path; create the folder first if it is missing",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.EISDIR: "it is a folder; give a file name",
        errno.EEXIST: "it exists already; remove it or choose another name",
        errno.ENAMETOOLONG: "choose a shorter name",
        errno.ELOOP: "it is a symbolic link loop; fix the link",
        errno.ENOSPC: "free space on that disk and rerun",
        errno.EDQUOT: "free space within your quota and rerun",
        errno.EMFILE: "too many open files; raise the limit (ulimit -n) and rerun",
    }
    hint = hints.get(code, "check the path and its permissions")
    verb = doing or "use"
    return f"cannot {verb} {where!r}: {why}; {hint}"
