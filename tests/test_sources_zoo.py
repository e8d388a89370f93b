"""Every source kind through the same hostile zoo (issue #23): the folder kinds (image folders,
image CSV manifests, .txt folders) through one set of hostile files, the table kinds (image
manifests, text CSV / TSV / JSONL) through one set of malformed rows. Each kind must record
every bad entry with its reason, extract the rest, never hang and never exit 0 with less than
it says. Before #23 the text kinds repeated faults the image kinds had lost (RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import TinyBackbone, write_image

from featx.errors import FeatxError
from featx.extraction import ExtractOptions, extract
from featx.options import TextFormat
from featx.sources import open_source
from featx.store import load_features, store_info

LATIN1 = os.fsdecode(b"caf\xe9")  # a file name that is not UTF-8
ROOT = os.geteuid() == 0  # root reads files whatever their mode


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> str:
    from test_text import make_tiny_bert

    return "hf:" + str(make_tiny_bert(tmp_path_factory.mktemp("m") / "bert"))


def _bounded(fn, seconds: float = 120):
    """Run ``fn`` in a thread; fail (instead of hanging for ever) when it does not return."""
    out: list = []
    err: list = []

    def target():
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised below
            err.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} did not return within {seconds} s (a FIFO opened?)"
    if err:
        raise err[0]
    return out[0]


def _good(path: Path, kind: str, seed: int) -> None:
    if kind == "text":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"text number {seed} about things")
    else:
        write_image(path, seed=seed)


#: hostile entry -> the words its recorded reason must hold
ZOO = {
    "broken": "broken symlink",
    "self": "symlink loop",
    "fifo": "FIFO",
    "up": "symlink loop",  # a folder link to the parent (up -> ..)
    "locked": "ermission denied",
}


def _zoo_folder(root: Path, kind: str) -> dict[str, str]:
    """Class folders a and b with good files, and the zoo; returns key -> expected reason."""
    ext = ".txt" if kind == "text" else ".png"
    for c, cls in enumerate(["a", "b"]):
        for i in range(3):
            _good(root / cls / f"{i}{ext}", kind, 10 * c + i)
    _good(root / "a" / f"{LATIN1}{ext}", kind, 99)
    a = root / "a"
    os.symlink(f"missing{ext}", a / f"broken{ext}")
    os.symlink(f"self{ext}", a / f"self{ext}")
    os.mkfifo(a / f"fifo{ext}")
    os.symlink("..", a / "up")
    os.symlink("..", root / "up")  # at the top: must not become a class nor pull in the parent
    _good(root.parent / f"outside{ext}", kind, 77)  # what `up` would pull in
    locked = a / f"locked{ext}"
    _good(locked, kind, 55)
    locked.chmod(0)
    want = {
        f"a/broken{ext}": ZOO["broken"],
        f"a/self{ext}": ZOO["self"],
        f"a/fifo{ext}": ZOO["fifo"],
        "a/up": ZOO["up"],
        "up": ZOO["up"],
    }
    if not ROOT:
        want[f"a/locked{ext}"] = ZOO["locked"]
    return want


def _manifest(root: Path) -> tuple[Path, dict[str, str]]:
    """A CSV manifest listing the image zoo (a UTF-8 CSV cannot name a non-UTF-8 file)."""
    want = _zoo_folder(root, "image")
    del want["up"]  # the top-level link is not listed
    want["a/up"] = "a folder, not a file"
    good = [f"{c}/{i}.png" for c in "ab" for i in range(3)] + (["a/locked.png"] if ROOT else [])
    rows = ["path,label"] + [f"{rel},{rel[0]}" for rel in [*good, *want]]
    man = root / "list.csv"
    man.write_text("\n".join(rows) + "\n")
    return man, want


@pytest.mark.parametrize("kind", ["image-folder", "image-manifest", "text-folder"])
def test_every_folder_kind_records_the_same_hostile_files(kind, tmp_path, tiny_text):
    root = tmp_path / "src"
    if kind == "image-manifest":
        spec, want = _manifest(root)
    else:
        want = _zoo_folder(root, "text" if kind == "text-folder" else "image")
        spec = root
    bb = tiny_text if kind == "text-folder" else TinyBackbone()
    store = tmp_path / "s.h5"
    workers = {} if kind == "text-folder" else {"workers": 0}  # text takes no --workers
    opts = ExtractOptions(batch_size=4, device="cpu", **workers)
    r = _bounded(lambda: extract(spec, bb, store=store, options=opts))
    info = store_info(store)
    failed = {f["path"]: f["reason"] for f in info["failed"]}
    for key, why in want.items():
        assert key in failed, (key, sorted(failed))
        assert why in failed[key], (key, failed[key])
    assert info["classes"] == ["a", "b"], info["classes"]  # `up` is no class
    fs = load_features(store)
    keys = set(fs.keys.tolist())
    assert not any("outside" in k for k in keys | set(failed)), "the parent was walked"
    n_good = 6 + (0 if kind == "image-manifest" else 1) + (1 if ROOT else 0)
    assert fs.n == n_good and r.n_failed == len(want), (fs.n, r.n_failed, sorted(failed))
    if kind != "image-manifest":  # the non-UTF-8 name is extracted and reads back as its bytes
        name = next(k for k in keys if LATIN1 in k)
        assert os.fsencode(name) == b"a/caf\xe9" + (b".txt" if "text" in kind else b".png")
    again = _bounded(lambda: extract(spec, bb, store=store, options=opts))
    assert again.noop


@pytest.mark.parametrize("kind", ["image-folder", "text-folder", "image-manifest", "text-csv"])
def test_a_source_that_is_a_fifo_or_a_broken_link_is_one_error_not_a_hang(kind, tmp_path):
    ext = {"image-folder": "", "text-folder": "", "image-manifest": ".csv", "text-csv": ".csv"}
    fifo = tmp_path / f"pipe{ext[kind]}"
    os.mkfifo(fifo)
    link = tmp_path / f"gone{ext[kind]}"
    os.symlink("nowhere", link)
    for spec in (fifo, link):
        text = TextFormat() if kind.startswith("text") else None
        with pytest.raises(FeatxError):
            _bounded(lambda s=spec, t=text: open_source(s, text=t), 30)


# ---------------------------------------------------------------------------------------------
# the table kinds: one set of malformed rows
# ---------------------------------------------------------------------------------------------
def _rows_csv(delim: str) -> tuple[str, dict[int, str]]:
    lines = [
        f"text{delim}label",
        f"the parcel is late{delim}delivery",
        "a row without its label field",  # line 3: too few fields
        f"i pay my bill{delim}billing{delim}extra",  # line 4: too many
        f"refund my money{delim}billing",
        f"my password{delim}",  # line 6: explicitly unlabeled, fine
    ]
    return "\n".join(lines) + "\n", {3: "1 field(s)", 4: "3 field(s)"}


def _rows_jsonl() -> tuple[str, dict[int, str]]:
    rows = [
        {"text": "the parcel is late", "label": "delivery"},
        {"text": "a row without its label field"},  # line 2
        {"text": "i pay my bill", "label": ["billing"]},  # line 3: a list label
        {"text": "refund my money", "label": "billing"},
        {"text": "my password", "label": None},  # line 5: explicitly unlabeled, fine
        {"text": "seven", "label": 7.5},  # line 6: a fraction
    ]
    body = "\n".join(json.dumps(r) for r in rows) + "\n{broken\n"  # line 7
    return body, {2: "no field 'label'", 3: "is a list", 6: "fraction", 7: "not valid JSON"}


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_every_text_table_kind_records_malformed_rows_with_their_line(kind, tmp_path):
    if kind == "jsonl":
        body, bad = _rows_jsonl()
    else:
        body, bad = _rows_csv("\t" if kind == "tsv" else ",")
    path = tmp_path / f"t.{kind}"
    path.write_text(body)
    src = open_source(path, text=TextFormat())
    by_line = {it.line: it for it in src.items}
    for line, why in bad.items():
        assert why in by_line[line].error, (line, by_line[line].error)
        assert by_line[line].label == -1
    fine = [it for it in src.items if not it.error]
    assert len(fine) == len(by_line) - len(bad)
    assert set(src.classes) == {"billing", "delivery"}  # never "['billing']"
    assert sum(it.label == -1 for it in fine) == 1  # only the explicitly unlabeled row


@pytest.mark.parametrize("kind", ["image-manifest", "text-csv", "text-tsv"])
def test_an_unterminated_quote_refuses_the_table_with_its_line(kind, tmp_path):
    delim = "\t" if kind == "text-tsv" else ","
    if kind == "image-manifest":
        write_image(tmp_path / "x.png", seed=1)
        body = f'path{delim}label\nx.png{delim}a\n"x.png{delim}b\nx.png{delim}c\n'
    else:
        body = f'text{delim}label\nhello{delim}a\n"never closed{delim}b\nmore{delim}c\n'
    path = tmp_path / ("m.csv" if kind != "text-tsv" else "t.tsv")
    path.write_text(body)
    text = TextFormat() if kind.startswith("text") else None
    with pytest.raises(FeatxError, match="line 3: a quote opened here is never closed"):
        open_source(path, text=text)


def test_non_utf8_keys_survive_parquet_export(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from featx.export import export_store

    root = tmp_path / "src"
    for i, name in enumerate(["ok.png", f"{LATIN1}.png"]):
        write_image(root / "a" / name, seed=i)
        write_image(root / LATIN1 / name, seed=10 + i)
    store = tmp_path / "s.h5"
    extract(root, TinyBackbone(), store=store, options=ExtractOptions(workers=0, device="cpu"))
    res = export_store(store, tmp_path / "o.parquet")
    t = pq.read_table(res.out)
    ids = {bytes(v) if isinstance(v, bytes) else v.encode() for v in t.column("id").to_pylist()}
    assert b"a/caf\xe9.png" in ids and b"caf\xe9/ok.png" in ids
    labels = {bytes(v) for v in t.column("label").to_pylist()}
    assert labels == {b"a", b"caf\xe9"}
    fs = load_features(store)
    np.testing.assert_allclose(
        np.asarray(t.column("features").to_pylist()), fs.X, rtol=1e-6, atol=1e-6
    )
