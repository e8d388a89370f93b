"""Fusion of feature sets by key: two backbones side by side, or layers stored apart.

:func:`fuse` joins feature sets on their keys (the items both hold), checks that they label every
shared item alike, and returns one :class:`~featx.features.FeatureSet` whose columns are the
sets' features side by side, each set a named group (:class:`~featx.features.FeatureGroup`;
a set that has groups itself keeps them as ``label/group``). Heads then treat it like a
multi-layer store: every group standardized on its own, ``--layers`` to choose among them
(:mod:`featx.groups`). ``featx compare A.h5+B.h5`` (and ``fit``, ``predict``, pipelines) fuses the
stores named by ``+`` this way; :func:`featx.train.load_store` reads such a spec.

Items held by some sets only are left out, with one line saying how many and which
(:attr:`Fusion.report`, also logged).

Examples
--------
>>> import numpy as np
>>> from featx.features import FeatureSet
>>> y = np.array([0, 1, 0, 1])
>>> a = FeatureSet(np.ones((4, 2), np.float32), y, ("x", "y"), None, np.array(list("abcd")))
>>> b = FeatureSet(np.ones((3, 3), np.float32), y[:3], ("x", "y"), None, np.array(list("abc")))
>>> f = fuse({"A": a, "B": b})
>>> f.features.dim, [g.name for g in f.features.groups], f.report
(5, ['A', 'B'], "fused A + B on 3 shared keys; 1 key in one store only (A only: 1, first 'd')")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from featx.errors import FeatxError
from featx.features import FeatureGroup, FeatureSet

logger = logging.getLogger(__name__)

#: What separates the stores of a fusion in a store argument (``A.h5+B.h5``).
FUSE_SEP = "+"


@dataclass(frozen=True, eq=False)
class Fusion:
    """The fused feature set and the one-line report of keys held by some sets only."""

    features: FeatureSet
    report: str
    only: dict[str, int]  # set name -> number of its keys missing from another set


def _key_report(names: list[str], keys: list[np.ndarray], common: np.ndarray) -> tuple[str, dict]:
    only: dict[str, int] = {}
    first: dict[str, str] = {}
    for name, k in zip(names, keys, strict=True):
        extra = np.setdiff1d(k, common)
        if len(extra):
            only[name] = int(len(extra))
            first[name] = str(extra[0])
    head = f"fused {' + '.join(names)} on {len(common)} shared keys"
    if not only:
        return head + "; every key in every store", only
    total = sum(only.values())
    parts = ", ".join(f"{n} only: {c}, first {first[n]!r}" for n, c in only.items())
    return f"{head}; {total} key{'s' if total != 1 else ''} in one store only ({parts})", only


def fuse(feature_sets: Mapping[str, FeatureSet]) -> Fusion:
    """Join feature sets on their keys into one set with a group per input set.

    Parameters
    ----------
    feature_sets : mapping of str to FeatureSet
        Names (store labels) to sets; at least two. Names become group names.

    Raises
    ------
    FeatxError
        Fewer than two sets, no shared key, or sets that label a shared item differently.
    """
    from featx.comparison import align

    names = [str(n) for n in feature_sets]
    if len(names) < 2:
        raise FeatxError("fusion needs at least two feature sets (A.h5+B.h5)")
    if len(set(names)) < len(names):
        raise FeatxError(f"fused sets need distinct names; got {', '.join(names)}")
    keys = [np.asarray(fs.keys).astype(str) for fs in feature_sets.values()]
    common = keys[0]
    for k in keys[1:]:
        common = np.intersect1d(common, k)
    if len(common) == 0:
        raise FeatxError(
            f"the stores {', '.join(names)} share no keys, so they cannot be fused; fuse stores "
            "extracted from the same source"
        )
    report, only = _key_report(names, keys, common)
    if only:
        logger.warning("%s", report)
    restricted = {}
    for name, fs, k in zip(names, feature_sets.values(), keys, strict=True):
        if len(k) != len(common):
            pos = np.argsort(k, kind="stable")
            rows = pos[np.searchsorted(k[pos], common)]
            fs = replace(
                fs,
                X=fs.X[rows],
                y=np.asarray(fs.y)[rows],
                split=None if fs.split is None else np.asarray(fs.split)[rows],
                keys=k[rows],
                texts=None if fs.texts is None else np.asarray(fs.texts)[rows],
            )
        restricted[name] = fs
    aligned = align(restricted)  # one class list, labels checked, key order
    blocks, groups, pos = [], [], 0
    texts = None
    metas: list[dict[str, Any]] = []
    for name, fs in aligned.items():
        src = restricted[name]
        if src.texts is not None and texts is None:
            order = np.argsort(np.asarray(src.keys).astype(str), kind="stable")
            texts = np.asarray(src.texts, dtype=object)[order]
        own = src.feature_groups
        for g in own:
            if g.kind != "dense":
                continue
            gname = name if len(own) == 1 else f"{name}/{g.name}"
            groups.append(FeatureGroup(gname, pos + g.start, pos + g.stop, source=name))
        blocks.append(np.asarray(fs.X, dtype=np.float32))
        pos += fs.dim
        metas.append({**dict(fs.meta), "fusion_name": name})
    ref = next(iter(aligned.values()))
    meta: dict[str, Any] = {
        "fused": metas,
        "dim": int(pos),
        "n_items": int(len(common)),
        "groups": [g.name for g in groups],
    }
    modalities = {m.get("modality") or "image" for m in metas}
    if len(modalities) == 1:
        meta["modality"] = modalities.pop()
    fused = FeatureSet(
        X=np.concatenate(blocks, axis=1),
        y=ref.y,
        classes=ref.classes,
        split=ref.split,
        keys=ref.keys,
        meta=meta,
        groups=tuple(groups),
        texts=texts,
    )
    return Fusion(features=fused, report=report, only=only)


def split_spec(spec: str) -> list[str]:
    """The store paths of a fusion spec ``A.h5+B.h5`` (a single path: a list of one)."""
    parts = [p for p in str(spec).split(FUSE_SEP)]
    if len(parts) < 2 or any(not p.strip() for p in parts):
        return [str(spec)]
    return parts
