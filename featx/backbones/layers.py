"""A backbone that returns several layers in one pass: ``featx extract --layers``.

:func:`with_layers` wraps a loaded backbone, image or text, so that its model returns named
outputs (``{"features": pooled embedding, "<layer>": pooled layer output, ...}``, the engines'
named outputs contract) from one forward pass, and its configuration records every layer with
its pooling and size, so a store of other layers is another store and a bundle can rebuild the
same outputs.

How a family adds layers is the family's own (``Family.layers`` in
:mod:`featx.backbones.registry`): image families share forward hooks on module paths
(``stages``, ``last:N``, module paths; :func:`featx.backbones._features.resolve_layers`); the
text family pools the encoder's hidden states (``last:N``, ``all``, ``hidden_states.K``; see
:mod:`featx.backbones._text`). Everything after the model (engines, store, verify, predict) is
the same for both.
"""

from __future__ import annotations

from typing import Any

from featx.errors import FeatxError


class LayeredBackbone:
    """``backbone`` whose model returns named outputs: the embedding and more layers.

    Every attribute not set here (``name``, ``dim``, ``preprocess``, ``tokenizer``, ...) is the
    wrapped backbone's. ``layers`` holds one record per extra output, in forward order
    (``{"name", "pool", "dim", ...}``); the pooled embedding stays ``"features"`` of size
    ``dim``.
    """

    def __init__(self, backbone: Any, model: Any, layers: tuple[dict[str, Any], ...]) -> None:
        self._bb = backbone
        self.model = model
        self.layers = tuple(dict(r) for r in layers)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_bb":
            raise AttributeError(name)
        return getattr(self._bb, name)

    def __repr__(self) -> str:
        names = ", ".join(r["name"] for r in self.layers)
        return f"LayeredBackbone({self._bb.name!r}, layers=[{names}])"

    def config(self) -> dict[str, Any]:
        cfg = self._bb.config()
        cfg["layers"] = [dict(r) for r in self.layers]
        return cfg

    def output_attrs(self) -> dict[str, dict[str, Any]]:
        """Provenance of each extra output (attributes of its ``outputs/<name>`` dataset)."""
        out = {}
        for r in self.layers:
            attrs = {"layer": r["name"], **{k: v for k, v in r.items() if k != "name"}}
            out[r["name"]] = attrs
        return out

    @property
    def output_dims(self) -> dict[str, int]:
        """Size of every named output, ``"features"`` first."""
        return {"features": int(self._bb.dim), **{r["name"]: int(r["dim"]) for r in self.layers}}


def layer_names(spec: Any) -> str:
    """A layer spec from a stored ``config.backbone.layers`` list (names joined by commas)."""
    if isinstance(spec, list | tuple):
        return ",".join(str(x["name"] if isinstance(x, dict) else x) for x in spec)
    return str(spec)


def image_layers(bb: Any, spec: str, pool: str | None) -> tuple[Any, tuple[dict[str, Any], ...]]:
    """The image families' ``Family.layers``: forward hooks on module paths of the feature
    model, each layer pooled by its rank (:func:`featx.backbones._features.multi_layer_model`)."""
    from featx.backbones._features import FeatureModel, multi_layer_model

    model = getattr(bb, "model", None)
    if not isinstance(model, FeatureModel):
        raise FeatxError(
            f"--layers applies to backbones loaded by featx; {getattr(bb, 'name', bb)} has no "
            "feature model to tap"
        )
    mm, dims, pools = multi_layer_model(model, spec, bb.preprocess.crop_size, bb.name, pool)
    return mm, tuple({"name": n, "pool": pools[n], "dim": dims[n]} for n in mm.layers)


def _family_layers(bb: Any) -> Any:
    """The function that adds layers to ``bb``: its family's ``layers``, else the image one."""
    from featx.backbones.registry import get_family

    try:
        fam = get_family(str(getattr(bb, "family", "")))
    except KeyError:
        fam = None
    if fam is not None and fam.layers is not None:
        return fam.layers
    if getattr(bb, "modality", "image") != "image":
        raise FeatxError(
            f"--layers: the {getattr(bb, 'modality', '?')} backbone {getattr(bb, 'name', bb)} "
            "has no family that adds layers; extract one --layer per store and fuse them (A+B)"
        )
    return image_layers


def with_layers(bb: Any, spec: str | list[Any], pool: str | None = None) -> Any:
    """``bb`` with the layers of ``spec`` added as named outputs of its one forward pass.

    ``spec`` is a comma-separated layer spec (the family's shorthands and layer names), or the
    ``layers`` list a store's configuration recorded (a bundle rebuilds the same outputs).

    A wrapper that must stay outermost because its model taps the whole pass (the cached
    activations of :func:`featx.finetuning.cache.with_activations`) offers ``inner`` and
    ``rewrap(inner)``: the layers are added to ``inner`` and the wrapper is put back on top, so
    ``with_layers`` and ``with_activations`` stack in either order.

    Raises
    ------
    FeatxError
        A backbone whose family cannot add layers, an unknown layer (listing the family's
        shorthands and the closest names), a layer that never runs.
    """
    rewrap = getattr(bb, "rewrap", None)
    if rewrap is not None:  # a wrapper that taps the whole pass (cached activations) stays on top
        return rewrap(with_layers(bb.inner, spec, pool))
    if isinstance(bb, LayeredBackbone):
        raise FeatxError("this backbone already has --layers")
    model, records = _family_layers(bb)(bb, layer_names(spec), pool)
    for r in records:
        if not {"name", "pool", "dim"} <= set(r):
            raise TypeError(f"a family's layer record needs name, pool and dim: {r!r}")
    return LayeredBackbone(bb, model, records)
