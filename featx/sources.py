"""Where images come from: a folder, a CSV manifest, or a torchvision dataset.

:func:`open_source` turns what the user typed into a :class:`Source`: a sorted list of
:class:`Item` (key, label, split, fingerprint) plus the class names. Keys are stable identities
(the path relative to the source root with ``/`` separators, or ``split/index`` for a torchvision
dataset), so re-running over a grown folder finds exactly what is new.

Supported forms
---------------
``DIR`` with class subfolders
    ImageFolder layout: each subfolder (searched recursively) is a class; labels sorted by name.
``DIR`` with image files only
    A flat folder: unlabeled items (label -1).
``FILE.csv``
    A manifest with a header ``path,label[,split]``; paths relative to the CSV's folder (paths
    that lead outside it, by ``..`` or as absolute paths, are refused unless
    ``allow_outside_root``); an empty label (``a.png,``) means unlabeled, a row without the
    label field is an error; split is ``train``, ``val`` (or ``valid``/``validation``) or
    ``test``.
``sklearn:digits``
    The embedded default: scikit-learn's bundled digits, written once as PNGs under the cache.
``torchvision:NAME``
    A dataset class from ``torchvision.datasets`` (``torchvision:CIFAR10``), read from ``root``;
    fetched only when ``download=True``. Every split the class offers becomes the item split.

Hidden files and folders (starting with ``.``) are ignored; every other file is a candidate, and
one that does not decode is recorded as failed with its reason by the extraction engine.

Scanning a folder never stops on one entry: a broken symlink, a symlink loop (a file link that
points at itself, or a folder link back to a folder above it: visited folders are tracked by
device and inode), a folder that cannot be listed, a file that cannot be read or is not a
regular file (a FIFO would block the decoder forever) becomes an :class:`Item` whose ``error``
says why; the extraction records it as failed. Names that are not valid UTF-8 stay the
``surrogateescape`` strings Python gives for them, so they round-trip exactly.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import inspect
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from featx.errors import FeatxError
from featx.items import SPLIT_ALIASES, Item, Source
from featx.modalities import (
    Modality,
    SourceKind,
    SourceRequest,
    open_source,
    register_modality,
    register_source_kind,
)
from featx.options import DEFAULT_BACKBONE

log = logging.getLogger(__name__)


class _FileReader:
    def __call__(self, item: Item):
        from featx.images import load_rgb

        return load_rgb(item.path)


def file_reader() -> Any:
    """The picklable reader of image files by their path (for sources built in code)."""
    return _FileReader()


class _DatasetReader:
    def __init__(self, datasets: dict[str, Any]):
        self.datasets = datasets

    def __call__(self, item: Item):
        from featx.images import ImageDecodeError, to_rgb

        split, _, index = item.key.rpartition("/")
        try:
            img = self.datasets[split][int(index)][0]
        except Exception as exc:  # a dataset's own decode failure
            raise ImageDecodeError(f"dataset could not load item: {exc}") from None
        if not hasattr(img, "mode"):
            from PIL import Image

            img = Image.fromarray(img)
        return to_rgb(img)


def file_sha256(path: str, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _os_reason(path: str, exc: OSError) -> str:
    """A short reason for an entry the scan cannot read."""
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


def _file_item(path: str, key: str, label: int, split: str, content_hash: bool) -> Item:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return Item(key=key, label=label, split=split, path=path, error="not a regular file")
        sha = file_sha256(path) if content_hash else ""
    except OSError as exc:
        return Item(key=key, label=label, split=split, path=path, error=_os_reason(path, exc))
    return Item(
        key=key,
        label=label,
        split=split,
        path=path,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        sha256=sha,
    )


def _ancestors(root: str) -> frozenset[tuple[int, int]]:
    """(device, inode) of ``root`` and of every folder above its real path, up to ``/``."""
    out = set()
    for p in (Path(os.path.realpath(root)), *Path(os.path.realpath(root)).parents):
        with contextlib.suppress(OSError):
            out.add(_ino(os.stat(p)))
    return frozenset(out)


def _visible_files(root: str) -> tuple[list[str], dict[str, str]]:
    """All non-hidden files below root (links followed), as sorted paths relative to root with
    '/', and the entries the walk could not enter, with the reason (a folder link back to a
    folder above it, a folder that cannot be listed)."""
    files: list[str] = []
    errors: dict[str, str] = {}
    try:
        os.stat(root)
    except OSError as exc:
        return [], {"": _os_reason(root, exc)}
    stack: list[tuple[str, frozenset[tuple[int, int]]]] = [("", _ancestors(root))]
    while stack:
        rel, above = stack.pop()
        folder = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as exc:
            errors[rel] = f"cannot list folder: {_os_reason(folder, exc)}"
            continue
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                is_dir = e.is_dir()  # follows links; False for a broken one
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(r)
                continue
            try:
                key = _ino(e.stat())
            except OSError as exc:
                errors[r] = _os_reason(e.path, exc)
                continue
            if key in above:
                errors[r] = "symlink loop (a folder link back to a folder above it); skipped"
                continue
            stack.append((r, above | {key}))
    return sorted(files), errors


def _ino(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _entry_is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


def _scan_folder(root: Path, content_hash: bool) -> Source:
    try:
        with os.scandir(root) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise FeatxError(
            f"cannot list source folder {root}: {_os_reason(str(root), exc)}"
        ) from None
    subdirs = [e.name for e in entries if _entry_is_dir(e)]
    top_files = [e.name for e in entries if not _entry_is_dir(e)]
    from featx.images import is_image_name

    top_images = [f for f in top_files if is_image_name(f)]
    walked = {d: _visible_files(str(root / d)) for d in subdirs}
    class_dirs = [d for d in subdirs if walked[d][0] or walked[d][1]]
    uri = str(root.resolve())
    if class_dirs and top_images:
        raise FeatxError(
            f"{root} mixes images at the top level with class subfolders; move the loose images "
            "into a class folder (ImageFolder layout) or into a folder of their own"
        )
    items: list[Item] = []
    if class_dirs:
        for label, cls in enumerate(class_dirs):
            files, errors = walked[cls]
            for rel in files:
                key = f"{cls}/{rel}"
                items.append(_file_item(str(root / key), key, label, "", content_hash))
            for rel, reason in errors.items():
                key = f"{cls}/{rel}" if rel else cls
                items.append(Item(key=key, label=label, path=str(root / key), error=reason))
        kind, classes = "imagefolder", tuple(class_dirs)
    else:
        files, errors = _visible_files(str(root))
        for rel in files:
            items.append(_file_item(str(root / rel), rel, -1, "", content_hash))
        for rel, reason in errors.items():
            items.append(Item(key=rel or ".", path=str(root / rel), error=reason))
        kind, classes = "folder", ()
    if not items:
        raise FeatxError(f"source folder {root} has no files; point featx at a folder of images")
    items.sort(key=lambda it: it.key)
    return Source(
        kind=kind,
        uri=uri,
        name=root.resolve().name,
        classes=classes,
        items=items,
        read=_FileReader(),
    )


def _scan_csv(path: Path, content_hash: bool, allow_outside_root: bool = False) -> Source:
    base = path.resolve().parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            classes, raw = _parse_manifest(f, path)
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatxError(f"cannot read CSV {path}: {exc}") from None
    index = {c: i for i, c in enumerate(classes)}
    items, seen = [], {}
    for lineno, p, lab, split in raw:
        full = Path(os.path.normpath(os.path.join(base, p)))  # an absolute p replaces base
        rel = os.path.relpath(full, base)
        inside = rel != os.pardir and not rel.startswith(os.pardir + os.sep)
        if not inside and not allow_outside_root:
            raise FeatxError(_outside_message(path, lineno, p, base))
        key = rel.replace(os.sep, "/") if inside else str(full)
        if key in seen:
            raise FeatxError(
                f"CSV {path} line {lineno}: {p} is listed twice (first on line {seen[key]})"
            )
        seen[key] = lineno
        if not full.is_file():
            raise FeatxError(
                f"CSV {path} line {lineno}: file {p} not found (paths are relative to the CSV)"
            )
        items.append(_file_item(str(full), key, index.get(lab, -1), split, content_hash))
    items.sort(key=lambda it: it.key)
    return Source(
        kind="csv",
        uri=str(path.resolve()),
        name=path.stem,
        classes=classes,
        items=items,
        read=_FileReader(),
    )


def _outside_message(path: Any, lineno: int, p: str, base: Any) -> str:
    return (
        f"CSV {path} line {lineno}: {p} is outside the manifest's folder {base}; "
        "list files below that folder, or pass --allow-outside-root if you trust it"
    )


def _parse_manifest(f: Any, path: Any) -> tuple[tuple[str, ...], list[tuple[int, str, str, str]]]:
    """A manifest's class names and rows (line number, path, label, split), validated."""
    try:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        rows, lines = [], []
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise FeatxError(f"cannot read CSV {path}: {exc}") from None
    missing = [c for c in ("path", "label") if c not in fields]
    if missing:
        raise FeatxError(
            f"CSV {path} lacks the column(s) {', '.join(missing)}; "
            "it needs a header line 'path,label[,split]'"
        )
    raw = []
    for lineno, row in zip(lines, rows, strict=True):
        if None in row or None in row.values():  # fewer or more fields than the header
            have = sum(1 for k, v in row.items() if k is not None and v is not None)
            have += len(row.get(None) or [])
            raise FeatxError(
                f"CSV {path} line {lineno}: {have} field(s) but the header has {len(fields)}; "
                "give every column (an empty label, as in 'a.png,', marks an unlabeled image)"
            )
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        p = row["path"]
        if not p:
            raise FeatxError(f"CSV {path} line {lineno}: empty path")
        split = row.get("split", "").lower()
        if split not in SPLIT_ALIASES:
            raise FeatxError(
                f"CSV {path} line {lineno}: unknown split {split!r}; use train, val or test"
            )
        raw.append((lineno, p, row["label"], SPLIT_ALIASES[split]))
    if not raw:
        raise FeatxError(f"CSV {path} lists no images; add rows 'path,label[,split]'")
    classes = tuple(sorted({lab for _, _, lab, _ in raw if lab}))
    return classes, raw


