"""Fine-tuning: cutting backbones, training the tail on activations, bundles, the full reference.

Tiny random models (random-init ResNet-18 / Lite0 / ViT at 32 px, a 2-layer BERT) and tiny
images whose class is their dominant colour, so a few epochs learn something.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from featx.errors import FeatxError  # noqa: E402
from featx.options import BackboneSpec  # noqa: E402

SIZE = 32


def colour_folder(root: Path, per_class: int = 8, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 90, (36, 36, 3)).astype(np.uint8)
            a[..., c] += 150
            Image.fromarray(a).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture
def colours(tmp_path) -> Path:
    return colour_folder(tmp_path / "colours")


# A tiny stage-structured CNN family ("ftest", backbone "ftnet"), cut by a cutter registered
# the way a plug-in family would: training on it takes milliseconds per step.
FAMILY = "ftest"


def _ftnet():
    from torch import nn

    def stage(cin, cout, stride):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    torch.manual_seed(0)
    return nn.Sequential(
        stage(3, 8, 2), stage(8, 16, 2), stage(16, 16, 1), stage(16, 24, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def _cutter(net, backbone):
    from torch import nn

    from featx.finetuning.cuts import Blocks

    blocks = [(f"stage{i}", net[i]) for i in (1, 2, 3)]
    return Blocks(net[0], blocks, nn.Sequential(net[4], net[5]), "map", default_tail=1)


def register_ftest():
    from featx.backbones.registry import BackboneInfo, Body, Family, register_family
    from featx.finetuning import register_cutter
    from featx.preprocess import Preprocess

    def build(req):
        return Body(
            model=_ftnet(),
            weights="seed0",
            weights_sha256=None,
            preprocess=Preprocess(crop_size=SIZE, resize_size=SIZE),
            default_pool="avg",
            feature_map=("hook", "3", None),
        )

    register_family(
        Family(
            name=FAMILY,
            resolve=lambda n: "ftnet" if n == "ftnet" else None,
            list_infos=lambda p: [BackboneInfo("ftnet", FAMILY, 24, SIZE, "seed0")],
            build=build,
        )
    )
    register_cutter(FAMILY, _cutter)


@pytest.fixture
def ftnet():
    from featx.backbones import load_backbone, unregister_family
    from featx.finetuning.cuts import unregister_cutter

    register_ftest()
    yield load_backbone("ftnet")
    unregister_family(FAMILY)
    unregister_cutter(FAMILY)


@pytest.fixture(scope="module")
def resnet():
    from featx.backbones import load_backbone

    return load_backbone("resnet18", weights="none", image_size=SIZE)


@pytest.fixture
def acts(ftnet, colours):
    from featx.finetuning import compute_activations
    from featx.sources import open_source

    return compute_activations(ftnet, open_source(colours), "-2")


FAST = {"epochs": 3, "batch_size": 8, "patience": 3, "heads": ()}


# ---------------------------------------------------------------------------------------------
# cuts


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "timm/vit_tiny_patch16_224"])
def test_prefix_then_tail_is_the_backbone(name):
    from featx.backbones import load_backbone
    from featx.finetuning import cut_backbone, cut_names

    bb = load_backbone(name, weights="none", image_size=SIZE)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = bb.model(x)
        for cut in ("auto", "-2", cut_names(bb)[0]):
            cm = cut_backbone(bb, cut)
            out = cm.tail(None).eval().embed(cm.prefix(x))
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_unknown_cut_lists_the_valid_ones(resnet):
    from featx.finetuning import cut_backbone

    with pytest.raises(FeatxError, match="valid cuts: layer1, layer2, layer3, layer4"):
        cut_backbone(resnet, "layer9")
    with pytest.raises(FeatxError, match="has 4"):
        cut_backbone(resnet, "-7")
    assert cut_backbone(resnet, "auto").cut == "layer4"
    assert cut_backbone(resnet, "-2").n_tail == 2


# ---------------------------------------------------------------------------------------------
# training


def test_training_lowers_the_loss_and_reports_a_leaderboard_row(acts):
    from featx.finetuning import finetune

    rep = finetune(acts, tail=2, warmup_epochs=0, heads=["centroid"], epochs=4, batch_size=8)
    losses = [h["train_loss"] for h in rep.history]
    assert losses[-1] < losses[0]
    labels = [r.label for r in rep.leaderboard.results]
    assert set(labels) == {"finetune:tail=2", "centroid"}
    ft = next(r for r in rep.leaderboard.results if r.label == "finetune:tail=2")
    frozen = next(r for r in rep.leaderboard.results if r.label == "centroid")
    assert ft.n_test == frozen.n_test == rep.result.n_test > 0  # the heads' split
    assert 0 <= rep.best_epoch <= rep.epochs  # 0: the start (the probe) stayed the best
    assert rep.to_dict()["seconds_per_epoch"] > 0


def test_seeded_runs_repeat_and_seeds_differ(acts):
    from featx.finetuning import finetune

    a = finetune(acts, tail=1, **FAST).model.state_dict()
    b = finetune(acts, tail=1, **FAST).model.state_dict()
    c = finetune(acts, tail=1, seed=1, **FAST).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_tail_longer_than_the_cache_says_how_to_get_more(acts):
    from featx.finetuning import finetune

    with pytest.raises(FeatxError, match="between 1 and 2.*earlier --cache-activations"):
        finetune(acts, tail=3, **FAST)


def test_too_few_labelled_items_says_how_many(ftnet, tmp_path):
    from featx.finetuning import compute_activations, finetune
    from featx.sources import open_source

    few = compute_activations(ftnet, open_source(colour_folder(tmp_path / "few", 2)), "auto")
    with pytest.raises(FeatxError, match="at least 4 labelled items per class.*has 2"):
        finetune(few, **FAST)


# ---------------------------------------------------------------------------------------------
# bundles and prediction


def test_predict_from_files_equals_the_training_forward(acts, colours, tmp_path):
    from featx.finetuning import finetune, load_finetuned

    rep = finetune(acts, tail=1, bundle=tmp_path / "tuned.npz", **FAST)
    ft = load_finetuned(rep.bundle)
    files = [str(colours / k) for k in acts.keys]
    with torch.no_grad():
        trained = torch.softmax(rep.model(torch.from_numpy(acts.acts).float()), 1).numpy()
    np.testing.assert_allclose(ft.predict_proba(files), trained, rtol=1e-5, atol=1e-6)
    assert ft.predict(files[:1])[0] in acts.classes


def test_a_bundle_with_tuned_heads_predicts_with_the_chosen_one(acts, colours, tmp_path):
    from featx.finetuning import finetune, load_finetuned

    rep = finetune(acts, tail=1, tuned_heads="centroid", bundle=tmp_path / "t.npz", **FAST)
    assert rep.extra["tuned_heads"]["chosen"] == "finetune:tail=1+centroid"
    ft = load_finetuned(rep.bundle)
    assert ft.tuned_head is not None and ft.tuned_head.classes == acts.classes
    files = [str(colours / k) for k in acts.keys]
    with torch.no_grad():
        emb = rep.model.embed(torch.from_numpy(acts.acts).float()).numpy()
    np.testing.assert_allclose(
        ft.predict_proba(files), ft.tuned_head.predict_proba(emb), rtol=1e-4, atol=1e-6
    )
    # the bundled head is the row's: the same accuracy on the protocol's test items
    from featx.protocol import make_splits

    test = make_splits(acts.feature_set())[0].test
    row = next(r for r in rep.leaderboard.results if r.label.endswith("+centroid"))
    names = np.asarray(acts.classes)[acts.y[test]]
    assert row.accuracy == pytest.approx((ft.tuned_head.predict(emb[test]) == names).mean())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_predict_of_a_finetuned_bundle_honours_device(acts, colours, tmp_path):
    from click.testing import CliRunner

    from featx.cli import cli
    from featx.finetuning import finetune, load_finetuned

    bundle = finetune(acts, tail=1, bundle=tmp_path / "tuned.npz", **FAST).bundle
    assert str(load_finetuned(bundle, device="cpu").device) == "cpu"
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(
        cli, ["predict", str(bundle), str(colours), "--out", str(out), "--device", "cuda"]
    )
    assert r.exit_code != 0 and "cuda" in r.output.lower() and not out.exists()


def test_bundle_loads_without_pickle_and_catches_damage(acts, tmp_path, monkeypatch):
    from featx.finetuning import finetune, load_finetuned

    path = finetune(acts, tail=1, bundle=tmp_path / "tuned.npz", **FAST).bundle

    def no_pickle(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    assert load_finetuned(path).mode == "tail"
    monkeypatch.undo()
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    arr = next(n for n in members if n.startswith("arrays/"))
    members[arr] = members[arr][:-4] + b"\0\0\0\1"
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(FeatxError, match="does not match its SHA-256"):
        load_finetuned(bad)


KILLED_RUN = """
import sys, logging
from featx.backbones import load_backbone
from featx.finetuning import compute_activations, finetune
from featx.sources import open_source
from test_finetune import register_ftest
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
register_ftest()
bb = load_backbone("ftnet")
acts = compute_activations(bb, open_source({root!r}), "-2")
finetune(acts, tail=1, epochs={epochs}, patience=100, batch_size=8, bundle={bundle!r})
"""


def test_a_killed_run_can_be_rerun_cleanly(colours, acts, tmp_path):
    from featx.finetuning import finetune

    bundle = tmp_path / "tuned.npz"
    script = KILLED_RUN.format(root=str(colours), epochs=100000, bundle=str(bundle))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        for line in proc.stderr:  # wait until training is under way
            if "epoch 2:" in line or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait()
    assert not bundle.exists()  # nothing half-written under the final name
    rep = finetune(acts, tail=1, epochs=3, patience=100, batch_size=8, bundle=bundle)
    again = finetune(acts, tail=1, epochs=3, patience=100, batch_size=8, bundle=tmp_path / "b.npz")
    from featx.finetuning.bundle import read_finetune_bundle

    a, b = read_finetune_bundle(rep.bundle).state, read_finetune_bundle(again.bundle).state
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob("tuned.npz.tmp-*"))


def test_a_run_stopped_after_epoch_k_resumes_to_the_uninterrupted_weights(
    acts, tmp_path, monkeypatch
):
    from featx.finetuning import finetune, loop
    from featx.finetuning.bundle import read_finetune_bundle

    kw = dict(tail=1, epochs=4, patience=100, batch_size=8, heads=())
    whole = finetune(acts, bundle=tmp_path / "whole.npz", **kw)
    real, saves = loop._save_checkpoint, []

    def save_then_die(path, state):
        real(path, state)
        saves.append(state["epoch"])
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed right after epoch 2's checkpoint

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_die)
    bundle = tmp_path / "tuned.npz"
    with pytest.raises(KeyboardInterrupt):
        finetune(acts, bundle=bundle, **kw)
    monkeypatch.undo()
    ckpt = tmp_path / "tuned.npz.ckpt"
    assert ckpt.is_file() and not bundle.exists()
    rep = finetune(acts, bundle=bundle, **kw)
    assert rep.extra["resumed_from_epoch"] == 2 and len(rep.history) == 4
    assert not ckpt.exists()  # removed once the bundle is written
    a, b = read_finetune_bundle(whole.bundle).state, read_finetune_bundle(rep.bundle).state
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert rep.extra["lr"] == whole.extra["lr"]


def test_lr_auto_runs_range_tests_and_leaves_the_run_as_given_rates_would(acts):
    from featx.finetuning import finetune

    auto = finetune(acts, tail=1, lr="auto", tail_lr="auto", **FAST)
    lr, tail_lr = auto.extra["lr"], auto.extra["tail_lr"]
    found = auto.extra["lr_find"]
    assert lr == pytest.approx(found["head"]["lr"] / 10)  # the probe start: a tenth
    assert tail_lr == pytest.approx(min(found["blocks"]["lr"], found["head"]["lr"] / 10))
    assert 0 < lr < 10 and 0 < tail_lr < 10 and found["blocks"]["steps"] > 10
    given = finetune(acts, tail=1, lr=lr, tail_lr=tail_lr, **FAST)
    assert given.extra["lr_find"] is None
    a, b = auto.model.state_dict(), given.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_head_starts_from_the_linear_probe(acts):
    from featx.finetuning import finetune

    rep = finetune(acts, tail=1, lr=1e-9, tail_lr=1e-9, epochs=1, batch_size=8, heads=())
    assert rep.extra["head_init"] == "probe" and rep.extra["probe_val_accuracy"] > 0.5
    zero = finetune(acts, tail=1, lr=1e-9, tail_lr=1e-9, epochs=1, batch_size=8,
                    head_init="zero", heads=())  # fmt: skip
    assert zero.history[0]["val_accuracy"] < rep.history[0]["val_accuracy"]


def test_the_untrained_start_is_a_candidate_for_the_best_epoch(acts):
    from featx.finetuning import finetune

    # rates that wreck every trained epoch: the run ends at its start, the linear probe
    rep = finetune(acts, tail=1, lr=1e4, tail_lr=1e3, epochs=2, patience=5, batch_size=8,
                   heads=())  # fmt: skip
    assert rep.best_epoch == 0 and len(rep.history) == 2
    assert "val_score" not in rep.history[0] and rep.extra["start_val_score"] is None
    assert rep.extra["start_val_accuracy"] == pytest.approx(rep.extra["probe_val_accuracy"])
    assert rep.extra["probe_val_loss"] < min(h["val_loss"] for h in rep.history)


def test_tuned_heads_are_rows_chosen_on_the_validation_items(acts):
    from featx.finetuning import finetune
    from featx.finetuning.api import _splits
    from featx.heads import make_head
    from featx.options import EvalProtocol, FinetuneOptions

    with pytest.raises(FeatxError, match="unknown head 'nope'"):
        finetune(acts, tail=1, tuned_heads="knn,nope", **FAST)  # before any training
    rep = finetune(acts, tail=1, tuned_heads="knn, centroid", **FAST)
    labels = {r.label for r in rep.leaderboard.results}
    assert {"finetune:tail=1+knn", "finetune:tail=1+centroid", "finetune:tail=1"} <= labels
    info = rep.extra["tuned_heads"]
    assert info["chosen"] == max(info["val_accuracy"], key=lambda k: info["val_accuracy"][k])
    # a tuned head's validation accuracy: fitted on the fine-tune's training rows, scored on
    # its validation rows, on the tuned embedding (never on the test items)
    split, val = _splits(acts.feature_set(), EvalProtocol(), FinetuneOptions())
    with torch.no_grad():
        emb = rep.model.embed(torch.from_numpy(acts.acts).float()).numpy()
    head = make_head("centroid").fit(emb[split.train], acts.y[split.train])
    expect = float((head.predict(emb[val]) == acts.y[val]).mean())
    assert info["val_accuracy"]["finetune:tail=1+centroid"] == pytest.approx(expect)
    row = next(r for r in rep.leaderboard.results if r.label.endswith("+centroid"))
    assert row.n_test == rep.result.n_test and row.fit_seconds > rep.result.fit_seconds
    # the epochs were ranked by the kNN's validation accuracy on the tuned embedding: the kept
    # epoch is the best by it, and it is the knn row's validation accuracy (the same fit)
    assert info["epochs_ranked_by"] == "knn"
    runs = [{**rep.history[0], "epoch": 0, "val_score": rep.extra["start_val_score"],
             "val_accuracy": rep.extra["start_val_accuracy"]}, *rep.history]  # fmt: skip
    assert all(r["val_score"] is not None for r in runs)
    kept = next(r for r in runs if r["epoch"] == rep.best_epoch)
    assert kept["val_score"] == max(r["val_score"] for r in runs)
    assert kept["val_score"] == pytest.approx(info["val_accuracy"]["finetune:tail=1+knn"])


def test_learning_rates_take_auto_or_a_positive_number():
    from featx.options import FinetuneOptions

    assert FinetuneOptions(lr="0.01").lr == 0.01 and FinetuneOptions().lr == "auto"
    assert FinetuneOptions().tail_lr == 3e-4 and FinetuneOptions(tail_lr="AUTO").tail_lr == "auto"
    with pytest.raises(FeatxError, match="lr must be auto or a number > 0"):
        FinetuneOptions(lr="fast")


# ---------------------------------------------------------------------------------------------
# the full reference


def test_full_finetune_runs_on_cpu_and_its_bundle_predicts(ftnet, colours, tmp_path):
    from featx.finetuning import finetune_full, load_finetuned

    rep = finetune_full(
        colours,
        BackboneSpec(name="ftnet"),
        bundle=tmp_path / "full.npz",
        **{**FAST, "heads": ["centroid"], "epochs": 2, "tuned_heads": "knn"},
    )
    assert rep.result.label == "finetune:full"
    labels = {r.label for r in rep.leaderboard.results}
    assert labels == {"finetune:full", "centroid", "finetune:full+knn"}
    ft = load_finetuned(rep.bundle)
    files = sorted(str(p) for p in colours.rglob("*.png"))[:4]
    x = torch.stack([ft.backbone.preprocess.to_uint8(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        emb = rep.model.embed(ft.backbone.preprocess.normalize(x)).numpy()
    ref = ft.tuned_head.predict_proba(emb)  # the chosen tuned head predicts
    np.testing.assert_allclose(ft.predict_proba(files), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# text


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from test_text import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def test_text_tail_trains_and_predicts(tiny_bert, tmp_path):
    from test_text import TOPICS, write_table

    from featx.backbones import load_backbone
    from featx.finetuning import compute_activations, cut_backbone, finetune, load_finetuned
    from featx.finetuning.data import read_texts
    from featx.sources import open_source

    rows = [{"text": t, "label": lab} for lab, ts in TOPICS.items() for t in ts * 2]
    table = write_table(tmp_path / "t.csv", rows)
    bb = load_backbone(f"hf:{tiny_bert}")
    enc = bb.tokenizer(["i pay my bill", "late"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = bb.model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        cm = cut_backbone(bb, "layer.0")
        a = cm.prefix(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        torch.testing.assert_close(cm.tail(None).eval().embed(a, enc["attention_mask"]), ref)
    src = open_source(table, modality="text")
    acts = compute_activations(bb, src, "auto")
    assert acts.mask is not None and acts.acts.shape[:2] == acts.mask.shape
    rep = finetune(acts, bundle=tmp_path / "t.npz", warmup_epochs=0, **FAST)
    assert rep.result.label == "finetune:tail=2"
    with pytest.raises(FeatxError, match="local model folder.*add --model-dir"):
        load_finetuned(rep.bundle)  # a bundle never makes featx load a folder by itself
    ft = load_finetuned(rep.bundle, model_dir=tiny_bert)
    texts, _, _ = read_texts(src)  # the order of the activations
    with torch.no_grad():
        trained = rep.model(torch.from_numpy(acts.acts).float(), torch.from_numpy(acts.mask).long())
    np.testing.assert_allclose(
        ft.predict_proba(texts), torch.softmax(trained, 1).numpy(), rtol=1e-4, atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# stores and the command line


def test_a_store_without_activations_names_the_extract_command(ftnet, tmp_path, colours):
    from click.testing import CliRunner

    from featx.cli import cli

    runner = CliRunner()
    store = tmp_path / "s.h5"
    r = runner.invoke(
        cli,
        ["extract", str(colours), "-b", "ftnet", "--store", str(store), "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["finetune", str(store)])
    assert r.exit_code == 1
    assert "no cached activations" in r.output and "--cache-activations" in r.output
    assert "Traceback" not in r.output


def test_cli_full_reference(ftnet, tmp_path, colours):
    from click.testing import CliRunner

    from featx.cli import cli

    r = CliRunner().invoke(
        cli, ["finetune", "--full", str(colours), "-b", "ftnet", "--epochs", "1", "--heads", "",
              "-q", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert '"finetune:full"' in r.output


def test_activations_backbone_gives_the_same_features_and_its_cache(ftnet, tiny_bert):
    from featx.backbones import load_backbone
    from featx.finetuning.cache import with_activations

    wb = with_activations(ftnet, "-2")
    assert wb.config() == ftnet.config() and wb.dim == ftnet.dim
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        out = wb.model(x)
        torch.testing.assert_close(out["features"], ftnet.model(x))
    assert list(out["activations"].shape[1:]) == wb.store_outputs["activations"]["shape"]
    assert "per item" in wb.size_estimate(1000) and "for 1000 items" in wb.size_estimate(1000)
    tb = load_backbone(f"hf:{tiny_bert}", max_seq_length=16)
    wt = with_activations(tb, "-1")
    enc = tb.tokenizer(["i pay my bill", "late"], padding=True, return_tensors="pt")
    with torch.no_grad():
        o = wt.model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        ref = tb.model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    torch.testing.assert_close(o["features"], ref)
    assert o["activations"].shape == (2, 16, 32) and o["activation_mask"].shape == (2, 16)
    assert o["activation_mask"].sum() == enc["attention_mask"].sum()


# ---------------------------------------------------------------------------------------------
# extract --cache-activations, finetune STORE, predict BUNDLE: end to end


def test_extract_cache_then_finetune_store_and_predict(ftnet, colours, tmp_path):
    import csv

    from click.testing import CliRunner

    from featx.cli import cli

    runner = CliRunner()
    store = tmp_path / "acts.h5"
    extract = ["extract", str(colours), "-b", "ftnet", "--store", str(store), "-q"]
    r = runner.invoke(cli, [*extract, "--cache-activations", "stage9"])
    assert r.exit_code == 1 and "valid cuts: stage1, stage2, stage3" in r.output
    r = runner.invoke(cli, [*extract, "--cache-activations", "-2", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["info", str(store)])
    assert "output activations" in r.output and "at stage2" in r.output
    assert runner.invoke(cli, ["verify", str(store)]).exit_code == 0
    r = runner.invoke(cli, [*extract, "--cache-activations", "-2"])
    assert "up to date" in r.output  # incremental: nothing new to compute
    (colours / "c0" / "extra.png").write_bytes((colours / "c0" / "0.png").read_bytes())
    r = runner.invoke(cli, [*extract, "--cache-activations", "-2", "--json"])
    assert '"n_new": 1' in r.output
    bundle = tmp_path / "tuned.npz"
    r = runner.invoke(
        cli, ["finetune", str(store), "--epochs", "2", "--batch-size", "8", "--heads",
              "centroid", "--bundle", str(bundle), "--tuned-heads", "knn", "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "finetune:tail=2" in r.output and "centroid" in r.output
    assert "chosen on the validation items: finetune:tail=2+knn" in r.output
    assert "learning rates: head" in r.output and "(range test)" in r.output
    out = tmp_path / "preds.csv"
    r = runner.invoke(cli, ["predict", str(bundle), str(colours), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 25 and {"path", "predicted", "true_label", "p_c0"} <= set(rows[0])
    r = runner.invoke(
        cli, ["predict", str(bundle), str(colours / "c1" / "1.png"), "--out", str(out), "--force"]
    )
    assert r.exit_code == 0, r.output


def test_text_store_with_cached_hidden_states_finetunes_and_predicts(tiny_bert, tmp_path):
    import csv

    from click.testing import CliRunner
    from test_text import TOPICS, write_table

    from featx.cli import cli
    from featx.store import read_output

    rows = [{"text": t, "label": lab} for lab, ts in TOPICS.items() for t in ts * 2]
    table = write_table(tmp_path / "t.csv", rows)
    store = tmp_path / "t.h5"
    runner = CliRunner()
    r = runner.invoke(
        cli, ["extract", str(table), "-b", f"hf:{tiny_bert}", "--max-seq-length", "16",
              "--cache-activations", "auto", "--store", str(store), "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    acts, mask = read_output(store, "activations"), read_output(store, "activation_mask")
    assert acts.dtype == np.float16 and acts.shape[1:] == (16, 32) and mask.shape[1:] == (16,)
    bundle = tmp_path / "t.npz"
    r = runner.invoke(
        cli, ["finetune", str(store), "--epochs", "2", "--batch-size", "8", "--heads", "",
              "--bundle", str(bundle), "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = tmp_path / "p.csv"
    predict = ["predict", str(bundle), str(table), "--out", str(out), "-q"]
    r = runner.invoke(cli, predict)
    assert r.exit_code != 0 and "--model-dir" in r.output
    r = runner.invoke(cli, [*predict, "--model-dir", str(tiny_bert), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    got = list(csv.DictReader(out.open()))
    assert len(got) == len(rows) and got[0]["predicted"] in TOPICS


def test_pipeline_finetune_step_adds_rows_to_the_leaderboard(ftnet, colours, tmp_path):
    from featx.pipeline import load_pipeline, run_pipeline

    toml = tmp_path / "p.toml"
    toml.write_text(
        textwrap.dedent(f"""
        sources = ["{colours}"]
        backbones = ["ftnet"]
        heads = ["centroid"]
        [finetune]
        tails = [1, 2]
        epochs = 2
        batch_size = 8
        """)
    )
    res = run_pipeline(toml)
    labels = {r.label for r in next(iter(res.leaderboards.values())).results}
    assert labels == {"centroid", "finetune:tail=1", "finetune:tail=2"}
    toml.write_text(toml.read_text().replace("tails = [1, 2]", "tails = [0]"))
    with pytest.raises(FeatxError, match="tails must be a list of integers"):
        load_pipeline(toml)


# ---------------------------------------------------------------------------------------------
# named outputs in the store


def _commit_rows(path, config, parts):
    """Write ``parts`` (lists of (key, feature, activation)) through a StoreWriter and commit,
    keeping the rows of the store already there."""
    from featx.store import Rows, StoreWriter

    with StoreWriter(path, config) as w:
        rows = {}
        if w.index is not None:
            rows = {k: ("store", i) for i, k in enumerate(w.index.keys)}
        for part in parts:
            keys = [k for k, _, _ in part]
            p = w.write_part(
                Rows(
                    keys=keys,
                    features=np.array([f for _, f, _ in part], np.float32),
                    size=[1] * len(keys), mtime_ns=[1] * len(keys), sha256=[""] * len(keys),
                    failed_keys=[], failed_reasons=[], failed_size=[], failed_mtime_ns=[],
                    failed_sha256=[],
                    outputs={"activations": np.array([a for _, _, a in part])},
                )
            )  # fmt: skip
            rows.update({k: (str(p), i) for i, k in enumerate(keys)})
        keys = sorted(rows)
        w.commit(
            rows=rows, failed={}, labels={k: 0 for k in keys}, split={k: "" for k in keys},
            classes=("a",), fingerprints={k: (1, 1, "") for k in keys}, attrs={"dim": 2},
        )  # fmt: skip


def test_store_keeps_named_outputs_through_resume_and_verify(tmp_path):
    from featx.store import StoreConfig, default_store_path, read_output, store_info, verify_store

    plain = StoreConfig(source={"uri": "x"}, backbone={"name": "b"})
    assert "outputs" not in plain.to_dict()  # stores without outputs keep their hash
    spec = {"cut": "s3", "shape": [2, 3], "dtype": "float16", "label": "acts-s3"}
    cfg = StoreConfig(source={"uri": "x"}, backbone={"name": "b"}, outputs={"activations": spec})
    assert cfg.hash != plain.hash and "acts-s3" in default_store_path(cfg, "src").name
    path = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    acts = {k: rng.normal(size=(2, 3)).astype(np.float32) for k in "abcde"}
    feats = {k: rng.normal(size=2).astype(np.float32) for k in "abcde"}
    _commit_rows(
        path, cfg, [[(k, feats[k], acts[k]) for k in "db"], [("a", feats["a"], acts["a"])]]
    )
    _commit_rows(path, cfg, [[(k, feats[k], acts[k]) for k in "ec"]])  # resume: old rows kept
    got = read_output(path, "activations")
    assert got.dtype == np.float16 and got.shape == (5, 2, 3)
    want = np.stack([acts[k] for k in "abcde"]).astype(np.float16)
    np.testing.assert_array_equal(got, want)
    rep = verify_store(path)
    assert rep.ok, rep.problems
    assert store_info(path)["outputs"]["activations"]["cut"] == "s3"
