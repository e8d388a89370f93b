"""The modality and source-kind tables: what kinds of input featx reads and how each is opened.

A *modality* (``image``, ``text``) is what a backbone takes. Its :class:`Modality` record holds
every fact that differs between modalities outside the engine and the backbone family: the
default backbone, which backbone names are its own (without loading anything), the versions and
store attributes a store records, and how ``featx predict`` names rows. Extraction and
prediction ask the record; they hold no per-modality branch.

A *source kind* is one way of naming a source (a folder, a CSV manifest, ``torchvision:NAME``,
a text table ...): a :class:`SourceKind` says whether it claims what the user typed and opens
it into a :class:`~featx.items.Source` that carries its own reader.

The modules that define the built-in modalities and kinds (:mod:`featx.sources`,
:mod:`featx.text.sources`) are imported on the first lookup and register themselves; a plugin
registers its own:

>>> from featx.items import Item, Source
>>> from featx.modalities import SourceKind, open_source, register_source_kind
>>> from featx.modalities import unregister_source_kind
>>> def open_mem(spec, req):
...     return Source("mem", spec, "mem", (), [Item("a")], read=lambda it: it.key)
>>> register_source_kind(SourceKind("mem", claims=lambda s, req: s.startswith("mem:"),
...                                 open=open_mem))
>>> open_source("mem:x").kind
'mem'
>>> unregister_source_kind("mem")

This module imports no source kind, engine or backbone at import time.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.errors import FeatxError
from featx.items import Source

#: The modules that define the built-in modalities and source kinds, imported on first lookup.
BUILTIN_SOURCE_MODULES = ("featx.text.sources", "featx.sources")


@dataclass(frozen=True)
class Modality:
    """What featx needs to know about one modality outside its engine and backbone family.

    Parameters
    ----------
    name : str
        ``Source.modality`` and ``backbone.modality``: ``"image"``, ``"text"``.
    default_backbone : str
        The backbone used when none is named (a constant of :mod:`featx.options`).
    backbone_noun, source_noun : str
        For messages: ``"an image backbone"``, ``"an image source"``.
    suggest : str
        What to use instead, for a backbone of another modality.
    claims_backbone : callable, optional
        ``claims_backbone(name) -> bool``: whether a backbone name is of this modality, decided
        without importing torch or loading a model. The modality without it (``image``) takes
        every name no other modality claims.
    versions : tuple of str
        Modules whose ``__version__`` a store records (``<module>_version``), after featx's
        and torch's.
    store_attrs : callable, optional
        ``store_attrs(source, backbone, rows, kept=None) -> (attrs, per_row, n_truncated)``:
        extra store attributes, per-row values (name -> key -> value) of ``rows`` and the
        store's count of truncated items, computed at commit. ``rows`` are the rows the commit
        writes; ``kept`` (name -> array) holds the stored integer per-row values of the rows it
        keeps, for store-wide counts. Without ``kept``, ``rows`` are every row of the store.
    stored_truncated : callable, optional
        ``stored_truncated(path) -> int``: the truncated count an up-to-date store recorded.
    store_complete : callable, optional
        ``store_complete(path) -> bool``: whether an existing store holds everything the
        modality keeps per row today (a text store written before featx kept the texts does
        not). An incomplete store is committed again on the next run, from its own rows and
        the source: what it lacks is added without running the model.
    remembers_config : bool
        Whether the configuration of a named backbone may be remembered, so an up-to-date
        store is found without building the model (:mod:`featx.backbones.memo`).
    request_fingerprint : callable, optional
        ``request_fingerprint(spec) -> dict``: what else determines the configuration of a
        backbone request (a text encoder: its model folder's files, options and library
        versions), read without loading the model; with it, the configuration is remembered
        under that fingerprint even where ``remembers_config`` is False.
    file_lists : bool
        Whether ``featx predict`` takes a file or a glob pattern as its source.
    key_column : str
        The first column of ``featx predict``'s CSV: ``path`` or ``key``.
    item_columns : tuple of str
        Item attributes ``featx predict`` writes after the key, when any item has one.
    unit : str
        What ``featx extract`` counts per second: ``images``, ``texts``.
    """

    name: str
    default_backbone: str
    backbone_noun: str
    source_noun: str
    suggest: str
    claims_backbone: Callable[[str], bool] | None = None
    versions: tuple[str, ...] = ()
    store_attrs: Callable[..., tuple[dict, dict | None, int]] | None = None
    stored_truncated: Callable[[Path], int] | None = None
    store_complete: Callable[[Path], bool] | None = None
    remembers_config: bool = True
    request_fingerprint: Callable[[Any], dict] | None = None
    file_lists: bool = False
    key_column: str = "key"
    item_columns: tuple[str, ...] = ()
    unit: str = "items"


@dataclass(frozen=True)
class SourceRequest:
    """How to open a source: the arguments of :func:`open_source`, as a kind gets them."""

    root: str | None = None
    download: bool = False
    content_hash: bool = False
    text: Any = None  # a featx.options.TextFormat
    modality: str | None = None  # of the backbone, when known
    allow_outside_root: bool = False


@dataclass(frozen=True)
class SourceKind:
    """One way of naming a source.

    Parameters
    ----------
    name : str
    claims : callable
        ``claims(spec, request) -> bool``: whether this kind opens ``spec`` (a string).
    open : callable
        ``open(spec, request) -> Source`` (with its reader); FeatxError for bad input.
    fallback : bool
        Asked after every other kind (the built-in local-path kind claims any path).
    """

    name: str
    claims: Callable[[str, SourceRequest], bool]
    open: Callable[[str, SourceRequest], Source]
    fallback: bool = False


_MODALITIES: dict[str, Modality] = {}
_KINDS: dict[str, SourceKind] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for mod in BUILTIN_SOURCE_MODULES:
            importlib.import_module(mod)


def register_modality(modality: Modality) -> None:
    """Add a modality; ValueError when its name is taken."""
    if modality.name in _MODALITIES:
        raise ValueError(f"modality {modality.name!r} is already registered")
    _MODALITIES[modality.name] = modality


def register_source_kind(kind: SourceKind) -> None:
    """Add a source kind; ValueError when its name is taken."""
    if kind.name in _KINDS:
        raise ValueError(f"source kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind


def unregister_source_kind(name: str) -> None:
    _KINDS.pop(name, None)


def modalities() -> list[Modality]:
    _load_builtins()
    return list(_MODALITIES.values())


def get_modality(name: str) -> Modality:
    """The modality ``name``; a FeatxError naming the valid ones otherwise."""
    _load_builtins()
    found = _MODALITIES.get(name)
    if found is None:
        raise FeatxError(
            f"unknown modality {name!r}; valid modalities: {', '.join(sorted(_MODALITIES))}"
        )
    return found


def modality_of(obj: Any) -> str:
    """The modality of a backbone or source (``"image"`` for one that does not say)."""
    return getattr(obj, "modality", "image")


def modality_of_name(name: str) -> str:
    """The modality of a backbone name, without loading anything: the first modality that
    claims it, else the one that claims no names (images). An unknown name is an error later,
    when it is loaded."""
    table = modalities()
    for m in table:
        if m.claims_backbone is not None and m.claims_backbone(name):
            return m.name
    return next(m.name for m in table if m.claims_backbone is None)


def default_backbone(modality: str) -> str:
    return get_modality(modality).default_backbone


def check_modality(src: Source, name: str, modality: str) -> None:
    """A FeatxError when a backbone of ``modality`` cannot read ``src``."""
    if modality == src.modality:
        return
    have, want = get_modality(modality), get_modality(src.modality)
    raise FeatxError(
        f"{src.uri} is {want.source_noun} but {name} is {have.backbone_noun}; use "
        f"{want.backbone_noun} ({want.suggest})"
    )


def source_kinds() -> list[SourceKind]:
    """The kinds in the order they are asked: registration order, fallbacks last."""
    _load_builtins()
    kinds = list(_KINDS.values())
    return [k for k in kinds if not k.fallback] + [k for k in kinds if k.fallback]


def open_source(
    spec: str | os.PathLike,
    *,
    root: str | None = None,
    download: bool = False,
    content_hash: bool = False,
    text: Any = None,
    modality: str | None = None,
    allow_outside_root: bool = False,
) -> Source:
    """Scan a source and return its items, sorted by key (the first kind that claims it).

    Parameters
    ----------
    spec : str or path-like
        A folder, a ``.csv`` manifest, ``sklearn:digits``, ``torchvision:NAME``, a text table
        (``.csv`` without a ``path`` column, ``.tsv``, ``.jsonl``), a folder of ``.txt`` files,
        ``text:PATH``, or what a plugin's kind claims.
    root : str, optional
        Where a torchvision dataset lives (default ``<data folder>/NAME``: ``$FEATX_DATA_DIR``,
        the project's ``data_dir`` setting, or the user data folder; see :mod:`featx.settings`).
    download : bool
        Let a torchvision dataset download itself (needs a network).
    content_hash : bool
        Also fingerprint every file by the SHA-256 of its bytes (slower; catches edits that keep
        size and modification time).
    text : featx.options.TextFormat, optional
        Columns and encoding of a text table.
    modality : {"image", "text"}, optional
        What the backbone takes, when known: with ``"image"`` a ``.csv`` is always an image
        manifest, with ``"text"`` always a text table.
    allow_outside_root : bool
        Let a CSV manifest name files outside its own folder (``../x.png``, absolute paths).
        Off by default: a manifest from someone else could otherwise read any file.

    Examples
    --------
    >>> src = open_source("photos/")  # doctest: +SKIP
    >>> src.kind, len(src.items), src.classes[:2]  # doctest: +SKIP
    ('imagefolder', 1797, ('0', '1'))
    """
    s = str(spec)
    req = SourceRequest(
        root=root,
        download=download,
        content_hash=content_hash,
        text=text,
        modality=modality,
        allow_outside_root=allow_outside_root,
    )
    for kind in source_kinds():
        if kind.claims(s, req):
            return kind.open(s, req)
    raise FeatxError(
        f"source {s}: no source kind reads it; give a folder, a .csv or torchvision:NAME"
    )
