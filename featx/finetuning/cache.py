"""A backbone that also returns the activations at a cut: what ``--cache-activations`` runs.

:func:`with_activations` wraps a loaded backbone so that one forward pass gives the named
outputs the store keeps: the backbone's own outputs (``features``, and with ``--layers`` every
layer's group) and ``activations``, the input of the first tail block at the cut (for text also
``activation_mask``, padded to ``max_seq_length``). The activations are *tapped* in the
backbone's own forward pass (a forward pre-hook on the cut's block, kept on that module like the
``--layers`` hooks), so the wrapper composes with any other wrapper whose model runs the
network: plain, or :func:`featx.backbones.layers.with_layers` (in either order:
``with_layers`` on an :class:`ActivationsBackbone` puts the layers under it). Its ``config()`` is
the wrapped backbone's: the features are the same. What it adds is ``store_outputs``, the spec of
the extra outputs (name -> cut, shape per item, stored dtype), which the store configuration
records, so a store with activations is its own file with the same incremental, resume and
verify guarantees.

Imports torch inside functions only.
"""

from __future__ import annotations

import math
from typing import Any

from featx.errors import FeatxError

#: How cached activations are stored.
ACTIVATIONS_DTYPE = "float16"
ACTIVATIONS = "activations"
ACTIVATION_MASK = "activation_mask"


class ActivationsBackbone:
    """``backbone`` plus the activations at ``cut`` as extra named outputs (see the module).

    ``backbone`` may be a plain backbone or a :class:`~featx.backbones.layers.LayeredBackbone`
    (``--layers``): the cut is found in the backbone under it, the activations are tapped in
    the layered model's one pass, next to its groups.
    """

    def __init__(self, backbone: Any, cut: str | int | None) -> None:
        from featx.finetuning.cuts import cut_point

        if isinstance(backbone, ActivationsBackbone):
            raise FeatxError(f"this backbone already caches its activations at {backbone.cut}")
        base = _base(backbone)
        point = cut_point(base, cut)
        self._bb = backbone
        self.cut = point.cut
        self.kind = point.kind
        limit = int(base.preprocess.max_seq_length) if point.kind == "text" else 0
        self.model = _tap_model(backbone.model, point.block, point.kind, limit, base)
        clash = sorted({r["name"] for r in getattr(backbone, "layers", ())} & _NAMES)
        if clash:
            raise FeatxError(
                f"--layers names {clash[0]!r}, the name of the cached activations' output; "
                "name the layer by another module path"
            )
        if point.kind == "text":
            width = int(getattr(base.model.transformer.config, "hidden_size", base.dim))
            self.store_outputs = {
                ACTIVATIONS: {
                    "cut": point.cut,
                    "shape": [limit, width],
                    "dtype": ACTIVATIONS_DTYPE,
                    "label": f"acts-{point.cut}",
                },
                ACTIVATION_MASK: {"cut": point.cut, "shape": [limit], "dtype": "uint8"},
            }
        else:
            shape = _probe_shape(self.model, base.preprocess.crop_size)
            self.store_outputs = {
                ACTIVATIONS: {
                    "cut": point.cut,
                    "shape": list(shape),
                    "dtype": ACTIVATIONS_DTYPE,
                    "label": f"acts-{point.cut}",
                }
            }

    def __getattr__(self, name: str) -> Any:  # name, weights, dim, preprocess, layers, ...
        if name.startswith("__") or name == "_bb":
            raise AttributeError(name)
        return getattr(self._bb, name)

    def __repr__(self) -> str:
        return f"ActivationsBackbone({self._bb!r}, cut={self.cut!r})"

    @property
    def inner(self) -> Any:
        """The wrapped backbone (what :func:`~featx.backbones.layers.with_layers` adds layers to
        before :meth:`rewrap` puts the activations back on top)."""
        return self._bb

    def rewrap(self, inner: Any) -> ActivationsBackbone:
        """The same cut over another backbone (``inner`` with layers added, say)."""
        return ActivationsBackbone(inner, self.cut)

    def config(self) -> dict[str, Any]:
        return self._bb.config()

    def output_attrs(self) -> dict[str, dict[str, Any]]:
        """Provenance attributes of the extra outputs in the store (``outputs/<name>``): the
        wrapped backbone's (layer groups) and the cached activations'."""
        inner = getattr(self._bb, "output_attrs", None)
        out = dict(inner()) if inner is not None else {}
        out.update({k: dict(v) for k, v in self.store_outputs.items()})
        return out

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


