"""Feature groups: fusion by key, --layers choices, the group step, TF-IDF, bundles (#19)."""

from __future__ import annotations

import numpy as np
import pytest

from featx.errors import FeatxError
from featx.features import FeatureGroup, FeatureSet, TextRows
from featx.fusion import fuse
from featx.groups import choose_groups, one_choice

CLASSES = ("a", "b", "c")
WORDS = ("what when who", "where place city", "how many number")


def _sets(n: int = 150, seed: int = 0):
    """Store A: 4 informative dims; store B: 30 noise dims and the texts (one cue word/class)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    keys = np.array([f"k{i:04d}" for i in range(n)])
    A = (rng.normal(size=(n, 4)) + 2.0 * np.eye(3, 4)[y]).astype(np.float32)
    B = rng.normal(size=(n, 30)).astype(np.float32)
    texts = np.array(
        [f"{rng.choice(WORDS[c].split())} filler{rng.integers(40)}" for c in y], dtype=object
    )
    a = FeatureSet(A, y, CLASSES, None, keys, meta={"backbone": "A"})
    b = FeatureSet(B, y, CLASSES, None, keys, meta={"backbone": "B"}, texts=texts)
    return a, b


def test_fuse_joins_on_keys_and_reports_keys_in_one_store_only(caplog):
    a, b = _sets()
    order = np.random.default_rng(1).permutation(b.n)[:-7]  # B: shuffled, 7 keys missing
    b2 = FeatureSet(b.X[order], b.y[order], CLASSES, None, b.keys[order], texts=b.texts[order])
    f = fuse({"A": a, "B": b2})
    fs = f.features
    assert fs.n == a.n - 7 and fs.dim == 34
    assert [g.name for g in fs.groups] == ["A", "B"]
    assert f.only == {"A": 7}
    assert "7 keys in one store only" in f.report and "A only: 7" in f.report
    assert f.report in caplog.text
    # rows line up: each row's B part and text are those of its key
    pos = {k: i for i, k in enumerate(b.keys)}
    rows = np.array([pos[k] for k in fs.keys])
    np.testing.assert_array_equal(fs.X[:, 4:], b.X[rows])
    np.testing.assert_array_equal(fs.X[:, :4], a.X[rows])
    assert list(fs.texts) == list(b.texts[rows])


def test_fuse_refuses_disjoint_or_disagreeing_stores():
    a, b = _sets()
    other = FeatureSet(b.X, b.y, CLASSES, None, np.array([f"z{i}" for i in range(b.n)]))
    with pytest.raises(FeatxError, match="share no keys"):
        fuse({"A": a, "B": other})
    flipped = FeatureSet(b.X, (b.y + 1) % 3, CLASSES, None, b.keys)
    with pytest.raises(FeatxError, match="disagree on the label"):
        fuse({"A": a, "B": flipped})


def test_layer_choices_and_unknown_group_names_the_closest():
    a, b = _sets()
    fs = fuse({"A": a, "B": b}).features
    got = {label: v for label, v in choose_groups(fs, "each,all,select,select:1")}
    assert list(got) == ["A", "B", "tfidf", "all", "select", "select:1"]
    assert got["A"].dim == 4 and got["B"].dim == 30 and got["tfidf"].dim == 0
    assert got["tfidf"].uses_texts and not got["A"].uses_texts
    assert got["all"].dim == 34 and got["all"].uses_texts
    assert got["select"].select == 0 and got["select:1"].select == 1
    assert one_choice(fs, "B+A").dim == 34  # a named combination, in the order given
    np.testing.assert_array_equal(one_choice(fs, "B,A").X[:, :30], fs.X[:, 4:])
    with pytest.raises(
        FeatxError, match=r"did you mean 'A'.*this set has: A, B, tfidf, tfidf-sparse"
    ):
        choose_groups(fs, "a")
    with pytest.raises(FeatxError, match="makes 2 choices"):
        one_choice(fs, "A+B,all")
    with pytest.raises(FeatxError, match="needs the texts"):
        choose_groups(a, "tfidf")  # an image-like store keeps no texts


def test_compare_each_all_select_rows_name_their_groups():
    from featx.comparison import compare

    a, b = _sets()
    fs = fuse({"A": a, "B": b}).features
    board = compare({"f": fs}, ["centroid"], layers="each,all,select:1", seed=0)
    acc = {r.store: r.accuracy for r in board.results}
    assert set(acc) == {"f [A]", "f [B]", "f [tfidf]", "f [all]", "f [select:1]"}
    assert acc["f [B]"] < 0.6 < acc["f [A]"]  # noise vs signal
    assert acc["f [tfidf]"] > 0.9  # one cue word per class
    sel = next(r for r in board.results if r.store == "f [select:1]")
    assert sel.solver.startswith("groups: ") and "B" not in sel.solver.split(";")[0]


def test_group_step_standardizes_each_group_to_equal_weight():
    from featx.heads.groups import GroupFeatures

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(5, 100, size=(200, 8)), rng.normal(0, 1, (200, 64))], axis=1)
    step = GroupFeatures(groups=(("small", 0, 8, "dense"), ("big", 8, 72, "dense"))).fit(X)
    Z = step.transform(X)
    total = [float(Z[:, :8].var(axis=0).sum()), float(Z[:, 8:].var(axis=0).sum())]
    np.testing.assert_allclose(total, [1.0, 1.0], rtol=1e-4)


def test_selection_uses_training_rows_only_and_keeps_the_informative_group():
    from featx.heads.groups import GroupFeatures

    a, b = _sets(n=300)
    fs = fuse({"A": a, "B": b}).features
    step = GroupFeatures(groups=tuple(g.to_tuple() for g in fs.groups), select=0)
    step.fit(fs.X, fs.y)
    assert step.groups_ == ("A",)
    assert step.relevance_["A"] > step.relevance_["B"]
    assert step.transform(fs.X).shape == (fs.n, 4)


def test_tfidf_is_fitted_on_training_texts_only():
    from featx.text.tfidf import TfidfFeatures

    t = TfidfFeatures(dim=0, char=False, min_df=1).fit(["a cat sat", "a dog ran"])
    vocab = set(t.vocabularies_[0])
    assert "cat" in vocab and "zebra" not in vocab
    Z = t.transform(["zebra zebra", "a cat"])
    assert Z.shape[1] == t.n_terms_ and Z[0].nnz == 0  # an unseen word adds nothing


@pytest.mark.parametrize("layers", ["tfidf", "all", "select"])
def test_bundle_round_trip_with_groups_and_texts(tmp_path, layers):
    from featx.bundle import load_bundle, save_bundle
    from featx.protocol import fit_head
    from featx.train import bundle_meta

    a, b = _sets()
    fs = fuse({"A": a, "B": b}).features
    fitted = fit_head(fs, "logreg", layers=layers, refit="train")
    view = fitted.features
    path = save_bundle(
        tmp_path / "h.npz", fitted.estimator, fitted.classes, bundle_meta(view), {"x": 1}
    )
    loaded = load_bundle(path)
    X = view.inputs()
    assert isinstance(X, TextRows)
    expected = np.array(CLASSES)[fitted.estimator.predict(X[:20])]
    np.testing.assert_array_equal(loaded.predict(X[:20]), expected)
    names = [g[0] for g in loaded.store_meta["feature_groups"]]
    assert names == [g.name for g in view.groups]
    assert loaded.dim == view.dim


def test_plain_store_is_unchanged_by_groups():
    """A set without groups gets no group step: the same head as before #19."""
    from featx.protocol import fit_head

    a, _ = _sets()
    fitted = fit_head(a, "logreg", refit="train")
    assert [n for n, _ in fitted.estimator.steps] == ["standardize", "head"]
    g = FeatureSet(a.X, a.y, CLASSES, None, a.keys, groups=(FeatureGroup("x", 0, 4),))
    assert [n for n, _ in fit_head(g, "logreg", refit="train").estimator.steps] == [
        "standardize",
        "head",
    ]


