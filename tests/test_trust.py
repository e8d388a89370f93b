"""Hardening round 2 (issue #23): what a bundle may make featx do, the one CLI error boundary,
the one output guard, the terminal sanitizer, and options checked before a no-op. Each test
names the defect it guards (RELIABILITY.md cites them); each failed on main 19f8819."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import re
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_image
from test_finetune import ftnet  # noqa: F401 - the fixture (a tiny fine-tunable backbone)

from featx.bundle import load_bundle, save_bundle
from featx.cli import cli
from featx.errors import FeatxError
from featx.features import FeatureSet
from featx.protocol import fit_head

FEATX = Path(__file__).resolve().parent.parent / "featx"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _fs(n_classes: int = 3, dim: int = 6) -> FeatureSet:
    rng = np.random.default_rng(0)
    y = np.arange(60) % n_classes
    X = (rng.normal(size=(n_classes, dim))[y] * 2 + rng.normal(size=(60, dim))).astype(np.float32)
    keys = np.array([f"k{i}" for i in range(60)])
    classes = tuple(f"c{i}" for i in range(n_classes))
    return FeatureSet(X, y.astype(np.int64), classes, None, keys, {"dim": dim})


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory) -> Path:
    fs = _fs()
    fitted = fit_head(fs, "logreg", params={"device": "cpu", "Cs": "1"})
    return save_bundle(tmp_path_factory.mktemp("b") / "head.npz", fitted.estimator, fs.classes)


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rewrite(path: Path, out: Path, edit=None, members=None, compress=None) -> Path:
    """Re-zip a bundle after ``edit(meta, members)``, fixing up every checksum (a forgery)."""
    m = dict(members or _members(path))
    meta = json.loads(m["featx-bundle.json"])
    if edit is not None:
        edit(meta, m)
    for ref in list((meta.get("arrays") or {}) if isinstance(meta, dict) else {}):
        if ref in m:
            meta["arrays"][ref] = hashlib.sha256(m[ref]).hexdigest()
    text = m.pop("__raw_json__", None) or json.dumps(meta).encode()
    m["featx-bundle.json"] = text
    m["featx-bundle.sha256"] = (hashlib.sha256(text).hexdigest() + "\n").encode()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in m.items():
            z.writestr(name, data, compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
    return out


def _one_line_error(res) -> None:
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr


# ---------------------------------------------------------------------------------------------
# defect 1: a forged bundle / model folder runs no code
# ---------------------------------------------------------------------------------------------
def _code_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A model folder whose config asks transformers to import its own evil.py."""
    from test_text import make_tiny_bert

    folder = make_tiny_bert(tmp_path / "evil-model")
    marker = tmp_path / "pwned"
    (folder / "evil.py").write_text(
        f"import os\nos.mkdir({str(marker)!r})\n"
        "from transformers import BertConfig\n"
        "class EvilConfig(BertConfig):\n    model_type = 'bert'\n"
    )
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, marker


def test_a_model_folder_with_custom_code_is_refused_even_if_the_user_says_yes(
    tmp_path, monkeypatch
):
    from featx.backbones._text import load_text_backbone

    folder, marker = _code_folder(tmp_path)
    monkeypatch.setattr("builtins.input", lambda *a: "y")  # the "[y/N]" prompt, answered yes
    with pytest.raises(FeatxError, match="auto_map.*never runs code"):
        load_text_backbone(f"hf:{folder}")
    assert not marker.exists()


def test_a_bundle_cannot_make_featx_load_a_folder_it_names(tmp_path):
    from test_text import make_tiny_bert

    from featx.prediction import rebuild_backbone

    folder = make_tiny_bert(tmp_path / "m")
    meta = {"config": {"backbone": {"name": f"hf:{folder}", "family": "text"}}}
    with pytest.raises(FeatxError, match="--model-dir"):
        rebuild_backbone(meta)
    meta = {"config": {"backbone": {"name": "resnet18", "family": "torchvision"}}}
    with pytest.raises(FeatxError, match="not a model folder; drop --model-dir"):
        rebuild_backbone(meta, model_dir=folder)