_NAMES = frozenset({ACTIVATIONS, ACTIVATION_MASK})


def with_activations(backbone: Any, cut: str | int | None) -> ActivationsBackbone:
    """``backbone`` that also returns its activations at ``cut`` (see :class:`ActivationsBackbone`).

    Raises FeatxError for a family or architecture featx cannot cut, or an unknown cut (listing
    the valid ones).
    """
    return ActivationsBackbone(backbone, cut)


def _base(backbone: Any) -> Any:
    """The backbone under any ``--layers`` wrapper: the one its family cuts."""
    from featx.backbones.layers import LayeredBackbone

    while isinstance(backbone, LayeredBackbone):
        backbone = backbone._bb
    return backbone


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _probe_shape(model: Any, size: int) -> tuple[int, ...]:
    """Shape of the activations of one image (a forward on meta tensors where it can)."""
    from featx.backbones._features import meta_forward

    out = meta_forward(model, size)[ACTIVATIONS]
    return tuple(int(s) for s in out.shape[1:])


def _entry_path(model: Any, block: Any, where: str) -> str:
    """The path in ``model`` of the module that receives the cut's input: ``block`` itself, or
    (a wrapper a cutter built) its first submodule that is a module of ``model``."""
    paths: dict[int, str] = {}
    for name, m in model.named_modules():
        paths.setdefault(id(m), name)
    for m in block.modules():
        if id(m) in paths and paths[id(m)]:
            return paths[id(m)]
    raise FeatxError(f"the cut's block of {where} is not a module of its model; cannot tap it")


def _keep_input(module: Any, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the cut's block: keep its input, the first time it runs while the tap
    is on (kept on the module, so a copy of the network taps its own module)."""
    if getattr(module, "_featx_cut_on", False) and getattr(module, "_featx_cut_in", None) is None:
        import torch

        t = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        module._featx_cut_in = t


def _tap_model(model: Any, block: Any, kind: str, limit: int, base: Any) -> Any:
    import torch
    from torch import nn

    path = _entry_path(model, block, str(getattr(base, "name", "the backbone")))
    target = model.get_submodule(path)
    if not getattr(target, "_featx_cut_hooked", False):
        target.register_forward_pre_hook(_keep_input, with_kwargs=True)
        target._featx_cut_hooked = True

    class CutTap(nn.Module):
        """The wrapped model's own pass plus its input at the cut: named outputs."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.tap = path
            self.kind = kind
            self.limit = limit

        def forward(self, *inputs: Any) -> dict[str, Any]:
            m = self.model.get_submodule(self.tap)
            m._featx_cut_in, m._featx_cut_on = None, True
            try:
                out = self.model(*inputs)
                a = m._featx_cut_in
            finally:
                m._featx_cut_in, m._featx_cut_on = None, False
            if a is None:
                raise FeatxError(f"the cut's block {self.tap!r} did not run in the forward pass")
            out = dict(out) if isinstance(out, dict) else {"features": out}
            if self.kind != "text":
                return {**out, ACTIVATIONS: a.float()}
            mask = inputs[1]
            pad = self.limit - a.shape[1]
            if pad > 0:
                a = torch.nn.functional.pad(a, (0, 0, 0, pad))
                mask = torch.nn.functional.pad(mask, (0, pad))
            return {**out, ACTIVATIONS: a.float(), ACTIVATION_MASK: mask.to(torch.uint8)}

    return CutTap().eval()