# ---------------------------------------------------------------------------------------------
# CSV manifests behind a URI (s3://, gs://, file://, ...): what every node of a cluster can read

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(spec: str) -> bool:
    """True for ``scheme://...`` (a pyarrow filesystem URI), False for a local path."""
    return bool(_URI.match(str(spec)))


def _filesystem(uri: str) -> tuple[Any, str]:
    try:
        from pyarrow import fs
    except ImportError:  # pragma: no cover - pyarrow comes with featx[ray]
        raise FeatxError(f"{uri}: reading URIs needs pyarrow: pip install pyarrow") from None
    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
        raise FeatxError(f"cannot open {uri}: {str(exc).splitlines()[0]}") from None


def _uri_root(uri: str) -> str:
    """``scheme://netloc`` of a URI (what a path on its filesystem is relative to)."""
    scheme, rest = uri.split("://", 1)
    if scheme.lower() == "file":
        return "file://"
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _join_uri(root: str, fs_path: str) -> str:
    """The URI of a filesystem path ``fs_path`` on the filesystem of ``root``."""
    if root == "file://":
        return "file://" + fs_path
    return root + "/" + fs_path.split("/", 1)[1] if "/" in fs_path else root


def _scan_csv_uri(uri: str, content_hash: bool, allow_outside_root: bool = False) -> Source:
    import io
    import posixpath

    from pyarrow import fs as pafs

    filesystem, csv_path = _filesystem(uri)
    try:
        with filesystem.open_input_stream(csv_path) as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatxError(f"cannot read CSV {uri}: {str(exc).splitlines()[0]}") from None
    classes, raw = _parse_manifest(io.StringIO(text, newline=""), uri)
    index = {c: i for i, c in enumerate(classes)}
    root = _uri_root(uri)
    base = posixpath.dirname(csv_path)
    rows, seen = [], {}
    for lineno, p, lab, split in raw:
        if is_uri(p):
            raise FeatxError(
                f"CSV {uri} line {lineno}: {p}: give paths relative to the CSV (or absolute on "
                "the same filesystem), not URIs"
            )
        full = posixpath.normpath(p if p.startswith("/") else posixpath.join(base, p))
        inside = full.startswith(base.rstrip("/") + "/")
        if not inside and not allow_outside_root:
            raise FeatxError(_outside_message(uri, lineno, p, base))
        key = p if p.startswith("/") else posixpath.relpath(full, base)
        if key in seen:
            raise FeatxError(
                f"CSV {uri} line {lineno}: {p} is listed twice (first on line {seen[key]})"
            )
        seen[key] = lineno
        rows.append((lineno, p, full, key, index.get(lab, -1), split))
    try:
        infos = filesystem.get_file_info([full for _, _, full, *_ in rows])
    except OSError as exc:
        raise FeatxError(f"cannot list the files of {uri}: {str(exc).splitlines()[0]}") from None
    items = []
    for (lineno, p, full, key, label, split), info in zip(rows, infos, strict=True):
        if info.type != pafs.FileType.File:
            raise FeatxError(
                f"CSV {uri} line {lineno}: file {p} not found (paths are relative to the CSV)"
            )
        sha = ""
        if content_hash:
            h = hashlib.sha256()
            with filesystem.open_input_stream(full) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            sha = h.hexdigest()
        items.append(
            Item(
                key=key,
                label=label,
                split=split,
                path=_join_uri(root, full),
                size=int(info.size or 0),
                mtime_ns=int(info.mtime_ns or 0),
                sha256=sha,
            )
        )
    items.sort(key=lambda it: it.key)
    name = posixpath.splitext(posixpath.basename(csv_path))[0]
    return Source(kind="csv", uri=uri, name=name, classes=classes, items=items, read=_UriReader())


