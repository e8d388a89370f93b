"""timm models as ``timm/<name>[.<tag>]``; preprocessing from the tag's ``pretrained_cfg``."""

from __future__ import annotations

import fnmatch
import functools
import logging
import math
import os
import socket
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

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
from featx.preprocess import INTERPOLATIONS, Preprocess

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

# timm and torch are imported inside the functions: registering this family stays cheap.
TIMM_PREFIX = "timm/"

logger = logging.getLogger(__name__)

#: List dims only when a timm pattern matches at most this many models (each needs a build).
MAX_DIMS_LISTED = 64
_POOL_NAMES = {"token": "cls", "avg": "avg", "fast": "avg", "max": "max", "catavgmax": "avgmax"}


def split_name(name: str) -> tuple[str, str | None]:
    """``"resnet18.a1_in1k"`` -> ``("resnet18", "a1_in1k")``, checking the architecture exists."""
    import timm
    from timm.models import is_model, split_model_name_tag

    arch, tag = split_model_name_tag(name.strip())
    if not is_model(arch) and is_model(arch.lower()):
        arch = arch.lower()
    if not is_model(arch):
        raise FeatxError(
            f"unknown backbone '{TIMM_PREFIX}{arch}'{close_names(arch, timm.list_models())}; "
            "run `featx backbones 'timm/*pattern*'` to list timm models"
        )
    return arch, (tag or None)


def _tags(arch: str) -> list[str]:
    from timm.models import get_arch_pretrained_cfgs, split_model_name_tag

    return [split_model_name_tag(k)[1] for k in get_arch_pretrained_cfgs(arch)]


def resolve_tag(arch: str, name_tag: str | None, weights: str | None) -> tuple[str | None, bool]:
    """Which pretrained tag to use, and whether to load its weights."""
    from timm.models import get_pretrained_cfg

    tags = _tags(arch)
    if weights is None or weights == "DEFAULT":
        tag = name_tag
        if tag is None:
            cfg = get_pretrained_cfg(arch)
            tag = cfg.tag if cfg is not None else None
        if tag is not None and tag not in tags:
            raise FeatxError(
                f"timm/{arch} has no weights tag {tag!r}{close_names(tag, tags)}; "
                f"choose one of {', '.join(tags) or '(none)'}"
            )
        if weights == "DEFAULT" and tag is None:
            raise FeatxError(f"timm/{arch} has no pretrained weights; use --weights none")
        return tag, weights == "DEFAULT"
    tag = weights.split(".", 1)[1] if weights.startswith(arch + ".") else weights
    if name_tag is not None and tag != name_tag:
        raise FeatxError(
            f"timm/{arch}.{name_tag} names tag {name_tag!r} but weights say {weights!r}; "
            "give the tag once, in the name or as --weights"
        )
    if tag not in tags:
        raise FeatxError(
            f"timm/{arch} has no weights {weights!r}{close_names(tag, tags)}; "
            f"choose one of {', '.join(tags) or '(none)'}, DEFAULT or none"
        )
    return tag, True


def preprocess_of(cfg: Any) -> Preprocess:
    """Preprocessing of a timm ``PretrainedCfg``: resize = floor(input / crop_pct)."""
    if cfg is None:
        return Preprocess(crop_size=224, resize_size=256, interpolation="bicubic")
    size = int(cfg.input_size[-1])
    if len(cfg.mean) != 3 or int(cfg.input_size[0]) != 3:
        raise FeatxError(f"timm/{cfg.architecture} takes {cfg.input_size[0]}-channel input")
    crop_pct = float(cfg.crop_pct or 0.875)
    if cfg.crop_mode not in (None, "center"):
        logger.warning(
            "timm/%s uses crop_mode=%s; featx applies a centre crop",
            cfg.architecture,
            cfg.crop_mode,
        )
    interp = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bicubic"
    return Preprocess(
        crop_size=size,
        resize_size=max(size, int(math.floor(size / crop_pct))),
        interpolation=interp,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )


def _hf_reachable() -> bool:
    """False when the Hugging Face hub is switched off or its host does not resolve.

    Lets an offline machine fail at once instead of after huggingface_hub's retries.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def pretrained_file(cfg: Any, full_name: str) -> str:
    """A local file with the weights of ``cfg``: from the caches, else downloaded."""
    import huggingface_hub
    import torch
    from huggingface_hub.errors import EntryNotFoundError

    if cfg.file:
        return str(cfg.file)
    hint = "or pass --weights-file PATH or --weights none"
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        files += ["model.safetensors", "pytorch_model.bin"]
        for fn in files:
            hit = huggingface_hub.try_to_load_from_cache(repo, fn)
            if isinstance(hit, str):
                return hit
        if not _hf_reachable():
            raise FeatxError(
                f"weights of timm/{full_name} are not in the Hugging Face cache and the hub is "
                f"unreachable; run `hf download {repo}` where a network exists, {hint}"
            )
        last: Exception | None = None
        for fn in files:
            try:
                return huggingface_hub.hf_hub_download(repo, fn)
            except EntryNotFoundError as e:
                last = e
            except Exception as e:
                raise FeatxError(
                    f"cannot download weights of timm/{full_name} from {repo} "
                    f"({type(e).__name__}); {hint}"
                ) from e
        raise FeatxError(f"no weights file in {repo} ({last}); {hint}")
    if cfg.url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))
        if os.path.isfile(path):
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(cfg.url, path, progress=False)
        except Exception as e:
            raise FeatxError(
                f"cannot download weights of timm/{full_name} ({type(e).__name__}); put the "
                f"checkpoint at {path}, {hint}"
            ) from e
        return path
    raise FeatxError(f"timm/{full_name} has no downloadable weights; {hint}")


def _create(full_name: str, cfg: Any, size: int, **kwargs: Any) -> nn.Module:
    import timm

    if cfg is not None and cfg.fixed_input_size:
        try:  # ViT-like models build their position embeddings for the input size
            return timm.create_model(full_name, num_classes=0, img_size=size, **kwargs)
        except TypeError as e:
            logger.debug("timm/%s takes no img_size (%s); building at its own size", full_name, e)
    return timm.create_model(full_name, num_classes=0, **kwargs)


def _filter_fn(model: nn.Module) -> Any:
    """The architecture's own checkpoint converter (resamples position embeddings, ...)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _own_pool(model: nn.Module) -> str:
    gp = getattr(model, "global_pool", None)
    if gp is None and hasattr(model, "head"):
        gp = getattr(model.head, "global_pool", None)
    kind = gp if isinstance(gp, str) else getattr(gp, "pool_type", None)
    if kind is None:
        return "avg"
    return _POOL_NAMES.get(kind, str(kind) or "none")


