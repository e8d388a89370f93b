"""JPEG decoding where the model runs (``--decode device``).

On a GPU, decoding JPEGs with Pillow on a few CPU cores is what limits extraction: a ResNet-50
in bf16 on an H100 takes thousands of images per second, a CPU core decodes a few hundred. With
``--decode device`` the DataLoader workers only read each file's bytes and sniff its header; the
main process decodes whole batches with ``torchvision.io.decode_jpeg`` on the model's device
(nvJPEG on CUDA), then applies the EXIF orientation, resizes (antialiased, as Pillow does),
centre-crops and rounds to ``uint8`` there, so the rest of the engine sees exactly what the CPU
path gives it.

Only files the device decoder is known to handle take this path: a JPEG that starts with the
SOI marker, ends with EOI (a truncated file would otherwise decode to grey), is RGB or greyscale
(not CMYK/YCCK) and is no larger than Pillow's decompression-bomb limit. Everything else (PNGs,
CMYK JPEGs, truncated files, non-file sources) and any batch the device decoder rejects is decoded
by the CPU path, image by image, so the choice never loses an image or records a failure that the
CPU path would not.

The pixels are not bit-identical to Pillow's (libjpeg-turbo and nvJPEG round their IDCT and
chroma upsampling differently, and the resize filters differ in the last bit); the features agree
to a cosine of about 0.999 or better, which is why ``decode`` is an option of the run and not
part of a store's configuration.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from featx.options import DECODE_MODES as DECODES  # one list, also for the CLI

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from featx.preprocess import Preprocess

log = logging.getLogger(__name__)

_SOI = b"\xff\xd8\xff"
_EOI = b"\xff\xd9"


def resolve_decode(decode: str, device: Any) -> str:
    """``auto``: ``device`` on CUDA when its JPEG decoder works, ``cpu`` elsewhere (on a CPU the
    workers decode in parallel). An explicit ``device`` whose decoder fails is an error."""
    from featx.errors import FeatxError

    d = (decode or "auto").lower()
    if d not in DECODES:
        raise FeatxError(f"unknown --decode {decode!r}; use one of {', '.join(DECODES)}")
    if d == "cpu" or (d == "auto" and device.type != "cuda"):
        return "cpu"
    if device.type not in ("cpu", "cuda"):
        raise FeatxError(
            f"--decode device works on cuda and cpu, not {device.type}; use --decode cpu"
        )
    problem = decoder_problem(device)
    if problem is None:
        return "device"
    if d == "auto":
        log.warning("JPEG decoding on %s does not work (%s); decoding on the CPU", device, problem)
        return "cpu"
    raise FeatxError(
        f"--decode device: cannot decode JPEGs on {device} ({problem}); use --decode cpu"
    )


_PROBED: dict[str, str | None] = {}


def decoder_problem(device: Any) -> str | None:
    """None when ``decode_jpeg`` works on ``device`` (tried once per device on a tiny JPEG),
    else the error it gave: a torchvision built without nvJPEG, a broken driver."""
    key = str(device)
    if key not in _PROBED:
        import numpy as np
        import torch
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8)).save(buf, "JPEG")
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        try:
            from torchvision.io import ImageReadMode, decode_jpeg

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = decode_jpeg([data], mode=ImageReadMode.RGB, device=device)
            if tuple(out[0].shape) != (3, 8, 8):
                raise RuntimeError(f"decoded shape {tuple(out[0].shape)}")
            _PROBED[key] = None
        except Exception as exc:  # noqa: BLE001 - reported, and the CPU path is used
            _PROBED[key] = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return _PROBED[key]


def sniff(path: str) -> tuple[torch.Tensor, int] | None:
    """The raw bytes (uint8 tensor) and EXIF orientation of a JPEG the device can decode.

    None when the file should go through the CPU path instead (see the module docstring).
    Reads the file once; Pillow only parses the header from memory.
    """
    import torch
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < 8 or not data.startswith(_SOI) or not data.rstrip(b"\x00").endswith(_EOI):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                    return None
                w, h = img.size
                if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
                    return None
                orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - anything odd goes to the CPU path, which reports it
        return None
    if orientation not in range(1, 9):
        orientation = 1
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a (C, H, W) tensor, as ``PIL.ImageOps.exif_transpose``."""
    if orientation == 2:  # mirror left-right
        return img.flip(2)
    if orientation == 3:  # rotate 180
        return img.flip(1).flip(2)
    if orientation == 4:  # mirror top-bottom
        return img.flip(1)
    if orientation == 5:  # transpose
        return img.transpose(1, 2)
    if orientation == 6:  # rotate 90 clockwise
        return img.transpose(1, 2).flip(2)
    if orientation == 7:  # transverse
        return img.transpose(1, 2).flip(1).flip(2)
    if orientation == 8:  # rotate 90 counter-clockwise
        return img.transpose(1, 2).flip(1)
    return img


def resize_crop(imgs: Sequence[torch.Tensor], pre: Preprocess) -> torch.Tensor:
    """uint8 (3, H, W) images of any sizes -> uint8 (B, 3, crop, crop), on their device.

    Same geometry as :meth:`Preprocess.resize_crop` (:meth:`Preprocess.geometry`), antialiased
    like Pillow. Images of equal size
    are resized together, one kernel per size.
    """
    import torch
    import torch.nn.functional as F

    mode = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}[
        pre.interpolation
    ]
    out = torch.empty(
        (len(imgs), 3, pre.crop_size, pre.crop_size), dtype=torch.uint8, device=imgs[0].device
    )
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(imgs):
        groups.setdefault((int(im.shape[1]), int(im.shape[2])), []).append(i)
    c = pre.crop_size
    for (h, w), members in groups.items():
        x = torch.stack([imgs[i] for i in members])
        nw, nh, left, top = pre.geometry(w, h)
        if (nh, nw) != (h, w):
            kw: dict[str, Any] = {"size": (nh, nw), "mode": mode}
            if mode != "nearest-exact":
                kw.update(antialias=True, align_corners=False)
            x = F.interpolate(x.float(), **kw).round_().clamp_(0, 255).to(torch.uint8)
        out[members] = x[:, :, top : top + c, left : left + c]
    return out


def decode_batch(
    datas: Sequence[torch.Tensor], orientations: Sequence[int], pre: Preprocess, device: Any
) -> tuple[torch.Tensor | None, list[int], list[int]]:
    """Decode, orient, resize and crop JPEG bytes on ``device``.

    Returns ``(batch, ok, rejected)``: a uint8 (B', 3, crop, crop) batch of the images that
    decoded, the positions (into ``datas``) of its rows, and the positions the device decoder
    rejected, for the CPU path.
    One bad file does not send its whole batch to the CPU: a rejected batch is retried image by
    image.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return None, [], []

    def _decode(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its image decoders
            return decode_jpeg(x, mode=ImageReadMode.RGB, device=device)

    try:
        imgs = list(_decode(list(datas)))
        ok = list(range(len(datas)))
    except Exception:  # noqa: BLE001 - one undecodable file fails the whole batch call
        imgs, ok = [], []
        for i, d in enumerate(datas):
            try:
                imgs.append(_decode(d))
                ok.append(i)
            except Exception:  # noqa: BLE001 - left to the CPU path, which names the problem
                continue
    rejected = sorted(set(range(len(datas))) - set(ok))
    if not imgs:
        return None, [], rejected
    imgs = [orient(im, orientations[i]) for im, i in zip(imgs, ok, strict=True)]
    return resize_crop(imgs, pre), ok, rejected
