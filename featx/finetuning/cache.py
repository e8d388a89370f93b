"""A backbone that also returns the activations at a cut: what ``--cache-activations`` runs.

:func:`with_activations` wraps a loaded backbone so that one forward pass gives both named
outputs the store keeps: ``features`` (the pooled embedding, computed as prefix then tail, equal
to the backbone's own) and ``activations`` (the prefix's output at the cut; for text also
``activation_mask``, padded to ``max_seq_length``). Its ``config()`` is the backbone's: the
features are the same. What it adds is ``store_outputs``, the spec of the extra outputs (name ->
cut, shape per item, stored dtype), which the store configuration records, so a store with
activations is its own file with the same incremental, resume and verify guarantees.

Imports torch inside functions only.
"""

from __future__ import annotations

import math
from typing import Any

#: How cached activations are stored.
ACTIVATIONS_DTYPE = "float16"
ACTIVATIONS = "activations"
ACTIVATION_MASK = "activation_mask"


class ActivationsBackbone:
    """``backbone`` plus the activations at ``cut`` as extra named outputs (see the module)."""

    def __init__(self, backbone: Any, cut: str | int | None) -> None:
        from featx.finetuning.cuts import cut_backbone

        cm = cut_backbone(backbone, cut)
        self._bb = backbone
        self.cut = cm.cut
        self.kind = cm.kind
        self.model = _caching_model(cm, backbone)
        if cm.kind == "text":
            t = int(backbone.preprocess.max_seq_length)
            width = int(getattr(backbone.model.transformer.config, "hidden_size", backbone.dim))
            self.store_outputs = {
                ACTIVATIONS: {
                    "cut": cm.cut,
                    "shape": [t, width],
                    "dtype": ACTIVATIONS_DTYPE,
                    "label": f"acts-{cm.cut}",
                },
                ACTIVATION_MASK: {"cut": cm.cut, "shape": [t], "dtype": "uint8"},
            }
        else:
            shape = _probe_shape(cm.prefix, backbone.preprocess.crop_size)
            self.store_outputs = {
                ACTIVATIONS: {
                    "cut": cm.cut,
                    "shape": list(shape),
                    "dtype": ACTIVATIONS_DTYPE,
                    "label": f"acts-{cm.cut}",
                }
            }

    def __getattr__(self, name: str) -> Any:  # name, weights, dim, preprocess, tokenizer, ...
        if name.startswith("__") or name == "_bb":
            raise AttributeError(name)
        return getattr(self._bb, name)

    def config(self) -> dict[str, Any]:
        return self._bb.config()

    def output_attrs(self) -> dict[str, dict[str, Any]]:
        """Provenance attributes of the extra outputs in the store (``outputs/<name>``)."""
        return {k: dict(v) for k, v in self.store_outputs.items()}

    def bytes_per_item(self) -> int:
        """Uncompressed bytes of the extra outputs of one item."""
        import numpy as np

        return sum(
            math.prod(spec["shape"]) * np.dtype(spec["dtype"]).itemsize
            for spec in self.store_outputs.values()
        )

    def size_estimate(self, n_items: int) -> str:
        """A line for the log: the cache's size per item and for ``n_items``."""
        per = self.bytes_per_item()
        shape = "x".join(str(s) for s in self.store_outputs[ACTIVATIONS]["shape"])
        return (
            f"cached activations at {self.cut}: {shape} {ACTIVATIONS_DTYPE} = {_human(per)} per "
            f"item, {_human(per * n_items)} for {n_items} items before compression"
        )


def with_activations(backbone: Any, cut: str | int | None) -> ActivationsBackbone:
    """``backbone`` that also returns its activations at ``cut`` (see :class:`ActivationsBackbone`).

    Raises FeatxError for a family or architecture featx cannot cut, or an unknown cut (listing
    the valid ones).
    """
    return ActivationsBackbone(backbone, cut)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _probe_shape(prefix: Any, size: int) -> tuple[int, ...]:
    import torch

    with torch.no_grad():
        out = prefix.eval()(torch.zeros(1, 3, size, size))
    return tuple(int(s) for s in out.shape[1:])


def _caching_model(cm: Any, backbone: Any) -> Any:
    import torch
    from torch import nn

    tail = cm.tail(None).eval()

    if cm.kind == "text":
        limit = int(backbone.preprocess.max_seq_length)

        class TextCaching(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.prefix = cm.prefix
                self.tail = tail

            def forward(self, ids: Any, mask: Any, type_ids: Any = None) -> dict[str, Any]:
                h = self.prefix(ids, mask, type_ids)
                feats = self.tail.embed(h, mask)
                pad = limit - h.shape[1]
                if pad > 0:
                    h = torch.nn.functional.pad(h, (0, 0, 0, pad))
                    mask = torch.nn.functional.pad(mask, (0, pad))
                return {
                    "features": feats.float(),
                    ACTIVATIONS: h.float(),
                    ACTIVATION_MASK: mask.to(torch.uint8),
                }

        return TextCaching().eval()

    class Caching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.prefix = cm.prefix
            self.tail = tail

        def forward(self, x: Any) -> dict[str, Any]:
            a = self.prefix(x)
            return {"features": self.tail.embed(a).float(), ACTIVATIONS: a.float()}

    return Caching().eval()
