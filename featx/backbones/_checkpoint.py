"""Reading local checkpoints, fitting them into a model, and hashing weight files."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featx.errors import FeatxError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: Wrapper keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model")
#: Prefixes added by DataParallel/DistributedDataParallel and by ``torch.compile``.
_STRIP_PREFIXES = ("module.", "_orig_mod.")
#: Top-level names of classifier heads. featx drops the head, so keys under these names may be
#: missing from or surplus in a checkpoint without making it unfit.
_HEAD_RE = re.compile(
    r"^(fc|classifier|head|heads|head_dist|last_linear|AuxLogits|aux1|aux2)(\.|$)"
)

_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, computed once per (path, size, mtime) in this process."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _sha_lock:
        if key in _sha_cache:
            return _sha_cache[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _sha_lock:
        _sha_cache[key] = digest
    logger.debug("sha256 %s = %s", real, digest)
    return digest


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a local checkpoint as a flat ``{name: tensor}`` dict on the CPU.

    Accepts a raw state dict, or one nested under ``"state_dict"`` or ``"model"``; strips the
    ``module.`` (DataParallel) and ``_orig_mod.`` (``torch.compile``) prefixes. ``.safetensors``
    files are read with safetensors, everything else with
    ``torch.load(path, map_location="cpu", weights_only=True)`` (no arbitrary code runs).

    Raises
    ------
    FeatxError
        When the file is missing, unreadable, or holds no tensors.
    """
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise FeatxError(f"weights file {p} does not exist; check the path given to --weights-file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (pickle, zip, runtime) for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FeatxError(
            f"cannot read weights file {p} ({type(e).__name__}: {first[:200]}); "
            "it must be a state dict saved with torch.save or a .safetensors file"
        ) from e
    for _ in range(3):  # unwrap {"state_dict": {...}} / {"model": {...}}, possibly nested
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise FeatxError(f"weights file {p} holds a {type(obj).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue  # e.g. an "epoch" or "arch" entry next to the weights
        key = str(k)
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = v
    if not out:
        raise FeatxError(f"weights file {p} contains no tensors; pass a model state dict")
    return out


def is_head_key(key: str, head_prefixes: Iterable[str] = ()) -> bool:
    """True for keys of a classifier head (which featx drops)."""
    if _HEAD_RE.match(key):
        return True
    return any(key == h or key.startswith(h + ".") for h in head_prefixes)


def _few(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    target: str,
    head_prefixes: Iterable[str] = (),
) -> None:
    """Copy ``state_dict`` into ``model``, tolerating only classifier-head differences.

    Parameters
    ----------
    model : torch.nn.Module
        The model, usually with its classifier already removed.
    state_dict : mapping of str to Tensor
        Checkpoint tensors (see :func:`read_state_dict`).
    source, target : str
        Names for the message: the file and the backbone.
    head_prefixes : iterable of str
        Module paths of the removed classifier, in addition to the usual fc/classifier/head.

    Raises
    ------
    FeatxError
        Naming a few missing, unexpected and shape-mismatched keys.
    """
    heads = tuple(head_prefixes)

    def head(key: str) -> bool:
        return is_head_key(key, heads)

    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not head(k)]
    unexpected = [k for k in state_dict if k not in own and not head(k)]
    mismatched = [
        k
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape) and not head(k)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"wrong shape {_few(mismatched)} (e.g. {k}: file {tuple(state_dict[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise FeatxError(
            f"weights file {source} does not fit {target}: {'; '.join(parts)}; "
            "pass a checkpoint of this architecture or choose the matching backbone"
        )
    usable = {
        k: v for k, v in state_dict.items() if k in own and tuple(v.shape) == tuple(own[k].shape)
    }
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(state_dict) - set(usable))
    if skipped:
        logger.debug("ignored %d classifier-head keys from %s: %s", len(skipped), source, skipped)
