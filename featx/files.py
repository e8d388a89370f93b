"""The two file-system facts every writer shares: where the cache lives, and how to write a file
so that a crash never leaves a half-written one under its final name.

Examples
--------
>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out" / "hello.txt"
>>> atomic_write(target, "hi\\n").read_text()
'hi\\n'
>>> with atomic_path(target) as tmp:
...     _ = tmp.write_text("bye\\n")  # any writer: h5py, joblib, a folder tree, ...
>>> target.read_text()
'bye\\n'
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write",
    "cache_dir",
    "check_output",
    "fsync_dir",
    "sweep_dead_temporaries",
]


def cache_dir() -> Path:
    """The folder under which featx caches stores, head bundles and built-in datasets.

    ``$FEATX_CACHE_DIR`` when set, else the ``cache_dir`` of the nearest ``featx.toml`` or
    ``pyproject.toml`` ``[tool.featx]`` (walking up from the working directory), else the user's
    cache folder (``~/.cache/featx`` on Linux); see :mod:`featx.settings`. Always absolute.
    """
    from featx.settings import cache_dir as resolved

    return resolved()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def sweep_dead_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove ``<name>.tmp-<pid>[-<random>]`` leftovers of ``path`` whose writer process is gone.

    A live writer's temporary is left alone, so concurrent writers of one target are safe.
    Returns what was removed.
    """
    path = Path(path)
    gone = []
    prefix = f"{path.name}.tmp-"
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(glob_escape(prefix) + "*"):
            pid = tmp.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                _remove(tmp)
                gone.append(tmp)
    return gone


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, fsync: bool = True, sweep: bool = True
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it into place atomically.

    The caller writes a file (or builds a folder) at the yielded path. When the block ends
    without an exception the file is fsynced, renamed over ``path`` (a folder replaces an
    existing folder) and the rename made durable; on an exception the temporary is removed and
    ``path`` is untouched. Temporary names are ``<name>.tmp-<pid>-<random>``; a process killed
    outright (``kill -9``) cannot remove its own, so every write first removes those of
    ``path`` whose process is gone (:func:`sweep_dead_temporaries`).

    Parameters
    ----------
    path : path-like
        The final name; its folder is created when missing.
    fsync : bool, default=True
        Flush the written file to disk before the rename (skip for throwaway outputs).
    sweep : bool, default=True
        Remove dead writers' temporaries of ``path`` first; a caller that sweeps its own folder
        (the store writer, under its lock) passes False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        sweep_dead_temporaries(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            _remove(tmp)


def atomic_write(path: str | os.PathLike, data: str | bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path.

    See :func:`atomic_path` for the guarantees.
    """
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def check_output(
    path: str | os.PathLike,
    *,
    force: bool = False,
    folder: bool = False,
    option: str = "--out",
    update: bool = False,
) -> Path:
    """The one guard every output option goes through, before any work is done.

    The convention (the same for every command): an output that exists is replaced only with
    ``--force``; missing parent folders are created when the output is written (not here); an
    output below a file, in a folder that cannot be written, or of the wrong kind (a folder
    where a file goes, or the other way) is a one-line :class:`~featx.errors.FeatxError` naming
    the path and what to do. ``update=True`` is for outputs a command updates in place (a
    feature store): existing is fine.

    Parameters
    ----------
    path : path-like
        The output file (or folder, with ``folder=True``).
    force : bool
        Replace an existing output.
    option : str
        The option that named it, for the message.

    Returns
    -------
    Path
        ``path``.
    """
    from featx.errors import FeatxError

    p = Path(path)
    shown = os.fsdecode(os.fspath(path))
    if not shown.strip():
        raise FeatxError(f"{option} is empty; give a {'folder' if folder else 'file'} name")
    if p.exists() or p.is_symlink():
        if p.is_dir() and not folder:
            raise FeatxError(f"{option} {shown!r} is a folder; give a file name")
        if folder and not p.is_dir():
            raise FeatxError(f"{option} {shown!r} is a file; give a folder name")
        if not (force or update):
            raise FeatxError(
                f"{option} {shown!r} exists; pass --force to replace it, or choose another name"
            )
    parent = p.parent if str(p.parent) else Path(".")
    # the nearest existing ancestor must be a folder: an output below a file is a typo
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise FeatxError(
            f"{option} {shown!r} is below {str(probe)!r}, which is a file, not a folder; "
            "choose another path"
        )
    target = p if folder and p.is_dir() else probe
    if not os.access(target, os.W_OK | os.X_OK):
        raise FeatxError(
            f"cannot write {option} {shown!r}: {str(target)!r} is not writable "
            "(read-only file system or permissions); choose a folder you can write"
        )
    return p
