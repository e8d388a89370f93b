"""A snapshot of the built-in listing, so ``featx backbones`` answers without importing torch.

``catalog.json`` (written by ``tools/gen_backbone_catalog.py``) holds, for one torchvision
version, what :func:`featx.list_backbones` shows for the embedded backbone and every torchvision
model: name, embedding size, input size, default weights and the checkpoint's file name (to say
whether it is cached). It is used only when the installed torchvision has exactly the recorded
version and no other family pattern (``timm/...``) is asked for; otherwise the families list
live. A test checks the snapshot against the live listing.
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
