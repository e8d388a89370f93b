"""Several layers in one forward pass (#19): shorthands, hooks, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from featx.backbones._features import (
    FeatureModel,
    multi_layer_model,
    resolve_layers,
    stage_modules,
)
from featx.errors import FeatxError


class _Net(nn.Module):
    """A tiny CNN shaped like timm's: stem, ``blocks`` of stages, pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(
            nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 8, 3, stride=2), nn.Conv2d(8, 10, 3)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.pool(self.blocks(self.stem(x))).flatten(1)


def _base() -> FeatureModel:
    torch.manual_seed(0)
    return FeatureModel(_Net().eval(), source="output", pool="none")


def test_shorthands_resolve_to_stages_in_order():
    net = _base().body
    assert stage_modules(net) == ["blocks.0", "blocks.1", "blocks.2"]
    assert resolve_layers(net, "stages", "net") == ["blocks.0", "blocks.1", "blocks.2"]
    assert resolve_layers(net, "last:2,stem,blocks.2", "net") == ["blocks.1", "blocks.2", "stem"]
    assert resolve_layers(net, "last:9", "net") == ["blocks.0", "blocks.1", "blocks.2"]


def test_unknown_layer_lists_valid_names_with_the_closest():
    net = _base().body
    with pytest.raises(
        FeatxError, match=r"no layer 'block.1'; did you mean blocks\.1.*Valid: stages, last:N"
    ):
        resolve_layers(net, "block.1", "net")
    with pytest.raises(FeatxError, match="last:N needs a whole number"):
        resolve_layers(net, "last:x", "net")


def test_one_pass_gives_every_layer_pooled_and_the_embedding_unchanged():
    base = _base()
    mm, dims, pools = multi_layer_model(base, "stages", 16, "net")
    assert dims == {"features": 10, "blocks.0": 6, "blocks.1": 8, "blocks.2": 10}
    assert set(pools.values()) == {"avg"}
    x = torch.randn(3, 3, 16, 16)
    base.body.calls = 0
    with torch.inference_mode():
        out = mm(x)
        ref = base(x)
    assert base.body.calls == 2  # one pass for all layers (plus the reference call)
    torch.testing.assert_close(out["features"], ref)
    with torch.inference_mode():
        b0 = base.body.blocks[0](base.body.stem(x)).mean(dim=(2, 3))
    torch.testing.assert_close(out["blocks.0"], b0)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "features": (3, 10),
        "blocks.0": (3, 6),
        "blocks.1": (3, 8),
        "blocks.2": (3, 10),
    }


