"""The small things of #15: each one a behaviour a user saw, checked through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_workflow import BB, _tinted

from featx.cli import cli


def _invoke(args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + (r.stderr or "")
    return r


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory) -> tuple[Path, Path]:
    """One source extracted at two image sizes into the default cache."""
    root = tmp_path_factory.mktemp("sizes")
    src = _tinted(root / "imgs", n_per_class=4)
    stores = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATX_CACHE_DIR", str(root / "cache"))
        for size in ("32", "48"):
            args = [a if a != "32" else size for a in BB]
            r = _invoke(["extract", src, *args, "--json"])
            stores.append(Path(json.loads(r.stdout)["store"]))
    return stores[0], stores[1]


def test_store_names_show_the_image_size(two_sizes):
    a, b = two_sizes
    assert a.name.startswith("imgs__resnet18-none-pre_logits-avg-32px__")
    assert b.name.startswith("imgs__resnet18-none-pre_logits-avg-48px__")


def test_compare_labels_stores_of_one_backbone_alike(two_sizes):
    r = _invoke(["compare", *two_sizes, "--heads", "centroid", "--json", "-q"])
    stores = {res["store"] for res in json.loads(r.stdout)["results"]}
    assert stores == {"resnet18 32px", "resnet18 48px"}


def test_fit_json_gives_numbers_and_writes_no_bundle_without_out(two_sizes, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    r = _invoke(["fit", two_sizes[0], "--head", "knn", "--param", "k=3", "--json"])
    res = json.loads(r.stdout)
    assert res["params"] == {"k": 3}  # not "3"
    assert res["bundle"] is None
    assert not (tmp_path / "cache").exists()  # nothing written anywhere
    r = _invoke(["fit", two_sizes[0], "--head", "knn"])
    assert "bundle: not saved (add --out" in r.stdout
    out = tmp_path / "h.joblib"
    r = _invoke(["fit", two_sizes[0], "--head", "knn", "--out", out])
    assert f"bundle: {out}" in r.stdout and out.is_file()


def test_heads_listing_states_each_default_once():
    r = _invoke(["heads"])
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(" ")]
    assert lines and all(ln.count("(default") <= 1 for ln in lines), r.stdout
    assert any("ks=ints" in ln and "(default 1,3,5" in ln for ln in lines)


def test_progress_prints_its_last_line_once(two_sizes, capsys):
    from featx.train import compare_stores

    compare_stores([two_sizes[0]], ["centroid", "knn"], progress=True)
    err = capsys.readouterr().err
    frames = [f for f in err.replace("\r", "\n").splitlines() if f.strip()]
    assert frames and sum("2/2" in f for f in frames) == 1, frames


def test_progress_bar_renders_the_final_state_once(capsys):
    """tqdm shows a state on update() once 0.1 s passed, and close() shows the last one again."""
    import time

    from featx.progress import progress_bar

    bar = progress_bar(total=3, desc="x", unit="it", enabled=True)
    for _ in range(3):
        time.sleep(0.15)  # past tqdm's mininterval: every update would render
        bar.update(1)
    bar.close()
    frames = capsys.readouterr().err.replace("\r", "\n")
    assert frames.count("3/3") == 1 and frames.count("2/3") == 1, frames


def test_no_lock_files_are_left_beside_stores(tmp_path, tiny_backbone):
    from featx.errors import StoreLockedError
    from featx.extraction import extract
    from featx.options import ExtractOptions
    from featx.store import StoreConfig, StoreWriter

    src = _tinted(tmp_path / "imgs", n_per_class=2)
    store = tmp_path / "s.h5"
    extract(str(src), tiny_backbone, store=store, options=ExtractOptions(workers=0))
    extract(str(src), tiny_backbone, store=store, options=ExtractOptions(workers=0))  # no-op
    assert not list(tmp_path.glob("*.lock")), list(tmp_path.iterdir())

    cfg = StoreConfig(source={"kind": "x", "uri": "y"}, backbone={"name": "b"})
    other = tmp_path / "o.h5"
    with StoreWriter(other, cfg):
        assert other.with_name("o.h5.lock").exists()  # held while writing
        with pytest.raises(StoreLockedError), StoreWriter(other, cfg):
            pass
    assert not other.with_name("o.h5.lock").exists()
