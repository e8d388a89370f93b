"""What featx keeps in its cache folder, and removing it (``featx cache ls`` / ``clean``).

The cache folder (:func:`featx.settings.cache_dir`) holds

=============  ==============================================================================
kind           what
=============  ==============================================================================
store          ``*.h5`` feature stores written by ``featx extract`` (with an unfinished run's
               ``STORE.h5.parts/`` and a writer's ``STORE.h5.lock`` beside them)
prediction     ``predict/*.h5``: the stores ``featx predict`` extracts new sources into
bundle         ``heads/*.npz`` (and older ``*.joblib``): heads saved by ``featx fit``
dataset        ``datasets/NAME/``: built-in datasets written as files (``sklearn:digits``)
memo           ``backbones.json``: remembered backbone configurations (a no-op extract
               needs no torch)
leftover       ``*.tmp-*``: temporary files of a killed writer
other          anything else; listed, never removed
=============  ==============================================================================

:func:`clean` removes only entries of the kinds above other than ``other``, only paths inside
the cache folder (a symbolic link is removed as a link, never followed), and never a store whose
writer still holds its lock. It needs a filter (kind, name pattern, age) or ``all=True``.

Examples
--------
>>> from featx.cache import scan
>>> [e.kind for e in scan("/nonexistent/featx-cache")]
[]
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from featx.errors import FeatxError

__all__ = ["KINDS", "CacheEntry", "clean", "scan"]

#: kinds that :func:`clean` may remove (``other`` is never removed)
KINDS = ("store", "prediction", "bundle", "dataset", "memo", "leftover")
PREDICT_DIR = "predict"


@dataclass(frozen=True)
class CacheEntry:
    """One thing in the cache folder."""

    kind: str
    path: Path
    bytes: int
    modified: float  # seconds since the epoch, of the newest file in it

    @property
    def name(self) -> str:
        return self.path.name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["name"] = self.name
        return d


def _size(p: Path) -> tuple[int, float]:
    """Bytes and newest modification time of a file, link or folder (links not followed)."""
    st = p.lstat()
    if not p.is_dir() or p.is_symlink():
        return st.st_size, st.st_mtime
    total, newest = 0, st.st_mtime
    for root, dirs, files in os.walk(p):  # does not follow links to folders
        for f in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                s = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            total += s.st_size
            newest = max(newest, s.st_mtime)
    return total, newest


def _kind(rel: Path, p: Path) -> str:
    top = rel.parts[0]
    if ".tmp-" in rel.name:
        return "leftover"
    if len(rel.parts) == 1:
        if p.suffix == ".h5" and not p.is_dir():
            return "store"
        if top == "backbones.json":
            return "memo"
        return "other"
    if top == PREDICT_DIR and len(rel.parts) == 2 and p.suffix == ".h5":
        return "prediction"
    if top == "heads" and len(rel.parts) == 2 and p.suffix in (".npz", ".joblib"):
        return "bundle"
    if top == "datasets" and len(rel.parts) == 2 and p.is_dir() and not p.is_symlink():
        return "dataset"
    return "other"


def scan(cache_dir: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Everything in the cache folder, one entry per store, bundle, dataset, ..., by kind and
    name. A store's ``.parts/`` folder and ``.lock`` file count with the store."""
    if cache_dir is None:
        from featx.settings import cache_dir as resolved

        cache_dir = resolved()
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    candidates: list[Path] = []
    for p in sorted(root.iterdir()):
        if p.name == ".gitkeep":
            continue
        if p.is_dir() and not p.is_symlink() and p.name in (PREDICT_DIR, "heads", "datasets"):
            candidates += sorted(c for c in p.iterdir() if c.name != ".gitkeep")
        else:
            candidates.append(p)
    out = []
    for p in candidates:
        name = p.name
        if name.endswith((".h5.parts", ".h5.lock")):
            owner = p.with_name(name.rsplit(".", 1)[0])
            if owner.exists():
                continue  # counted with its store
        try:
            size, modified = _size(p)
        except OSError:
            continue
        kind = _kind(p.relative_to(root), p)
        if kind in ("store", "prediction"):
            for extra in (p.with_name(name + ".parts"), p.with_name(name + ".lock")):
                if extra.exists():
                    s, m = _size(extra)
                    size, modified = size + s, max(modified, m)
        elif name.endswith((".h5.parts", ".h5.lock")):
            kind = "leftover"  # of a store that no longer exists
        out.append(CacheEntry(kind, p, size, modified))
    order = {k: i for i, k in enumerate((*KINDS, "other"))}
    return sorted(out, key=lambda e: (order[e.kind], str(e.path)))


def _in_use(store: Path) -> bool:
    """Whether a writer holds the store's ``.lock`` right now."""
    lock = store.with_name(store.name + ".lock")
    if not lock.is_file():
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: be careful
        return True
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _inside(root: Path, p: Path) -> bool:
    """``p`` (not followed if it is a link) lies inside ``root``."""
    parent = Path(os.path.realpath(p.parent))
    return parent == root or root in parent.parents


def _remove(p: Path) -> None:
    if p.is_symlink() or not p.is_dir():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p)


def select(
    entries: list[CacheEntry],
    *,
    kinds: tuple[str, ...] = (),
    pattern: str | None = None,
    older_than_days: float | None = None,
    all: bool = False,  # noqa: A002 - mirrors --all
) -> list[CacheEntry]:
    """The removable entries that match every given filter (``all``: every removable one)."""
    if not (all or kinds or pattern or older_than_days is not None):
        raise FeatxError(
            "say what to remove: --kind (store, prediction, bundle, dataset, memo, leftover), "
            "--match PATTERN, --older-than DAYS, or --all"
        )
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise FeatxError(f"unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    now = time.time()
    out = []
    for e in entries:
        if e.kind not in KINDS:
            continue
        if kinds and e.kind not in kinds:
            continue
        if pattern and not fnmatch.fnmatch(e.name, pattern):
            continue
        if older_than_days is not None and now - e.modified < older_than_days * 86400:
            continue
        out.append(e)
    return out


def clean(
    cache_dir: str | os.PathLike | None = None,
    *,
    kinds: tuple[str, ...] = (),
    pattern: str | None = None,
    older_than_days: float | None = None,
    all: bool = False,  # noqa: A002 - mirrors --all
    dry_run: bool = False,
) -> tuple[list[CacheEntry], list[tuple[CacheEntry, str]]]:
    """Remove the matching entries of the cache folder; returns ``(removed, skipped)``.

    ``skipped`` pairs an entry with why it was left (a writer holds the store, it lies outside
    the cache folder). With ``dry_run`` nothing is removed and ``removed`` is what would be.
    """
    if cache_dir is None:
        from featx.settings import cache_dir as resolved

        cache_dir = resolved()
    root = Path(os.path.realpath(cache_dir))
    chosen = select(
        scan(root), kinds=kinds, pattern=pattern, older_than_days=older_than_days, all=all
    )
    removed: list[CacheEntry] = []
    skipped: list[tuple[CacheEntry, str]] = []
    for e in chosen:
        if not _inside(root, e.path):
            skipped.append((e, "outside the cache folder"))
            continue
        if e.kind in ("store", "prediction") and _in_use(e.path):
            skipped.append((e, "a featx extract is writing it"))
            continue
        if not dry_run:
            for extra in (e.path.with_name(e.name + ".parts"), e.path.with_name(e.name + ".lock")):
                if e.kind in ("store", "prediction") and (extra.exists() or extra.is_symlink()):
                    _remove(extra)
            _remove(e.path)
        removed.append(e)
    return removed, skipped
