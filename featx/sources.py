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

import gc
import hashlib
import inspect
import io
import logging
import os
import re
from pathlib import Path
from stat import S_ISREG
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
    from featx.walk import open_regular

    h = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _os_reason(path: str, exc: OSError) -> str:
    """A short reason for an entry the scan cannot read (see :func:`featx.walk.os_reason`)."""
    from featx.walk import os_reason

    return os_reason(path, exc)


def _entry_item(e: Any, key: str, label: int, split: str, content_hash: bool) -> Item:
    """An :class:`Item` from a :class:`featx.walk.Entry`: a failure when the walk could not
    read it, else its size and time (and content hash)."""
    if e.error:
        return Item(key=key, label=label, split=split, path=e.path, error=e.error)
    sha = ""
    if content_hash:
        try:
            sha = file_sha256(e.path)
        except OSError as exc:
            return Item(
                key=key, label=label, split=split, path=e.path, error=_os_reason(e.path, exc)
            )
    return Item(
        key=key,
        label=label,
        split=split,
        path=e.path,
        size=e.size,
        mtime_ns=e.mtime_ns,
        sha256=sha,
    )


def _visible_files(root: str) -> tuple[list[str], dict[str, str]]:
    """All non-hidden files below root as sorted '/'-paths, and the entries that cannot be read
    with their reason (see :func:`featx.walk.walk`, which every folder source uses)."""
    from featx.walk import walk

    files, errors = [], {}
    for e in walk(root):
        if e.error:
            errors[e.rel if e.rel != "." else ""] = e.error
        else:
            files.append(e.rel)
    return files, errors


def _scan_folder(root: Path, content_hash: bool) -> Source:
    from featx.images import is_image_name
    from featx.walk import scan

    try:
        tree = scan(root)
    except OSError as exc:
        raise FeatxError(
            f"cannot list source folder {root}: {_os_reason(str(root), exc)}"
        ) from None
    top_images = [f for f in tree.top_files if is_image_name(f)]
    uri = str(root.resolve())
    if tree.classes and top_images:
        raise FeatxError(
            f"{root} mixes images at the top level with class subfolders; move the loose images "
            "into a class folder (ImageFolder layout) or into a folder of their own"
        )
    index = {c: i for i, c in enumerate(tree.classes)}
    items = [
        _entry_item(
            e, e.rel, index.get(e.rel.split("/")[0], -1) if "/" in e.rel else -1, "", content_hash
        )
        for e in tree.entries
    ]
    kind = "imagefolder" if tree.classes else "folder"
    if not items:
        raise FeatxError(f"source folder {root} has no files; point featx at a folder of images")
    items.sort(key=lambda it: it.key)
    return Source(
        kind=kind,
        uri=uri,
        name=root.resolve().name,
        classes=tree.classes,
        items=items,
        read=_FileReader(),
    )


def _plain_relative(p: str) -> bool:
    """Whether manifest path ``p`` is already its own key: relative, '/'-separated, without
    ``.``/``..`` components, empty components or a trailing '/'. Then ``base/p`` needs no
    normalization and ``p`` is the relative path, so the scan does string joins instead of
    ``normpath``/``relpath``/``pathlib`` per row (88 % of a 1M-row no-op rerun, #21)."""
    return (
        os.sep == "/"
        and not p.startswith("/")
        and not p.endswith("/")
        and "//" not in p
        and "/." not in "/" + p  # also refuses hidden names ("a/.x"): they take the slow path
    )


def _all_plain_relative(paths: list[str]) -> bool:
    """:func:`_plain_relative` of every path, by substring searches in the NUL-joined list
    (NUL cannot be in a path): a leading or trailing '/', '//', or a component starting
    with '.'."""
    if os.sep != "/" or not paths:
        return os.sep == "/"
    text = "\x00" + "\x00".join(paths) + "\x00"
    return not any(bad in text for bad in ("\x00/", "/\x00", "//", "/.", "\x00."))


def _stat_all(paths: list[str]) -> list[os.stat_result | None]:
    """``os.stat`` of every path (None where it fails), on two threads for long lists: the
    system call releases the GIL, so the kernel's path lookups overlap the other thread's
    Python work."""

    def stat_chunk(chunk: list[str]) -> list[os.stat_result | None]:
        out: list[os.stat_result | None] = []
        for p in chunk:
            try:
                out.append(os.stat(p))
            except OSError:
                out.append(None)
        return out

    step = 1 << 16
    if len(paths) <= step:
        return stat_chunk(paths)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="featx-stat") as pool:
        parts = pool.map(stat_chunk, [paths[a : a + step] for a in range(0, len(paths), step)])
        return [st for part in parts for st in part]


