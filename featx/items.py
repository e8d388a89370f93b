"""What a source is made of: :class:`Item` and :class:`Source` (a leaf: imports nothing of featx).

Every source kind (:mod:`featx.sources` for images, :mod:`featx.text.sources` for texts, or a
plugin's module) scans what the user named into a :class:`Source`: the items sorted by key, the
class names, and the reader that turns one item into what its backbone takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SPLIT_ALIASES = {
    "": "",
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class Item:
    """One item (an image, a text) of a source.

    ``size`` and ``mtime_ns`` fingerprint a file (0 for in-memory datasets); ``sha256`` is filled
    only when content hashing was asked for. ``error`` is set when the scan could not read the
    entry (broken link, loop, permission): the item is then recorded as failed, not decoded.
    """

    key: str
    label: int = -1
    split: str = ""
    path: str | None = None
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    error: str = ""


@dataclass
class Source:
    """A scanned source: what to extract, and how its kind reads one item.

    ``read`` is the kind's picklable ``item -> input`` function (a PIL image for images, a
    string for texts); ``modality`` says which backbones take it (``featx.modalities``).
    """

    kind: str  # "imagefolder" | "folder" | "csv" | "torchvision" | "text-csv" | ...
    uri: str  # what identifies the source (absolute path, or torchvision:NAME@root)
    name: str  # short readable name for file names
    classes: tuple[str, ...]
    items: list[Item]
    dataset: Any = field(default=None, repr=False)  # torchvision: {split: dataset object}
    read: Callable[[Item], Any] | None = field(default=None, repr=False)
    modality: str = "image"

    def identity(self) -> dict[str, str]:
        """What makes two sources the same for the store's configuration hash."""
        return {"kind": self.kind, "uri": self.uri}

    @property
    def has_split(self) -> bool:
        return any(it.split for it in self.items)

    def reader(self) -> Callable[[Item], Any]:
        """The picklable function item -> input that the source's kind handed over."""
        if self.read is None:
            raise TypeError(f"source {self.uri} ({self.kind}) was built without a reader")
        return self.read