def test_a_copy_of_the_network_taps_its_own_layers():
    """The engine folds BatchNorm in a deep copy: the copy's hooks must fill the copy."""
    import copy

    mm, _, _ = multi_layer_model(_base(), "stages", 16, "net")
    twin = copy.deepcopy(mm)
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        a, b = mm(x), twin(x)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_cli_extract_layers_compare_fit_predict_verify(tmp_path, image_folder):
    """`featx extract --layers` (one pass, a group per layer), info, compare, fit, predict."""
    import json

    from click.testing import CliRunner

    from featx.cli import cli
    from featx.store import load_features, verify_store

    run = CliRunner()
    store = tmp_path / "m.h5"
    base = ["extract", str(image_folder), "-b", "resnet18", "--weights", "none"]
    args = [*base, "--image-size", "32", "--workers", "0", "--store", str(store), "-q"]
    r = run.invoke(cli, [*args, "--layers", "last:2"])
    assert r.exit_code == 0, r.output
    fs = load_features(store)
    assert [(g.name, g.dim) for g in fs.groups] == [
        ("features", 512),
        ("layer3", 256),
        ("layer4", 512),
    ]
    assert verify_store(store).ok
    r = run.invoke(cli, ["info", str(store)])
    assert "layer3 (256)" in r.output, r.output
    r = run.invoke(cli, ["compare", str(store), "--heads", "centroid", "--layers", "each,all",
                         "--json", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = {row["store"].rsplit("[", 1)[1][:-1] for row in json.loads(r.stdout)["results"]}
    assert got == {"features", "layer3", "layer4", "all"}
    bundle = tmp_path / "h.npz"
    r = run.invoke(cli, ["fit", str(store), "--head", "logreg", "--layers", "layer3+features",
                         "--out", str(bundle)])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["predict", str(bundle), str(image_folder), "--out",
                         str(tmp_path / "p.csv"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_predicted"] == 12
    # loose files (a glob) go the way they go for a plain bundle: the store of loose files
    r = run.invoke(cli, ["predict", str(bundle), str(image_folder / "*" / "*.png"), "--out",
                         str(tmp_path / "g.csv"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_predicted"] == 6
    assert (tmp_path / "g.csv").read_text().count(".png") == 6
    r = run.invoke(cli, [*args, "--layers", "layer9"])
    assert r.exit_code != 0 and "did you mean" in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------------------------------------
# text encoders: hidden states of one pass


def test_text_layer_shorthands_and_unknown_names_the_closest():
    from featx.backbones._text import resolve_text_layers

    assert resolve_text_layers("last:4", 6, 6, "m") == [3, 4, 5]  # hidden_states.6 = features
    assert resolve_text_layers("all", 2, 2, "m") == [0, 1]
    assert resolve_text_layers("hidden_states.-1,1,last:2", 6, 3, "m") == [6, 1, 5]
    with pytest.raises(FeatxError, match=r"did you mean hidden_states\.1.*Valid: last:N, all"):
        resolve_text_layers("hidden_state.1", 6, 6, "m")
    with pytest.raises(FeatxError, match="only m's own layer"):
        resolve_text_layers("last:1", 6, 6, "m")


def test_text_layers_one_pass_cli_extract_compare_fit_predict(tmp_path):
    """`featx extract TEXT --layers all`: a group per hidden state, each equal to a separate
    --layer extraction; info, verify, compare each/all, fit, predict with --model-dir."""
    import json

    import h5py
    from click.testing import CliRunner
    from test_text import TOPICS, make_tiny_bert, write_table

    from featx.backbones import load_backbone
    from featx.backbones.layers import with_layers
    from featx.cli import cli
    from featx.store import load_features, verify_store

    model = make_tiny_bert(tmp_path / "m", st={"pool": "mean", "normalize": True})
    bb = with_layers(load_backbone(f"hf:{model}"), "all")
    calls = []
    bb.model.encoder.transformer.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.tensor([[2, 11, 12, 3], [2, 13, 3, 0]])
    with torch.inference_mode():
        out = bb.model(ids, (ids > 0).long(), torch.zeros_like(ids))
    assert len(calls) == 1 and sorted(out) == ["features", "hidden_states.0", "hidden_states.1"]

    rows = [
        {"id": f"t{i}-{j}", "text": t, "label": lab}
        for i, (lab, ts) in enumerate(TOPICS.items())
        for j, t in enumerate(ts * 3)
    ]
    csv_path = write_table(tmp_path / "t.csv", rows)
    run = CliRunner()
    base = ["extract", str(csv_path), "-b", f"hf:{model}", "--device", "cpu", "-q"]
    store, one = tmp_path / "all.h5", tmp_path / "one.h5"
    assert run.invoke(cli, [*base, "--store", str(store), "--layers", "all"]).exit_code == 0
    r = run.invoke(cli, [*base, "--store", str(one), "--layer", "hidden_states.1"])
    assert r.exit_code == 0, r.output
    fs = load_features(store)
    assert [(g.name, g.dim) for g in fs.groups] == [
        ("features", 32),
        ("hidden_states.0", 32),
        ("hidden_states.1", 32),
    ]
    g = fs.groups[2]
    np.testing.assert_allclose(fs.X[:, g.start : g.stop], load_features(one).X, atol=1e-6)
    assert verify_store(store).ok
    with h5py.File(store, "r") as f:
        attrs = dict(f["outputs/hidden_states.0"].attrs)
    assert (
        attrs["pool"] == "mean" and bool(attrs["normalize"]) and "attention mask" in attrs["tokens"]
    )
    assert "hidden_states.0 (32)" in run.invoke(cli, ["info", str(store)]).output
    r = run.invoke(cli, ["compare", str(store), "--heads", "centroid", "--layers", "each,all",
                         "--json", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = {row["store"].rsplit("[", 1)[1][:-1] for row in json.loads(r.stdout)["results"]}
    assert got == {"features", "hidden_states.0", "hidden_states.1", "tfidf", "all"}
    bundle = tmp_path / "h.npz"
    r = run.invoke(cli, ["fit", str(store), "--head", "logreg", "--layers",
                         "hidden_states.0+features", "--out", str(bundle)])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["predict", str(bundle), str(csv_path), "--out", str(tmp_path / "p.csv"),
                         "--model-dir", str(model), "--device", "cpu", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_predicted"] == len(rows)
    r = run.invoke(cli, [*base, "--store", str(tmp_path / "x.h5"), "--layers", "hidden_state.1"])
    assert r.exit_code != 0 and "did you mean hidden_states.1" in r.output
    assert "Traceback" not in r.output


def test_layers_of_a_channels_last_model_pool_over_space():
    """A family whose maps are NHWC (torchvision Swin, timm NHWC models): --layers pools each
    map over its height and width, giving one value per channel (it averaged W and C before)."""
    from featx.backbones import load_backbone, register_family, unregister_family
    from featx.backbones.layers import with_layers
    from featx.backbones.registry import BackboneInfo, Body, Family
    from featx.preprocess import Preprocess

    class ToNHWC(nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    class Stage(nn.Module):  # works on NHWC maps, like a Swin stage
        def __init__(self, c):
            super().__init__()
            self.lin = nn.Linear(c, c)

        def forward(self, x):
            return self.lin(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 5, 4, stride=4), ToNHWC())
            self.features = nn.Sequential(Stage(5), Stage(5))

        def forward(self, x):
            return self.features(self.stem(x)).mean(dim=(1, 2))

    def build(req):
        torch.manual_seed(0)
        return Body(model=Net(), weights="seed0", weights_sha256=None,
                    preprocess=Preprocess(crop_size=16, resize_size=16), default_pool="avg",
                    feature_map=("hook", "features.1", None), layout="NHWC")  # fmt: skip

    register_family(Family(name="nhwc", resolve=lambda n: n if n == "nhwcnet" else None,
                           list_infos=lambda p: [BackboneInfo("nhwcnet", "nhwc", 5, 16, "s")],
                           build=build))  # fmt: skip
    try:
        bb = with_layers(load_backbone("nhwcnet"), "features.0")
        assert bb.output_dims == {"features": 5, "features.0": 5}
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            got = bb.model(x)["features.0"]
            want = bb.model.base.body.features[0](bb.model.base.body.stem(x)).mean(dim=(1, 2))
        torch.testing.assert_close(got, want)
    finally:
        unregister_family("nhwc")
