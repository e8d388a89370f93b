"""torchvision classification models, through torchvision's own weights API."""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights

from featx.backbones._checkpoint import load_into, read_state_dict, sha256_file
from featx.backbones.registry import (
    BackboneInfo,
    Body,
    Family,
    LoadRequest,
    close_names,
    register_family,
    seeded,
)
from featx.errors import FeatxError
from featx.preprocess import Preprocess

logger = logging.getLogger(__name__)

#: Where each architecture's last feature map is, before its own pooling/head:
#: class name -> (module path, layout of that output, op applied after it in ``forward``).
#: ``None`` as the path means "computed" (see :func:`_feature_map`).
_FEATURE_MAPS: dict[str, tuple[str | None, str, str | None]] = {
    "AlexNet": ("features", "NCHW", None),
    "ConvNeXt": ("features", "NCHW", None),
    "DenseNet": ("features", "NCHW", "relu"),  # forward: features -> relu -> pool
    "EfficientNet": ("features", "NCHW", None),
    "GoogLeNet": ("inception5b", "NCHW", None),
    "Inception3": ("Mixed_7c", "NCHW", None),
    "MaxVit": (None, "NCHW", None),  # blocks is a ModuleList: its last block
    "MNASNet": ("layers", "NCHW", None),
    "MobileNetV2": ("features", "NCHW", None),
    "MobileNetV3": ("features", "NCHW", None),
    "RegNet": ("trunk_output", "NCHW", None),
    "ResNet": ("layer4", "NCHW", None),
    "ShuffleNetV2": ("conv5", "NCHW", None),
    "SqueezeNet": ("features", "NCHW", None),
    "SwinTransformer": ("norm", "NHWC", None),  # forward: features -> norm -> permute -> pool
    "VGG": ("features", "NCHW", None),
    "VisionTransformer": ("encoder", "tokens", None),  # encoder ends with its LayerNorm
}


#: Default embedding sizes, so that listing all models is instant. A test checks every entry
#: against the architecture built on the meta device; names missing here (a newer torchvision)
#: are measured that way at listing time.
KNOWN_DIMS: dict[str, int] = {
    "alexnet": 4096, "convnext_base": 1024, "convnext_large": 1536, "convnext_small": 768,
    "convnext_tiny": 768, "densenet121": 1024, "densenet161": 2208, "densenet169": 1664,
    "densenet201": 1920, "efficientnet_b0": 1280, "efficientnet_b1": 1280,
    "efficientnet_b2": 1408, "efficientnet_b3": 1536, "efficientnet_b4": 1792,
    "efficientnet_b5": 2048, "efficientnet_b6": 2304, "efficientnet_b7": 2560,
    "efficientnet_v2_l": 1280, "efficientnet_v2_m": 1280, "efficientnet_v2_s": 1280,
    "googlenet": 1024, "inception_v3": 2048, "maxvit_t": 512, "mnasnet0_5": 1280,
    "mnasnet0_75": 1280, "mnasnet1_0": 1280, "mnasnet1_3": 1280, "mobilenet_v2": 1280,
    "mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024, "regnet_x_16gf": 2048,
    "regnet_x_1_6gf": 912, "regnet_x_32gf": 2520, "regnet_x_3_2gf": 1008, "regnet_x_400mf": 400,
    "regnet_x_800mf": 672, "regnet_x_8gf": 1920, "regnet_y_128gf": 7392, "regnet_y_16gf": 3024,
    "regnet_y_1_6gf": 888, "regnet_y_32gf": 3712, "regnet_y_3_2gf": 1512, "regnet_y_400mf": 440,
    "regnet_y_800mf": 784, "regnet_y_8gf": 2016, "resnet101": 2048, "resnet152": 2048,
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnext101_32x8d": 2048,
    "resnext101_64x4d": 2048, "resnext50_32x4d": 2048, "shufflenet_v2_x0_5": 1024,
    "shufflenet_v2_x1_0": 1024, "shufflenet_v2_x1_5": 1024, "shufflenet_v2_x2_0": 2048,
    "squeezenet1_0": 512, "squeezenet1_1": 512, "swin_b": 1024, "swin_s": 768, "swin_t": 768,
    "swin_v2_b": 1024, "swin_v2_s": 768, "swin_v2_t": 768, "vgg11": 4096, "vgg11_bn": 4096,
    "vgg13": 4096, "vgg13_bn": 4096, "vgg16": 4096, "vgg16_bn": 4096, "vgg19": 4096,
    "vgg19_bn": 4096, "vit_b_16": 768, "vit_b_32": 768, "vit_h_14": 1280, "vit_l_16": 1024,
    "vit_l_32": 1024, "wide_resnet101_2": 2048, "wide_resnet50_2": 2048,
}  # fmt: skip


