"""The one safe directory walker every folder source goes through (images, ``.txt`` folders).

A folder anyone can write may hold more than files: broken symlinks, symlink loops (a file link
to itself, a folder link to a folder above it, ``up -> ..``), FIFOs that block whoever opens
them, devices, sockets, unreadable files, names that are not UTF-8. The walker lists such a tree
without ever blocking or recursing for ever, and reports every entry it cannot read as an
:class:`Entry` with an ``error`` (the scan records it as a failed item with that reason) instead
of raising:

- a file's type is checked (``stat``, links followed) before anything opens it; only regular
  files are readable entries, a FIFO / device / socket is an entry with its kind as the error;
- folder links are followed, but a folder whose (device, inode) is the root's or one of its
  ancestors' (a loop) is an error entry and is not entered;
- hidden names (a leading ``.``) are skipped;
- names are kept as the file system has them (non-UTF-8 bytes as ``surrogateescape``
  characters, so ``os.fsencode(rel)`` gives the bytes back).

:func:`scan` adds the one layout rule of folder sources: top-level subfolders are classes
(ImageFolder layout), unless there are none, then the folder is flat and unlabeled.
:func:`open_regular` opens a file only when it is a regular file *at the moment of opening*
(``O_NONBLOCK`` + ``fstat``), so a file swapped for a FIFO after the scan cannot hang a reader.

Examples
--------
>>> import os, tempfile
>>> root = tempfile.mkdtemp()
>>> os.makedirs(os.path.join(root, "cat")); os.mkfifo(os.path.join(root, "cat", "pipe.txt"))
>>> open(os.path.join(root, "cat", "a.txt"), "w").write("hi")
2
>>> os.symlink("..", os.path.join(root, "cat", "up"))
>>> tree = scan(root)
>>> tree.classes
('cat',)
>>> [(e.rel, e.error) for e in tree.entries]  # doctest: +NORMALIZE_WHITESPACE
[('cat/a.txt', ''), ('cat/pipe.txt', 'not a regular file (a FIFO); skipped'),
 ('cat/up', 'symlink loop (a folder link back to a folder above it); skipped')]
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["Entry", "Tree", "entry", "iter_entries", "open_regular", "os_reason", "scan", "walk"]


@dataclass(frozen=True)
class Entry:
    """One file below the root, or one entry the walk could not read (``error`` says why)."""

    rel: str  # relative to the scanned root, '/'-separated
    path: str  # the full path
    size: int = 0
    mtime_ns: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Tree:
    """A folder source's layout: class subfolders (or none: flat) and every entry below.

    ``top_files`` are the regular files at the top level (for the caller's "mixed layout"
    rule); with classes they are not in ``entries``.
    """

    root: str
    classes: tuple[str, ...]
    entries: tuple[Entry, ...]
    top_files: tuple[str, ...]


def os_reason(path: str, exc: OSError) -> str:
    """A short reason for an entry the walk cannot read."""
    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symlink (its target {target} does not exist)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot read: {exc.strerror or type(exc).__name__}"


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str:
    for test, kind in _KINDS:
        if test(mode):
            return f"not a regular file ({kind}); skipped"
    return "not a regular file; skipped"


def _ino(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _ancestors(root: str) -> frozenset[tuple[int, int]]:
    """(device, inode) of ``root`` and of every folder above its real path, up to ``/``."""
    out = set()
    real = Path(os.path.realpath(root))
    for p in (real, *real.parents):
        with contextlib.suppress(OSError):
            out.add(_ino(os.stat(p)))
    return frozenset(out)


def _listing(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _classify(
    e: os.DirEntry, rel: str, above: frozenset[tuple[int, int]]
) -> tuple[str, Entry | None, os.stat_result | None]:
    """("dir", None, st) for a folder to enter; ("file", entry, None) for anything else."""
    try:
        st = os.stat(e.path)  # follows links: the type of what a reader would open
    except OSError as exc:
        return "file", Entry(rel, e.path, error=os_reason(e.path, exc)), None
    if stat.S_ISDIR(st.st_mode):
        if _ino(st) in above:
            why = "symlink loop (a folder link back to a folder above it); skipped"
            return "file", Entry(rel, e.path, error=why), None
        return "dir", None, st
    if not stat.S_ISREG(st.st_mode):
        return "file", Entry(rel, e.path, error=_not_regular(st.st_mode)), None
    return "file", Entry(rel, e.path, size=st.st_size, mtime_ns=st.st_mtime_ns), None


def entry(path: str | os.PathLike, rel: str) -> Entry:
    """One path named by a list (a manifest row), classified like a walked entry: a regular
    file, or an error entry (broken link, loop, FIFO, device, a folder, ...).

    A path that does not exist at all (and is no link) raises ``FileNotFoundError``: for a list
    that is the list's mistake, not a file to record.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not os.path.islink(path):
            raise
        return Entry(rel, path, error=os_reason(path, FileNotFoundError(errno.ENOENT, "")))
    except OSError as exc:
        return Entry(rel, path, error=os_reason(path, exc))
    if stat.S_ISDIR(st.st_mode):
        return Entry(rel, path, error="a folder, not a file; skipped")
    if not stat.S_ISREG(st.st_mode):
        return Entry(rel, path, error=_not_regular(st.st_mode))
    return Entry(rel, path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def iter_entries(
    root: str | os.PathLike, prefix: str = "", above: frozenset[tuple[int, int]] | None = None
) -> Iterator[Entry]:
    """Every entry below ``root`` in name order, depth first (a generator: stop early freely).

    ``prefix`` is put before every ``rel`` (``"cat/"``); ``above`` is the set of folders a link
    may not lead back to (default: ``root`` and its ancestors).
    """
    root = os.fspath(root)
    try:
        st = os.stat(root)
    except OSError as exc:
        yield Entry(prefix.rstrip("/") or ".", root, error=os_reason(root, exc))
        return
    if not stat.S_ISDIR(st.st_mode):
        yield Entry(prefix.rstrip("/") or ".", root, error="not a folder")
        return
    seen = (above if above is not None else _ancestors(root)) | {_ino(st)}
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [(root, prefix, seen)]
    while stack:
        folder, pre, up = stack.pop()
        try:
            entries = _listing(folder)
        except OSError as exc:
            yield Entry(
                pre.rstrip("/") or ".",
                folder,
                error=f"cannot list folder: {os_reason(folder, exc)}",
            )
            continue
        subfolders = []
        for e in entries:
            rel = pre + e.name
            kind, entry, st_dir = _classify(e, rel, up)
            if kind == "dir":
                assert st_dir is not None
                subfolders.append((e.path, rel + "/", up | {_ino(st_dir)}))
            else:
                assert entry is not None
                yield entry
        stack.extend(reversed(subfolders))


def walk(root: str | os.PathLike) -> list[Entry]:
    """Every entry below ``root`` (see :func:`iter_entries`), sorted by ``rel``."""
    return sorted(iter_entries(root), key=lambda e: e.rel)


def scan(root: str | os.PathLike) -> Tree:
    """The layout of a folder source: class subfolders with their entries, or a flat folder.

    A top-level subfolder is a class when it holds at least one entry (readable or not); a link
    at the top level back to the root or above is recorded, never a class. Without classes,
    every entry below the root belongs to the flat source.
    """
    root = os.fspath(root)
    above = _ancestors(root)
    top = _listing(root)  # an unlistable root is the caller's error (OSError)
    classes: list[str] = []
    by_class: dict[str, list[Entry]] = {}
    top_entries: list[Entry] = []
    top_files: list[str] = []
    for e in top:
        kind, entry, st = _classify(e, e.name, above)
        if kind == "dir":
            assert st is not None
            found = list(iter_entries(e.path, e.name + "/", above | {_ino(st)}))
            if found:
                classes.append(e.name)
                by_class[e.name] = found
            continue
        assert entry is not None
        top_entries.append(entry)
        if entry.ok:
            top_files.append(e.name)
    if classes:
        entries = [x for c in classes for x in by_class[c]]
        entries += [x for x in top_entries if not x.ok]  # loops, FIFOs at the top: recorded
    else:
        entries = top_entries
    entries.sort(key=lambda x: x.rel)
    return Tree(root, tuple(classes), tuple(entries), tuple(top_files))


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file when opened (never blocks).

    Raises ``OSError`` (``EINVAL``, with a reason naming the kind) for a FIFO, device or
    socket, and whatever ``open`` raises otherwise.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, _not_regular(st.st_mode), os.fspath(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
