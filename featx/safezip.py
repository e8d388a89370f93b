"""Reading a zip file someone else wrote within bounded time and memory: the one mechanism every
bundle loader uses (head bundles in :mod:`featx.bundle`, fine-tuned bundles in
:mod:`featx.finetuning.bundle`).

Every check happens before the bytes are read: the number of members, each member's declared
size against a limit, its compression ratio (a zip bomb inflates a few kilobytes to gigabytes),
and a ``.npy`` member's header against the bytes that follow it (a 200-byte header may claim
``(10**12,)`` float64s). JSON documents are refused beyond a nesting depth. A violation raises
:class:`ZipLimitError` (a ``ValueError``) with the reason; the loader turns it into its one-line
"damaged or forged" message.

Examples
--------
>>> import io, zipfile, numpy as np
>>> buf = io.BytesIO()
>>> a = io.BytesIO(); np.lib.format.write_array(a, np.arange(3))
>>> with zipfile.ZipFile(buf, "w") as z:
...     z.writestr("a.npy", a.getvalue())
>>> with zipfile.ZipFile(buf) as z:
...     read_npy(read_member(z, "a.npy", 1 << 20), "a.npy").tolist()
[0, 1, 2]
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

__all__ = [
    "MAX_DEPTH",
    "MAX_MEMBERS",
    "MAX_RATIO",
    "ZipLimitError",
    "check_members",
    "json_depth",
    "load_json",
    "read_member",
    "read_npy",
]

MAX_MEMBERS = 10_000
MAX_RATIO = 100  # uncompressed / compressed size of one member above 1 MiB
MAX_DEPTH = 200  # nesting of a JSON document (a real bundle's is < 30)


class ZipLimitError(ValueError):
    """A member, array or document beyond what a genuine file holds."""


def check_members(z: zipfile.ZipFile) -> None:
    n = len(z.infolist())
    if n > MAX_MEMBERS:
        raise ZipLimitError(f"{n} members, more than {MAX_MEMBERS}")


def read_member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One member's bytes, after checking its declared size and ratio; the read stops there."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise ZipLimitError(f"{name} is missing") from None
    if info.file_size > limit:
        raise ZipLimitError(f"{name} declares {info.file_size} bytes, more than {limit}")
    if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(1, info.compress_size):
        raise ZipLimitError(
            f"{name} inflates {info.compress_size} bytes to {info.file_size} (a zip bomb)"
        )
    with z.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ZipLimitError(f"{name} is not the size its header declares")
    return data


def read_npy(data: bytes, name: str) -> np.ndarray:
    """An array from ``.npy`` bytes whose header must describe exactly the bytes that follow
    (numbers and strings only; never pickled objects)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"npy version {version}")
    except ValueError as e:
        raise ZipLimitError(f"{name} has a bad array header ({e})") from None
    if dtype.hasobject or dtype.kind not in "biufcU":
        raise ZipLimitError(f"{name} holds {dtype} values, which a bundle never does")
    if any(int(n) < 0 for n in shape):
        raise ZipLimitError(f"{name} declares the shape {shape}")
    n = 1
    for d in shape:
        n *= int(d)
    if n * dtype.itemsize != len(data) - buf.tell():
        raise ZipLimitError(
            f"{name} declares the shape {shape} ({n * dtype.itemsize} bytes) but holds "
            f"{len(data) - buf.tell()} bytes"
        )
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def json_depth(tree: Any) -> int:
    """Nesting depth of a JSON value (stops counting past :data:`MAX_DEPTH`), without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def load_json(text: bytes | str, name: str) -> Any:
    """``json.loads`` that refuses documents nested beyond :data:`MAX_DEPTH`."""
    try:
        tree = json.loads(text)
    except RecursionError:
        raise ZipLimitError(f"{name} is nested too deeply") from None
    if json_depth(tree) > MAX_DEPTH:
        raise ZipLimitError(f"{name} is nested more than {MAX_DEPTH} levels deep")
    return tree
