"""What identifies a store: :class:`StoreConfig`, its hash, and the default store path."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featx.errors import StoreError
from featx.files import cache_dir as default_cache_dir
from featx.options import STORE_DTYPES as FEATURE_DTYPES  # one list, also for the CLI


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class StoreConfig:
    """Everything that determines the features; two runs share a store only if these match."""

    source: dict[str, Any]
    backbone: dict[str, Any]
    dtype: str = "float32"
    #: Extra named outputs that make this store a store of its own (``--cache-activations``):
    #: name -> spec with ``shape`` (per item), ``dtype`` (how it is stored) and optionally
    #: ``label`` (shown in the default file name), e.g. ``{"activations": {"cut": "layer4",
    #: "shape": [256, 7, 7], "dtype": "float16", "label": "acts-layer4"}}``. Empty for a plain
    #: store, and then left out of the hash, so existing stores keep their names.
    outputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in FEATURE_DTYPES:
            raise StoreError(f"--dtype must be one of {', '.join(FEATURE_DTYPES)}")
        for name, spec in self.outputs.items():
            if not isinstance(spec, dict) or "shape" not in spec or "dtype" not in spec:
                raise StoreError(f"output {name!r} needs a shape and a dtype")

    def to_dict(self) -> dict[str, Any]:
        d = {"source": self.source, "backbone": self.backbone, "dtype": self.dtype}
        if self.outputs:
            d["outputs"] = self.outputs
        return d

    def output_dtype(self, name: str) -> str:
        """How output ``name`` is stored: its spec's dtype, else the features' dtype."""
        return str((self.outputs.get(name) or {}).get("dtype", self.dtype))

    def to_json(self) -> str:
        return _canonical(self.to_dict())

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:10]

    @classmethod
    def from_json(cls, s: str) -> StoreConfig:
        d = json.loads(s)
        return cls(
            source=d["source"],
            backbone=d["backbone"],
            dtype=d["dtype"],
            outputs=dict(d.get("outputs") or {}),
        )


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_difference(a: StoreConfig, b: StoreConfig, limit: int = 3) -> str:
    """A short human description of how two configurations differ."""
    fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
    diffs = [
        f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}"
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k)
    ]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s).strip("-")[:64] or "x"


def default_store_path(config: StoreConfig, source_name: str, cache_dir: str | None = None) -> Path:
    """``<cache>/<source>__<backbone>-<weights>[-<layer>][-<pool>][-<size>px][-float16]__<hash>.h5``.

    Everything a user varies from the command line shows in the readable part, so two stores of
    one source and backbone never differ only in their configuration hash.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    bb = config.backbone
    parts = [str(bb.get("name", "backbone")).replace("/", "-"), str(bb.get("weights", ""))]
    if bb.get("layer"):
        parts.append(str(bb["layer"]))
    if bb.get("pool"):
        parts.append(str(bb["pool"]))
    if bb.get("layers"):
        parts.append(f"{len(bb['layers'])}layers")
    crop = (bb.get("preprocess") or {}).get("crop_size")
    if crop:
        parts.append(f"{crop}px")
    if config.dtype != "float32":
        parts.append(config.dtype)
    for _, spec in sorted(config.outputs.items()):
        if spec.get("label"):  # how an output shows in the name, e.g. "acts-layer4"
            parts.append(str(spec["label"]))
    name = f"{_slug(source_name)}__{_slug('-'.join(p for p in parts if p))}__{config.hash}.h5"
    return cache / name


#: Where the extra named outputs of a pass live (the engines' contract): ``outputs/<name>``;
#: a multi-layer pass (``--layers``) writes one per layer, named by its module path.
GROUPS = "outputs"
#: Where a text store keeps its texts (the ``tfidf`` feature group needs them at fit time).
TEXTS = "text/texts"
#: A text store's per-row token counts.
N_TOKENS = "text/n_tokens"
#: The per-row datasets a store may carry beside its index columns (a single-file store is
#: looked at for these names; a segmented store's index lists the ones it carries).
PER_ROW_DATASETS = (N_TOKENS, TEXTS)


def store_groups(config: Any) -> list[tuple[str, int]]:
    """(dataset path, width) of each extra output group a store's configuration names."""
    if config is None:
        return []
    d = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(d, dict):
        return []
    layers = (d.get("backbone") or {}).get("layers") or []
    return [(f"{GROUPS}/{g['name']}", int(g["dim"])) for g in layers]


def store_outputs(config: Any) -> list[tuple[str, int, str]]:
    """(dataset path, width per row, dtype) of each extra output that makes a store one of its
    own (``StoreConfig.outputs``, e.g. cached activations); rows are stored flattened, and
    :func:`featx.store.read_output` gives them their ``shape`` back."""
    if config is None:
        return []
    d = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(d, dict):
        return []
    dtype = str(d.get("dtype") or "float32")
    return [
        (f"{GROUPS}/{name}", int(math.prod(spec["shape"])), str(spec.get("dtype") or dtype))
        for name, spec in sorted((d.get("outputs") or {}).items())
    ]
