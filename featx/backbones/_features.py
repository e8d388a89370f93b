"""Turning a network into a feature function: tap a layer, pool it, return (B, D).

Imports torch at module level: import it lazily (``featx.backbones`` does).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from featx.errors import FeatxError
from featx.options import POOLS as POOLS  # the pools a user may ask for (also the CLI)

logger = logging.getLogger(__name__)

#: Which pools make sense for an output of each rank (batch dimension included).
POOLS_BY_NDIM = {
    4: ("avg", "max", "gem", "avgmax", "none"),
    3: ("cls", "avg", "max", "none"),
    2: ("none", "avg"),
}
GEM_P = 3.0
GEM_EPS = 1e-6

#: Reserved layer name for the pooled penultimate embedding (what the classifier sees).
PRE_LOGITS = "pre_logits"
#: Reserved layer name for the last feature map before the model's own pooling.
FEATURE_MAP = "feature_map"


def pool_features(
    y: torch.Tensor, pool: str, *, layout: str = "NCHW", prefix_tokens: int = 0
) -> torch.Tensor:
    """Reduce a layer output to (B, D) float32.

    Parameters
    ----------
    y : Tensor
        (B, C, H, W) feature map (or (B, H, W, C) when ``layout="NHWC"``), (B, T, C) tokens, or
        (B, D) vectors.
    pool : str
        ``avg``, ``max``, ``gem`` (generalized mean, p=3, clamp 1e-6), ``avgmax`` (avg and max
        concatenated, 2C) for maps; ``cls`` (token 0), ``avg``/``max`` over the patch tokens
        (prefix tokens such as cls/registers excluded) for tokens; ``none`` flattens.
    layout : {"NCHW", "NHWC"}
        Layout of 4-D maps.
    prefix_tokens : int
        Number of leading non-patch tokens (class and register tokens) in 3-D outputs.
    """
    if y.ndim == 4:
        if layout == "NHWC":
            y = y.permute(0, 3, 1, 2)
        if pool == "avg":
            return y.float().mean(dim=(2, 3))
        if pool == "max":
            return y.float().amax(dim=(2, 3))
        if pool == "gem":
            z = y.float().clamp(min=GEM_EPS).pow(GEM_P).mean(dim=(2, 3))
            return z.pow(1.0 / GEM_P)
        if pool == "avgmax":
            z = y.float()
            return torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1)
        if pool == "none":
            return y.float().flatten(1)
    elif y.ndim == 3:
        if pool == "cls":
            return y[:, 0].float()
        if pool == "avg":
            return y[:, prefix_tokens:].float().mean(dim=1)
        if pool == "max":
            return y[:, prefix_tokens:].float().amax(dim=1)
        if pool == "none":
            return y.float().flatten(1)
    elif y.ndim == 2 and pool in ("none", "avg"):
        return y.float()
    raise ValueError(f"pool {pool!r} does not apply to a {y.ndim}-d output")


class LayerNotRun(RuntimeError):
    """The tapped module was not called during the forward pass."""


class _StopForward(Exception):
    """Raised by the tap hook to skip the rest of the network once the layer has run."""


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


class FeatureModel(nn.Module):
    """A frozen network plus where to read its features and how to pool them.

    ``forward(x)`` maps a normalized float batch (B, 3, H, W) to float32 features (B, D). It is
    a plain ``nn.Module``: move it with ``.to(device, memory_format=torch.channels_last)``, run it
    under ``torch.inference_mode()``/``torch.autocast``, or ``torch.compile`` it (the tap hook and
    its early stop trace without graph breaks).

    Parameters
    ----------
    body : nn.Module
        The network, classifier removed.
    source : {"output", "forward_features", "hook"}
        ``output``: ``body(x)`` already is the pooled embedding. ``forward_features``: timm's last
        feature map. ``hook``: the output of module ``target`` (the first time it runs), captured
        by a forward hook that then stops the forward pass, so later layers cost nothing.
    target : str
        Module path for ``source="hook"``.
    pool : str
        See :func:`pool_features`.
    layout : {"NCHW", "NHWC"}
        Layout of 4-D outputs.
    prefix_tokens : int
        Leading class/register tokens in 3-D outputs.
    post : {None, "relu"}
        Applied before pooling (torchvision DenseNet applies a ReLU after ``features``).
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        source: str = "output",
        target: str = "",
        pool: str = "none",
        layout: str = "NCHW",
        prefix_tokens: int = 0,
        post: str | None = None,
    ) -> None:
        super().__init__()
        if source not in ("output", "forward_features", "hook"):
            raise ValueError(f"unknown source {source!r}")
        self.body = body
        self.source = source
        self.target = target
        self.pool = pool
        self.layout = layout
        self.prefix_tokens = prefix_tokens
        self.post = post
        self._captured: list[torch.Tensor] = []
        if source == "hook":
            module = dict(body.named_modules())[target]
            module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        t = _first_tensor(output)
        if t is None:
            raise TypeError(f"layer {self.target!r} returned {type(output).__name__}")
        self._captured.append(t)
        raise _StopForward

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The raw (unpooled) output of the chosen layer."""
        if self.source == "output":
            y = self.body(x)
        elif self.source == "forward_features":
            y = self.body.forward_features(x)
        else:
            self._captured.clear()
            try:  # noqa: SIM105 -- plain try/except traces under torch.compile without breaks
                self.body(x)
            except _StopForward:
                pass
            if not self._captured:
                raise LayerNotRun(f"layer {self.target!r} did not run in the forward pass")
            y = self._captured.pop()
        if self.post == "relu":
            y = torch.nn.functional.relu(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        return pool_features(y, self.pool, layout=self.layout, prefix_tokens=self.prefix_tokens)

    def extra_repr(self) -> str:
        where = self.target if self.source == "hook" else self.source
        return f"layer={where!r}, pool={self.pool!r}, layout={self.layout}"


class _RawFeatures(nn.Module):
    """``forward`` = ``fm.features`` so ``functional_call`` can reach it."""

    def __init__(self, fm: FeatureModel) -> None:
        super().__init__()
        self.fm = fm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fm.features(x)


def meta_forward(module: nn.Module, size: int) -> torch.Tensor:
    """Run ``module`` on a (1, 3, size, size) input without computing anything.

    Parameters and buffers are swapped for ``meta`` tensors with ``torch.func.functional_call``
    (no copy of the weights). Where a model keeps plain tensor attributes that fails, and a real
    CPU forward of one blank image is used instead.
    """
    tensors = {k: torch.empty_like(v, device="meta") for k, v in module.named_parameters()}
    tensors.update({k: torch.empty_like(v, device="meta") for k, v in module.named_buffers()})
    try:
        with torch.no_grad():
            x = torch.empty(1, 3, size, size, device="meta")
            return torch.func.functional_call(module, tensors, (x,), strict=False)
    except LayerNotRun:
        raise
    except Exception as e:  # an op without a meta kernel, a CPU tensor attribute, ...
        logger.debug("meta forward failed (%s: %s); running one real image", type(e).__name__, e)
    with torch.inference_mode():
        return module(torch.zeros(1, 3, size, size))


def probe(fm: FeatureModel, size: int) -> tuple[int, ...]:
    """Shape of the raw (unpooled) layer output for one image of side ``size``."""
    return tuple(meta_forward(_RawFeatures(fm), size).shape)


def check_pool(pool: str | None, ndim: int, prefix_tokens: int, where: str) -> str:
    """Resolve the default pool for an output of rank ``ndim`` and validate an explicit one."""
    if ndim not in POOLS_BY_NDIM:
        raise FeatxError(
            f"{where} outputs a {ndim}-d tensor; featx handles 2-d vectors, 3-d tokens and "
            "4-d feature maps: choose another --layer"
        )
    if pool is None:
        if ndim == 4:
            return "avg"
        if ndim == 3:
            return "cls" if prefix_tokens > 0 else "avg"
        return "none"
    ok = POOLS_BY_NDIM[ndim]
    if pool == "cls" and ndim == 3 and prefix_tokens == 0:
        raise FeatxError(f"{where} has no class token, so pool 'cls' does not apply; use avg")
    if pool not in ok:
        kind = {4: "a 4-d feature map", 3: "3-d tokens", 2: "a 2-d vector"}[ndim]
        raise FeatxError(
            f"pool {pool!r} does not apply to {where}, which outputs {kind}; use one of {ok}"
        )
    return "none" if ndim == 2 else pool


# ---------------------------------------------------------------------------------------------
# several layers in one pass
# ---------------------------------------------------------------------------------------------

#: Name of the default pooled embedding among the outputs of a multi-layer pass.
FEATURES = "features"
#: Containers whose children are a network's stages, tried in this order (timm ``blocks`` /
#: ``stages``, torchvision ``features``, Hugging Face ``encoder.layer``, ...).
STAGE_CONTAINERS = ("blocks", "stages", "features", "layers", "encoder.layer", "encoder.layers")
#: Layer-spec shorthands (see :func:`resolve_layers`).
LAYER_SHORTHANDS = ("stages", "last:N")


def _is_container(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential | nn.ModuleList) and len(m) > 1


def stage_modules(net: nn.Module) -> list[str]:
    """The module paths of a network's stages (or blocks), in forward order.

    ``layer1``, ``layer2``, ... (torchvision ResNets), else the children of the first of
    :data:`STAGE_CONTAINERS` that is a sequence, else those of the longest sequence among the
    top two levels. Empty when nothing looks like stages.
    """
    import re

    top = dict(net.named_children())
    numbered = sorted(
        (n for n in top if re.fullmatch(r"(layer|stage)\d+", n)), key=lambda n: int(n[5:])
    )
    if len(numbered) > 1:
        return numbered
    modules = dict(net.named_modules())
    for name in STAGE_CONTAINERS:
        m = modules.get(name)
        if m is not None and _is_container(m):
            return [f"{name}.{c}" for c, _ in m.named_children()]
    best: tuple[int, str] | None = None
    for name, m in modules.items():
        big = name and name.count(".") <= 1 and _is_container(m)
        if big and (best is None or len(m) > best[0]):
            best = (len(m), name)
    if best is None:
        return [c for c, _ in net.named_children()] if _is_container(net) else []
    return [f"{best[1]}.{c}" for c, _ in modules[best[1]].named_children()]


def resolve_layers(
    net: nn.Module, spec: str | list[str] | tuple[str, ...], where: str
) -> list[str]:
    """Module paths of a layer spec: comma-separated module paths and shorthands.

    ``stages`` is every stage of :func:`stage_modules`; ``last:N`` its last N. Duplicates are
    dropped, the order kept. An unknown name is a FeatxError listing the shorthands and the
    closest module paths.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    >>> resolve_layers(net, "last:2", "net")
    ['1', '2']
    """
    import difflib

    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise FeatxError(
            f"--layers names no layer; use e.g. stages, last:4 or module paths of {where}"
        )
    modules = [n for n in dict(net.named_modules()) if n]
    stages = stage_modules(net)
    out: list[str] = []
    for tok in tokens:
        low = tok.lower()
        if low == "stages" or low.startswith("last:"):
            if not stages:
                raise FeatxError(
                    f"{where} has no recognisable stages for {tok!r}; name module paths instead, "
                    f"e.g. {', '.join(modules[:3])}"
                )
            if low == "stages":
                out += stages
                continue
            n = low[5:]
            if not n.isdigit() or int(n) < 1:
                raise FeatxError(f"last:N needs a whole number N >= 1; got {tok!r}")
            out += stages[-int(n) :]
        elif tok in (PRE_LOGITS, FEATURES):
            continue  # the pooled embedding is always stored (as "features")
        elif tok in modules:
            out.append(tok)
        else:
            close = difflib.get_close_matches(tok, modules, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            shown = ", ".join(stages[:8]) or ", ".join(modules[:8])
            raise FeatxError(
                f"{where} has no layer {tok!r}{hint} Valid: stages, last:N, or module paths such "
                f"as {shown}"
            )
    return list(dict.fromkeys(out))


def _keep_output(module: nn.Module, inputs: Any, output: Any) -> None:
    """Forward hook of a tapped layer: keep its first output of the pass on the module itself.

    Kept on the module (not in a closure), so a copy of the network (``copy.deepcopy``, as the
    engine's BatchNorm folding makes) taps its own modules.
    """
    if getattr(module, "_featx_kept", None) is None:
        t = _first_tensor(output)
        if t is None:
            raise TypeError(f"a tapped layer returned {type(output).__name__}")
        module._featx_kept = t


class MultiLayerModel(nn.Module):
    """One forward pass, several pooled outputs: ``{"features": (B, D), layer: (B, d), ...}``.

    ``base`` is the backbone's feature model (its output is ``"features"``); a forward hook on
    each extra layer keeps that layer's output (the first time it runs in a pass), pooled with
    ``pools[layer]``. The whole network runs once.
    """

    def __init__(self, base: FeatureModel, layers: list[str], pools: dict[str, str]) -> None:
        super().__init__()
        self.base = base
        self.layers = list(layers)
        self.pools = dict(pools)
        modules = dict(base.body.named_modules())
        for name in self.layers:
            modules[name].register_forward_hook(_keep_output)

    def raw(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unpooled layer outputs and the pooled embedding of one pass."""
        modules = dict(self.base.body.named_modules())
        tapped = [modules[n] for n in self.layers]
        for m in tapped:
            m._featx_kept = None
        try:
            feats = self.base(x)
            got = {n: m._featx_kept for n, m in zip(self.layers, tapped, strict=True)}
        finally:
            for m in tapped:
                m._featx_kept = None
        missing = [n for n, t in got.items() if t is None]
        if missing:
            raise LayerNotRun(f"layer {missing[0]!r} did not run in the forward pass")
        return {FEATURES: feats, **got}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.raw(x)
        out = {FEATURES: raw.pop(FEATURES)}
        for n, y in raw.items():
            out[n] = pool_features(
                y, self.pools[n], layout=self.base.layout, prefix_tokens=self.base.prefix_tokens
            )
        return out


class _RawLayers(nn.Module):
    def __init__(self, mm: MultiLayerModel) -> None:
        super().__init__()
        self.mm = mm

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.mm.raw(x)


def multi_layer_model(
    base: FeatureModel, spec: str | list[str], size: int, where: str, pool: str | None = None
) -> tuple[MultiLayerModel, dict[str, int], dict[str, str]]:
    """A :class:`MultiLayerModel` over ``base`` for a layer spec; -> (model, dims, pools).

    ``dims`` maps every output name (``"features"`` first) to its size, ``pools`` every extra
    layer to its pooling (None ``pool``: avg for maps, cls/avg for tokens, as ``--layer``).
    """
    layers = resolve_layers(base.body, spec, where)
    if base.source == "hook" and layers:
        raise FeatxError(
            "--layers adds layers to the pooled embedding; leave --layer unset (name the layer "
            "in --layers instead)"
        )
    mm = MultiLayerModel(base, layers, {n: "avg" for n in layers})
    try:
        shapes = {n: tuple(t.shape) for n, t in meta_forward(_RawLayers(mm), size).items()}
    except LayerNotRun as e:
        raise FeatxError(f"{e} of {where}; choose another layer (a submodule that runs)") from e
    pools: dict[str, str] = {}
    for n in layers:
        pools[n] = check_pool(pool, len(shapes[n]), base.prefix_tokens, f"layer {n!r} of {where}")
    mm.pools = pools
    dims = {k: int(v.shape[1]) for k, v in meta_forward(mm, size).items()}
    return mm, dims, pools