class _UriReader:
    """Reads items whose path is a URI through pyarrow's filesystems (cached per process)."""

    def __init__(self) -> None:
        self._fs: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_fs": {}}

    def __call__(self, item: Item):
        from featx.images import decode_rgb, load_rgb

        path = item.path or ""
        if not is_uri(path):
            return load_rgb(path)
        root = _uri_root(path)
        if root not in self._fs:
            self._fs[root] = _filesystem(path)[0]
        filesystem = self._fs[root]
        fs_path = path[len("file://") :] if root == "file://" else _filesystem_path(path)
        with filesystem.open_input_file(fs_path) as f:
            return decode_rgb(f.read())


def _filesystem_path(uri: str) -> str:
    """``bucket/key`` for ``s3://bucket/key`` (pyarrow's path form for object stores)."""
    return uri.split("://", 1)[1]


def _tv_splits(cls: type) -> list[tuple[str, dict[str, Any]]]:
    params = inspect.signature(cls.__init__).parameters
    if "train" in params:
        return [("train", {"train": True}), ("test", {"train": False})]
    if "split" in params:
        return [(s, {"split": s}) for s in ("train", "val", "test")]
    return [("", {})]


def _scan_torchvision(name: str, root: str | None, download: bool) -> Source:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if not isinstance(cls, type):
        import difflib

        names = [n for n in dir(tvd) if isinstance(getattr(tvd, n), type) and n[0].isupper()]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise FeatxError(f"torchvision has no dataset {name!r}{hint}")
    params = inspect.signature(cls.__init__).parameters
    if not root:
        from featx.settings import data_dir

        root = str(data_dir() / name)
    datasets: dict[str, Any] = {}
    errors = []
    for split, kwargs in _tv_splits(cls):
        if "root" in params:
            kwargs["root"] = root
        if "download" in params:
            kwargs["download"] = download
        try:
            datasets[split] = cls(**kwargs)
        except ValueError as exc:  # split not offered by this dataset
            log.debug("skipping split %s of %s: %s", split, name, exc)
        except (RuntimeError, OSError) as exc:
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if not datasets:
        why = errors[0] if errors else "no split could be loaded"
        how = (
            "check --root"
            if download
            else "pass --download (needs a network) or a --root that holds it"
        )
        raise FeatxError(f"torchvision:{name} is not available under {root} ({why}); {how}")
    first = next(iter(datasets.values()))
    classes = tuple(str(c) for c in getattr(first, "classes", ()) or ())
    items = []
    for split, ds in datasets.items():
        targets = _targets(ds)
        for i in range(len(ds)):
            label = int(targets[i]) if targets is not None else -1
            items.append(
                Item(key=f"{split}/{i:07d}" if split else f"{i:07d}", label=label, split=split)
            )
    if not items:
        raise FeatxError(f"torchvision:{name} under {root} is empty")
    if not classes and any(it.label >= 0 for it in items):
        classes = tuple(str(c) for c in range(max(it.label for it in items) + 1))
    items.sort(key=lambda it: it.key)
    uri = (
        f"torchvision:{name}@{os.path.abspath(root)}" if "root" in params else f"torchvision:{name}"
    )
    return Source(
        kind="torchvision",
        uri=uri,
        name=name.lower(),
        classes=classes,
        items=items,
        dataset=datasets,
        read=_DatasetReader(datasets),
    )


