"""Fine-tuned bundles: the tuned weights and the new head, in the safe format (no pickle).

A fine-tuned bundle is a zip file (numpy's ``.npz`` layout), like a head bundle
(:mod:`featx.bundle`), that loading never executes:

- ``featx-finetune.json``: format version, featx and torch versions, classes, the backbone's
  configuration (what rebuilds the frozen prefix), the cut, the mode (``tail`` or ``full``), the
  new head's shape, the training history and metrics, and the weights as a table
  ``name -> {ref, sha256, dtype, shape}``;
- ``arrays/N.npy``: one array per tensor, read with ``allow_pickle=False``;
- ``featx-finetune.sha256``: the SHA-256 of the JSON member, so damage to any part is caught.

Loading rebuilds the backbone from its configuration (pretrained weights, the prefix stays as
it was), cuts it at the recorded cut, builds the tail and head and loads the arrays into them with
``load_state_dict(strict=True)``: a bundle whose tensors do not fit fails with one line.

Imports torch at module level: import it lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featx.bundle import npy_bytes, write_safe_zip
from featx.errors import FeatxError

logger = logging.getLogger(__name__)

MAGIC = "featx-finetune-bundle"
FORMAT_VERSION = 1
JSON_NAME = "featx-finetune.json"
SUM_NAME = "featx-finetune.sha256"
MODES = ("tail", "full")
#: The member holding a tuned head's own (safe) head bundle, when there is one.
TUNED_HEAD = "tuned_head.npz"


def is_finetune_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a fine-tuned bundle (a zip holding ``featx-finetune.json``)."""
    try:
        with zipfile.ZipFile(path) as z:
            return JSON_NAME in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def save_finetune_bundle(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    mode: str,
    classes: Sequence[str],
    backbone: Mapping[str, Any],
    cut: str,
    tail_blocks: int,
    head: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    options: Mapping[str, Any] | None = None,
    tuned_head: tuple[str, bytes] | None = None,
) -> Path:
    """Write ``model``'s weights and what rebuilds it to ``path`` (atomically).

    ``model`` is the :class:`~featx.finetuning.cuts.TailNet` (``mode="tail"``) or the whole network
    (``mode="full"``); tensors shared under several names are stored once. ``tuned_head``:
    (its row's label, the bytes of a head bundle, :func:`featx.bundle.save_bundle`'s safe
    format) of a featx head fitted on the tuned embedding, which then predicts instead of the
    network's linear head (``--tuned-heads``); stored as the member ``TUNED_HEAD``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    from featx._version import __version__  # the leaf module: no import circle

    members: dict[str, bytes] = {}
    weights: dict[str, dict[str, Any]] = {}
    by_storage: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        ref = by_storage.get(key) if t.numel() else None
        if ref is None:
            ref = f"arrays/{len(members)}.npy"
            members[ref] = npy_bytes(_to_numpy(t))
            if t.numel():
                by_storage[key] = ref
        weights[name] = {
            "ref": ref,
            "sha256": hashlib.sha256(members[ref]).hexdigest(),
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
        }
    payload = {
        "magic": MAGIC,
        "format_version": FORMAT_VERSION,
        "featx_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "classes": [str(c) for c in classes],
        "backbone": json.loads(json.dumps(dict(backbone), default=str)),
        "cut": cut,
        "tail_blocks": int(tail_blocks),
        "head": dict(head),
        "metrics": json.loads(json.dumps(dict(metrics or {}), default=_json_default)),
        "history": json.loads(json.dumps(list(history), default=_json_default)),
        "options": json.loads(json.dumps(dict(options or {}), default=str)),
        "weights": weights,
    }
    if tuned_head is not None:
        label, data = tuned_head
        members[TUNED_HEAD] = data
        payload["tuned_head"] = {"label": str(label), "sha256": hashlib.sha256(data).hexdigest()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safe_zip(path, (JSON_NAME, SUM_NAME), payload, members, allow_nan=True)
    logger.info("saved fine-tuned bundle %s (%s, %d tensors)", path, mode, len(weights))
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


@dataclass(frozen=True, eq=False)
class FinetuneBundleFile:
    """A fine-tuned bundle as read from disk (weights as numpy arrays, nothing built yet)."""

    path: Path
    mode: str
    classes: tuple[str, ...]
    backbone: dict[str, Any]
    cut: str
    tail_blocks: int
    head: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    options: dict[str, Any]
    featx_version: str
    state: dict[str, np.ndarray] = field(repr=False)
    #: (label, head bundle bytes) of the head fitted on the tuned embedding, or None
    tuned_head: tuple[str, bytes] | None = field(default=None, repr=False)


def _corrupt(path: Path, why: str) -> FeatxError:
    return FeatxError(
        f"{str(path)!r} is not a readable fine-tuned bundle ({why}); it is damaged or not a "
        "featx bundle: run featx finetune again"
    )


def read_finetune_bundle(path: str | os.PathLike) -> FinetuneBundleFile:
    """Read and check a fine-tuned bundle (checksums, format); builds no model."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"no fine-tuned bundle at {str(path)!r}; check the path")
    try:
        from featx.safezip import check_members, load_json, read_member, read_npy

        with zipfile.ZipFile(path) as z:
            check_members(z)  # sizes, ratios, headers, depth: checked before reading (#23)
            names = set(z.namelist())
            if JSON_NAME not in names:
                raise FeatxError(f"{str(path)!r} is not a fine-tuned bundle; give featx finetune's")
            text = read_member(z, JSON_NAME, 64 << 20)
            want = read_member(z, SUM_NAME, 1024).decode().strip() if SUM_NAME in names else ""
            if hashlib.sha256(text).hexdigest() != want:
                raise _corrupt(path, f"{JSON_NAME} does not match its SHA-256")
            meta = load_json(text, JSON_NAME)
            if not isinstance(meta, dict) or meta.get("magic") != MAGIC:
                raise FeatxError(f"{str(path)!r} is not a fine-tuned bundle; give featx finetune's")
            version = meta.get("format_version")
            if version != FORMAT_VERSION:
                newer = isinstance(version, int) and version > FORMAT_VERSION
                raise FeatxError(
                    f"{str(path)!r} has fine-tuned bundle format {version!r}, this featx reads "
                    f"{FORMAT_VERSION}; " + ("upgrade featx" if newer else "fine-tune again")
                )
            cache: dict[str, np.ndarray] = {}
            state: dict[str, np.ndarray] = {}
            for name, w in dict(meta["weights"]).items():
                ref = str(w["ref"])
                if ref not in cache:
                    data = read_member(z, ref, 16 << 30)
                    if hashlib.sha256(data).hexdigest() != w["sha256"]:
                        raise _corrupt(path, f"{ref} does not match its SHA-256")
                    cache[ref] = read_npy(data, ref)
                arr = cache[ref]
                if list(arr.shape) != list(w["shape"]):
                    raise _corrupt(path, f"{name} has shape {arr.shape}, expected {w['shape']}")
                state[name] = arr
            tuned = None
            if meta.get("tuned_head") is not None:
                data = read_member(z, TUNED_HEAD, 16 << 30)
                if hashlib.sha256(data).hexdigest() != meta["tuned_head"]["sha256"]:
                    raise _corrupt(path, f"{TUNED_HEAD} does not match its SHA-256")
                tuned = (str(meta["tuned_head"]["label"]), data)
    except FeatxError:
        raise
    except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        from featx.safezip import ZipLimitError

        raise _corrupt(path, str(e) if isinstance(e, ZipLimitError) else type(e).__name__) from None
    try:
        return FinetuneBundleFile(
            path=path,
            mode=str(meta["mode"]),
            classes=tuple(str(c) for c in meta["classes"]),
            backbone=dict(meta["backbone"]),
            cut=str(meta["cut"]),
            tail_blocks=int(meta["tail_blocks"]),
            head=dict(meta["head"]),
            metrics=dict(meta.get("metrics") or {}),
            history=list(meta.get("history") or []),
            options=dict(meta.get("options") or {}),
            featx_version=str(meta.get("featx_version", "")),
            state=state,
            tuned_head=tuned,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise _corrupt(path, f"missing {e}") from None


def load_state(model: nn.Module, state: Mapping[str, np.ndarray], path: Path) -> None:
    """Load numpy arrays into ``model`` (strict: every tensor, right shapes)."""
    own = model.state_dict()
    tensors = {}
    for k, v in state.items():
        ref = own.get(k)
        t = torch.from_numpy(np.array(v))
        tensors[k] = t.to(ref.dtype) if ref is not None else t
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise FeatxError(
            f"{str(path)!r} does not fit the backbone it names ({first}); was the backbone's "
            "architecture or featx changed? Fine-tune again"
        ) from None
