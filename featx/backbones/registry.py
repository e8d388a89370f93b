"""The backbone family table and the types every family shares (a leaf: imports no family).

A *family* is a set of backbone names with one way of building them: ``featx`` (models embedded
in featx's dependencies), ``torchvision`` and ``timm`` today. Each family module describes itself
with a :class:`Family` record and calls :func:`register_family` when it is imported; the built-in
family modules are imported on the first lookup (see :func:`families`). Adding a family means
writing one module with ``resolve``, ``list_infos`` and ``build`` functions and registering it:

>>> from featx.backbones.registry import Family, register_family, unregister_family
>>> fam = Family(name="mine", resolve=lambda n: n if n == "mine_net" else None,
...              list_infos=lambda pattern: [], build=lambda req: None, prefix="mine/")
>>> register_family(fam)
>>> register_family(fam)
Traceback (most recent call last):
...
ValueError: backbone family 'mine' is already registered
>>> unregister_family("mine")

Nothing here imports torch: the :class:`Backbone` model type is only named in annotations.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from featx.preprocess import Preprocess

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Bump when featx changes how a backbone computes its features (it is part of ``config()``).
FEATURES_VERSION = 1

#: The modules of the built-in families, imported (and so registered) on the first lookup.
BUILTIN_FAMILY_MODULES = (
    "featx.backbones._lite0",
    "featx.backbones._torchvision",
    "featx.backbones._timm",
    "featx.backbones._text",
)


@dataclass(frozen=True)
class BackboneInfo:
    """What ``featx backbones`` shows for one name, found without loading weights.

    Attributes
    ----------
    name : str
        The name :func:`load_backbone` accepts.
    family : {"featx", "torchvision", "timm"}
    dim : int or None
        Size of the default (pooled penultimate) embedding; None where finding it would need a
        model build per name (long timm listings).
    input_size : int
        Crop size of the default weights' preprocessing.
    weights : str
        Where the default weights come from, e.g. ``"torchvision IMAGENET1K_V2 (cached)"``.
    """

    name: str
    family: str
    dim: int | None
    input_size: int
    weights: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class BackboneLike(Protocol):
    """What the extraction engine needs from a backbone (structural: any object with these).

    :class:`Backbone` is one; a test or a plugin may pass its own object with the same attributes.
    An optional ``modality`` attribute says what it takes (``"image"`` when absent; see
    :func:`featx.modalities.modality_of`).
    """

    name: str
    weights: str
    weights_sha256: str | None
    layer: str
    pool: str
    dim: int
    preprocess: Preprocess
    model: torch.nn.Module

    def config(self) -> dict[str, Any]:
        """Everything that identifies the features, as JSON-able data."""
        ...


@dataclass(frozen=True, eq=False)
class Backbone:
    """A loaded, frozen, eval-mode feature model plus the facts that identify its features.

    Attributes
    ----------
    name : str
        Canonical name: ``"resnet50"``, ``"timm/resnet18"``, ``"efficientnet_lite0"``.
    family : {"featx", "torchvision", "timm"}
    weights : str
        Weights id: a torchvision enum name (``"IMAGENET1K_V2"``), a timm tag (``"a1_in1k"``),
        ``"IMAGENET1K_V1"`` for the embedded Lite0, ``"none"`` (seeded random init) or
        ``"file:<basename>"``.
    weights_sha256 : str or None
        sha256 of the weights file, where there is one.
    layer : str
        The layer whose output is the feature: ``"pre_logits"`` (the pooled penultimate embedding,
        what the classifier sees), ``"feature_map"`` (the last feature map before the model's own
        pooling) or a module path from ``model.body.named_modules()``.
    pool : str
        The pooling applied: ``avg``, ``max``, ``gem``, ``avgmax``, ``cls`` or ``none``. For
        ``pre_logits`` it is the model's own (``avg`` for CNNs, ``cls`` for ViTs, ...).
    preprocess : Preprocess
        The preprocessing that belongs to the weights, with ``image_size`` applied.
    dim : int
        Feature dimension D.
    model : torch.nn.Module
        Eval mode, ``requires_grad=False``; ``model(x)`` maps a normalized float batch
        (B, 3, H, W) to float32 features (B, D), or to named per-row outputs (a dict holding
        ``"features"``, see :mod:`featx.engines`).
    modality : str
        What it takes: ``"image"`` (a text encoder, :class:`~featx.backbones._text.TextBackbone`,
        says ``"text"``); extraction picks the engine and the source reading by it.
    """

    name: str
    family: str
    weights: str
    weights_sha256: str | None
    layer: str
    pool: str
    preprocess: Preprocess
    dim: int
    model: torch.nn.Module = field(repr=False)
    modality: str = "image"

    def config(self) -> dict[str, Any]:
        """Everything that identifies the features, as JSON-able data (the store hashes it)."""
        return {
            "name": self.name,
            "family": self.family,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "pool": self.pool,
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
            "features_version": FEATURES_VERSION,
        }


@dataclass
class Body:
    """What :attr:`Family.build` returns: the network without its classifier, and its facts."""

    model: torch.nn.Module  # forward(x) -> the pooled penultimate embedding
    weights: str
    weights_sha256: str | None
    preprocess: Preprocess
    default_pool: str  # what model(x) does, e.g. "avg" or "cls"
    feature_map: tuple[str, str, str | None]  # (source, target, post): reach the last map
    layout: str = "NCHW"  # of 4-D maps inside this model
    prefix_tokens: int = 0  # class/register tokens at the start of 3-D outputs


@dataclass(frozen=True)
class LoadRequest:
    """Arguments of :func:`~featx.backbones.load_backbone`, normalized, as a family gets them."""

    name: str  # the family's own name (without its prefix, with a weights tag if one was given)
    weights: str | None  # "DEFAULT", a family-specific id, or None for random init
    weights_file: str | None
    image_size: int | None


@dataclass(frozen=True)
class Family:
    """One backbone family: how its names are recognised, listed and built.

    Parameters
    ----------
    name : str
        The family's name, e.g. ``"torchvision"`` (``Backbone.family``).
    resolve : callable
        ``resolve(name) -> canonical name or None``: whether this family owns ``name`` (the user's
        name, its ``prefix`` already removed). It may raise FeatxError for a name that carries
        the family's prefix but names nothing (with suggestions).
    list_infos : callable
        ``list_infos(pattern) -> list of BackboneInfo`` for a lower-case shell pattern (the
        ``prefix`` removed).
    build : callable
        ``build(LoadRequest) -> Body``: the network without its classifier and its facts.
    prefix : str, default=""
        Names of this family start with it (``"timm/"``); a family with a prefix is only asked
        about names and patterns that carry it.
    names : callable, optional
        ``names() -> sequence of str``: the names to suggest when a name is unknown.
    listed_by_default : bool, default=True
        Whether ``list_backbones()`` without a prefix lists this family.
    load : callable, optional
        For a family that is not made of image classifiers (text encoders):
        ``load(spec) -> backbone`` builds the whole backbone itself from the
        :class:`~featx.options.BackboneSpec` (whole; its ``name`` is the family's own name, the
        prefix removed) and rejects the fields it cannot honour; ``build`` is then not called.
    modality : str, default="image"
        What its backbones take (their ``modality``); a registered :mod:`featx.modalities`
        name.
    layers : callable, optional
        ``layers(backbone, spec, pool) -> (model, records)``: the family's way of adding layers
        to one forward pass (``featx extract --layers``), used by
        :func:`featx.backbones.layers.with_layers`. ``model`` returns named outputs (a dict
        holding ``"features"``); ``records`` holds one dict per extra output, with at least
        ``name``, ``pool`` and ``dim`` (more keys are provenance, written beside the group).
        None: the image families' shared way (forward hooks on module paths).
    layer_shorthands : tuple of str, default=("stages", "last:N")
        The layer-spec shorthands the family understands, as shown in help and errors.
    """

    name: str
    resolve: Callable[[str], str | None]
    list_infos: Callable[[str], list[BackboneInfo]]
    build: Callable[[LoadRequest], Body]
    prefix: str = ""
    names: Callable[[], Sequence[str]] = tuple
    listed_by_default: bool = True
    load: Callable[..., Any] | None = None
    modality: str = "image"
    layers: Callable[..., Any] | None = None
    layer_shorthands: tuple[str, ...] = ("stages", "last:N")


_FAMILIES: dict[str, Family] = {}
_builtins_loaded = False


def register_family(family: Family) -> None:
    """Add a backbone family; raises ValueError when its name is taken (as torchvision's
    ``register_model`` does). Lookups try the built-in families first, then the others in
    registration order."""
    if family.name in _FAMILIES:
        raise ValueError(f"backbone family {family.name!r} is already registered")
    _FAMILIES[family.name] = family


def unregister_family(name: str) -> None:
    """Remove a family (tests and plugins that register temporary ones)."""
    _FAMILIES.pop(name, None)


def families() -> list[Family]:
    """The registered families in lookup order: the built-in ones first (imported on the first
    call), then the others in registration order."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for mod in BUILTIN_FAMILY_MODULES:
            importlib.import_module(mod)
    order = {m: i for i, m in enumerate(BUILTIN_FAMILY_MODULES)}
    regs = list(_FAMILIES.values())
    return sorted(
        regs,
        key=lambda f: (order.get(getattr(f.build, "__module__", ""), len(order)), regs.index(f)),
    )


def get_family(name: str) -> Family:
    """The family called ``name``; KeyError when there is none."""
    families()
    return _FAMILIES[name]


# ---------------------------------------------------------------------------------------------
# helpers the families share


def close_names(word: str, choices: Sequence[str], n: int = 5) -> str:
    """A ``"; did you mean a, b?"`` fragment (empty when nothing is close)."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def seeded(fn: Callable[[], Any], seed: int = 0) -> Any:
    """Call ``fn`` with the CPU RNG seeded, leaving the global RNG state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()
