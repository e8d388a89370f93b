"""The public surface: `import featx`, the option specs, the registries, the shared file helpers."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.errors import FeatxError
from featx.options import (
    BackboneSpec,
    EvalProtocol,
    ExtractOptions,
    option_fields,
)


def test_every_public_name_resolves_and_is_listed():
    listed = set(featx.__all__)
    assert {"extract", "compare", "predict", "evaluate", "load_backbone", "FeatxError"} <= listed
    for name in featx.__all__:
        assert getattr(featx, name) is not None, name
    assert callable(featx.extract) and featx.extract.__module__ == "featx.extraction"
    with pytest.raises(AttributeError):
        featx.no_such_thing  # noqa: B018


def test_public_api_is_written_once():
    """``_LAZY`` is the list; ``__all__`` derives from it; TYPE_CHECKING repeats it exactly."""
    import ast
    from pathlib import Path

    lazy = featx._LAZY
    assert featx.__all__ == sorted([*lazy, "FeatxError", "StoreError", "__version__"])
    assert {"verify_store", "VerifyReport", "register_safe_class"} <= set(featx.__all__)
    tree = ast.parse(Path(featx.__file__).read_text(encoding="utf-8"))
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    )
    typed = {a.name: n.module for n in block.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert typed == lazy, "the TYPE_CHECKING imports of featx/__init__.py differ from _LAZY"
    for name, module in lazy.items():
        assert hasattr(importlib.import_module(module), name), f"{module} has no {name}"


def test_import_and_help_stay_light():
    code = (
        "import sys, featx, featx.options, featx.cli\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(featx.cli.cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(featx.cli.cli, ['extract', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'numpy', 'sklearn', 'timm', 'h5py') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"featx --help imported {out.stdout.strip()}"


# --------------------------------------------------------------------------- option specs


def _help(*args: str) -> str:
    from featx.cli import cli

    r = CliRunner().invoke(cli, [*args, "--help"])
    assert r.exit_code == 0, r.output
    return r.output


def test_every_extract_option_is_a_flag_and_a_pipeline_key():
    text = _help("extract")
    for f in option_fields(ExtractOptions):
        if f.info.flag == "":
            assert f.name not in ExtractOptions.toml_keys()
            continue
        assert f.flag in text, f.name
    assert {"channels_last", "fold_bn", "checkpoint_seconds"} <= set(ExtractOptions.toml_keys())
    for f in option_fields(BackboneSpec):
        assert f.flag in text, f.name
    assert "none" in text.split("--pool", 1)[1].splitlines()[0]  # pool choices include none


def test_protocol_flags_of_fit_and_compare_come_from_the_spec():
    for cmd in ("fit", "compare"):
        text = _help(cmd)
        for f in option_fields(EvalProtocol):
            assert f.flag in text, (cmd, f.name)
    refit = " ".join(_help("fit").split("--refit", 1)[1].split()[:30])
    assert "[default: all]" in refit


def test_unknown_keys_are_rejected_alike(tmp_path):
    with pytest.raises(FeatxError, match="unknown key 'folds' in \\[protocol\\]"):
        EvalProtocol.from_mapping({"folds": 3}, where="[protocol]")
    with pytest.raises(FeatxError, match="unknown option 'folds'"):
        EvalProtocol.resolve(None, {"folds": 3})
    from featx.pipeline import load_pipeline

    p = tmp_path / "p.toml"
    p.write_text(
        'sources = ["sklearn:digits"]\nbackbones = ["efficientnet_lite0"]\nheads = ["centroid"]\n'
        "[extract]\nchannels_last = false\nfold_bn = false\ncheckpoint_seconds = 5.0\n"
    )
    assert load_pipeline(p).extract == {
        "channels_last": False,
        "fold_bn": False,
        "checkpoint_seconds": 5.0,
    }
    p.write_text(p.read_text() + "bogus = 1\n")
    with pytest.raises(FeatxError, match="unknown key 'bogus' in \\[extract\\]"):
        load_pipeline(p)


def test_extract_options_check_values():
    with pytest.raises(FeatxError, match="precision must be one of"):
        ExtractOptions(precision="fp8")
    with pytest.raises(FeatxError, match="batch_size must be >= 1"):
        ExtractOptions(batch_size=0)
    assert ExtractOptions(workers=None).workers is None


def test_python_api_takes_a_protocol_or_keyword_overrides():
    from featx.features import FeatureSet

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    X = (rng.normal(size=(60, 4)) + 3 * np.eye(3, 4)[y]).astype(np.float32)
    fs = FeatureSet(X, y, ("a", "b", "c"), None, np.array([f"k{i:02d}" for i in range(60)]))
    a = featx.evaluate(fs, "centroid", protocol=EvalProtocol(cv=3, seed=1))
    b = featx.evaluate(fs, "centroid", cv=3, seed=1)
    assert a.protocol == b.protocol == "3-fold stratified cv"
    assert a.accuracy == b.accuracy
    with pytest.raises(FeatxError, match="unknown option 'folds'"):
        featx.evaluate(fs, "centroid", folds=3)
    with pytest.raises(FeatxError, match="one split"):
        featx.fit_head(fs, "centroid", cv=3)


def test_one_default_for_refit_and_heads():
    from featx import options, protocol, train

    assert options.DEFAULT_REFIT == "all"
    for fn in (protocol.fit_head, train.fit_store):
        assert inspect.signature(fn).parameters["refit"].default == options.DEFAULT_REFIT
    from featx import comparison

    for fn in (comparison.compare, train.compare_stores):
        assert inspect.signature(fn).parameters["heads"].default == options.DEFAULT_HEADS


def test_backbone_spec_round_trips_a_stored_config():
    cfg = {
        "name": "timm/resnet18",
        "weights": "a1_in1k",
        "layer": "feature_map",
        "pool": "gem",
        "preprocess": {"crop_size": 160},
    }
    spec = BackboneSpec.from_config(cfg)
    assert spec == BackboneSpec("timm/resnet18", "a1_in1k", None, "feature_map", "gem", 160)
    assert BackboneSpec.from_config({**cfg, "weights": "none"}).weights is None


# --------------------------------------------------------------------------- registries


def test_backbone_families_register_once(fake_backbone_family):
    from featx.backbones import families, list_backbones, register_family, resolve_name

    assert [f.name for f in families()][:3] == ["featx", "torchvision", "timm"]
    with pytest.raises(ValueError, match="already registered"):
        register_family(fake_backbone_family)
    assert resolve_name("tiny") == ("test", "test/tiny")
    bb = featx.load_backbone("tiny")
    assert (bb.name, bb.family, bb.dim, bb.weights) == ("test/tiny", "test", 8, "seed0")
    assert isinstance(bb, featx.BackboneLike)
    assert any(i.name == "tiny" for i in list_backbones("tiny"))


def test_the_fake_family_is_gone_after_its_test():
    from featx.backbones import families

    assert "test" not in [f.name for f in families()]
    with pytest.raises(FeatxError, match="unknown backbone"):
        featx.load_backbone("tiny")


def test_head_parameter_defaults_come_from_the_estimators():
    from featx.heads import get_head_info, list_heads

    for name in list_heads():
        info = get_head_info(name)
        sig = inspect.signature(info.factory()).parameters
        for key, p in info.params.items():
            assert p.default == sig[key].default, (name, key)
    assert get_head_info("mlp").params["hidden_sizes"].default == (512,)
    assert get_head_info("linear-svm").params["max_iter"].default == 50


def test_a_head_registers_with_its_estimator_only():
    from featx.heads import HeadInfo, Param, make_head, register_head, unregister_head

    info = HeadInfo(
        name="test-nc",
        summary="nearest centroid",
        estimator="sklearn.neighbors:NearestCentroid",
        params={"shrink_threshold": Param("float", "shrink")},
        class_weight=False,
    )
    register_head(info)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_head(info)
        pipe = make_head("test-nc", {"shrink_threshold": "0.5"}, preprocess="none")
        assert pipe[-1].shrink_threshold == 0.5
    finally:
        unregister_head("test-nc")
    with pytest.raises(FeatxError, match="unknown head"):
        make_head("test-nc")


# --------------------------------------------------------------------------- files


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    from featx.files import atomic_path, atomic_write, cache_dir

    target = tmp_path / "a" / "x.txt"
    atomic_write(target, "one")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "one"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]
    assert str(cache_dir()).endswith("cache")  # the test fixture's FEATX_CACHE_DIR
