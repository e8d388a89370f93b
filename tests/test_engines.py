"""The engine, modality and source-kind tables: lookups, plugins, and options an engine cannot
honour."""

from __future__ import annotations

import numpy as np
import pytest

from featx.errors import FeatxError
from featx.options import ExtractOptions


class FakeEngine:
    """A third-party engine: the features of item i are (i, i, ...), plus a per-row output."""

    name = "fake"
    modality = "image"
    honours = frozenset({"batch_size", "device"})

    def __init__(self) -> None:
        self.calls: list[tuple[int, ExtractOptions]] = []

    def setup(self, opts):
        from featx.engines import EngineSetup

        return EngineSetup(device="cpu", precision="fp32", decode="-")

    def iter_batches(self, backbone, items, reader, opts):
        from featx.engines import Batch

        self.calls.append((len(items), opts))
        for start in range(0, len(items), opts.batch_size):
            idx = np.arange(start, min(len(items), start + opts.batch_size), dtype=np.int64)
            feats = np.repeat(idx[:, None].astype(np.float32), backbone.dim, axis=1)
            yield Batch(idx, {"features": feats}, [])


@pytest.fixture
def fake_engine():
    from featx.engines import register_engine, unregister_engine

    engine = FakeEngine()
    register_engine(engine)
    yield engine
    unregister_engine(engine.name, engine.modality)


def test_builtin_engines_are_registered_by_name_and_modality():
    from featx.engines import engines, get_engine

    assert {(e.name, e.modality) for e in engines()} >= {
        ("local", "image"),
        ("ray", "image"),
        ("local", "text"),
    }
    assert type(get_engine("local", "text")).__module__ == "featx.text.engine"
    assert type(get_engine("ray", "image")).__module__ == "featx.ray_engine"


def test_unknown_engine_or_modality_lists_the_valid_ones():
    from featx.engines import get_engine
    from featx.modalities import get_modality

    with pytest.raises(FeatxError, match="engine must be one of local, ray; got 'spark'"):
        get_engine("spark", "image")
    with pytest.raises(FeatxError, match="--engine ray runs image backbones; text runs on "):
        get_engine("ray", "text")
    with pytest.raises(FeatxError, match="unknown modality 'audio'; valid modalities: image, text"):
        get_modality("audio")


def test_an_engine_registers_once(fake_engine):
    from featx.engines import register_engine

    with pytest.raises(ValueError, match="already registered"):
        register_engine(FakeEngine())


def test_a_registered_engine_runs_the_extraction(fake_engine, image_folder, tiny_backbone):
    from featx.extraction import extract
    from featx.store import load_features

    opts = ExtractOptions(engine="fake", batch_size=5)
    r = extract(image_folder, tiny_backbone, options=opts)
    assert (r.engine, r.n_new, r.device, r.decode) == ("fake", 12, "cpu", "-")
    assert len(fake_engine.calls) == 1 and fake_engine.calls[0][1] is opts  # the spec, whole
    fs = load_features(r.store)
    # rows are stored by key; item i of the sorted source got the value i
    assert np.array_equal(fs.X[:, 0], np.arange(12, dtype=np.float32))
    assert np.array_equal(fs.X[:, -1], fs.X[:, 0])


def test_an_option_the_engine_does_not_act_on_is_an_error(fake_engine, image_folder, tiny_backbone):
    from featx.engines import check_options, get_engine
    from featx.extraction import extract

    with pytest.raises(FeatxError, match="--workers applies only with --engine local"):
        extract(image_folder, tiny_backbone, options=ExtractOptions(engine="fake", workers=2))
    assert fake_engine.calls == []  # nothing ran, nothing was written
    with pytest.raises(FeatxError, match="--actors applies only with --engine ray"):
        check_options(get_engine("local", "image"), ExtractOptions(actors=2))
    # the text engine has no DataLoader workers and decodes no images: it says so
    text = get_engine("local", "text")
    with pytest.raises(FeatxError, match="--workers does not apply to text backbones"):
        check_options(text, ExtractOptions(workers=2))
    with pytest.raises(FeatxError, match="--decode does not apply to text backbones"):
        check_options(text, ExtractOptions(decode="cpu"))
    check_options(text, ExtractOptions(batch_size=3, compile=False))  # defaults and its own: fine


