"""The writer lock: one POSIX record lock per store (``STORE.lock``), never inherited by
forked children, refused twice within one process."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import sys
import threading
from pathlib import Path

from featx.errors import StoreLockedError

#: (st_dev, st_ino) of the lock files this process holds.
_HELD: set[tuple[int, int]] = set()
_HELD_GUARD = threading.Lock()


def _lock_holder(fd: int) -> int | None:
    """The pid holding the lock on ``fd``'s file: F_GETLK on Linux, else the pid written there."""
    if sys.platform.startswith("linux"):
        try:
            req = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)
            res = fcntl.fcntl(fd, fcntl.F_GETLK, req)
            l_type, _, _, _, pid = struct.unpack("hhqqi4x", res)
            if l_type != fcntl.F_UNLCK and pid > 0:
                return int(pid)
        except (OSError, struct.error):
            pass
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def acquire_lock(lock_path: Path, store_path: Path) -> tuple[int, tuple[int, int]]:
    """Take the POSIX record lock on ``lock_path`` and write this pid into it.

    Returns the open descriptor and the file's (st_dev, st_ino); give both to
    :func:`release_lock`. A ``lockf`` lock belongs to this process: forked children (DataLoader
    workers) do not inherit it, and it is released the moment this process dies. Two writers in
    the same process are refused by :data:`_HELD` (POSIX locks do not conflict within a process,
    and opening and closing a second descriptor would even release the first one's lock).
    """
    with _HELD_GUARD:
        with contextlib.suppress(OSError):
            st = os.stat(lock_path)
            if (st.st_dev, st.st_ino) in _HELD:
                raise StoreLockedError(
                    f"this process (pid {os.getpid()}) is already writing {store_path}; "
                    "finish that write first or use another --store"
                )
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise
                holder = _lock_holder(fd)
                os.close(fd)
                who = f"featx process {holder}" if holder else "another featx process"
                raise StoreLockedError(
                    f"{who} is writing {store_path} (lock {lock_path.name} is held); "
                    "wait for it to finish or use another --store"
                ) from None
            st = os.fstat(fd)
            # The previous writer removes the lock file on exit (while holding it), so no
            # .lock files pile up. If it did so after we opened the file, we hold a lock on
            # a removed file that nobody else will see: drop it and lock the current one.
            try:
                now = os.stat(lock_path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                break
            os.close(fd)
        key = (st.st_dev, st.st_ino)
        _HELD.add(key)
    with contextlib.suppress(OSError):  # the pid is for messages only
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, key


def release_lock(lock_path: Path, fd: int, key: tuple[int, int]) -> None:
    """Delete ``lock_path`` while still holding it (when it is still ours), then unlock."""
    with _HELD_GUARD:
        with contextlib.suppress(OSError):  # still holding it: no other writer races us
            st = os.stat(lock_path)
            if (st.st_dev, st.st_ino) == key:
                os.unlink(lock_path)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
        _HELD.discard(key)