def _scan_csv(path: Path, content_hash: bool, allow_outside_root: bool = False) -> Source:
    base = path.resolve().parent
    from featx.walk import open_regular

    try:
        with (
            open_regular(path) as fb,
            io.TextIOWrapper(fb, encoding="utf-8-sig", newline="") as f,
        ):
            classes, raw = _parse_manifest(f, path)
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatxError(f"cannot read CSV {path}: {exc}") from None
    index = {c: i for i, c in enumerate(classes)}
    base_s = str(base)
    prefix = base_s if base_s.endswith("/") else base_s + "/"
    paths = [r[1] for r in raw]
    if _all_plain_relative(paths):  # the common case: string joins only
        keys, fulls = paths, [prefix + p for p in paths]
    else:
        keys, fulls = [], []
        for lineno, p, _, _ in raw:
            if _plain_relative(p):
                full, key = prefix + p, p
            else:
                full = os.path.normpath(os.path.join(base_s, p))  # an absolute p replaces base
                rel = os.path.relpath(full, base_s)
                inside = rel != os.pardir and not rel.startswith(os.pardir + os.sep)
                if not inside and not allow_outside_root:
                    raise FeatxError(_outside_message(path, lineno, p, base))
                key = rel.replace(os.sep, "/") if inside else full
            keys.append(key)
            fulls.append(full)
    if len(set(keys)) != len(keys):
        seen: dict[str, int] = {}
        for (lineno, p, _, _), key in zip(raw, keys, strict=True):
            first = seen.setdefault(key, lineno)
            if first != lineno:
                raise FeatxError(
                    f"CSV {path} line {lineno}: {p} is listed twice (first on line {first})"
                )
    items = []
    gc_was = gc.isenabled()
    gc.disable()  # a million Items: no cyclic collections while they are made (none is freed)
    try:
        items = _csv_items(raw, keys, fulls, index, content_hash, path)
    finally:
        if gc_was:
            gc.enable()
    items.sort(key=_item_key)
    return Source(
        kind="csv",
        uri=str(path.resolve()),
        name=path.stem,
        classes=classes,
        items=items,
        read=_FileReader(),
    )


def _csv_items(
    raw: list[tuple[int, str, str, str]],
    keys: list[str],
    fulls: list[str],
    index: dict[str, int],
    content_hash: bool,
    path: Path,
) -> list[Item]:
    """The manifest's items: one ``stat`` each; a regular file becomes its Item at once,
    anything else is classified (and its reason worded) by :func:`featx.walk.entry`."""
    from featx.walk import entry

    items = []
    for (lineno, p, lab, split), key, full, st in zip(
        raw, keys, fulls, _stat_all(fulls), strict=True
    ):
        if st is not None and S_ISREG(st.st_mode) and not content_hash:  # the common case
            items.append(Item(key, index.get(lab, -1), split, full, st.st_size, st.st_mtime_ns))
            continue
        try:  # anything else is classified (and its reason worded) by featx.walk
            e = entry(full, key)
        except FileNotFoundError:
            raise FeatxError(
                f"CSV {path} line {lineno}: file {p} not found (paths are relative to the CSV)"
            ) from None
        items.append(_entry_item(e, key, index.get(lab, -1), split, content_hash))
    return items


def _item_key(it: Item) -> str:
    return it.key


def _outside_message(path: Any, lineno: int, p: str, base: Any) -> str:
    return (
        f"CSV {path} line {lineno}: {p} is outside the manifest's folder {base}; "
        "list files below that folder, or pass --allow-outside-root if you trust it"
    )


def _parse_manifest(f: Any, path: Any) -> tuple[tuple[str, ...], list[tuple[int, str, str, str]]]:
    """A manifest's class names and rows (line number, path, label, split), validated by the
    strict table reader (:mod:`featx.tables`) that text tables share."""
    from featx.tables import field_count_error, read_delimited_columns

    header, lines, columns, bad = read_delimited_columns(f, str(path), what="CSV")
    fields = [c.strip().lower() for c in header]
    missing = [c for c in ("path", "label") if c not in fields]
    if missing:
        raise FeatxError(
            f"CSV {path} lacks the column(s) {', '.join(missing)}; "
            "it needs a header line 'path,label[,split]'"
        )
    # a column named twice: the last one counts (as in the table reader's cells)
    named = {c: i for i, c in enumerate(fields)}
    i_path, i_label, i_split = named["path"], named["label"], named.get("split")
    width = len(header)
    if bad is not None:  # fewer or more fields than the header
        raise FeatxError(
            f"CSV {path} line {bad[0]}: {field_count_error(bad[1], width)}; "
            "give every column (an empty label, as in 'a.png,', marks an unlabeled image)"
        )
    # column by column (a million rows: list comprehensions, and each distinct split once)
    paths = [p.strip() for p in columns[i_path]]
    if not all(paths):
        lineno = lines[paths.index("")]
        raise FeatxError(f"CSV {path} line {lineno}: empty path")
    labels = [v.strip() for v in columns[i_label]]
    if i_split is None:
        splits = [""] * len(lines)
    else:
        cells = columns[i_split]
        canon = {}
        for value in dict.fromkeys(cells):  # each distinct value, in order of first use
            split = value.strip().lower()
            if split not in SPLIT_ALIASES:
                lineno = lines[cells.index(value)]
                raise FeatxError(
                    f"CSV {path} line {lineno}: unknown split {split!r}; use train, val or test"
                )
            canon[value] = SPLIT_ALIASES[split]
        splits = [canon[v] for v in cells]
    raw = list(zip(lines, paths, labels, splits, strict=True))
    if not raw:
        raise FeatxError(f"CSV {path} lists no images; add rows 'path,label[,split]'")
    classes = tuple(sorted(set(labels) - {""}))
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


def _open_torchvision(spec: str, req: SourceRequest) -> Source:
    """``torchvision:NAME``, or ``torchvision:NAME@ROOT`` as a store records it (so a recorded
    source opens again as it was written; ``--root`` wins over the recorded root)."""
    name, _, root = spec.split(":", 1)[1].partition("@")
    return _scan_torchvision(name, req.root or root or None, req.download)


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
        open=lambda s, req: _open_torchvision(s, req),
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
