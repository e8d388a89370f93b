"""Helpers the tests import (``from helpers import ...``): tiny images, a tiny backbone, and a
fake backbone family. Fixtures that use them live in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featx.preprocess import Preprocess


def write_image(path: Path, seed: int, size=(24, 20), mode="RGB", fmt=None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


class TinyBackbone:
    """A deterministic 8-d conv embedding at 16 px: fast stand-in for a real backbone."""

    def __init__(self, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
            conv.bias.zero_()
        self.model = torch.nn.Sequential(
            conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        ).eval()
        self.name = "test/tiny"
        self.weights = f"seed{seed}"
        self.weights_sha256 = None
        self.layer = ""
        self.pool = "avg"
        self.dim = 8
        self.preprocess = Preprocess(crop_size=16, resize_size=18)

    def config(self) -> dict:
        return {
            "name": self.name,
            "weights": self.weights,
            "layer": self.layer,
            "pool": self.pool,
            "preprocess": self.preprocess.to_dict(),
        }


TINY_FAMILY = "test"


def tiny_family():
    """A backbone family named ``test`` whose one name, ``tiny``, loads :class:`TinyBackbone`'s
    network as ``test/tiny`` through the real :func:`featx.load_backbone` path."""
    from featx.backbones.registry import BackboneInfo, Body, Family

    def resolve(name: str) -> str | None:
        return "test/tiny" if name in ("tiny", "test/tiny") else None

    def build(req):
        tb = TinyBackbone()
        return Body(
            model=tb.model,
            weights=tb.weights,
            weights_sha256=None,
            preprocess=tb.preprocess,
            default_pool="avg",
            feature_map=("hook", "1", None),
        )

    def list_infos(pattern: str) -> list:
        return (
            [BackboneInfo("tiny", TINY_FAMILY, 8, 16, "seed0")] if pattern in ("*", "tiny") else []
        )

    return Family(name=TINY_FAMILY, resolve=resolve, list_infos=list_infos, build=build)
