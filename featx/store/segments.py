"""Stores that grow by segments: commits that cost the change, not the store.

A single-file store (schema 1) is rewritten whole by every commit. A *segmented* store (schema 2)
is a small index file at the store's path plus immutable segment files in ``STORE.segments/``:

- a **segment** (``seg-NNNNNN-XXXXXX.h5``, format ``featx-segment``) holds rows exactly as a
  single-file store does (``features``, ``paths``, ``labels`` with its own ``classes``,
  ``split``, ``fingerprint/*``, every ``outputs/<name>`` of a ``--layers`` or cached-activations
  store, a text store's ``text/n_tokens`` and ``text/texts``), sorted by key; it is written to a
  temporary name, fsynced and renamed, so it is complete or absent, and never changed
  afterwards;
- the **index** (the store path; ``layout = "segments"``) lists the segments and their row
  counts, the *tombstones* (``dead/segment``, ``dead/row``: rows removed or replaced since their
  segment was written), the store's ``classes``, the failure records and the provenance
  attributes. It is small and is replaced by an atomic rename, which is the commit.

A commit whose change is small (see :func:`plan_commit`) writes one segment with the new and
changed rows and a new index. Removing a row is a tombstone. A tiered merge policy
(:func:`choose_merges`) keeps the segments few without touching the big ones: the commit's one
new segment also takes the live rows of the segments with many dead rows and of a size tier that
is full (minor compaction), so a row is rewritten about once per tier it climbs. When the rows a
commit would write are a large share of the store, it is a full rewrite into a single file
(schema 1) instead: compaction (also ``featx compact``). A single-file store is upgraded on its
first small commit: its file is hard-linked (copied where links are not possible) into
``STORE.segments/`` as the first segment, without copying its rows.

Kills: a segment without an index naming it, or segments an index no longer names, are removed
by the next writer (under the lock); a temporary file is removed as for a single-file store. So a
``kill -9`` at any step leaves either the old index and its segments, or the new ones.

Readers see the rows of all segments minus the tombstones, sorted by key, exactly as a
single-file store's rows.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featx.errors import StoreError
from featx.store.chunks import StoreMatrix
from featx.store.config import store_groups, store_outputs
from featx.store.layout import (
    _atomic_h5,
    _digest_attrs,
    _h5,
    _int_ds,
    _raw_strings,
    _str_ds,
    _strings,
    _write_attrs,
    _write_failed,
    decode_bytes,
)

log = logging.getLogger(__name__)

#: The index layout attribute of a segmented store.
LAYOUT = "segments"
#: The schema of a segmented store's index (single-file stores stay schema 1).
SEGMENTED_SCHEMA_VERSION = 2
#: The ``format`` attribute of a segment file.
SEGMENT_FORMAT = "featx-segment"
#: The merge policy (tiered, as Lucene's TieredMergePolicy or an LSM tree's size tiers): a
#: segment with more than this share of its rows dead is merged into the commit's new segment
#: (its live rows rewritten: at most 3 rows per dead row, so the cost stays the change's) ...
COMPACT_DEAD_SHARE = 0.25
#: ... segments are grouped in tiers by live rows (tier t: below ``floor * K**(t+1)`` rows,
#: ``K`` = this), and a tier that would hold more than ``K`` segments is merged with every
#: smaller tier into the new segment (which then lands a tier higher): each row is rewritten
#: about once per tier it climbs, so a commit costs its change times a small log factor,
#: amortized, and big segments are left alone until enough others of their size exist ...
SEGMENTS_PER_TIER = 16
#: ... segments smaller than this many feature bytes count as this size (the lowest tier);
#: fewer tiny segments, at the price of rewriting up to ~this much per small commit, amortized
MERGE_FLOOR_BYTES = 16 << 20
#: Tests: "K,FLOOR_ROWS" overrides :data:`SEGMENTS_PER_TIER` and the floor (in rows).
MERGE_TIERS_ENV = "FEATX_MERGE_TIERS"
#: When the rows a commit writes (its change plus the segments it merges) are at least this
#: share of the store's rows, it rewrites the whole store into one file instead (so does
#: ``featx compact``); dead rows that dominate the store end up here too.
FULL_WRITE_SHARE = 0.5
#: Test hook: the name of a step at which to ``os._exit(137)`` (like ``kill -9``), or "".
CRASH_AT_ENV = "FEATX_TEST_CRASH_AT"
#: A part file of at least this many rows becomes a segment as it is (a hard link, no copy)
#: when its rows are in key order and still carry the source's labels, splits and fingerprints;
#: smaller parts are copied into the commit's segment (fewer, larger segments). Tests lower it
#: with the environment variable of the same name.
PART_SEGMENT_MIN_ROWS = 1024
PART_SEGMENT_MIN_ROWS_ENV = "FEATX_PART_SEGMENT_MIN_ROWS"


def _crash_point(step: str) -> None:
    """Die at ``step`` when the test hook asks for it (tests of kill -9 at each step)."""
    if os.environ.get(CRASH_AT_ENV) == step:
        os._exit(137)


def segment_dir(path: str | os.PathLike) -> Path:
    """The folder of a store's segments: ``STORE.segments``."""
    p = Path(path)
    return p.with_name(p.name + ".segments")


def is_segmented(f: Any) -> bool:
    """Whether an open store file is a segmented store's index."""
    return f.attrs.get("layout") == LAYOUT


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


