"""The backbone registry: names -> frozen feature models with their preprocessing.

Three families share one namespace:

* ``featx``: models embedded in featx's dependencies; today ``efficientnet_lite0`` (the default).
* ``torchvision``: every classification model of ``torchvision.models`` under its own name.
* ``timm``: every timm model as ``timm/<name>`` (optionally ``timm/<name>.<tag>``).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from featx.errors import FeatxError
from featx.preprocess import Preprocess

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"
TIMM_PREFIX = "timm/"
FAMILIES = ("featx", "torchvision", "timm")
#: Bump when featx changes how a backbone computes its features (it is part of ``config()``).
FEATURES_VERSION = 1


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
        (B, 3, H, W) to float32 features (B, D).
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
    """What a family hands back: a network without its classifier and its facts (internal)."""

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
    """Arguments of :func:`load_backbone`, normalized (internal)."""

    name: str  # the family's own name (without "timm/")
    weights: str | None  # "DEFAULT", a family-specific id, or None for random init
    weights_file: str | None
    image_size: int | None


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
    from featx.backbones import _lite0

    if not isinstance(name, str) or not name.strip():
        raise FeatxError(f"backbone name must be a non-empty string, not {name!r}")
    raw = name.strip()
    if raw.lower().startswith(TIMM_PREFIX):
        from featx.backbones import _timm

        arch, _tag = _timm.split_name(raw[len(TIMM_PREFIX) :])
        return "timm", TIMM_PREFIX + arch
    for cand in (raw, raw.lower()):
        if cand in _lite0.NAMES:
            return "featx", cand
    from featx.backbones import _torchvision

    tv = _torchvision.names()
    for cand in (raw, raw.lower()):
        if cand in tv:
            return "torchvision", cand
    known = list(_lite0.NAMES) + tv
    close = difflib.get_close_matches(raw.lower(), known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise FeatxError(
        f"unknown backbone {raw!r}; {hint}run `featx backbones` to list them "
        "(timm models are named timm/<model>)"
    )


def close_names(word: str, choices: list[str], n: int = 5) -> str:
    """A ``"; did you mean a, b?"`` fragment (empty when nothing is close)."""
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


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
    from featx.backbones import _lite0

    pat = (pattern or "*").strip().lower() or "*"
    if pat.startswith(TIMM_PREFIX):
        from featx.backbones import _timm

        return _timm.list_infos(pat[len(TIMM_PREFIX) :])
    out = [_lite0.info(n) for n in _lite0.NAMES if fnmatch.fnmatchcase(n, pat)]
    from featx.backbones import _text

    text_info = _text.text_backbone_info()
    if fnmatch.fnmatchcase(text_info["name"], pat):
        out.append(BackboneInfo(**text_info))
    from featx.backbones import _torchvision

    out += [_torchvision.info(n) for n in _torchvision.names() if fnmatch.fnmatchcase(n, pat)]
    return out


# ---------------------------------------------------------------------------------------------
# loading


def _family_module(family: str) -> Any:
    from featx.backbones import _lite0, _timm, _torchvision

    return {"featx": _lite0, "torchvision": _torchvision, "timm": _timm}[family]


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | None = "DEFAULT",
    *,
    weights_file: str | os.PathLike[str] | None = None,
    layer: str | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    max_seq_length: int | None = None,
    normalize: bool | None = None,
) -> Backbone:
    """Load a frozen backbone that maps image batches (or texts) to feature vectors.

    A text encoder name (``all-minilm-l6-v2``, ``hf:PATH``, a model folder) returns a
    :class:`featx.backbones._text.TextBackbone` from
    :func:`~featx.backbones._text.load_text_backbone`, which takes ``weights``, ``layer``,
    ``pool``, ``max_seq_length`` and ``normalize``.

    Parameters
    ----------
    name : str
        ``"efficientnet_lite0"`` (embedded, default), a torchvision model name (``"resnet50"``) or
        ``"timm/<model>[.<tag>]"``. See :func:`list_backbones`.
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
    from featx.backbones import _features, _text

    if _text.is_text_name(name):
        if weights_file is not None or image_size is not None:
            raise FeatxError(
                f"{name} is a text encoder: --weights-file and --image-size do not apply "
                "(give its folder as hf:PATH)"
            )
        return _text.load_text_backbone(  # type: ignore[return-value]
            name,
            weights,
            layer=layer,
            pool=pool,
            normalize=normalize,
            max_seq_length=max_seq_length,
        )
    if max_seq_length is not None or normalize is not None:
        raise FeatxError(
            f"{name} is an image backbone: --max-seq-length and --normalize apply to text "
            "encoders only"
        )
    family, canonical = resolve_name(name)
    w = _norm_weights(weights)
    if pool is not None:
        pool = str(pool).strip().lower()
        if pool not in _features.POOLS:
            raise FeatxError(f"unknown pool {pool!r}; choose one of {', '.join(_features.POOLS)}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8
    ):
        raise FeatxError(f"image size must be an integer >= 8, not {image_size!r}")
    wf = None
    if weights_file is not None:
        wf = os.fspath(os.path.expanduser(os.fspath(weights_file)))
        if not os.path.isfile(wf):
            raise FeatxError(f"weights file {wf} does not exist; check --weights-file")
    own = name.strip()[len(TIMM_PREFIX) :] if family == "timm" else canonical
    req = LoadRequest(name=own, weights=w, weights_file=wf, image_size=image_size)
    body = _family_module(family).build(req)
    if image_size is not None and body.preprocess.crop_size != image_size:
        body.preprocess = body.preprocess.with_image_size(image_size)

    fm, layer_name, used_pool, dim = _feature_model(body, canonical, (layer or "").strip(), pool)
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
        fm = _features.FeatureModel(net, source="output", pool="none")
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


def seeded(fn: Callable[[], Any], seed: int = 0) -> Any:
    """Call ``fn`` with the CPU RNG seeded, leaving the global RNG state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()
