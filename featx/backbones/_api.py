"""Loading and listing backbones by name, over the family table of :mod:`featx.backbones.registry`.

The built-in families share one namespace:

* ``featx``: models embedded in featx's dependencies; today ``efficientnet_lite0`` (the default).
* ``torchvision``: every classification model of ``torchvision.models`` under its own name.
* ``timm``: every timm model as ``timm/<name>`` (optionally ``timm/<name>.<tag>``).
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from featx.backbones.registry import (
    FEATURES_VERSION,
    Backbone,
    BackboneInfo,
    Body,
    LoadRequest,
    close_names,
    families,
    get_family,
)
from featx.errors import FeatxError
from featx.options import DEFAULT_BACKBONE, DEFAULT_WEIGHTS, BackboneSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BACKBONE",
    "FEATURES_VERSION",
    "Backbone",
    "BackboneInfo",
    "list_backbones",
    "load_backbone",
    "resolve_name",
]


# ---------------------------------------------------------------------------------------------
# name resolution


def _norm_weights(weights: Any) -> str | None:
    if weights is None:
        return None
    if hasattr(weights, "name") and not isinstance(weights, str):  # a torchvision WeightsEnum
        weights = weights.name
    if not isinstance(weights, str):
        raise FeatxError(f"weights must be a string such as 'DEFAULT' or 'none', not {weights!r}")
    w = weights.strip()
    if w.lower() in ("none", "random", ""):
        return None
    if w.upper() == "DEFAULT":
        return "DEFAULT"
    return w


def resolve_name(name: str) -> tuple[str, str]:
    """Map a user-given backbone name to ``(family, canonical name)``.

    Examples
    --------
    >>> resolve_name("efficientnet_lite0")
    ('featx', 'efficientnet_lite0')
    >>> resolve_name("timm/resnet18.a1_in1k")
    ('timm', 'timm/resnet18')

    Raises
    ------
    FeatxError
        For an unknown name, with the closest known names.
    """
    if not isinstance(name, str) or not name.strip():
        raise FeatxError(f"backbone name must be a non-empty string, not {name!r}")
    family, canonical, _own = _resolve(name.strip())
    return family, canonical


def _resolve(raw: str) -> tuple[str, str, str]:
    """-> (family, canonical name, the family's own name: ``raw`` without the family prefix)."""
    fams = families()
    for fam in fams:
        if fam.prefix and raw.lower().startswith(fam.prefix.lower()):
            own = raw[len(fam.prefix) :]
            canonical = fam.resolve(own)
            if canonical is not None:
                return fam.name, canonical, own
    for fam in fams:
        if not fam.prefix:
            canonical = fam.resolve(raw)
            if canonical is not None:
                return fam.name, canonical, canonical
    known = [n for fam in fams if not fam.prefix for n in fam.names()]
    close = difflib.get_close_matches(raw.lower(), known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    prefixed = ", ".join(f"{f.name} models are named {f.prefix}<model>" for f in fams if f.prefix)
    raise FeatxError(
        f"unknown backbone {raw!r}; {hint}run `featx backbones` to list them"
        + (f" ({prefixed})" if prefixed else "")
    )


# ---------------------------------------------------------------------------------------------
# listing


def list_backbones(pattern: str | None = None) -> list[BackboneInfo]:
    """Known backbones, optionally filtered with shell wildcards (``fnmatch``).

    The embedded ``efficientnet_lite0`` comes first, then every torchvision classification model.
    timm models (more than a thousand) are listed only when the pattern starts with ``timm/``,
    e.g. ``"timm/*convnext*"``; put a ``.`` in it (``"timm/resnet18.*"``) to list weight tags.
    No weights are loaded: dims come from building the architecture on the ``meta`` device
    (torchvision: all of them in a few seconds, cached per process; timm: only when at most
    64 models match, else ``dim`` is None).

    Parameters
    ----------
    pattern : str, optional
        Case-insensitive wildcard, e.g. ``"*res*"``.

    Returns
    -------
    list of BackboneInfo

    Examples
    --------
    >>> [b.name for b in list_backbones("resnet1*")]
    ['resnet101', 'resnet152', 'resnet18']
    """
    pat = (pattern or "*").strip().lower() or "*"
    fast = _listed_from_catalog(pat)
    if fast is not None:
        return fast
    fams = families()
    for fam in fams:
        if fam.prefix and pat.startswith(fam.prefix.lower()):
            return fam.list_infos(pat[len(fam.prefix) :])
    out: list[BackboneInfo] = []
    for fam in fams:
        if fam.listed_by_default and not fam.prefix:
            out += fam.list_infos(pat)
    return out


def _listed_from_catalog(pat: str) -> list[BackboneInfo] | None:
    """The listing from :mod:`featx.backbones.catalog` (no torch import), when it applies: no
    family prefix in the pattern, and the other registered families listed live after it."""
    from featx.backbones import catalog, registry

    if pat.startswith("timm/"):
        return catalog.list_timm_infos(pat[len("timm/") :])
    if "/" in pat:
        return None
    infos = catalog.list_infos(pat)
    if infos is None:
        return None
    for fam in registry._FAMILIES.values():  # plugins registered so far (built-ins not imported)
        if fam.name not in catalog.COVERS and fam.listed_by_default and not fam.prefix:
            infos += fam.list_infos(pat)
    return infos


# ---------------------------------------------------------------------------------------------
# loading


def load_backbone(
    name: str | BackboneSpec = DEFAULT_BACKBONE,
    weights: str | None = DEFAULT_WEIGHTS,
    *,
    weights_file: str | os.PathLike[str] | None = None,
    layer: str | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    max_seq_length: int | None = None,
    normalize: bool | None = None,
) -> Backbone:
    """Load a frozen backbone that maps image batches (or texts) to feature vectors.

    A text encoder (``all-minilm-l6-v2``, ``hf:PATH``, a local model folder) comes back as a
    :class:`featx.backbones._text.TextBackbone` (see
    :func:`~featx.backbones._text.load_text_backbone`): it takes ``weights``, ``layer``,
    ``pool``, ``max_seq_length`` and ``normalize``.

    Parameters
    ----------
    name : str or BackboneSpec
        ``"efficientnet_lite0"`` (embedded, default), a torchvision model name (``"resnet50"``) or
        ``"timm/<model>[.<tag>]"``. See :func:`list_backbones`. A
        :class:`~featx.options.BackboneSpec` supplies every other argument (``weights_file``
        given here wins over the spec's).
    weights : str or None
        ``"DEFAULT"``; a torchvision weights name (``"IMAGENET1K_V1"``) or a timm tag
        (``"a1_in1k"``); ``"none"``/None for a random init (seeded with 0, so repeatable). With no
        weights the preprocessing still is the default weights' one, so features stay comparable.
        torchvision weights come from ``$TORCH_HOME/hub/checkpoints`` (downloaded when missing and
        a network exists); timm weights from the Hugging Face cache.
    weights_file : path, optional
        A local checkpoint for the architecture (raw state dict, or under ``"state_dict"`` or
        ``"model"``; ``module.`` prefixes are stripped). Classifier-head keys may be missing or
        surplus. ``weights`` then only picks the preprocessing (and, for torchvision, the
        architecture settings that go with those weights).
    layer : str, optional
        None (or ``"pre_logits"``): the pooled penultimate embedding. ``"feature_map"``: the last
        feature map before the model's own pooling. Otherwise a module path of the network
        (``dict(backbone.model.body.named_modules())``), read with a forward hook that stops the
        forward pass there.
    pool : {"avg", "max", "gem", "avgmax", "cls", "none"}, optional
        Pooling of the layer output. For 4-D maps: avg, max, gem (p=3), avgmax (concatenated,
        2C) or none (flatten). For 3-D tokens: cls (token 0), avg or max over the patch tokens
        (class/register tokens excluded), none. For 2-D outputs: none. Default: the model's own
        for the default layer; avg for maps and cls (or avg without a class token) for tokens.
        An explicit pool with the default layer pools the last feature map instead.
    image_size : int, optional
        Crop size; the resize size keeps the weights' crop ratio.

    Returns
    -------
    Backbone

    Raises
    ------
    FeatxError
        Unknown name, weights, layer or pool; weights that are not available offline; a
        checkpoint that does not fit.

    Examples
    --------
    >>> bb = load_backbone("resnet18", weights="none", image_size=64)
    >>> bb.dim, bb.pool, bb.preprocess.crop_size
    (512, 'avg', 64)
    """
    wf = None if weights_file is None else os.fspath(weights_file)
    if isinstance(name, BackboneSpec):  # its fields are the arguments
        spec = name if wf is None else replace(name, weights_file=wf)
    else:
        spec = BackboneSpec(name, weights, wf, layer, pool, image_size, max_seq_length, normalize)
    if not isinstance(spec.name, str) or not spec.name.strip():
        raise FeatxError(f"backbone name must be a non-empty string, not {spec.name!r}")
    family, canonical, own = _resolve(spec.name.strip())
    fam = get_family(family)
    if fam.load is not None:  # a family that builds its whole backbone (text encoders)
        return fam.load(replace(spec, name=own))
    return _load_image(family, canonical, replace(spec, name=own))


def _load_image(family: str, canonical: str, spec: BackboneSpec) -> Backbone:
    """An image classifier of ``family`` built from its body, cut at ``spec.layer``."""
    from featx.backbones import _features

    if spec.max_seq_length is not None or spec.normalize is not None:
        raise FeatxError(
            f"{canonical} is an image backbone: --max-seq-length and --normalize apply to text "
            "encoders only"
        )
    pool, image_size = spec.pool, spec.image_size
    if pool is not None:
        pool = str(pool).strip().lower()
        if pool not in _features.POOLS:
            raise FeatxError(f"unknown pool {pool!r}; choose one of {', '.join(_features.POOLS)}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8
    ):
        raise FeatxError(f"image size must be an integer >= 8, not {image_size!r}")
    wf = None
    if spec.weights_file is not None:
        wf = os.fspath(os.path.expanduser(spec.weights_file))
        if not os.path.isfile(wf):
            raise FeatxError(f"weights file {wf} does not exist; check --weights-file")
    req = LoadRequest(
        name=spec.name, weights=_norm_weights(spec.weights), weights_file=wf, image_size=image_size
    )
    body = get_family(family).build(req)
    if image_size is not None and body.preprocess.crop_size != image_size:
        body.preprocess = body.preprocess.with_image_size(image_size)
    layer = (spec.layer or "").strip()
    fm, layer_name, used_pool, dim = _feature_model(body, canonical, layer, pool)
    bb = Backbone(
        name=canonical,
        family=family,
        weights=body.weights,
        weights_sha256=body.weights_sha256,
        layer=layer_name,
        pool=used_pool,
        preprocess=body.preprocess,
        dim=dim,
        model=fm,
    )
    logger.info(
        "loaded %s (weights %s, layer %s, pool %s, dim %d, %s px)",
        bb.name,
        bb.weights,
        bb.layer,
        bb.pool,
        bb.dim,
        bb.preprocess.crop_size,
    )
    return bb


def _feature_model(
    body: Body, canonical: str, layer: str, pool: str | None
) -> tuple[torch.nn.Module, str, str, int]:
    """Wrap ``body`` so it returns the requested features; -> (model, layer, pool, dim)."""
    from featx.backbones import _features

    net = body.model
    net.eval()
    net.requires_grad_(False)
    own_embedding = layer in ("", _features.PRE_LOGITS) and pool is None
    if own_embedding:
        # the layout tells --layers how this model's 4-D maps are laid out (Swin: NHWC); the
        # class token count stays 0 here, as the layer groups of ViT stores were defined with
        fm = _features.FeatureModel(net, source="output", pool="none", layout=body.layout)
        layer_name, where = _features.PRE_LOGITS, canonical
    else:
        if layer in ("", _features.PRE_LOGITS, _features.FEATURE_MAP):
            source, target, post = body.feature_map
            layer_name, where = _features.FEATURE_MAP, f"the last feature map of {canonical}"
        else:
            modules = list(dict(net.named_modules()))
            if layer not in modules:
                raise FeatxError(
                    f"{canonical} has no layer {layer!r}{close_names(layer, modules)}; layer "
                    f"names are module paths of the network, e.g. {', '.join(modules[1:4])}"
                )
            source, target, post = "hook", layer, None
            layer_name, where = layer, f"layer {layer!r} of {canonical}"
        fm = _features.FeatureModel(
            net,
            source=source,
            target=target,
            pool="none",
            layout=body.layout,
            prefix_tokens=body.prefix_tokens,
            post=post,
        )
    fm.eval()
    fm.requires_grad_(False)
    size = body.preprocess.crop_size
    try:
        shape = _features.probe(fm, size)
    except _features.LayerNotRun as e:
        raise FeatxError(
            f"{where} never runs in the forward pass (a container or an unused branch); "
            "choose one of its submodules"
        ) from e
    except Exception as e:  # the architecture rejects this input size
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise FeatxError(
            f"{where} cannot run at image size {size} ({type(e).__name__}: {msg}); "
            "choose another --image-size or --layer"
        ) from e
    if own_embedding:
        if len(shape) != 2:
            raise RuntimeError(f"{canonical} embedding has shape {shape}, expected (1, D)")
        used_pool = body.default_pool  # applied inside the model; fm itself adds nothing
    else:
        used_pool = _features.check_pool(pool, len(shape), body.prefix_tokens, where)
        fm.pool = used_pool
    out = _features.meta_forward(fm, size)
    if out.ndim != 2 or out.shape[0] != 1:
        raise RuntimeError(f"{canonical} features have shape {tuple(out.shape)}, expected (1, D)")
    return fm, layer_name, used_pool, int(out.shape[1])
