"""Frozen pretrained image backbones: name -> model + the preprocessing of its weights.

``load_backbone(name, weights, ...)`` returns a :class:`Backbone` whose ``model`` maps a
normalized image batch to (B, D) features; ``list_backbones(pattern)`` lists the names. Names
belong to families (``featx``, ``torchvision``, ``timm``), each registered in
:mod:`featx.backbones.registry` by its own module. Importing this package is cheap: torch,
torchvision and timm load on first use.

Examples
--------
>>> from featx.backbones import list_backbones, load_backbone
>>> list_backbones("efficientnet_lite0")[0].dim
1280
>>> bb = load_backbone("resnet18", weights="none", image_size=64)
>>> bb.model(bb.preprocess.normalize(batch_uint8)).shape  # doctest: +SKIP
torch.Size([8, 512])
"""

from __future__ import annotations

from typing import Any

from featx.backbones._api import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneInfo,
    list_backbones,
    load_backbone,
    resolve_name,
)
from featx.backbones.registry import (
    BackboneLike,
    Family,
    families,
    register_family,
    unregister_family,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneInfo",
    "BackboneLike",
    "Family",
    "families",
    "register_family",
    "unregister_family",
    "imagenet_categories",
    "list_backbones",
    "load_backbone",
    "load_efficientnet_lite0_classifier",
    "resolve_name",
]


def load_efficientnet_lite0_classifier() -> Any:
    """The embedded Lite0 with its ImageNet classifier; see :mod:`featx.backbones._lite0`."""
    from featx.backbones._lite0 import load_efficientnet_lite0_classifier as load

    return load()


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order."""
    from featx.backbones._lite0 import imagenet_categories as cats

    return cats()