@functools.cache
def names() -> list[str]:
    """torchvision's classification models (``list_models(module=torchvision.models)``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def checkpoint_path(w: Any) -> str:
    """Where ``torch.hub`` keeps the checkpoint of torchvision weights ``w``."""
    filename = os.path.basename(urlparse(w.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def preprocess_of(w: Any) -> Preprocess:
    """The exact preprocessing of ``w.transforms()`` (torchvision's ``ImageClassification``)."""
    t = w.transforms()
    return Preprocess(
        crop_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        interpolation=str(t.interpolation.value),
        mean=tuple(t.mean),
        std=tuple(t.std),
    )


def resolve_weights(name: str, weights: str | None) -> Any:
    """The weights enum member for ``weights`` ("DEFAULT", a member name, or None)."""
    enum = get_model_weights(name)
    if weights is None:
        return None
    if weights == "DEFAULT":
        return enum.DEFAULT
    key = weights.split(".")[-1]  # accept "ResNet50_Weights.IMAGENET1K_V2"
    for cand in (key, key.upper()):
        if cand in enum.__members__:
            return enum[cand]
    valid = [m for m in enum.__members__ if m != "DEFAULT"]
    raise FeatxError(
        f"{name} has no weights {weights!r}{close_names(key.upper(), valid)}; "
        f"choose one of {', '.join(valid)}, DEFAULT or none"
    )


def ensure_checkpoint(w: Any, name: str) -> str:
    """Path of the cached checkpoint of ``w``, downloading it (verified) when missing."""
    path = checkpoint_path(w)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    logger.info("downloading %s weights %s to %s", name, w.name, path)
    hash_match = torch.hub.HASH_REGEX.search(os.path.basename(path))
    try:
        torch.hub.download_url_to_file(
            w.url, path, hash_prefix=hash_match.group(1) if hash_match else None, progress=False
        )
    except Exception as e:  # URLError, HTTPError, hash mismatch, disk full, ...
        reason = str(getattr(e, "reason", "") or e).strip().splitlines()
        raise FeatxError(
            f"cannot download {name} weights {w.name} ({reason[0][:120] if reason else e!r}); "
            f"put the checkpoint at {path}, or pass --weights-file PATH or --weights none"
        ) from e
    return path


#: GoogLeNet and Inception v3 warn that their default init will change; pin the plain one.
_INIT_KWARGS = {"googlenet": {"init_weights": False}, "inception_v3": {"init_weights": False}}


def _arch_kwargs(name: str, w: Any) -> dict[str, Any]:
    """Constructor arguments that torchvision's builder sets for weights ``w`` (for files)."""
    if w is None:
        return dict(_INIT_KWARGS.get(name, {}))
    kw: dict[str, Any] = {"num_classes": len(w.meta["categories"])}
    if name.startswith("vit_"):
        kw["image_size"] = w.meta["min_size"][0]
    if name in ("googlenet", "inception_v3"):
        kw.update(transform_input=True, aux_logits=False, init_weights=False)
    return kw


def strip_head(model: nn.Module) -> str:
    """Replace the final classifier by ``Identity``; return its module path.

    The embedding is the input of the last ``nn.Linear`` in module order (for AlexNet/VGG that
    is the 4096-d output of the second fc layer). SqueezeNet has no Linear: its classifier is
    ``Dropout, Conv2d(512, classes), ReLU, AdaptiveAvgPool2d``, so the conv goes and the
    embedding is the average-pooled 512-channel map.
    """
    if type(model).__name__ == "SqueezeNet":
        model.classifier[1] = nn.Identity()
        return "classifier.1"
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RuntimeError(f"{type(model).__name__} has no Linear classifier")
    path = linears[-1]
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.Identity())
    return path


def _feature_map(model: nn.Module) -> tuple[str, str, str | None]:
    cls = type(model).__name__
    if cls not in _FEATURE_MAPS:
        raise FeatxError(
            f"featx does not know where the feature map of {cls} is; pass --layer NAME"
        )
    target, _layout, post = _FEATURE_MAPS[cls]
    if target is None:  # MaxVit
        target = f"blocks.{len(model.blocks) - 1}"
    return ("hook", target, post)


def _check_patch_size(name: str, size: int) -> None:
    patch = int(name.rsplit("_", 1)[1])  # vit_b_16 -> 16
    if size % patch:
        raise FeatxError(
            f"{name} needs an image size divisible by its patch size {patch}, not {size}; "
            "choose another --image-size"
        )


