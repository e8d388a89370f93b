"""Short commands import neither torch nor timm: help, listings, and an extract with nothing to do.

Import checks, not timings (timings are in benchmarks/bench_startup.py and BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_image

from featx.backbones import catalog

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "sklearn")


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> tuple[str, set[str]]:
    """Run ``python -m featx ARGS``; its stdout and the top-level modules it imported."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['featx', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('featx', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "sys.stderr.write('MODULES ' + ' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    mods = set(res.stderr.rsplit("MODULES ", 1)[1].split())
    return res.stdout, mods


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["backbones", "resnet*"], ["backbones"], ["heads"], ["info"]],
)
def test_short_commands_do_not_import_torch(args):
    if args[0] == "backbones" and catalog._load() is None:
        pytest.skip("catalog.json is for another torchvision version (listing is live)")
    _, mods = _run(args)
    assert not mods & {"torch", "timm", "torchvision"}, sorted(mods & set(HEAVY))
    if args[0] in ("heads", "--help", "--version"):
        assert "sklearn" not in mods


def test_up_to_date_extract_does_not_import_torch(tmp_path):
    from featx.extraction import extract
    from featx.options import ExtractOptions

    src = tmp_path / "imgs"
    for i in range(3):
        write_image(src / f"{i}.png", seed=i)
    args = ["extract", str(src), "-b", "resnet18", "--weights", "none", "--image-size", "32"]
    args += ["--workers", "0", "-q", "--json"]
    first = extract(
        str(src), "resnet18", weights="none", image_size=32, options=ExtractOptions(workers=0)
    )
    out, mods = _run(args)
    res = json.loads(out)
    assert res["noop"] and res["store"] == first.store and res["n_items"] == 3
    assert not mods & {"torch", "timm", "torchvision"}, sorted(mods)
    # a changed folder is not mistaken for up to date: the model is built and runs
    write_image(src / "3.png", seed=3)
    out, mods = _run(args)
    res = json.loads(out)
    assert not res["noop"] and res["n_new"] == 1 and res["store"] == first.store
    assert "torch" in mods


def test_remembered_configuration_must_match_the_real_one(tmp_path, monkeypatch):
    """A wrong memo entry (e.g. edited by hand) never yields a no-op on the wrong store."""
    from featx.backbones import memo
    from featx.extraction import extract
    from featx.options import ExtractOptions

    src = tmp_path / "imgs"
    write_image(src / "0.png", seed=0)
    opts = ExtractOptions(workers=0)
    first = extract(str(src), "resnet18", weights="none", image_size=32, options=opts)
    key = memo.request_key("resnet18", "none", image_size=32)
    real = memo.recall(key)
    assert real is not None and real["dim"] == 512
    memo.remember(key, {**real, "dim": 999})  # stale: points at a store that does not exist
    again = extract(str(src), "resnet18", weights="none", image_size=32, options=opts)
    assert again.store == first.store and again.noop
    assert memo.recall(key) == real  # corrected from the built backbone


def test_catalog_matches_the_live_listing():
    from featx.backbones import list_backbones

    if catalog._load() is None:
        pytest.skip("catalog.json is for another torchvision version")
    assert json.loads(catalog.PATH.read_text()) == catalog.build(), (
        "featx/backbones/catalog.json is stale: run `python tools/gen_backbone_catalog.py`"
    )
    fast = list_backbones("*n*")
    catalog._load.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(catalog, "_load", lambda: None)
            live = list_backbones("*n*")
    finally:
        catalog._load.cache_clear()
    assert fast == live and len(fast) > 20