def _targets(ds: Any):
    for attr in ("targets", "labels", "_labels", "y"):
        t = getattr(ds, attr, None)
        if t is not None and len(t) == len(ds):
            return [int(v) for v in t]
    return None


# ---------------------------------------------------------------------------------------------
# the image source kinds and the image modality


def _open_builtin(spec: str, req: SourceRequest) -> Source:
    from featx.datasets import materialize

    src = _scan_folder(materialize(spec), req.content_hash)
    src.name, src.uri = spec.split(":", 1)[1], spec
    return src


def _open_uri(spec: str, req: SourceRequest) -> Source:
    if not spec.split("?", 1)[0].lower().endswith(".csv"):
        raise FeatxError(
            f"source {spec}: a URI source must be a CSV manifest (path,label[,split]) ending "
            "in .csv"
        )
    return _scan_csv_uri(spec, req.content_hash, req.allow_outside_root)


def _open_path(spec: str, req: SourceRequest) -> Source:
    path = Path(spec)
    if not path.exists():
        raise FeatxError(f"source {spec} does not exist; give a folder, a .csv or torchvision:NAME")
    if path.is_dir():
        return _scan_folder(path, req.content_hash)
    if path.suffix.lower() == ".csv":
        return _scan_csv(path, req.content_hash, req.allow_outside_root)
    raise FeatxError(f"source {spec} is a file but not a .csv manifest; give a folder or a .csv")


register_source_kind(
    SourceKind("sklearn", claims=lambda s, req: s.startswith("sklearn:"), open=_open_builtin)
)
register_source_kind(
    SourceKind(
        "torchvision",
        claims=lambda s, req: s.startswith("torchvision:"),
        open=lambda s, req: _scan_torchvision(s.split(":", 1)[1], req.root, req.download),
    )
)
register_source_kind(SourceKind("uri", claims=lambda s, req: is_uri(s), open=_open_uri))
register_source_kind(SourceKind("path", claims=lambda s, req: True, open=_open_path, fallback=True))
register_modality(
    Modality(
        name="image",
        default_backbone=DEFAULT_BACKBONE,
        backbone_noun="an image backbone",
        source_noun="an image source",
        suggest="see 'featx backbones'",
        versions=("torchvision", "timm"),
        file_lists=True,
        unit="images",
        key_column="path",
    )
)

__all__ = ["SPLIT_ALIASES", "Item", "Source", "file_reader", "is_uri", "open_source"]