def test_every_engine_option_is_honoured_by_some_engine():
    from featx.engines import engines
    from featx.options import option_fields

    engine_options = {f.name for f in option_fields(ExtractOptions) if f.info.engine}
    honoured = set().union(*(e.honours for e in engines()))
    assert engine_options == honoured


def test_a_registered_source_kind_is_opened_and_read(fake_engine, tiny_backbone):
    from featx.extraction import extract
    from featx.items import Item, Source
    from featx.modalities import SourceKind, register_source_kind, unregister_source_kind

    def open_mem(spec, req):
        items = [Item(key=f"k{i}", label=i % 2) for i in range(4)]
        return Source("mem", spec, "mem", ("a", "b"), items, read=lambda it: it.key)

    register_source_kind(
        SourceKind("mem", claims=lambda s, req: s.startswith("mem:"), open=open_mem)
    )
    try:
        r = extract("mem:four", tiny_backbone, options=ExtractOptions(engine="fake"))
    finally:
        unregister_source_kind("mem")
    assert (r.n_items, r.modality) == (4, "image")


def test_modality_comes_from_the_registry():
    from featx.modalities import default_backbone, modality_of_name
    from featx.options import DEFAULT_BACKBONE, DEFAULT_TEXT_BACKBONE

    assert modality_of_name("resnet18") == "image"
    assert modality_of_name("minilm") == "text"
    assert default_backbone("image") == DEFAULT_BACKBONE
    assert default_backbone("text") == DEFAULT_TEXT_BACKBONE


def test_named_outputs_of_a_model():
    import torch

    from featx.engines import named_outputs

    t = torch.zeros(2, 3)
    assert named_outputs(t)["features"] is t
    assert set(named_outputs({"features": t, "layer3": t})) == {"features", "layer3"}
    with pytest.raises(FeatxError, match="lack 'features'"):
        named_outputs({"layer3": t})


class TwoOutputs:
    """The tiny backbone with a second named output per row (the sum of its features), recorded
    in its configuration as the store's groups are (``featx.backbones.layers``)."""

    def __init__(self, tiny) -> None:
        import torch

        class Both(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, x):
                f = self.model(x)
                return {"features": f, "total": f.sum(dim=1, keepdim=True)}

        self.__dict__.update(tiny.__dict__)
        self.model = Both(tiny.model)
        self._config = tiny.config

    def config(self) -> dict:
        return {**self._config(), "layers": [{"name": "total", "pool": "sum", "dim": 1}]}


def test_named_outputs_reach_the_store_and_grow_with_it(image_folder, tiny_backbone):
    """The local engine passes a model's named outputs through; the store keeps each as its own
    group, in key order, across an incremental run."""
    from helpers import write_image

    from featx.extraction import extract
    from featx.store import load_features, store_info, verify_store

    bb = TwoOutputs(tiny_backbone)
    opts = ExtractOptions(workers=0, device="cpu", batch_size=5)
    r = extract(image_folder, bb, options=opts)
    fs = load_features(r.store)
    assert [g.name for g in fs.groups] == ["features", "total"]
    assert np.allclose(fs.X[:, 8], fs.X[:, :8].sum(axis=1), atol=1e-5)
    assert [g["name"] for g in store_info(r.store)["groups"]] == ["features", "total"]
    import h5py

    with h5py.File(r.store, "r") as f:  # each output its own dataset, with its provenance
        assert f["outputs/total"].shape == (12, 1)
        assert f["outputs/total"].attrs["pool"] == "sum"
    write_image(image_folder / "cat" / "new.png", seed=99)
    again = extract(image_folder, bb, options=opts)
    assert (again.n_new, again.n_items) == (1, 13)
    fs2 = load_features(again.store)
    assert np.allclose(fs2.X[:, 8], fs2.X[:, :8].sum(axis=1), atol=1e-5)
    assert verify_store(again.store).ok
