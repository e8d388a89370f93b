"""The engine's CPU speed-ups must not change what is computed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from featx.backbones import load_backbone  # noqa: E402
from featx.engine import fold_batchnorm, keep_heap_pages  # noqa: E402


def _features(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize(
    "name, layer",
    [
        ("resnet18", None),
        ("resnet18", "layer2"),
        ("resnet18", "layer1.0.bn1"),
        ("efficientnet_lite0", None),
    ],
)
def test_fold_batchnorm_keeps_features_and_original(name, layer):
    bb = load_backbone(name, None, layer=layer, image_size=64)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = _features(bb.model.eval(), x)
    folded = fold_batchnorm(bb.model, 64)
    assert folded is not bb.model
    n_bn = sum("BatchNorm" in type(m).__name__ for m in folded.modules())
    assert n_bn < sum("BatchNorm" in type(m).__name__ for m in bb.model.modules())
    torch.testing.assert_close(_features(folded, x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max())
    assert torch.equal(_features(bb.model, x), ref)  # the backbone's own model is untouched


def test_fold_batchnorm_leaves_a_tapped_batchnorm():
    bb = load_backbone("resnet18", None, layer="layer1.0.bn1", image_size=64)
    folded = fold_batchnorm(bb.model, 64)
    tapped = dict(folded.body.named_modules())["layer1.0.bn1"]
    assert isinstance(tapped, torch.nn.BatchNorm2d)


def test_fold_batchnorm_without_batchnorm_is_identity():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    assert fold_batchnorm(model, 16) is model


def test_keep_heap_pages_is_reversible():
    undo = keep_heap_pages()
    x = torch.ones(1 << 23)  # 32 MB, served from the heap while active
    del x
    undo()


def test_prefetcher_keeps_order_and_hands_over_results():
    from featx.engine import Prefetcher

    src = [(torch.full((2,), float(i)),) for i in range(7)]
    pf = Prefetcher(iter(src), lambda item: (item[0] * 2, "tag"), torch.device("cpu"))
    got = [(float(t[0]), tag) for t, tag in pf]
    assert got == [(2.0 * i, "tag") for i in range(7)]
    pf.close()
    assert not pf._thread.is_alive()


def test_prefetcher_raises_the_threads_exception_in_the_consumer():
    from featx.engine import Prefetcher

    def prepare(i):
        if i == 3:
            raise ValueError("bad batch 3")
        return (i,)

    pf = Prefetcher(iter(range(10)), prepare, torch.device("cpu"))
    seen = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for (i,) in pf:
            seen.append(i)
    assert seen == [0, 1, 2]
    pf.close()


def test_prefetcher_close_stops_an_endless_source():
    import itertools

    from featx.engine import Prefetcher

    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            yield i

    pf = Prefetcher(source(), lambda i: (i,), torch.device("cpu"), depth=2)
    it = iter(pf)
    assert next(it) == (0,)
    pf.close()
    assert not pf._thread.is_alive()
    assert len(pulled) < 10  # it stopped pulling: at most depth + a few ahead
