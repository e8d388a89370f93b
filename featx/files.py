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

__all__ = ["atomic_path", "atomic_write", "cache_dir", "fsync_dir", "sweep_dead_temporaries"]


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