@dataclass
class SegmentedRows:
    """Everything per row of a segmented store, in key order (live rows only)."""

    fields: dict[str, Any]  # the StoreIndex fields
    per_row: dict[str, np.ndarray]  # the integer ones (text/n_tokens), read with the index
    files: list[Path]
    n_rows: np.ndarray
    file_of_row: np.ndarray
    row_in_file: np.ndarray
    dead_segment: np.ndarray
    dead_row: np.ndarray
    dim: int
    dtype: np.dtype
    #: Every per-row dataset the segments carry (the index's ``segments/per_row``): strings
    #: (``text/texts``) are read on demand (``StoreMatrix.column``), not with the index.
    per_row_names: tuple[str, ...] = ()
    #: The segment files, open since their rows were read: the matrix reads from these, so a
    #: compaction that removes them after this read does not take them from under a reader.
    handles: list[Any] = field(default_factory=list)

    @property
    def n_dead(self) -> int:
        return int(len(self.dead_row))

    def matrix(self, store: str) -> StoreMatrix:
        block = 4096
        m = StoreMatrix(
            self.files,
            (len(self.file_of_row), self.dim),
            self.dtype,
            file_of_row=self.file_of_row,
            row_in_file=self.row_in_file,
            block_rows=block,
            store=store,
        )
        m._open.update(enumerate(self.handles))
        self.handles = []
        return m

    def close(self) -> None:
        for h in self.handles:
            with contextlib.suppress(Exception):
                h.close()
        self.handles = []


class SegmentMissing(StoreError):
    """A segment the index names is gone (a reader racing a commit that removed it)."""


def _segment_files(f: Any, path: Path) -> tuple[list[Path], np.ndarray]:
    names = _strings(f["segments/names"])
    folder = segment_dir(path)
    return [folder / str(n) for n in names], f["segments/n_rows"][()].astype(np.int64)


def read_segmented(f: Any, path: str | os.PathLike) -> SegmentedRows:
    """Read the index ``f`` of the segmented store at ``path`` and every segment's rows."""
    h5py = _h5()
    path = Path(path)
    files, n_rows = _segment_files(f, path)
    dead_seg = f["dead/segment"][()].astype(np.int64)
    dead_row = f["dead/row"][()].astype(np.int64)
    classes = tuple(str(c) for c in _strings(f["classes"]))
    class_index = {c: i for i, c in enumerate(classes)}
    dim = int(f.attrs["dim"])
    dtype = np.dtype(str(f.attrs.get("dtype") or "float32"))
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("keys", "size", "mtime_ns", "sha256", "labels", "split", "seg", "row")
    }
    extra: dict[str, list[np.ndarray]] = {}
    per_row_names = (
        [str(n) for n in _strings(f["segments/per_row"])] if "segments/per_row" in f else []
    )
    strings: set[str] = set()
    handles: list[Any] = []
    try:
        for i, seg in enumerate(files):
            try:
                s = h5py.File(seg, "r")
            except FileNotFoundError:
                raise SegmentMissing(
                    f"segment {seg.name} of store {path} is missing; the store is damaged: run "
                    f"the same 'featx extract' again after deleting {path} and {segment_dir(path)}"
                ) from None
            handles.append(s)
            n = int(s["paths"].shape[0])
            if n != int(n_rows[i]):
                raise StoreError(
                    f"segment {seg.name} of store {path} has {n} rows, its index says "
                    f"{int(n_rows[i])}; check it with 'featx verify {path}'"
                )
            live = np.ones(n, dtype=bool)
            live[dead_row[dead_seg == i]] = False
            seg_classes = [str(c) for c in _strings(s["classes"])]
            remap = np.array([class_index.get(c, -1) for c in seg_classes] + [-1], dtype=np.int64)
            labels = s["labels"][()].astype(np.int64)
            g = s["fingerprint"]
            cols["keys"].append(_raw_strings(s["paths"])[live])  # bytes: decoded on use
            cols["size"].append(g["size"][()][live])
            cols["mtime_ns"].append(g["mtime_ns"][()][live])
            cols["sha256"].append(_strings(g["sha256"])[live])
            cols["labels"].append(remap[labels][live])
            cols["split"].append(_strings(s["split"])[live])
            cols["seg"].append(np.full(int(live.sum()), i, dtype=np.int64))
            cols["row"].append(np.flatnonzero(live).astype(np.int64))
            for name in per_row_names:
                if name in s and s[name].dtype.kind in "OS":
                    strings.add(name)  # texts: read on demand, not with the index
                    continue
                vals = s[name][()] if name in s else np.full(n, -1, np.int64)
                extra.setdefault(name, []).append(vals[live])
    except BaseException:
        for h in handles:
            h.close()
        raise

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    keys, order = _keys_in_order(cols["keys"])
    fl = f["failed"]
    fields = {
        "keys": keys[order],
        "size": cat(cols["size"], np.int64)[order],
        "mtime_ns": cat(cols["mtime_ns"], np.int64)[order],
        "sha256": cat(cols["sha256"], object)[order],
        "labels": cat(cols["labels"], np.int64)[order],
        "split": cat(cols["split"], object)[order],
        "classes": classes,
        "failed_keys": _strings(fl["paths"]),
        "failed_reasons": _strings(fl["reasons"]),
        "failed_size": fl["size"][()],
        "failed_mtime_ns": fl["mtime_ns"][()],
        "failed_sha256": _strings(fl["sha256"]),
    }
    per_row = {k: cat(v, np.int64)[order] for k, v in extra.items() if k not in strings}
    return SegmentedRows(
        fields=fields,
        per_row=per_row,
        files=files,
        n_rows=n_rows,
        file_of_row=cat(cols["seg"], np.int64)[order],
        row_in_file=cat(cols["row"], np.int64)[order],
        dead_segment=dead_seg,
        dead_row=dead_row,
        dim=dim,
        dtype=dtype,
        per_row_names=tuple(per_row_names),
        handles=handles,
    )


