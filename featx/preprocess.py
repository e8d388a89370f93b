"""Preprocessing that belongs to a backbone's weights, split into a CPU half and a device half.

The CPU half (decode, resize the shorter side, centre crop) runs in DataLoader workers and yields
``uint8`` CHW tensors, which are four times smaller than float tensors to move between processes
and to the device. The device half (scale to [0, 1], subtract the mean, divide by the std) runs on
whole batches where the model runs. Together they equal torchvision's ``ImageClassification``
preset: ``resize -> center_crop -> to_tensor -> normalize``.

Examples
--------
>>> p = Preprocess(crop_size=224, resize_size=256)
>>> p.with_image_size(160).resize_size
182
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """Every preprocessing fact that changes the features.

    Parameters
    ----------
    crop_size : int
        Side of the square centre crop fed to the model.
    resize_size : int
        The shorter image side is resized to this before cropping.
    interpolation : {"nearest", "bilinear", "bicubic"}
        Resampling filter (antialiased, as torchvision does on PIL images).
    mean, std : tuple of 3 floats
        Per-channel normalization on [0, 1] pixel values.
    """

    crop_size: int
    resize_size: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}")
        if self.crop_size <= 0 or self.resize_size < self.crop_size:
            raise ValueError("need 0 < crop_size <= resize_size")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def crop_pct(self) -> float:
        return self.crop_size / self.resize_size

    def with_image_size(self, size: int) -> Preprocess:
        """The same preprocessing at another crop size, keeping the crop ratio."""
        return replace(self, crop_size=size, resize_size=int(math.floor(size / self.crop_pct)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            crop_size=int(d["crop_size"]),
            resize_size=int(d["resize_size"]),
            interpolation=str(d["interpolation"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )

    # -- CPU half -------------------------------------------------------------------------------
    def geometry(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(resized width, resized height, crop left, crop top) for an image of this size.

        Same arithmetic as torchvision.transforms.functional.resize with an int size, then
        center_crop; shared by the Pillow path and the device path (:mod:`featx.jpeg`).
        """
        if width <= height:
            nw, nh = self.resize_size, int(self.resize_size * height / width)
        else:
            nw, nh = int(self.resize_size * width / height), self.resize_size
        c = self.crop_size
        return nw, nh, int(round((nw - c) / 2.0)), int(round((nh - c) / 2.0))

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Resize the shorter side to ``resize_size`` and centre-crop ``crop_size`` (PIL in/out)."""
        from PIL import Image

        resample = {
            "nearest": Image.Resampling.NEAREST,
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
        }[self.interpolation]
        w, h = img.size
        nw, nh, left, top = self.geometry(w, h)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample)
        c = self.crop_size
        return img.crop((left, top, left + c, top + c))

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB image -> uint8 tensor (3, crop, crop), ready to batch."""
        import numpy as np
        import torch

        arr = np.asarray(self.resize_crop(img), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    # -- device half ----------------------------------------------------------------------------
    def normalize(self, batch: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 (B, 3, H, W) on any device -> normalized float batch of ``dtype`` (default fp32).

        Computed in float32 and cast once, so fp32 results equal torchvision's ``Normalize``.
        """
        import torch

        x = batch.float()
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255.0
        x = (x - mean) / std
        return x if dtype is None or dtype == torch.float32 else x.to(dtype)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Full reference transform: PIL image -> normalized float tensor (3, crop, crop)."""
        return self.normalize(self.to_uint8(img).unsqueeze(0))[0]
