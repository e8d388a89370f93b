"""The cleaning manifest: which items to leave out and which to relabel, by key.

``featx diagnose --report DIR`` writes ``DIR/manifest.csv``; ``featx fit``, ``featx compare`` and
``featx extract`` take it as ``--manifest FILE`` so that a cleaned run is one command (extract:
the excluded items are not embedded and the new labels are stored). The format
is a CSV with a header::

    key,action,label,reason
    train/cat/img_0042.jpg,exclude,,leak
    train/dog/img_0007.jpg,relabel,cat,label (p(given) 0.031)

``action`` is ``exclude`` or ``relabel`` (``label`` is then the new class, one the store already
has); other columns are ignored, so the file can be edited in a spreadsheet (delete a row to keep
an item as it is).

Examples
--------
>>> import numpy as np
>>> from featx.features import FeatureSet
>>> fs = FeatureSet(X=np.eye(3, dtype=np.float32), y=np.array([0, 1, 1]), classes=("a", "b"),
...                 split=None, keys=np.array(["x", "y", "z"]))
>>> m = Manifest(exclude=frozenset({"x"}), relabel={"z": "a"})
>>> clean = apply_manifest(fs, m)
>>> clean.keys.tolist(), clean.y.tolist()
(['y', 'z'], [1, 0])
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.csvsafe import FORMULA_START
from featx.errors import FeatxError
from featx.features import FeatureSet

log = logging.getLogger(__name__)

ACTIONS = ("exclude", "relabel")
COLUMNS = ("key", "action", "label", "reason")

__all__ = [
    "ACTIONS",
    "COLUMNS",
    "Manifest",
    "apply_manifest",
    "apply_manifest_to_source",
    "read_manifest",
    "take_rows",
]


@dataclass(frozen=True)
class Manifest:
    """Keys to leave out and keys to relabel (key -> class name)."""

    exclude: frozenset[str] = frozenset()
    relabel: Mapping[str, str] = field(default_factory=dict)
    path: str = ""

    def __len__(self) -> int:
        return len(self.exclude | set(self.relabel))


def _unquote(cell: str) -> str:
    """Undo :func:`featx.csvsafe.safe_cell`'s leading quote."""
    if cell.startswith("'") and cell[1:].startswith(FORMULA_START):
        return cell[1:]
    return cell


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest CSV (``key,action[,label]``); errors name the line and what to fix."""
    p = Path(path)
    if not p.is_file():
        raise FeatxError(
            f"manifest {p} does not exist; 'featx diagnose STORE --report DIR' writes one"
        )
    exclude: set[str] = set()
    relabel: dict[str, str] = {}
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in reader.fieldnames or []]
            if "key" not in fields or "action" not in fields:
                raise FeatxError(
                    f"manifest {p} needs a header with 'key' and 'action' columns "
                    f"(key,action,label); found: {', '.join(fields) or 'nothing'}"
                )
            reader.fieldnames = fields
            for line, row in enumerate(reader, start=2):
                key = _unquote((row.get("key") or "").strip())
                action = (row.get("action") or "").strip().lower()
                if not key and not action:
                    continue
                if not key:
                    raise FeatxError(f"manifest {p}, line {line}: empty key")
                if action == "exclude":
                    exclude.add(key)
                elif action == "relabel":
                    label = _unquote((row.get("label") or "").strip())
                    if not label:
                        raise FeatxError(
                            f"manifest {p}, line {line}: relabel of {key!r} names no label; "
                            "fill the label column or change the action to exclude"
                        )
                    relabel[key] = label
                else:
                    raise FeatxError(
                        f"manifest {p}, line {line}: unknown action {action!r}; use exclude or "
                        "relabel (delete the row to keep the item as it is)"
                    )
    except UnicodeDecodeError:
        raise FeatxError(f"manifest {p} is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise FeatxError(f"manifest {p} is not a valid CSV: {exc}") from None
    for k in exclude:
        relabel.pop(k, None)
    return Manifest(exclude=frozenset(exclude), relabel=relabel, path=str(p))


def apply_manifest(fs: FeatureSet, manifest: Manifest | str | os.PathLike) -> FeatureSet:
    """``fs`` without the excluded items and with the relabelled ones' new labels.

    Raises
    ------
    FeatxError
        A relabel to a class the store does not have, or a manifest that names none of the
        store's keys (it belongs to another store).
    """
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    if not len(m):
        return fs
    keys = np.asarray(fs.keys).astype(str)
    known = set(keys.tolist())
    named = m.exclude | set(m.relabel)
    matched = named & known
    if not matched:
        raise FeatxError(
            f"manifest {m.path or ''} names {len(named)} key(s), none of them in this store "
            f"(e.g. {sorted(named)[0]!r}); was it written for another store?"
        )
    if len(matched) < len(named):
        log.warning(
            "manifest: %d of its %d keys are not in the store and were ignored",
            len(named) - len(matched),
            len(named),
        )
    index = {c: i for i, c in enumerate(fs.classes)}
    y = np.array(fs.y, dtype=np.int64, copy=True)
    for key, label in m.relabel.items():
        if key not in known:
            continue
        if label not in index:
            raise FeatxError(
                f"manifest relabels {key!r} to {label!r}, which is not a class of the store "
                f"(classes: {', '.join(fs.classes[:10])}{' ...' if len(fs.classes) > 10 else ''})"
            )
        y[keys == key] = index[label]
    keep = ~np.isin(keys, list(m.exclude)) if m.exclude else np.ones(len(keys), dtype=bool)
    meta = dict(fs.meta)
    meta["manifest"] = {
        "path": m.path,
        "excluded": int((~keep).sum()),
        "relabelled": int(sum(1 for k in m.relabel if k in known)),
    }
    return take_rows(dataclasses.replace(fs, y=y, meta=meta), keep)


def take_rows(fs: FeatureSet, rows: np.ndarray) -> FeatureSet:
    """``fs`` with only ``rows`` (a boolean mask or indices): every row-aligned field follows."""
    texts = getattr(fs, "texts", None)
    extra = {} if texts is None else {"texts": np.asarray(texts)[rows]}
    return dataclasses.replace(
        fs,
        X=fs.X[rows],
        y=np.asarray(fs.y)[rows],
        split=None if fs.split is None else np.asarray(fs.split)[rows],
        keys=np.asarray(fs.keys)[rows],
        **extra,
    )


def apply_manifest_to_source(source: Any, manifest: Manifest | str | os.PathLike) -> Any:
    """A copy of a scanned :class:`featx.sources.Source` without the excluded items and with the
    relabelled items' new labels (``featx extract --manifest``): the store then holds the
    cleaned source, and a later run without the manifest brings the items back."""
    import copy

    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    keys = {it.key for it in source.items}
    named = m.exclude | set(m.relabel)
    if named and not named & keys:
        raise FeatxError(
            f"manifest {m.path} names {len(named)} key(s), none of them in source "
            f"{source.uri} (e.g. {sorted(named)[0]!r}); was it written for another source?"
        )
    index = {c: i for i, c in enumerate(source.classes)}
    items = []
    for it in source.items:
        if it.key in m.exclude:
            continue
        label = m.relabel.get(it.key)
        if label is not None:
            if label not in index:
                raise FeatxError(
                    f"manifest relabels {it.key!r} to {label!r}, which is not a class of "
                    f"{source.uri} (classes: {', '.join(source.classes[:10])})"
                )
            it = dataclasses.replace(it, label=index[label])
        items.append(it)
    out = copy.copy(source)
    out.items = items
    log.info(
        "manifest %s: %d items left out, %d relabelled",
        m.path,
        len(source.items) - len(items),
        sum(1 for k in m.relabel if k in keys),
    )
    return out