def build(req: LoadRequest) -> Body:
    from timm.models import get_pretrained_cfg

    arch, name_tag = split_name(req.name)
    # With a weights file, DEFAULT only picks the preprocessing, even for untrained archs.
    from_file = req.weights_file is not None and req.weights == "DEFAULT"
    tag, pretrained = resolve_tag(arch, name_tag, None if from_file else req.weights)
    full = f"{arch}.{tag}" if tag else arch
    cfg = get_pretrained_cfg(full) if tag else get_pretrained_cfg(arch)
    preprocess = preprocess_of(cfg)
    if req.image_size is not None:
        preprocess = preprocess.with_image_size(req.image_size)
    size = preprocess.crop_size
    sha = None
    if req.weights_file is not None:
        model = seeded(lambda: _create(full, cfg, size, pretrained=False))
        sd = read_state_dict(req.weights_file)
        fn = _filter_fn(model)
        if fn is not None:
            try:
                sd = fn(sd, model)
            except Exception as e:  # the converter did not recognize the file; load it as is
                logger.debug("checkpoint_filter_fn of %s failed: %s", arch, e)
        head = (cfg.classifier if cfg is not None else None) or "head"
        heads = [head] if isinstance(head, str) else list(head)
        load_into(
            model,
            sd,
            source=os.path.basename(req.weights_file),
            target=f"timm/{arch}",
            head_prefixes=heads,
        )
        weights_id = f"file:{os.path.basename(req.weights_file)}"
        sha = sha256_file(req.weights_file)
    elif pretrained:
        path = pretrained_file(cfg, full)
        overlay = {"file": path, "source": ""}
        try:
            model = _create(full, cfg, size, pretrained=True, pretrained_cfg_overlay=overlay)
        except Exception as e:
            raise FeatxError(
                f"cannot load weights of timm/{full} from {path} ({type(e).__name__}: "
                f"{str(e)[:120]}); delete the file to fetch it again, or pass --weights-file PATH"
            ) from e
        weights_id = tag or "none"
        sha = sha256_file(path)
    else:
        model = seeded(lambda: _create(full, cfg, size, pretrained=False))
        weights_id = "none"
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if not hasattr(model, "num_prefix_tokens") and getattr(model, "cls_token", None) is not None:
        prefix = 1
    fmt = str(getattr(model, "output_fmt", "NCHW") or "NCHW")
    return Body(
        model=model,
        weights=weights_id,
        weights_sha256=sha,
        preprocess=preprocess,
        default_pool=_own_pool(model),
        feature_map=("forward_features", "", None),
        layout="NHWC" if fmt.upper() == "NHWC" else "NCHW",
        prefix_tokens=prefix,
    )


# ---------------------------------------------------------------------------------------------
# listing


@functools.cache
def embedding_dim(arch: str) -> int | None:
    """``head_hidden_size`` (or ``num_features``) of the architecture built on ``meta``."""
    import timm

    try:
        model = timm.create_model(arch, num_classes=0, device="meta")
    except Exception as e:
        logger.debug("cannot build timm/%s on meta: %s", arch, e)
        return None
    dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    return int(dim) if dim else None


def list_infos(pattern: str) -> list[BackboneInfo]:
    """timm models matching ``pattern`` (the part after ``timm/``); tags when it has a dot."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    if "." in pattern:
        full_names = [n for n in timm.list_pretrained() if fnmatch.fnmatchcase(n, pattern)]
    else:
        full_names = timm.list_models(pattern)
    with_dims = len(full_names) <= MAX_DIMS_LISTED
    out = []
    for full in full_names:
        arch, tag = split_model_name_tag(full)
        cfg = get_pretrained_cfg(full) if tag else get_pretrained_cfg(arch)
        default = cfg.tag if cfg is not None else None
        src = f"timm {arch}.{tag or default} (hf hub)" if (tag or default) else "timm (no weights)"
        out.append(
            BackboneInfo(
                name=TIMM_PREFIX + full,
                family="timm",
                dim=embedding_dim(arch) if with_dims else None,
                input_size=int(cfg.input_size[-1]) if cfg is not None else 224,
                weights=src,
            )
        )
    return out


def resolve(name: str) -> str:
    """``"resnet18.a1_in1k"`` (the part after ``timm/``) -> ``"timm/resnet18"``."""
    arch, _tag = split_name(name)
    return TIMM_PREFIX + arch


register_family(
    Family(
        name="timm",
        prefix=TIMM_PREFIX,
        resolve=resolve,
        list_infos=list_infos,
        build=build,
        listed_by_default=False,
    )
)