def test_cli_fused_compare_fit_predict(tmp_path, image_folder, fake_backbone_family):
    """`featx compare A+B --layers each,all`, `featx fit A+B`, `featx predict` on a fusion."""
    import json

    from click.testing import CliRunner

    from featx.cli import cli

    run = CliRunner()
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    base = ["extract", str(image_folder), "-b", "tiny", "--workers", "0", "-q"]
    assert run.invoke(cli, [*base, "--store", str(a)]).exit_code == 0
    r = run.invoke(cli, [*base, "--store", str(b), "--layer", "feature_map", "--pool", "max"])
    assert r.exit_code == 0, r.output
    fused = f"{a}+{b}"
    r = run.invoke(
        cli, ["compare", fused, "--heads", "centroid", "--layers", "each,all", "--json", "-q"]
    )
    assert r.exit_code == 0, r.output
    stores = {row["store"] for row in json.loads(r.stdout)["results"]}
    assert len(stores) == 3 and any(s.endswith("[all]") for s in stores), stores
    bundle = tmp_path / "h.npz"
    r = run.invoke(cli, ["fit", fused, "--head", "centroid", "--out", str(bundle), "--json"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "p.csv"
    r = run.invoke(cli, ["predict", str(bundle), str(image_folder), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_predicted"] == 12
    one = image_folder / "dog" / "1.png"  # one loose file: each backbone, joined on its path
    r = run.invoke(cli, ["predict", str(bundle), str(one), "--out", str(out), "--json", "--force"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_predicted"] == 1 and str(one) in out.read_text()
    # a store that is not there names itself; an unknown group names the valid ones
    r = run.invoke(cli, ["compare", f"{a}+{tmp_path / 'no.h5'}", "--heads", "centroid"])
    assert r.exit_code != 0 and "no.h5" in r.output and "Traceback" not in r.output
    r = run.invoke(cli, ["fit", fused, "--head", "centroid", "--layers", "nosuch"])
    assert r.exit_code != 0 and "unknown feature group 'nosuch'" in r.output


def test_pipeline_fuse_adds_the_joined_stores(tmp_path, image_folder, fake_backbone_family):
    from featx.pipeline import load_pipeline, run_pipeline

    p = tmp_path / "p.toml"
    p.write_text(
        f'sources = ["{image_folder}"]\nfuse = true\nreport = "rep"\n'
        '[[backbones]]\nname = "tiny"\n'
        '[[backbones]]\nname = "tiny"\nlayer = "feature_map"\npool = "max"\n'
        '[extract]\nworkers = 0\n[[heads]]\nname = "centroid"\n'
    )
    res = run_pipeline(p)
    board = next(iter(res.leaderboards.values()))
    assert "tiny+tiny[feature_map,max]" in {r.store for r in board.results}
    bad = tmp_path / "bad.toml"
    bad.write_text(p.read_text().replace("fuse = true", 'fuse = [["tiny", "nosuch"]]'))
    with pytest.raises(FeatxError, match="must name two or more backbones"):
        load_pipeline(bad)


def test_text_store_keeps_texts_and_tfidf_fits_bundles_and_predicts(tmp_path, image_folder):
    """Texts live in the store; tfidf alone and fused with the encoder go through fit/predict."""
    import json

    from click.testing import CliRunner
    from test_text import TOPICS, make_tiny_bert, write_table

    from featx.cli import cli
    from featx.store import load_features, verify_store

    model = make_tiny_bert(tmp_path / "m", st={"pool": "cls", "normalize": True})
    rows = [
        {"id": f"t{i}-{j}", "text": t, "label": lab}
        for i, (lab, ts) in enumerate(TOPICS.items())
        for j, t in enumerate(ts * 3)
    ]
    csv_path = write_table(tmp_path / "t.csv", rows)
    run = CliRunner()
    store = tmp_path / "t.h5"
    args = ["extract", str(csv_path), "-b", f"hf:{model}", "--store", str(store), "-q"]
    assert run.invoke(cli, [*args, "--device", "cpu"]).exit_code == 0
    fs = load_features(store)
    by_key = {r["id"]: r["text"] for r in rows}
    assert [by_key[k] for k in fs.keys] == list(fs.texts)
    assert verify_store(store).ok
    r = run.invoke(cli, ["compare", str(store), "--heads", "centroid", "--layers", "each,all",
                         "--json", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = {row["store"].rsplit("[", 1)[1][:-1] for row in json.loads(r.stdout)["results"]}
    assert got == {"features", "tfidf", "all"}
    for layers in ("tfidf", "all"):
        bundle = tmp_path / f"{layers}.npz"
        r = run.invoke(cli, ["fit", str(store), "--head", "logreg", "--layers", layers,
                             "--out", str(bundle), "--json"])  # fmt: skip
        assert r.exit_code == 0, r.output
        out = tmp_path / f"{layers}.csv"
        r = run.invoke(cli, ["predict", str(bundle), str(csv_path), "--out", str(out),
                             "--model-dir", str(model), "--device", "cpu", "--json"])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["n_predicted"] == len(rows)
    # a text representation asked of an image store: one line, no traceback
    img = tmp_path / "i.h5"
    ext = ["extract", str(image_folder), "-b", "resnet18", "--weights", "none"]
    r = run.invoke(cli, [*ext, "--image-size", "32", "--store", str(img), "-q", "--workers", "0"])
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["fit", str(img), "--head", "centroid", "--layers", "tfidf"])
    assert r.exit_code != 0 and "needs the texts" in r.output and "image store" in r.output
    assert "Traceback" not in r.output
