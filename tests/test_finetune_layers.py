"""``--cache-activations`` together with ``--layers`` (#20): one pass, one store, both outputs.

The activations are tapped in the backbone's own forward pass, so they compose with the
``--layers`` groups; a store with both equals the two separate stores, fine-tunes, and compares
and fits on its groups. Tiny models only (the "ftest" CNN of test_finetune, a 2-layer BERT).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import test_finetune  # noqa: E402
from test_finetune import SIZE, colour_folder  # noqa: E402

ftnet = test_finetune.ftnet  # the tiny cuttable backbone fixture, shared

from featx.errors import FeatxError  # noqa: E402


@pytest.mark.parametrize("name", ["resnet18", "timm/vit_tiny_patch16_224"])
def test_tapped_activations_are_the_prefix_and_wrappers_stack_either_way(name):
    from featx.backbones import load_backbone
    from featx.backbones.layers import with_layers
    from featx.finetuning import cut_backbone
    from featx.finetuning.cache import with_activations

    bb = load_backbone(name, weights="none", image_size=SIZE)
    x = torch.randn(2, 3, SIZE, SIZE)
    a = with_activations(with_layers(bb, "last:2"), "-2")
    b = with_layers(with_activations(bb, "-2"), "last:2")  # layers go under the activations
    assert type(b) is type(a) and b.config() == a.config() and b.store_outputs == a.store_outputs
    with torch.no_grad():
        oa, ob = a.model(x), b.model(x)
        layered = with_layers(bb, "last:2").model(x)
        prefix = cut_backbone(bb, "-2").prefix(x)
    assert sorted(oa) == sorted([*layered, "activations"])
    for k in layered:
        torch.testing.assert_close(oa[k], layered[k])
        torch.testing.assert_close(ob[k], layered[k])
    torch.testing.assert_close(oa["activations"], prefix)
    assert list(oa["activations"].shape[1:]) == a.store_outputs["activations"]["shape"]


def _same_store(both, layers, acts):
    from featx.store import load_features, read_config, read_output

    fb, fl, fa = load_features(both), load_features(layers), load_features(acts)
    assert list(fb.keys) == list(fl.keys) == list(fa.keys)
    assert [(g.name, g.dim) for g in fb.groups] == [(g.name, g.dim) for g in fl.groups]
    assert len(fb.groups) > 1
    np.testing.assert_allclose(fb.X, fl.X, rtol=0, atol=1e-5)  # features and every group
    np.testing.assert_allclose(fb.X[:, : fa.X.shape[1]], fa.X, rtol=0, atol=1e-5)
    assert read_config(both).outputs == read_config(acts).outputs
    for name in read_config(acts).outputs:
        got, want = read_output(both, name), read_output(acts, name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_image_store_with_layers_and_activations(ftnet, tmp_path):
    """Equals the --layers store and the --cache-activations store; info, verify, incremental;
    finetune on it; compare and fit on its groups."""
    from click.testing import CliRunner

    from featx.cli import cli
    from featx.store import verify_store

    src = colour_folder(tmp_path / "c", per_class=6)
    run = CliRunner()
    base = ["extract", str(src), "-b", "ftnet", "-q"]
    both, lay, act = tmp_path / "both.h5", tmp_path / "layers.h5", tmp_path / "acts.h5"
    combo = ["--layers", "1,2", "--cache-activations", "-2", "--store", str(both)]
    for args in (combo, ["--layers", "1,2", "--store", str(lay)],
                 ["--cache-activations", "-2", "--store", str(act)]):  # fmt: skip
        r = run.invoke(cli, [*base, *args])
        assert r.exit_code == 0, r.output
    _same_store(both, lay, act)
    assert verify_store(both).ok
    info = run.invoke(cli, ["info", str(both)]).output
    assert "output activations" in info and "1 (" in info
    r = run.invoke(cli, [*base, *combo])
    assert r.exit_code == 0 and "up to date" in r.output  # incremental: nothing to compute
    (src / "c0" / "extra.png").write_bytes((src / "c0" / "0.png").read_bytes())
    r = run.invoke(cli, [*base, *combo, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["n_new"] == 1
    r = run.invoke(cli, [*base, "--layers", "1,2", "--store", str(lay)])
    r = run.invoke(cli, [*base, "--cache-activations", "-2", "--store", str(act)])
    _same_store(both, lay, act)

    r = run.invoke(cli, ["finetune", str(both), "--epochs", "1", "--batch-size", "8",
                         "--heads", "centroid", "--lr", "0.01", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "finetune:tail=2" in r.output
    r = run.invoke(cli, ["compare", str(both), "--heads", "centroid", "--layers", "each,all",
                         "--json", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = {row["store"].rsplit("[", 1)[1][:-1] for row in json.loads(r.stdout)["results"]}
    assert got == {"features", "1", "2", "all"}  # the activations are no group
    r = run.invoke(cli, ["fit", str(both), "--head", "centroid", "--layers", "2+features",
                         "--out", str(tmp_path / "h.npz")])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["predict", str(tmp_path / "h.npz"), str(src / "c1"), "--out",
                         str(tmp_path / "p.csv"), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output  # the bundle rebuilds the layers, not the activations
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 6


def test_text_store_with_layers_and_activations(tmp_path):
    from click.testing import CliRunner
    from test_text import TOPICS, make_tiny_bert, write_table

    from featx.backbones import load_backbone
    from featx.backbones.layers import with_layers
    from featx.cli import cli
    from featx.finetuning import cut_backbone
    from featx.finetuning.cache import with_activations

    model = make_tiny_bert(tmp_path / "m")
    rows = [{"text": t, "label": lab} for lab, ts in TOPICS.items() for t in ts * 2]
    table = write_table(tmp_path / "t.csv", rows)
    run = CliRunner()
    base = ["extract", str(table), "-b", f"hf:{model}", "--max-seq-length", "16", "-q"]
    both, lay, act = tmp_path / "both.h5", tmp_path / "layers.h5", tmp_path / "acts.h5"
    for args in (["--layers", "all", "--cache-activations", "auto", "--store", str(both)],
                 ["--layers", "all", "--store", str(lay)],
                 ["--cache-activations", "auto", "--store", str(act)]):  # fmt: skip
        r = run.invoke(cli, [*base, *args])
        assert r.exit_code == 0, r.output
    _same_store(both, lay, act)
    bb = load_backbone(f"hf:{model}", max_seq_length=16)  # the tap is the cut's prefix
    enc = bb.tokenizer(["i pay my bill", "late"], padding=True, return_tensors="pt")
    ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    with torch.no_grad():
        out = with_activations(with_layers(bb, "all"), "auto").model(ids, mask, tt)
        prefix = cut_backbone(bb, "auto").prefix(ids, mask, tt)
    torch.testing.assert_close(out["activations"][:, : ids.shape[1]], prefix)
    assert out["activation_mask"].shape == (2, 16) and out["activation_mask"].sum() == mask.sum()
    r = run.invoke(cli, ["finetune", str(both), "--epochs", "1", "--batch-size", "8",
                         "--heads", "", "--lr", "0.01", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output


def test_a_bad_combination_is_one_line_listing_what_is_valid(ftnet, tmp_path):
    from click.testing import CliRunner

    from featx.cli import cli
    from featx.finetuning.cache import with_activations

    src = colour_folder(tmp_path / "c", per_class=2)
    run = CliRunner()
    store = tmp_path / "s.h5"
    base = ["extract", str(src), "-b", "ftnet", "--store", str(store)]
    for extra, valid in (
        (["--layers", "1,2", "--cache-activations", "stage9"], "valid cuts: stage1, stage2"),
        (["--layers", "1,9", "--cache-activations", "-2"], "Valid: stages, last:N"),
        (["--layer", "2", "--layers", "1", "--cache-activations", "-2"], "leave --layer unset"),
        (["--layer", "2", "--cache-activations", "-2"], "its default layer (no --layer"),
    ):
        r = run.invoke(cli, [*base, *extra])
        assert r.exit_code == 1, r.output
        assert valid in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1 and not store.exists()
    with pytest.raises(FeatxError, match="already caches its activations at stage2"):
        with_activations(with_activations(ftnet, "-2"), "-1")


def test_pipeline_with_layers_and_a_finetune_step(ftnet, tmp_path):
    """[extract] layers and [finetune] in one pipeline: one store, groups and activations."""
    import textwrap

    from featx.pipeline import run_pipeline

    src = colour_folder(tmp_path / "c", per_class=6)
    toml = tmp_path / "p.toml"
    toml.write_text(
        textwrap.dedent(f"""
        sources = ["{src}"]
        backbones = ["ftnet"]
        heads = ["centroid"]
        [extract]
        layers = "1,2"
        [finetune]
        tails = [1]
        epochs = 1
        batch_size = 8
        lr = 0.01
        """)
    )
    res = run_pipeline(toml, report=tmp_path / "report")
    rows = {r.label: r.store for r in next(iter(res.leaderboards.values())).results}
    assert set(rows) == {"centroid", "finetune:tail=1"} and "features+1+2" in rows["centroid"]


def test_a_store_with_layers_and_activations_resumes_from_its_parts(ftnet, tmp_path, monkeypatch):
    """An interrupted run leaves parts holding every output (groups and activations); the next
    run reuses them and the store equals one extracted in one go."""
    import featx.engine as engine
    from featx.extraction import ExtractOptions, extract

    src = colour_folder(tmp_path / "c", per_class=4)
    opts = ExtractOptions(layers="1,2", cache_activations="-2", checkpoint_every=4, workers=0,
                          batch_size=4)  # fmt: skip
    real, calls = engine.DecodeDataset.__getitem__, []

    def flaky(self, i):
        calls.append(i)
        if len(calls) > 9:
            raise KeyboardInterrupt
        return real(self, i)

    store, fresh = tmp_path / "s.h5", tmp_path / "fresh.h5"
    monkeypatch.setattr(engine.DecodeDataset, "__getitem__", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(src, "ftnet", store=store, options=opts)
    monkeypatch.undo()
    assert not store.exists() and len(list(tmp_path.glob("s.h5.parts/part-*.h5"))) == 2
    r = extract(src, "ftnet", store=store, options=opts)
    assert (r.n_resumed, r.n_new, r.n_items) == (8, 4, 12)
    extract(src, "ftnet", store=fresh, options=opts)
    _same_store(store, fresh, fresh)
