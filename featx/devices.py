"""Device and precision of a run, shared by every engine (a leaf: torch loads inside functions).

Examples
--------
>>> resolve_precision("auto", resolve_device("cpu"))
'fp32'
"""

from __future__ import annotations

from typing import Any

from featx.errors import FeatxError
from featx.options import PRECISIONS

DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"

#: The autocast dtype (a torch attribute name) of each resolved precision; fp32 runs without.
AMP_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def resolve_device(device: str = "auto"):
    """``auto`` picks cuda, then mps, then cpu. An explicit device that is absent is an error."""
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(d)
    except RuntimeError:
        raise FeatxError(f"unknown device {device!r}; use {DEVICES_HELP}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FeatxError(
            f"--device {device} asked for CUDA but none is available; use --device cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise FeatxError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FeatxError(f"--device {device} asked for MPS but it is not available; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise FeatxError(f"unsupported device {device!r}; use {DEVICES_HELP}")
    return dev


def resolve_precision(precision: str, device: Any) -> str:
    """``auto``: bf16 on CUDA, fp32 elsewhere."""
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise FeatxError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return p


def amp_dtype_of(precision: str) -> Any:
    """The autocast dtype of a resolved precision (None for fp32)."""
    import torch

    name = AMP_DTYPES[precision]
    return None if name is None else getattr(torch, name)
