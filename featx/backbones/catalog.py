"""A snapshot of the built-in listing, so ``featx backbones`` answers without importing torch.

``catalog.json`` (written by ``tools/gen_backbone_catalog.py``) holds, for one torchvision
version, what :func:`featx.list_backbones` shows for the embedded backbone and every torchvision
model: name, embedding size, input size, default weights and the checkpoint's file name (to say
whether it is cached). It is used only when the installed torchvision has exactly the recorded
version and no other family pattern (``timm/...``) is asked for; otherwise the families list
live. A test checks the snapshot against the live listing.

``timm_catalog.json`` does the same for the timm family (``featx backbones 'timm/...'``): every
architecture of one timm version in timm's order, with its embedding size (built on the meta
device once, when the file is written), input size and default weight tag, and every pretrained
``arch.tag`` with its input size. Used only when the installed timm has exactly that version.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from featx.backbones.registry import BackboneInfo

PATH = Path(__file__).with_name("catalog.json")
TIMM_PATH = Path(__file__).with_name("timm_catalog.json")
#: The families the snapshot covers (the ones listed without a prefix).
COVERS = ("featx", "torchvision")


@functools.cache
def _load() -> dict[str, Any] | None:
    try:
        data = json.loads(PATH.read_text())
        installed = importlib.metadata.version("torchvision")
    except (OSError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    return data if data.get("torchvision") == installed else None


@functools.cache
def _load_timm() -> dict[str, Any] | None:
    try:
        data = json.loads(TIMM_PATH.read_text())
        installed = importlib.metadata.version("timm")
    except (OSError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    return data if data.get("timm") == installed else None


def _hub_checkpoints() -> Path:
    """``torch.hub.get_dir()/checkpoints`` without importing torch."""
    from featx.settings import torch_hub_dir

    return torch_hub_dir() / "checkpoints"


def list_infos(pattern: str) -> list[BackboneInfo] | None:
    """The covered families' listing for a lower-case pattern, or None when the snapshot does
    not apply (other torchvision version, or no snapshot)."""
    data = _load()
    if data is None:
        return None
    hub = _hub_checkpoints()
    out = []
    for m in data["models"]:
        if not fnmatch.fnmatchcase(m["name"], pattern):
            continue
        if m["family"] == "torchvision":
            where = "cached" if (hub / m["checkpoint"]).is_file() else "download"
            weights = f"torchvision {m['weights']} ({where})"
        else:
            weights = m["weights"]
        out.append(BackboneInfo(m["name"], m["family"], m["dim"], m["input_size"], weights))
    return out


def list_timm_infos(pattern: str) -> list[BackboneInfo] | None:
    """What ``featx.backbones._timm.list_infos(pattern)`` lists (``pattern`` is the part after
    ``timm/``), from the snapshot; None when it does not apply (other timm version, no file)."""
    from featx.backbones._timm import MAX_DIMS_LISTED, TIMM_PREFIX

    data = _load_timm()
    if data is None:
        return None
    archs = data["archs"]
    if "." in pattern:
        rows = [
            (full, full.split(".", 1)[0], full.split(".", 1)[1], size)
            for full, size in data["tags"]
            if fnmatch.fnmatchcase(full, pattern)
        ]
    else:
        rows = [
            (a["name"], a["name"], None, a["input_size"])
            for a in archs
            if fnmatch.fnmatchcase(a["name"], pattern)
        ]
    dims = {a["name"]: a["dim"] for a in archs if "dim" in a}
    defaults = {a["name"]: a["tag"] for a in archs}
    with_dims = len(rows) <= MAX_DIMS_LISTED
    if with_dims and any(arch not in dims for _, arch, _, _ in rows):
        return None  # a snapshot written without some embedding sizes: list live
    out = []
    for full, arch, tag, size in rows:
        shown = tag or defaults.get(arch)
        src = f"timm {arch}.{shown} (hf hub)" if shown else "timm (no weights)"
        dim = dims.get(arch) if with_dims else None
        out.append(BackboneInfo(TIMM_PREFIX + full, "timm", dim, size, src))
    return out


def build_timm(dims: bool = True) -> dict[str, Any]:
    """The timm snapshot of the installed timm (imports timm; with ``dims``, builds every
    architecture on the meta device for its embedding size: minutes; without, listings of up
    to ``MAX_DIMS_LISTED`` names, which show sizes, stay live)."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    from featx.backbones._timm import embedding_dim

    archs = []
    for arch in timm.list_models():
        cfg = get_pretrained_cfg(arch)
        entry = {
            "name": arch,
            "input_size": int(cfg.input_size[-1]) if cfg is not None else 224,
            "tag": cfg.tag if cfg is not None else None,
        }
        if dims:
            entry["dim"] = embedding_dim(arch)
        archs.append(entry)
    tags = []
    for full in timm.list_pretrained():
        arch, _tag = split_model_name_tag(full)
        cfg = get_pretrained_cfg(full)
        tags.append([full, int(cfg.input_size[-1]) if cfg is not None else 224])
    return {"timm": importlib.metadata.version("timm"), "archs": archs, "tags": tags}


def build() -> dict[str, Any]:
    """The snapshot of the installed versions, from the live families (imports torchvision)."""
    from urllib.parse import urlparse

    from torchvision.models import get_model_weights

    from featx.backbones.registry import get_family

    models = []
    for fam in COVERS:
        for info in get_family(fam).list_infos("*"):
            entry = {
                "name": info.name,
                "family": info.family,
                "dim": info.dim,
                "input_size": info.input_size,
                "weights": info.weights,
            }
            if info.family == "torchvision":
                w = get_model_weights(info.name).DEFAULT
                entry["weights"] = w.name
                entry["checkpoint"] = os.path.basename(urlparse(w.url).path)
            models.append(entry)
    return {"torchvision": importlib.metadata.version("torchvision"), "models": models}