def _keys_in_order(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The segments' live keys concatenated, and the order that sorts them (each segment is
    sorted already). Kept as the stored bytes (decoded by :class:`StoreIndex` on first use)
    and sorted as bytes when they are ASCII, where byte order is str order; otherwise decoded
    and sorted as str (the order every store file is written in)."""
    if not parts:
        return np.empty(0, dtype=object), np.zeros(0, dtype=np.int64)
    if all(p.dtype.kind == "S" for p in parts):
        keys = np.concatenate(parts)  # the widest segment's width
        if len(parts) == 1:
            return keys, np.arange(len(keys))
        if keys.size and bool((keys.view(np.uint8) < 0x80).all()):
            return keys, np.argsort(keys, kind="stable")
    keys = np.concatenate([p if p.dtype.kind == "O" else decode_bytes(p) for p in parts])
    if len(parts) == 1:
        return keys, np.arange(len(keys))
    return keys, np.argsort(keys, kind="stable")


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def _new_segment_name(folder: Path) -> str:
    used = [p.name for p in folder.glob("seg-*.h5")] if folder.is_dir() else []
    nums = [int(n.split("-")[1]) for n in used if n.split("-")[1].isdigit()]
    return f"seg-{(max(nums) + 1) if nums else 0:06d}-{secrets.token_hex(3)}.h5"


def clean_orphans(path: str | os.PathLike) -> None:
    """Remove what a killed writer left in ``STORE.segments``: temporary files, segments the
    index does not name, and the whole folder when the store is a single file (or absent).

    Call only under the writer lock.
    """
    path = Path(path)
    folder = segment_dir(path)
    if not folder.is_dir():
        return
    keep: set[str] = set()
    if path.exists():
        h5py = _h5()
        try:
            with h5py.File(path, "r") as f:
                if is_segmented(f):
                    keep = {str(n) for n in _strings(f["segments/names"])}
        except OSError:
            return  # not readable: leave everything for a human (verify says what is wrong)
    for p in folder.iterdir():
        if p.name not in keep:
            log.info("removing %s (no longer part of the store)", p)
            with contextlib.suppress(OSError):
                p.unlink()
    if not keep:
        with contextlib.suppress(OSError):
            folder.rmdir()


@dataclass(frozen=True)
class CommitPlan:
    """How a commit is written: ``"full"`` (one file) or ``"segment"`` (a segment + index)."""

    mode: str
    why: str
    write_keys: list[str]  # rows of the change the new segment holds (segment mode)
    dead: list[tuple[int, int]]  # new tombstones (segment, row) in segments that stay
    #: Segments of the store (index in the old index) merged into the new segment ...
    merge: tuple[int, ...] = ()
    #: ... and the old rows (positions in the writer's index) they still hold, kept as stored.
    merged_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: Parts that become segments as they are (the others' rows are copied).
    parts: tuple[Any, ...] = ()


@dataclass(frozen=True)
class MergePlan:
    """What the tiered merge policy (:func:`choose_merges`) decided for one commit."""

    merge: frozenset[int]  # existing segments merged into the commit's new segment
    link: tuple[int, ...]  # candidate parts that become segments as they are
    rows: int  # live rows of the new segment (the change's own, copied parts, merged)


def merge_tiers() -> tuple[int, int | None]:
    """(segments per tier, floor in rows or None for :data:`MERGE_FLOOR_BYTES`)."""
    env = os.environ.get(MERGE_TIERS_ENV)
    if env:
        k, floor = env.split(",")
        return max(2, int(k)), max(1, int(floor))
    return SEGMENTS_PER_TIER, None


def tier_of(rows: int, floor: int, per_tier: int) -> int:
    """The size tier of a segment of ``rows`` live rows: 0 below ``floor * per_tier``, then one
    more per factor ``per_tier``."""
    t, limit = 0, floor * per_tier
    while max(rows, floor) >= limit:
        t, limit = t + 1, limit * per_tier
    return t


def choose_merges(
    live: list[int],
    dead: list[int],
    new_rows: int,
    parts: list[tuple[int, int]] = (),  # type: ignore[assignment]
    *,
    floor: int,
    per_tier: int = SEGMENTS_PER_TIER,
) -> MergePlan:
    """The tiered merge policy: which segments a commit merges into its one new segment.

    Parameters
    ----------
    live, dead : lists of int
        Per segment of the store: live rows and dead rows (after this commit's tombstones).
    new_rows : int
        Rows the commit writes anyway (new, re-extracted, relabelled).
    parts : list of (live, dead)
        Part files that could become segments as they are (no copy).
    floor, per_tier : int
        Rows below which a segment counts as ``floor`` rows, and segments a tier may hold.

    Rules, in order: a segment (or part) with more than :data:`COMPACT_DEAD_SHARE` of its rows
    dead is merged (its live rows are rewritten); a part becomes a segment while its tier has
    room for it and the new segment (``per_tier - 1``), else its rows are copied into the new
    segment; when the new segment lands in a tier that already holds ``per_tier`` segments, the
    segments of that tier and the smaller ones are merged into it, smallest first, each while it
    holds no more rows than those merged so far (a big segment waits for peers of its size), and
    again in the tier where the bigger result lands.

    Examples
    --------
    >>> choose_merges([1000, 5, 5], [0, 0, 0], 5, floor=4, per_tier=2).merge  # 3 small: merge
    frozenset({1, 2})
    >>> sorted(choose_merges([1000, 5], [0, 0], 5, floor=4, per_tier=2).merge)
    []
    """
    n = len(live)
    merge = {i for i in range(n) if dead[i] > COMPACT_DEAD_SHARE * (live[i] + dead[i])}
    tiers = [tier_of(v, floor, per_tier) for v in live]
    count: dict[int, int] = {}
    for i in range(n):
        if i not in merge:
            count[tiers[i]] = count.get(tiers[i], 0) + 1
    link, copied = [], 0
    for j in sorted(range(len(parts)), key=lambda j: -parts[j][0]):
        p_live, p_dead = parts[j]
        t = tier_of(p_live, floor, per_tier)
        if p_dead <= COMPACT_DEAD_SHARE * (p_live + p_dead) and count.get(t, 0) < per_tier - 1:
            link.append(j)
            count[t] = count.get(t, 0) + 1
        else:
            copied += p_live
    rows = new_rows + copied + sum(live[i] for i in merge)
    while rows or merge:
        t = tier_of(rows, floor, per_tier)
        if count.get(t, 0) < per_tier:
            break
        # the tier is full: merge its segments and the smaller tiers', smallest first, each
        # while it is no bigger than the rows merged so far (so a segment is rewritten only
        # with at least as many rows as it holds, and a big one waits for its peers)
        cands = sorted(
            (i for i in range(n) if i not in merge and tiers[i] <= t), key=lambda i: (live[i], i)
        )
        if not cands:  # linked parts fill it: they stay (rare)
            break
        for k, i in enumerate(cands):
            if k and live[i] > rows:
                break
            merge.add(i)
            rows += live[i]
            count[tiers[i]] -= 1
    return MergePlan(frozenset(merge), tuple(sorted(link)), int(rows))


@dataclass
class StoreChange:
    """What a commit changes, relative to the store the writer opened: what an incremental run
    knows without looking at every row, so that a commit costs the change, not the store.

    Attributes
    ----------
    kept : int ndarray
        The old rows (positions in the writer's index, key order) that stay exactly as they
        are: same key, features, label name, split, fingerprint and per-row values.
    write : dict key -> (where, row)
        The rows the commit writes: new or re-extracted rows (``where`` a part file) and old
        rows whose label, split or fingerprint changed (``where`` = ``"store"``, their old
        position). Every other old row is removed (a tombstone, or left out of a rewrite).
    labels, split, fingerprints : dicts keyed by key
        The label (index into ``classes``), split and (size, mtime_ns, sha256) of the rows in
        ``write`` (more keys are allowed and ignored).
    failed : dict key -> (reason, size, mtime_ns, sha256, "")
        Every failure the store records after the commit (usually few).
    classes, attrs
        The store's class names and provenance attributes after the commit.
    per_row : dict name -> (dict key -> value), optional
        Per-row values (``text/n_tokens``, ``text/texts``) for the rows in ``write`` (more keys
        are allowed); the kept rows keep theirs, and so does a rewritten old row without one.
        A name the store does not carry yet must have a value for every row: the commit then
        rewrites the store (:func:`_gains_per_row`).
    """

    kept: np.ndarray
    write: dict[str, tuple[str, int]]
    labels: Mapping[str, int]
    split: Mapping[str, str]
    fingerprints: Mapping[str, tuple[int, int, str]]
    failed: Mapping[str, tuple[str, int, int, str, str]]
    classes: tuple[str, ...]
    attrs: Mapping[str, Any]
    per_row: Mapping[str, Mapping[str, Any]] | None = None

    @property
    def n_items(self) -> int:
        return len(self.kept) + len(self.write)


def _unchanged_rows(
    keys: list[str],
    idx: np.ndarray,
    old: Any,
    stored: Any,
    labels: Mapping[str, int],
    split: Mapping[str, str],
    classes: tuple[str, ...],
    fingerprints: Mapping[str, tuple[int, int, str]],
    per_row: Mapping[str, Mapping[str, Any]] | None,
) -> np.ndarray:
    """For each ``keys[j]`` kept from old row ``idx[j]``: whether everything stored with it
    (label name, split, fingerprint, per-row values: token counts and texts) is unchanged, so
    the row can stay where it is (the whole-state :func:`commit` turned into a
    :class:`StoreChange`). ``stored(name)``: the store's per-row dataset ``name`` in key order
    (int64 or str objects), or None when the store lacks it."""
    if not keys:
        return np.zeros(0, dtype=bool)
    lab, spl, fp = zip(
        *[(labels.get(k, -1), split.get(k, ""), fingerprints[k]) for k in keys], strict=True
    )  # one pass over the dicts
    size, mtime, sha = zip(*fp, strict=True)
    new_names = np.array([*classes, ""], dtype=object)[np.array(lab, dtype=np.int64)]
    old_names = np.array([*old.classes, ""], dtype=object)[old.labels[idx]]
    same = new_names == old_names
    same &= np.array(spl, dtype=object) == old.split[idx]
    same &= np.array(size, dtype=np.int64) == old.size[idx]
    same &= np.array(mtime, dtype=np.int64) == old.mtime_ns[idx]
    same &= np.array(sha, dtype=object) == old.sha256[idx]
    for name, values in (per_row or {}).items():
        have = stored(name)
        if have is None:  # the store gains this dataset: every row is written with it
            return np.zeros(len(keys), dtype=bool)
        old_vals = have[idx]  # a row without a value keeps its own (StoreWriter._merge)
        new = np.empty(len(keys), dtype=old_vals.dtype)
        new[:] = [values.get(k, v) for k, v in zip(keys, old_vals.tolist(), strict=True)]
        same &= new == old_vals
    return same


def change_from_state(
    writer: Any,
    *,
    rows: Mapping[str, tuple[str, int]],
    failed: Mapping[str, tuple[str, int, int, str, str]],
    labels: Mapping[str, int],
    split: Mapping[str, str],
    classes: tuple[str, ...],
    fingerprints: Mapping[str, tuple[int, int, str]],
    attrs: Mapping[str, Any],
    per_row: Mapping[str, Mapping[str, Any]] | None = None,
) -> StoreChange:
    """The :class:`StoreChange` that takes the writer's store to the whole new state given
    (every row's source and metadata): compares every kept row, so it costs the store's size.
    Incremental runs build the change directly (:func:`featx.extraction`'s plan)."""
    old = writer.index
    from_store = [(k, i) for k, (w, i) in rows.items() if w == "store"]
    keys = [k for k, _ in from_store]
    idx = np.fromiter((i for _, i in from_store), np.int64, len(from_store))
    if old is None:
        same = np.zeros(len(keys), dtype=bool)
    else:
        same = _unchanged_rows(
            keys, idx, old, lambda name: _stored_column(writer, name), labels, split, classes,
            fingerprints, per_row,
        )  # fmt: skip
    write = {k: v for k, v in rows.items() if v[0] != "store"}
    write.update((k, rows[k]) for k, ok in zip(keys, same.tolist(), strict=True) if not ok)
    return StoreChange(
        kept=np.sort(idx[same]),
        write=write,
        labels=labels,
        split=split,
        fingerprints=fingerprints,
        failed=failed,
        classes=tuple(classes),
        attrs=attrs,
        per_row=per_row,
    )


def _stored_column(writer: Any, name: str) -> np.ndarray | None:
    """The writer's store's per-row dataset ``name`` in key order, or None when it has none:
    integers from the index read, strings (texts) read now from the store's files."""
    if name not in writer.per_row_names:
        return None
    if name in writer.old_per_row:
        return writer.old_per_row[name]
    return writer.layout.column(name)


def _gains_per_row(writer: Any, change: StoreChange) -> str:
    """The first per-row dataset ``change`` carries that the store's rows lack (a text store
    written before featx kept texts gains ``text/texts``), or "". Such a commit rewrites the
    store: every kept row gets the value (#19: no model pass, the texts come from the source)."""
    if writer.index is None or writer.index.n_rows == 0:
        return ""
    for name in change.per_row or {}:
        if name not in writer.per_row_names:
            return name
    return ""


def _per_row_names(writer: Any, change: StoreChange) -> list[str]:
    """The per-row datasets of the store after ``change``: those it carries and the change's."""
    return sorted({*writer.per_row_names, *(change.per_row or {})})


@dataclass(frozen=True)
class PartSegment:
    """A part file that becomes a segment as it is (see :func:`_part_as_segment`)."""

    path: str
    n_rows: int
    dead: np.ndarray  # its rows the commit does not take (tombstones)
    keys: frozenset[str]  # the keys the commit takes from it


def _part_segments(writer: Any, change: StoreChange) -> list[PartSegment]:
    """The parts of ``change.write`` that could become segments as they are, largest first
    (:func:`plan_commit` decides how many do)."""
    outputs = (*store_groups(writer.config), *((g, w) for g, w, _ in store_outputs(writer.config)))
    by_part: dict[str, dict[int, str]] = {}
    for k, (where, r) in change.write.items():
        if where != "store":
            by_part.setdefault(where, {})[int(r)] = k
    out = []
    for part, rows_of in sorted(by_part.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        fit = _part_as_segment(part, rows_of, change, outputs)
        if fit is not None:
            out.append(PartSegment(part, fit[0], fit[1], frozenset(rows_of.values())))
    return out


def _floor_rows(writer: Any, change: StoreChange, floor: int | None) -> int:
    if floor is not None:
        return floor
    dim = int(writer.dim or change.attrs.get("dim") or 1)
    return max(1, MERGE_FLOOR_BYTES // max(1, dim * np.dtype(writer.config.dtype).itemsize))


def plan_commit(
    writer: Any,
    change: StoreChange,
    *,
    force_full: bool = False,
    parts: list[PartSegment] | None = None,
) -> CommitPlan:
    """Decide between a segment commit (which segments it merges, which parts it links) and a
    full rewrite, by the tiered merge policy (:func:`choose_merges`, the module docstring).
    Costs the change plus one boolean per stored row. ``parts``: part files that could become
    segments as they are (their rows are not written again)."""
    old = writer.index
    parts = parts or []
    if force_full:
        return CommitPlan("full", "compaction asked for", [], [])
    n_final = change.n_items
    write = change.write
    layout = writer.layout
    empty = old is None or old.n_rows == 0
    # the store's segments after this commit's tombstones: rows, dead rows, where each old row is
    if empty:
        n_rows = np.zeros(0, dtype=np.int64)
        seg_dead = np.zeros(0, dtype=np.int64)
        file_of_row = np.zeros(0, dtype=np.int64)
        dead_idx = np.zeros(0, dtype=np.int64)
    else:
        kept_old = np.zeros(old.n_rows, dtype=bool)
        kept_old[np.asarray(change.kept, dtype=np.int64)] = True
        dead_idx = np.flatnonzero(~kept_old)
        if layout.file_of_row is None:  # a single file: it would be segment 0
            n_rows = np.array([old.n_rows], dtype=np.int64)
            file_of_row = np.zeros(old.n_rows, dtype=np.int64)
            seg_dead = np.zeros(1, dtype=np.int64)
        else:
            n_rows = np.asarray(writer.old_n_rows, dtype=np.int64)
            file_of_row = np.asarray(layout.file_of_row, dtype=np.int64)
            seg_dead = np.bincount(
                np.asarray([s for s, _ in writer.old_dead], dtype=np.int64), minlength=len(n_rows)
            )
        seg_dead = seg_dead + np.bincount(file_of_row[dead_idx], minlength=len(n_rows))
    taken_any = set().union(*(p.keys for p in parts)) if parts else set()
    per_tier, floor = merge_tiers()
    mp = choose_merges(
        (n_rows - seg_dead).tolist(),
        seg_dead.tolist(),
        sum(1 for k in write if k not in taken_any),
        [(p.n_rows - len(p.dead), len(p.dead)) for p in parts],
        floor=_floor_rows(writer, change, floor),
        per_tier=per_tier,
    )
    linked = tuple(parts[j] for j in mp.link)
    taken = set().union(*(p.keys for p in linked)) if linked else set()
    copy = sorted(k for k in write if k not in taken)
    merge = tuple(sorted(mp.merge))
    if merge:
        in_merge = np.zeros(len(n_rows), dtype=bool)
        in_merge[list(merge)] = True
        kept = np.asarray(change.kept, dtype=np.int64)
        merged_rows = kept[in_merge[file_of_row[kept]]]
        dead_idx = dead_idx[~in_merge[file_of_row[dead_idx]]]
    else:
        merged_rows = np.zeros(0, dtype=np.int64)
    n_written = len(copy) + len(merged_rows)
    if empty:
        if not linked or n_written >= FULL_WRITE_SHARE * n_final:
            return CommitPlan("full", "a new store", [], [])
    elif n_final and n_written >= FULL_WRITE_SHARE * n_final:
        why = f"{n_written} of {n_final} rows to write"
        if merge:
            why += f" ({len(merged_rows)} of them to merge {len(merge)} segment(s))"
        return CommitPlan("full", why + ": compacting into one file", [], [])
    if empty or layout.file_of_row is None:
        dead = [(0, int(r)) for r in dead_idx]
    else:
        dead = list(
            zip(
                file_of_row[dead_idx].tolist(),
                np.asarray(layout.row_in_file, dtype=np.int64)[dead_idx].tolist(),
                strict=True,
            )
        )
    why = f"{len(copy)} rows into a new segment"
    if merge:
        why += f", merging {len(merge)} segment(s) of {len(merged_rows)} live rows into it"
    if linked:
        why += f", {len(linked)} part(s) of {sum(p.n_rows for p in linked)} rows as segments"
    return CommitPlan("segment", why, copy, dead, merge, merged_rows, linked)


def _part_min_rows() -> int:
    return int(os.environ.get(PART_SEGMENT_MIN_ROWS_ENV) or PART_SEGMENT_MIN_ROWS)


def _part_as_segment(
    part: str,
    rows_of: Mapping[int, str],
    change: StoreChange,
    outputs: tuple[tuple[str, int], ...] = (),
) -> tuple[int, np.ndarray] | None:
    """Whether part file ``part`` can become a segment as it is: (its rows, the rows to
    tombstone there), or None (copy its rows instead). ``rows_of``: row -> key of the rows the
    commit takes from it. A part written by this featx in key order qualifies when at least half
    of its rows are taken with the label name, split and fingerprint it holds, and it holds every
    extra output of the store (``outputs``: (dataset, width)) as a segment does: chunked, with
    Fletcher-32 checksums (parts written before the third #21 pass do not)."""
    if change.per_row:  # per-row extras (text/n_tokens) are not in parts
        return None
    try:
        with _h5().File(part, "r") as f:
            if not f.attrs.get("segment_ready") or not f["features"].fletcher32:
                return None
            n_part = int(f["features"].shape[0])
            for name, width in outputs:
                ds = f.get(name)
                if ds is None or tuple(ds.shape) != (n_part, width):
                    return None
                if n_part and not ds.fletcher32:
                    return None
            keys = _strings(f["paths"])
            n = len(keys)
            # a part a worker wrote for this run (--engine ray) is linked whatever its size
            # (Ray Data cuts batches at block boundaries: a small one is a remainder, not a
            # checkpoint); the room for parts still bounds how many become segments
            least = 1 if f.attrs.get("worker_part") else _part_min_rows()
            if n < least or 2 * len(rows_of) < n:
                return None
            names = np.array([*_strings(f["classes"]), ""], dtype=object)[f["labels"][()]]
            split = _strings(f["split"])
            g = f["fingerprint"]
            size, mtime, sha = g["size"][()], g["mtime_ns"][()], _strings(g["sha256"])
    except (OSError, KeyError, IndexError):
        return None
    classes = [*change.classes, ""]
    ok = np.zeros(n, dtype=bool)
    for r, k in rows_of.items():
        fp = change.fingerprints[k]
        ok[r] = (
            keys[r] == k
            and names[r] == classes[change.labels.get(k, -1)]
            and split[r] == change.split.get(k, "")
            and (int(size[r]), int(mtime[r]), str(sha[r])) == (int(fp[0]), int(fp[1]), str(fp[2]))
        )
    if 2 * int(ok.sum()) < n:
        return None
    return n, np.flatnonzero(~ok)


def _link_segment(src: str | os.PathLike, folder: Path) -> str:
    """Hard-link (copy where links are not possible) ``src`` into ``folder`` as a new segment
    name, durably; returns the name."""
    folder.mkdir(exist_ok=True)
    name = _new_segment_name(folder)
    tmp = folder / f"{name}.tmp-{os.getpid()}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, folder / name)
    from featx.files import fsync_dir

    fsync_dir(folder)
    return name


def upgrade_to_segment(path: Path) -> str:
    """Make a single-file store's file the first segment without copying: a hard link in
    ``STORE.segments`` (a copy where the filesystem has no links). Returns the segment's name."""
    return _link_segment(path, segment_dir(path))


def write_index(
    writer: Any,
    *,
    names: list[str],
    n_rows: list[int],
    dead: list[tuple[int, int]],
    n_items: int,
    classes: tuple[str, ...],
    failed: Mapping[str, tuple[str, int, int, str, str]],
    attrs: Mapping[str, Any],
    dim: int,
    per_row_names: list[str],
) -> None:
    """Write the index of a segmented store and rename it over the store (the commit)."""
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    dead_arr = np.array(sorted(set(dead)), dtype=np.int64).reshape(-1, 2)
    with _atomic_h5(writer.path) as f:
        _write_attrs(f, writer.config, attrs, getattr(writer, "_created", None) or now, now)
        f.attrs["schema_version"] = SEGMENTED_SCHEMA_VERSION
        f.attrs["layout"] = LAYOUT
        f.attrs["n_items"] = int(n_items)
        f.attrs["n_failed"] = len(failed)
        f.attrs["dim"] = int(dim)
        f.attrs["dtype"] = str(writer.config.dtype)
        f.attrs["n_segments"] = len(names)
        f.attrs["n_dead"] = int(len(dead_arr))
        g = f.create_group("segments")
        _str_ds(g, "names", names)
        _int_ds(g, "n_rows", n_rows)
        _str_ds(g, "per_row", per_row_names)
        d = f.create_group("dead")
        _int_ds(d, "segment", dead_arr[:, 0])
        _int_ds(d, "row", dead_arr[:, 1])
        _str_ds(f, "classes", classes)
        _write_failed(f, failed)
        f.attrs["attrs_sha256"] = _digest_attrs(f.attrs)


def _sources(writer: Any, rows: Mapping[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """``rows`` with ``"store"`` rows of a segmented store turned into (segment file, row)."""
    layout = writer.layout
    if layout is None or layout.file_of_row is None:
        return dict(rows)
    files = [str(p) for p in layout.files]
    out = {}
    for key, (where, i) in rows.items():
        if where == "store":
            out[key] = (files[int(layout.file_of_row[i])], int(layout.row_in_file[i]))
        else:
            out[key] = (where, i)
    return out


def _whole_state(writer: Any, change: StoreChange) -> dict[str, Any]:
    """The keyword arguments of ``StoreWriter._merge`` for a full rewrite: the kept old rows
    (their stored label, split, fingerprint and per-row values) plus the change."""
    old = writer.index
    classes = tuple(change.classes)
    kept = np.asarray(change.kept, dtype=np.int64)
    rows: dict[str, tuple[str, int]] = {}
    labels: dict[str, int] = {}
    split: dict[str, str] = {}
    fps: dict[str, tuple[int, int, str]] = {}
    if len(kept):
        keys = old.keys[kept].tolist()
        pos = {c: i for i, c in enumerate(classes)}
        old_names = [*old.classes, ""]
        lab = [pos.get(old_names[v], -1) for v in old.labels[kept].tolist()]
        rows.update(zip(keys, (("store", r) for r in kept.tolist()), strict=True))
        labels.update(zip(keys, lab, strict=True))
        split.update(zip(keys, old.split[kept].tolist(), strict=True))
        fps.update(
            zip(
                keys,
                zip(
                    old.size[kept].tolist(),
                    old.mtime_ns[kept].tolist(),
                    old.sha256[kept].tolist(),
                    strict=True,
                ),
                strict=True,
            )
        )
    wkeys = list(change.write)
    rows.update(change.write)
    labels.update((k, change.labels.get(k, -1)) for k in wkeys)
    split.update((k, change.split.get(k, "")) for k in wkeys)
    fps.update((k, tuple(change.fingerprints[k])) for k in wkeys)
    # per-row values (token counts, texts): the change's where it gives one, else each row's
    # stored value, copied by StoreWriter._merge from where the row comes from
    given = change.per_row or {}
    per_row = {n: given.get(n, {}) for n in _per_row_names(writer, change)}
    return {
        "rows": rows,
        "failed": dict(change.failed),
        "labels": labels,
        "split": split,
        "classes": classes,
        "fingerprints": fps,
        "attrs": dict(change.attrs),
        "per_row": per_row or None,
    }


def commit(
    writer: Any,
    *,
    rows: Mapping[str, tuple[str, int]],
    failed: Mapping[str, tuple[str, int, int, str, str]],
    labels: Mapping[str, int],
    split: Mapping[str, str],
    classes: tuple[str, ...],
    fingerprints: Mapping[str, tuple[int, int, str]],
    attrs: Mapping[str, Any],
    per_row: Mapping[str, Mapping[str, int]] | None = None,
    force_full: bool = False,
) -> Path:
    """Commit a whole new state through ``writer`` (every row's source and metadata): turned
    into a :class:`StoreChange` by comparing every kept row, then :func:`commit_change`."""
    change = change_from_state(
        writer, rows=rows, failed=failed, labels=labels, split=split, classes=classes,
        fingerprints=fingerprints, attrs=attrs, per_row=per_row,
    )  # fmt: skip
    return commit_change(writer, change, force_full=force_full)


def commit_change(writer: Any, change: StoreChange, *, force_full: bool = False) -> Path:
    """Commit ``change`` through ``writer`` (a locked :class:`~featx.store.StoreWriter`): a
    segment with the written rows and a new index (costs the change), or a full rewrite into
    one file (see :func:`plan_commit`)."""
    parts: list[PartSegment] = []
    gains = "" if force_full else _gains_per_row(writer, change)
    if not force_full and not gains:
        parts = _part_segments(writer, change)  # the policy decides which become segments
    if gains:
        plan = CommitPlan("full", f"the store gains {gains}", [], [])
    else:
        plan = plan_commit(writer, change, force_full=force_full, parts=parts)
    log.info("commit of %s: %s (%s)", writer.path, plan.mode, plan.why)
    if writer.layout is not None:
        writer.layout.close()  # the segments it opened are read again by path
    if plan.mode == "full":
        kw = _whole_state(writer, change)
        writer._merge(**{**kw, "rows": _sources(writer, kw["rows"])})
        _crash_point("after-full-rename")
        clean_orphans(writer.path)  # the store is one file again: its segments go
        return writer.path

    folder = segment_dir(writer.path)
    merge = set(plan.merge)
    if writer.index is None or writer.index.n_rows == 0:  # a new store made of parts
        names, n_rows, dead = [], [], []
    elif writer.layout.file_of_row is None:  # a single-file store: it becomes segment 0
        if merge:  # ... unless it is merged (its live rows rewritten into the new segment)
            names, n_rows, dead = [], [], []
        else:
            names, n_rows = [upgrade_to_segment(writer.path)], [writer.index.n_rows]
            dead = []
            _crash_point("after-upgrade-link")
    else:
        names = [Path(p).name for p in writer.layout.files]
        n_rows, dead = list(writer.old_n_rows), list(writer.old_dead)
    dead += plan.dead
    if merge and names:  # merged segments leave the index (the next writer removes them)
        stay = [i for i in range(len(names)) if i not in merge]
        new_pos = {old: new for new, old in enumerate(stay)}
        names, n_rows = [names[i] for i in stay], [n_rows[i] for i in stay]
        dead = [(new_pos[s], r) for s, r in dead if s in new_pos]
    for part in plan.parts:  # parts that become segments: their rows are not copied again
        names.append(_link_segment(part.path, folder))
        _crash_point("after-part-link")
        n_rows.append(part.n_rows)
        dead += [(len(names) - 1, int(r)) for r in part.dead]
    if plan.write_keys or len(plan.merged_rows):
        # one new segment: the change's rows, the rows of parts not linked, and the live rows
        # of the merged segments (kept as stored)
        folder.mkdir(exist_ok=True)
        name = _new_segment_name(folder)
        out = _whole_state(
            writer,
            replace(
                change,
                kept=plan.merged_rows,
                write={k: change.write[k] for k in plan.write_keys},
            ),
        )
        writer._merge(
            **{**out, "rows": _sources(writer, out["rows"]), "failed": {}},
            target=folder / name,
        )
        _crash_point("after-segment-rename")
        names.append(name)
        n_rows.append(len(out["rows"]))
    classes = tuple(change.classes)
    write_index(
        writer,
        names=names,
        n_rows=n_rows,
        dead=dead,
        n_items=change.n_items,
        classes=classes,
        failed=change.failed,
        attrs=change.attrs,
        dim=int(writer.dim or change.attrs.get("dim") or 0),
        per_row_names=_per_row_names(writer, change),
    )
    _crash_point("after-index-rename")
    writer.discard_parts()
    clean_orphans(writer.path)
    return writer.path
