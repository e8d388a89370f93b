"""Item keys as bytes-safe values, for every format that only takes UTF-8 (Arrow, Parquet).

A key is usually a path below the source folder. File names are bytes; Python holds the ones
that are not UTF-8 as ``surrogateescape`` characters (``os.fsdecode``), which Arrow's ``string``
type refuses. Every place a key crosses into Arrow goes through here:

- :func:`arrow_keys` gives an Arrow array that holds every key exactly: ``string`` when all keys
  are valid UTF-8 (the common case, unchanged for readers), else ``binary`` with the raw bytes
  (``always_binary=True`` for internal carriers such as the Ray engine's rows);
- :func:`key_from` turns what comes back (``bytes`` or ``str``) into the key again.

Examples
--------
>>> k = "caf\\udce9.png"  # the Latin-1 byte 0xe9 in a file name
>>> key_bytes(k)
b'caf\\xe9.png'
>>> key_from(key_bytes(k)) == k
True
>>> all_utf8(["a.png", k])
False
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["all_utf8", "arrow_keys", "key_bytes", "key_from"]


def key_bytes(key: str) -> bytes:
    """The bytes a key stands for (a file name's bytes as the file system has them)."""
    return key.encode("utf-8", "surrogateescape")


def key_from(value: bytes | str | None) -> str:
    """A key back from bytes (or a str, unchanged); None -> ""."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def all_utf8(keys: Iterable[str]) -> bool:
    """Whether every key is valid UTF-8 text (no escaped bytes)."""
    try:
        for k in keys:
            k.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def arrow_keys(keys: Sequence[str], *, always_binary: bool = False) -> Any:
    """An Arrow array holding ``keys`` exactly: ``string`` if all are UTF-8, else ``binary``."""
    import pyarrow as pa

    values = [str(k) for k in keys]
    if not always_binary and all_utf8(values):
        return pa.array(values, type=pa.string())
    return pa.array([key_bytes(k) for k in values], type=pa.binary())