def test_a_pickled_weights_file_is_one_line_not_an_unpickling_error(tmp_path):
    from test_text import make_tiny_bert

    from featx.backbones._text import load_text_backbone

    folder = make_tiny_bert(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(FeatxError, match="pickle"):
        load_text_backbone(f"hf:{folder}")
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ---------------------------------------------------------------------------------------------
# defect 2: zip bombs and arrays larger than their bytes
# ---------------------------------------------------------------------------------------------
def test_a_zip_bomb_is_refused_before_it_is_inflated(good_bundle, tmp_path):
    zeros = io.BytesIO()
    np.lib.format.write_array(zeros, np.zeros(8 << 20), allow_pickle=False)  # 64 MiB

    def edit(meta, m):
        m["arrays/0.npy"] = zeros.getvalue()

    bomb = _rewrite(
        good_bundle, tmp_path / "bomb.npz", edit, compress={"arrays/0.npy": zipfile.ZIP_DEFLATED}
    )
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(FeatxError, match="zip bomb"):
            load_bundle(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_an_array_header_claiming_terabytes_is_refused(good_bundle, tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )

    def edit(meta, m):
        m["arrays/0.npy"] = buf.getvalue() + b"\0" * 64

    forged = _rewrite(good_bundle, tmp_path / "huge.npz", edit)
    with pytest.raises(FeatxError, match=r"declares the shape \(1000000000000,\)"):
        load_bundle(forged)


# ---------------------------------------------------------------------------------------------
# defect 8: forged structure
# ---------------------------------------------------------------------------------------------
def _deep_json(depth: int) -> bytes:
    return b'{"magic": "featx-head-bundle", "format_version": 2, "estimator": ' + (
        b"[" * depth + b"]" * depth + b', "classes": ["a"], "dim": 2}'
    )


def test_forged_structure_is_one_featx_error(good_bundle, tmp_path):
    deep = _rewrite(
        good_bundle,
        tmp_path / "deep.npz",
        members={**_members(good_bundle), "__raw_json__": _deep_json(50_000)},
    )
    null = _rewrite(good_bundle, tmp_path / "null.npz", lambda meta, m: meta.update(estimator=None))
    short = _rewrite(
        good_bundle, tmp_path / "short.npz", lambda meta, m: meta.update(classes=["a"])
    )
    X = np.zeros((2, 6))
    for path, why in [(deep, "nested"), (null, "no estimator"), (short, "not indices")]:
        with pytest.raises(FeatxError, match=why):
            load_bundle(path).predict(X)


def test_a_store_given_as_a_bundle_is_called_a_store(tmp_path):
    import h5py

    store = tmp_path / "s.h5"
    with h5py.File(store, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FeatxError, match="is a feature store") as e:
        load_bundle(store)
    assert "pickle" not in str(e.value)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(FeatxError, match="not a featx head bundle") as e:
        load_bundle(other)
    assert "pickle-based" not in str(e.value)


def _mutations(rng: random.Random):
    """Ways to damage a bundle's JSON document (the checksums are fixed up afterwards)."""
    junk = [
        None,
        -1,
        0,
        10**30,
        1.5,
        "x",
        [],
        {},
        [1, 2],
        {"$": "ndarray", "ref": "arrays/0.npy"},
        {"$": "object", "cls": "os.system", "state": {}},
        {"$": "skops", "data": 1},
        {"$": "dict", "v": [[1]]},
        {"$": "objarray", "shape": [10**9], "v": []},
        {"$": "npscalar", "dtype": "object", "v": 1},
        {"$": "float", "v": "1e999"},
    ]

    def nodes(tree, path=()):
        yield path
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from nodes(v, (*path, k))
        elif isinstance(tree, list):
            for i, v in enumerate(tree):
                yield from nodes(v, (*path, i))

    def mutate(meta: dict, m: dict) -> None:
        paths = [p for p in nodes(meta) if p]
        for _ in range(rng.randint(1, 3)):
            p = rng.choice(paths)
            parent = meta
            for k in p[:-1]:
                parent = parent[k]
            choice = rng.random()
            if choice < 0.15 and isinstance(parent, dict):
                parent.pop(p[-1], None)
            elif choice < 0.3 and m:
                ref = rng.choice([r for r in m if r.startswith("arrays/")] or ["arrays/0.npy"])
                a = rng.choice([np.zeros((3, 1)), np.arange(5), np.array(["a"]), np.zeros(0)])
                b = io.BytesIO()
                np.lib.format.write_array(b, a)
                m[ref] = b.getvalue()
            else:
                with contextlib.suppress(TypeError, IndexError):
                    parent[p[-1]] = rng.choice(junk)
            paths = [q for q in nodes(meta) if q]

    return mutate


def test_bundle_fuzzer_every_forgery_ends_in_featx_error(good_bundle, tmp_path):
    """100 forged bundles (mutated JSON, arrays, shapes, member names, truncation, flipped
    bytes): each loads and predicts, or is refused with a FeatxError; nothing else escapes.
    Bounded: < 64 MiB traced over the run, and each case's CPU time (not wall time, which the
    machine's load decides) far below the 37 s the zip bomb of the issue took."""
    rng = random.Random(23)
    mutate = _mutations(rng)
    raw = good_bundle.read_bytes()
    X = np.zeros((2, 6))
    outcomes = {"refused": 0, "loaded": 0}
    slowest = 0.0
    tracemalloc.start()
    try:
        for i in range(100):
            path = tmp_path / f"f{i}.npz"
            kind = i % 5
            if kind == 0:  # bytes: truncate or flip
                data = bytearray(raw)
                if rng.random() < 0.5:
                    data = data[: rng.randrange(len(data))]
                else:
                    for _ in range(rng.randint(1, 8)):
                        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                path.write_bytes(bytes(data))
            elif kind == 1:  # member names
                m = _members(good_bundle)
                name = rng.choice(sorted(m))
                m[rng.choice(["../x", "/abs", "arrays/9.npy", name.upper(), ""]) or "z"] = m.pop(
                    name
                )
                with zipfile.ZipFile(path, "w") as z:
                    for n, d in m.items():
                        z.writestr(n, d)
            else:  # JSON state, array shapes, dtypes (checksums fixed: a deliberate forgery)
                _rewrite(good_bundle, path, mutate)
            t0 = time.process_time()
            try:
                load_bundle(path).predict_proba(X)
                outcomes["loaded"] += 1
            except FeatxError:
                outcomes["refused"] += 1
            slowest = max(slowest, time.process_time() - t0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcomes["refused"] >= 50, outcomes
    assert slowest < 20, slowest
    assert peak < 64 << 20, peak


# ---------------------------------------------------------------------------------------------
# defect 5 and the output guard: every output option of every command
# ---------------------------------------------------------------------------------------------
def _read_only(folder: Path):
    from test_hardening import _read_only as ro

    return ro(folder)


@pytest.fixture
def project(tmp_path, fake_backbone_family, monkeypatch):
    """A store, a bundle and a pipeline of the tiny test backbone, made through the CLI."""
    monkeypatch.chdir(tmp_path)
    imgs = tmp_path / "imgs"
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(4):
            write_image(imgs / cls / f"{i}.png", seed=10 * c + i)
    r = CliRunner()
    res = r.invoke(cli, ["extract", str(imgs), "-b", "tiny", "--device", "cpu", "-q", "--json"])
    assert res.exit_code == 0, res.output
    store = json.loads(res.stdout)["store"]
    res = r.invoke(cli, ["fit", store, "--head", "centroid", "--out", "head.npz"])
    assert res.exit_code == 0, res.output
    (tmp_path / "p.toml").write_text(
        f'sources = ["{imgs}"]\nbackbones = ["tiny"]\nheads = ["centroid"]\n'
        '[extract]\ndevice = "cpu"\n'
    )
    return {"imgs": str(imgs), "store": store, "bundle": str(tmp_path / "head.npz")}


def _base_commands(p: dict) -> dict[tuple[str, str], list[str]]:
    """(command, output option) -> a command line that writes that output (minus the option)."""
    full = ["finetune", "--full", p["colours"], "-b", "ftnet", "--epochs", "1", "--heads", ""]
    return {
        ("finetune", "--bundle"): [*full, "-q"],
        ("extract", "--store"): ["extract", p["imgs"], "-b", "tiny", "--device", "cpu", "-q"],
        ("export", "--out"): ["export", p["store"]],
        ("fit", "--out"): ["fit", p["store"], "--head", "centroid"],
        ("compare", "--csv"): ["compare", p["store"], "--heads", "centroid", "-q"],
        ("compare", "--report"): ["compare", p["store"], "--heads", "centroid", "-q"],
        ("predict", "--out"): ["predict", p["bundle"], p["imgs"], "--device", "cpu", "-q"],
        ("run", "--report"): ["run", "p.toml", "-q"],
        ("diagnose", "--report"): ["diagnose", p["store"], "-q"],
        ("demo", "--report"): ["demo", "-q"],  # its success path: tests/test_workflow.py
    }


def _output_options() -> list:
    from featx.cli import OutputOption

    out = []
    for name, cmd in cli.commands.items():
        for prm in cmd.params:
            if isinstance(prm, OutputOption):
                out.append((name, prm.opts[0], prm))
    return out


def test_every_output_option_is_an_output_option():
    """Options that name something featx writes go through the one guard (OutputOption)."""
    from featx.cli import OutputOption

    for name, cmd in cli.commands.items():
        for prm in cmd.params:
            if (
                prm.name in ("out", "csv_path", "report", "store", "bundle")
                and prm.param_type_name == "option"
            ):
                assert isinstance(prm, OutputOption), f"featx {name} {prm.opts[0]}"


def _name(prm, opt: str) -> str:
    return "o" if prm.folder else {"--store": "o.h5", "--bundle": "o.npz"}.get(opt, "o.out")


@pytest.mark.usefixtures("ftnet")
def test_every_output_option_pointed_at_a_bad_place_is_one_line(project, tmp_path):
    """Each command's output option into a read-only folder, below a file, into a missing folder
    under a read-only one, and onto an existing output without --force: one line, exit 1, no
    traceback, nothing written; a plain missing folder is created; --force replaces."""
    from test_finetune import colour_folder

    base = _base_commands({**project, "colours": str(colour_folder(tmp_path / "colours"))})
    opts = _output_options()
    assert {(c, o) for c, o, _ in opts} <= set(base), "add the new output option to _base_commands"
    ro = tmp_path / "ro"
    ro.mkdir()
    (tmp_path / "afile").write_text("x")
    r = CliRunner()
    with _read_only(ro):
        for cmd, opt, prm in opts:
            name = _name(prm, opt)
            for bad in [ro / name, tmp_path / "afile" / name, ro / "missing" / name]:
                res = r.invoke(cli, [*base[(cmd, opt)], opt, str(bad)])
                _one_line_error(res)
                assert str(bad.parent) in res.stderr or "afile" in res.stderr, res.stderr
                assert not bad.exists()
    for cmd, opt, prm in opts:
        if cmd == "demo":
            continue  # the whole demo is too slow here; it replaces its report (update=True)
        name = _name(prm, opt)
        target = tmp_path / f"new-{cmd}-{opt[2:]}" / name
        res = r.invoke(cli, [*base[(cmd, opt)], opt, str(target)])
        assert res.exit_code == 0, (cmd, opt, res.output)
        assert target.exists()
        again = r.invoke(cli, [*base[(cmd, opt)], opt, str(target)])
        if prm.update:  # a store is updated in place: a rerun is a no-op, not an overwrite
            assert again.exit_code == 0, again.output
            continue
        _one_line_error(again)
        assert "--force" in again.stderr
        forced = r.invoke(cli, [*base[(cmd, opt)], opt, str(target), "--force"])
        assert forced.exit_code == 0, (cmd, opt, forced.output)


def test_any_oserror_is_one_line_naming_the_path(project, tmp_path, monkeypatch):
    """An OSError raised anywhere below the CLI (here: inside export, after the guard passed)."""
    import featx.export

    def boom(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "deep" / "x.npz"))

    monkeypatch.setattr(featx.export, "export_store", boom)
    res = CliRunner().invoke(cli, ["export", project["store"], "--out", str(tmp_path / "e.npz")])
    _one_line_error(res)
    assert "deep/x.npz" in res.stderr and "permission denied" in res.stderr
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(
        cli, ["extract", project["imgs"], "-b", "tiny", "--store", "afile/x.h5", "-q"]
    )
    _one_line_error(res)
    assert "is a file, not a folder" in res.stderr


def test_the_cache_folder_must_be_a_folder_of_its_own(project, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    r = CliRunner()
    for bad, why in [("/", "file system root"), (str(tmp_path / "afile"), "is a file")]:
        monkeypatch.setenv("FEATX_CACHE_DIR", bad)
        res = r.invoke(cli, ["extract", project["imgs"], "-b", "tiny", "-q"])
        _one_line_error(res)
        assert why in res.stderr


# ---------------------------------------------------------------------------------------------
# defect 7: nothing printed can drive the terminal
# ---------------------------------------------------------------------------------------------
def test_labels_with_escape_sequences_are_printed_harmlessly(tmp_path, fake_backbone_family):
    imgs = tmp_path / "imgs"
    evil = "\x1b]0;owned\x07\x1b[2Jred\u202e"
    for c, cls in enumerate([evil, "blue"]):
        for i in range(4):
            write_image(imgs / cls / f"{i}.png", seed=10 * c + i)
    (imgs / "blue" / "bad\x1b[31m.png").write_bytes(b"not a png")
    r = CliRunner()
    store = tmp_path / "s.h5"
    res = r.invoke(cli, ["extract", str(imgs), "-b", "tiny", "--store", str(store), "-q"])
    assert res.exit_code == 0, res.output
    for args in (["info", str(store)], ["fit", str(store), "--head", "centroid"]):
        res = r.invoke(cli, args)
        assert res.exit_code == 0, res.output
        assert "\x1b" not in res.output and "\u202e" not in res.output
        assert "\\x1b]0;owned\\x07" in res.output


def test_nothing_in_featx_prints_around_the_sanitizer():
    """``click.echo`` only in featx/terminal.py: every command prints through terminal.echo."""
    offenders = [
        str(p.relative_to(FEATX))
        for p in FEATX.rglob("*.py")
        if p.name != "terminal.py" and re.search(r"click\.echo\(|click\.secho\(", p.read_text())
    ]
    assert not offenders, f"print through featx.terminal.echo instead: {offenders}"


# ---------------------------------------------------------------------------------------------
# defect 11: options are checked before the up-to-date shortcut
# ---------------------------------------------------------------------------------------------
def test_bad_options_are_refused_when_there_is_nothing_to_do(project, tmp_path):
    import torch

    r = CliRunner()
    base = ["extract", project["imgs"], "-b", "tiny", "-q"]
    assert "up to date" in r.invoke(cli, [*base[:-1], "--device", "cpu"]).output
    bad = [["--device", "banana"], ["--max-seq-length", "16"]]
    if torch.cuda.device_count() < 8:
        bad.append(["--device", "cuda:7"])
    for extra in bad:
        res = r.invoke(cli, [*base, *extra])
        _one_line_error(res)
    (tmp_path / "five.toml").write_text('sources = 5\nbackbones = ["tiny"]\nheads = ["centroid"]\n')
    res = r.invoke(cli, ["run", "five.toml", "-q"])
    _one_line_error(res)
    assert "must be a list" in res.stderr
    res = r.invoke(cli, ["fit", project["store"], "--head", "mlp", "--param", "hidden_sizes=-5"])
    _one_line_error(res)
    assert "positive integer" in res.stderr


# ---------------------------------------------------------------------------------------------
# defect 9: readers check the attributes' checksum
# ---------------------------------------------------------------------------------------------
def test_a_flipped_byte_in_an_attribute_stops_every_reader(project, tmp_path):
    store = Path(project["store"])
    data = bytearray(store.read_bytes())
    at = data.find(b"test/tiny")  # inside the recorded configuration (an attribute)
    assert at > 0
    data[at + 5] ^= 0x01  # "tiny" -> "uiny"
    store.write_bytes(bytes(data))
    r = CliRunner()
    for args in (
        ["info", str(store)],
        ["info", str(store), "--verify"],
        ["verify", str(store)],
        ["fit", str(store), "--head", "centroid", "--out", str(tmp_path / "h.npz")],
        ["compare", str(store), "--heads", "centroid", "-q"],
        ["export", str(store), "--out", str(tmp_path / "e.npz")],
    ):
        res = r.invoke(cli, args)
        _one_line_error(res)
        assert "damaged" in res.stderr
        if "verify" not in " ".join(args):  # the readers point to featx verify
            assert "featx verify" in res.stderr, res.stderr
    assert not (tmp_path / "h.npz").exists() and not (tmp_path / "e.npz").exists()


# ---------------------------------------------------------------------------------------------
# defect 10: a killed export leaves nothing that a later run does not remove
# ---------------------------------------------------------------------------------------------
def test_a_killed_export_leaves_no_temporaries_after_the_next_run(project, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o.npz"
    code = (
        "import os, signal, sys\n"
        "import featx.export as e\n"
        "import dataclasses\n"
        "def dying(tmp, *a):\n"
        "    open(tmp, 'wb').write(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "e._FORMATS['npz'] = dataclasses.replace(e._FORMATS['npz'], write=dying)\n"
        "e.export_store(sys.argv[1], sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(FEATX.parent)}
    p = subprocess.run([sys.executable, "-c", code, project["store"], str(out)], env=env)
    assert p.returncode == -9
    assert list(tmp_path.glob("o.npz.tmp-*")), "the kill left its temporary (as a kill does)"
    res = CliRunner().invoke(cli, ["export", project["store"], "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not list(tmp_path.glob("o.npz.tmp-*"))
    assert np.load(out)["features"].shape[0] == 8


def _forged_zip(path: Path, json_name: str, sum_name: str, meta, arrays=None, deflate=()):
    text = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(json_name, text, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr(sum_name, hashlib.sha256(text).hexdigest())
        for ref, data in (arrays or {}).items():
            z.writestr(
                ref,
                data,
                compress_type=(zipfile.ZIP_DEFLATED if ref in deflate else zipfile.ZIP_STORED),
            )
    return path


@pytest.mark.parametrize("loader", ["head", "finetuned"])
def test_every_bundle_loader_shares_the_zip_limits(loader, tmp_path):
    """Head bundles and fine-tuned bundles read through featx.safezip: the same forgeries (a
    deep document, a zip bomb, an array header claiming terabytes) are refused by both."""
    if loader == "head":
        names, magic, version = ("featx-bundle.json", "featx-bundle.sha256"), "featx-head-bundle", 2
        load = load_bundle
    else:
        from featx.finetuning import bundle as fb

        names, magic, version = (fb.JSON_NAME, fb.SUM_NAME), fb.MAGIC, fb.FORMAT_VERSION
        load = fb.read_finetune_bundle
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    huge = header.getvalue() + b"\0" * 64
    zeros = io.BytesIO()
    np.lib.format.write_array(zeros, np.zeros(8 << 20))
    ref = "arrays/0.npy"
    cases = {
        "nested": _deep_json(50_000),
        "declares the shape": {
            "magic": magic,
            "format_version": version,
            "arrays": {ref: hashlib.sha256(huge).hexdigest()},
            "weights": {
                "w": {"ref": ref, "shape": [10**12], "sha256": hashlib.sha256(huge).hexdigest()}
            },
        },
        "zip bomb": {
            "magic": magic,
            "format_version": version,
            "arrays": {ref: hashlib.sha256(zeros.getvalue()).hexdigest()},
            "weights": {
                "w": {
                    "ref": ref,
                    "shape": [8 << 20],
                    "sha256": hashlib.sha256(zeros.getvalue()).hexdigest(),
                }
            },
        },
    }
    for why, meta in cases.items():
        if isinstance(meta, bytes):
            meta = meta.replace(b"featx-head-bundle", magic.encode()).replace(
                b'"format_version": 2', f'"format_version": {version}'.encode()
            )
        data = {"declares the shape": {ref: huge}, "zip bomb": {ref: zeros.getvalue()}}.get(why)
        path = _forged_zip(tmp_path / f"{why}.npz", *names, meta, data, deflate=(ref,))
        with pytest.raises(FeatxError, match=why):
            load(path)
