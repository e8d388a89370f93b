"""Decode any image Pillow opens into an 8-bit RGB image, the one form every backbone takes.

Rules, applied in this order:

- EXIF orientation is applied (a phone photo taken sideways comes out upright).
- 16-bit and 32-bit integer images (``I;16``, ``I``) are scaled to 8 bits by their full range
  (65535 for 16-bit), float images (``F``) by clipping to [0, 1] when they look normalized,
  else to [0, 255].
- Transparent images (``RGBA``, ``LA``, ``P`` with transparency) are composited over white.
- CMYK, YCbCr, LAB, HSV, grayscale ``L`` and ``1`` and palette ``P`` images are converted to RGB.

A file that Pillow cannot open or fully decode raises :class:`ImageDecodeError` with a short
reason, which the extraction engine records in the store instead of stopping.
"""

from __future__ import annotations

import os
import warnings

from PIL import Image, ImageFile, ImageOps

# Truncated files must fail loudly, never decode as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Large scans are legitimate inputs; the decompression-bomb guard stays on at Pillow's 2x limit
# (2 * Image.MAX_IMAGE_PIXELS, about 179 million pixels): see load_rgb.

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".jfif",
        ".ico",
    }
)


class ImageDecodeError(Exception):
    """The file is not an image Pillow can fully decode; the message is the reason."""


def is_image_name(name: str) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded Pillow image of any mode to 8-bit RGB (see the module rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "I" and arr.max(initial=0) > 65535:
            top = float(arr.max())
        arr = np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if mode == "F":
        import numpy as np

        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open, fully decode, orient and convert an image file to RGB.

    Parameters
    ----------
    path : path-like
        The image file.
    draft_size : (width, height), optional
        Lets the JPEG decoder scale down by a power of two in the DCT domain while staying at least
        this size. Off by default because it changes pixel values slightly.

    Raises
    ------
    ImageDecodeError
        When the file is empty, not an image, truncated or otherwise undecodable.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageDecodeError("empty file (0 bytes)")
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"cannot decode: {reason}") from None
    return _decode(path, draft_size)


def decode_rgb(data: bytes) -> Image.Image:
    """Like :func:`load_rgb`, for the bytes of an image file (e.g. read from object storage)."""
    import io

    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), None)


def _decode(fp, draft_size: tuple[int, int] | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses (DecompressionBombError) above
            # twice that: large scans between the two are legitimate inputs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if draft_size is not None and img.format == "JPEG":
                    img.draft("RGB", draft_size)
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"cannot decode: {reason}") from None
