"""Augmentations that are sound in the space they apply to.

* CNN feature maps (B, C, H, W): a horizontal flip per item (a convolutional stage is nearly
  flip-equivariant, so the flipped map is close to the map of the flipped image) and a random
  shift by up to one cell with edge padding (a small translation of the image).
* Text hidden states: token dropout, i.e. a random share of the real tokens (never the first, the
  ``[CLS]``) is masked out of the attention and the pooling.
* Images (``--full``): a random resized crop (scale 0.6-1) and a horizontal flip, on the batch.
* ViT tokens: none (the position embeddings are already added at the cut, so a flip of the patch
  grid is not the tokens of a flipped image).

Every random choice comes from the ``torch.Generator`` passed in, so a seeded run repeats.

Imports torch at module level: import it lazily.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Share of text tokens masked out by token dropout.
TOKEN_DROPOUT = 0.1
#: Scale range of the random resized crop of images.
CROP_SCALE = (0.6, 1.0)


def _flip_rows(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    if flip.any():
        x = x.clone()
        idx = flip.nonzero().flatten().to(x.device)
        x[idx] = x[idx].flip(-1)
    return x


def feature_maps(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each map with probability 1/2 and shift the batch by up to one cell."""
    x = _flip_rows(x, gen)
    h, w = x.shape[-2:]
    if h >= 2 and w >= 2:
        dy, dx = (int(v) for v in torch.randint(0, 3, (2,), generator=gen))
        if (dy, dx) != (1, 1):
            padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
            x = padded[..., dy : dy + h, dx : dx + w]
    return x


def token_dropout(
    mask: torch.Tensor, gen: torch.Generator, p: float = TOKEN_DROPOUT
) -> torch.Tensor:
    """``mask`` (B, T) with a share ``p`` of its real tokens after the first set to 0."""
    drop = torch.rand(mask.shape, generator=gen).to(mask.device) < p
    drop[:, 0] = False
    return mask * (~drop).to(mask.dtype)


def images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random resized crop of the batch (one box for all, scale 0.6-1) and per-item flips."""
    size_h, size_w = x.shape[-2:]
    lo, hi = CROP_SCALE
    scale = lo + (hi - lo) * float(torch.rand(1, generator=gen))
    ch, cw = max(1, round(size_h * scale**0.5)), max(1, round(size_w * scale**0.5))
    top = int(torch.randint(0, size_h - ch + 1, (1,), generator=gen))
    left = int(torch.randint(0, size_w - cw + 1, (1,), generator=gen))
    x = x[..., top : top + ch, left : left + cw]
    if (ch, cw) != (size_h, size_w):
        x = F.interpolate(x, size=(size_h, size_w), mode="bilinear", align_corners=False)
    return _flip_rows(x, gen)
