"""A backbone that returns several layers in one pass: ``featx extract --layers``.

:func:`with_layers` wraps a loaded image backbone so that its model returns named outputs
(``{"features": pooled embedding, "<layer>": pooled layer output, ...}``, the engines' named
outputs contract) from one forward pass, and its configuration records every layer with its
pooling and size, so a store of other layers is another store and a bundle can rebuild the same
outputs. Layer specs: module paths, ``stages``, ``last:N`` (:func:`featx.backbones._features.
resolve_layers`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from featx.backbones.registry import Backbone
from featx.errors import FeatxError


@dataclass(frozen=True, eq=False)
class LayeredBackbone(Backbone):
    """A :class:`~featx.backbones.registry.Backbone` whose model returns named outputs.

    ``layers`` holds ``(name, pool, dim)`` of every extra output, in forward order; the pooled
    embedding stays ``"features"`` of size ``dim``.
    """

    layers: tuple[tuple[str, str, int], ...] = ()

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["layers"] = [{"name": n, "pool": p, "dim": d} for n, p, d in self.layers]
        return cfg

    def output_attrs(self) -> dict[str, dict[str, Any]]:
        """Provenance of each extra output (attributes of its ``outputs/<name>`` dataset)."""
        return {n: {"layer": n, "pool": p, "dim": d} for n, p, d in self.layers}

    @property
    def output_dims(self) -> dict[str, int]:
        """Size of every named output, ``"features"`` first."""
        return {"features": self.dim, **{n: d for n, _, d in self.layers}}


def layer_names(spec: Any) -> str:
    """A layer spec from a stored ``config.backbone.layers`` list (names joined by commas)."""
    if isinstance(spec, list | tuple):
        return ",".join(str(x["name"] if isinstance(x, dict) else x) for x in spec)
    return str(spec)


def with_layers(bb: Any, spec: str | list[Any], pool: str | None = None) -> LayeredBackbone:
    """``bb`` with the layers of ``spec`` added as named outputs of its one forward pass.

    Raises
    ------
    FeatxError
        A text encoder or another backbone without a feature model, an unknown layer (listing
        the shorthands and the closest module paths), a layer that never runs.
    """
    from featx.backbones._features import FeatureModel, multi_layer_model

    if isinstance(bb, LayeredBackbone):
        raise FeatxError("this backbone already has --layers")
    model = getattr(bb, "model", None)
    if getattr(bb, "modality", "image") != "image" or not isinstance(model, FeatureModel):
        raise FeatxError(
            f"--layers applies to image backbones loaded by featx; {getattr(bb, 'name', bb)} "
            "is not one (for a text encoder use --layer hidden_states.N per store)"
        )
    names = layer_names(spec)
    mm, dims, pools = multi_layer_model(model, names, bb.preprocess.crop_size, bb.name, pool)
    layers = tuple((n, pools[n], dims[n]) for n in mm.layers)
    fields = {f.name: getattr(bb, f.name) for f in dataclasses.fields(Backbone)}
    fields["model"] = mm
    return LayeredBackbone(**fields, layers=layers)