def _resize_vit(model: nn.Module, name: str, size: int) -> nn.Module:
    """A torchvision ViT for another image size, position embeddings interpolated (bicubic)."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    _check_patch_size(name, size)
    state = interpolate_embeddings(size, model.patch_size, model.state_dict())
    new = get_model(name, weights=None, image_size=size, num_classes=model.num_classes)
    new.load_state_dict(state)
    return new


def build(req: LoadRequest) -> Body:
    name = req.name
    w = resolve_weights(name, req.weights)
    enum = get_model_weights(name)
    prep_w = w if w is not None else enum.DEFAULT
    preprocess = preprocess_of(prep_w)
    if req.image_size is not None:
        preprocess = preprocess.with_image_size(req.image_size)
    sha = None
    if req.weights_file is not None:
        model = seeded(lambda: get_model(name, weights=None, **_arch_kwargs(name, w)))
        head = strip_head(model)
        sd = read_state_dict(req.weights_file)
        load_into(
            model, sd, source=os.path.basename(req.weights_file), target=name, head_prefixes=[head]
        )
        weights_id = f"file:{os.path.basename(req.weights_file)}"
        sha = sha256_file(req.weights_file)
    elif w is not None:
        path = ensure_checkpoint(w, name)
        try:
            model = get_model(name, weights=w, progress=False)
        except Exception as e:  # a truncated or foreign file in the cache
            raise FeatxError(
                f"cannot load {name} weights {w.name} from {path} ({type(e).__name__}); "
                "delete the file to download it again, or pass --weights-file PATH"
            ) from e
        head = strip_head(model)
        weights_id = w.name
        sha = sha256_file(path)
    else:
        kw = _arch_kwargs(name, None)
        if name.startswith("vit_"):
            _check_patch_size(name, preprocess.crop_size)
            kw["image_size"] = preprocess.crop_size
        model = seeded(lambda: get_model(name, weights=None, **kw))
        head = strip_head(model)
        weights_id = "none"
    if type(model).__name__ == "VisionTransformer" and model.image_size != preprocess.crop_size:
        model.heads.head = nn.Linear(model.hidden_dim, model.num_classes)  # shape for rebuild
        model = _resize_vit(model, name, preprocess.crop_size)
        head = strip_head(model)
    logger.debug("%s: removed classifier %s", name, head)
    cls = type(model).__name__
    layout = _FEATURE_MAPS.get(cls, (None, "NCHW", None))[1]
    return Body(
        model=model,
        weights=weights_id,
        weights_sha256=sha,
        preprocess=preprocess,
        default_pool="cls" if cls == "VisionTransformer" else "avg",
        feature_map=_feature_map(model),
        layout="NHWC" if layout == "NHWC" else "NCHW",
        prefix_tokens=1 if cls == "VisionTransformer" else 0,
    )


# ---------------------------------------------------------------------------------------------
# listing


def meta_model(name: str) -> nn.Module:
    """The architecture with every parameter on the ``meta`` device (no memory, no init)."""
    try:
        with torch.device("meta"):
            return get_model(name, weights=None, **_arch_kwargs(name, None))
    except Exception:  # builders that compute with tensors (RegNet) need real ones
        pass
    # Only parameters/buffers go to meta; the builder's own arithmetic stays on the CPU.
    orig_p, orig_b = nn.Module.register_parameter, nn.Module.register_buffer

    def reg_p(self: nn.Module, pname: str, param: Any) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        orig_p(self, pname, param)

    def reg_b(self: nn.Module, bname: str, buf: Any, persistent: bool = True) -> None:
        orig_b(self, bname, None if buf is None else buf.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = reg_p, reg_b  # type: ignore[method-assign]
    try:
        return get_model(name, weights=None, **_arch_kwargs(name, None))
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = orig_p, orig_b  # type: ignore[method-assign]


@functools.cache
def embedding_dim(name: str) -> int:
    """Size of the default embedding: the in_features of the final Linear (no forward needed)."""
    model = meta_model(name)
    if type(model).__name__ == "SqueezeNet":
        return int(model.classifier[1].in_channels)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return int(last.in_features)


def info(name: str) -> BackboneInfo:
    w = get_model_weights(name).DEFAULT
    where = "cached" if os.path.isfile(checkpoint_path(w)) else "download"
    return BackboneInfo(
        name=name,
        family="torchvision",
        dim=KNOWN_DIMS.get(name) or embedding_dim(name),
        input_size=int(w.transforms().crop_size[0]),
        weights=f"torchvision {w.name} ({where})",
    )


def resolve(name: str) -> str | None:
    """The canonical name when ``name`` is a torchvision classification model, else None."""
    tv = names()
    for cand in (name, name.lower()):
        if cand in tv:
            return cand
    return None


def list_infos(pattern: str) -> list[BackboneInfo]:
    return [info(n) for n in names() if fnmatch.fnmatchcase(n, pattern)]


register_family(
    Family(name="torchvision", resolve=resolve, list_infos=list_infos, build=build, names=names)
)
