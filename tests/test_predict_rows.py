"""featx predict: rows in the input's order, paths as reachable from where the command ran,
prediction stores in <cache>/predict."""

from __future__ import annotations

import csv
import json
import os

from click.testing import CliRunner

from featx.cli import cli


def _invoke(args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_paths_follow_one_convention_and_rows_the_manifest(tmp_path, monkeypatch):
    from test_workflow import BB, _tinted

    monkeypatch.chdir(tmp_path)
    train = _tinted(tmp_path / "train", n_per_class=4)
    _invoke(["extract", train, *BB, "--store", tmp_path / "train.h5"])
    _invoke(["fit", tmp_path / "train.h5", "--head", "centroid", "--out", tmp_path / "h.npz"])
    _tinted(tmp_path / "new", n_per_class=2, seed=5)

    # a folder, typed relative: paths as typed + the file inside it
    _invoke(["predict", "h.npz", "new", "--out", "a.csv", "--workers", "0", "-q"])
    got = [r["path"] for r in _rows("a.csv")]
    assert got == sorted(got) and all(os.path.isfile(p) for p in got)
    assert got[0] == os.path.join("new", "blue", "00.png")
    # the same files as a glob: the same paths
    _invoke(["predict", "h.npz", "new/*/*.png", "--out", "b.csv", "--workers", "0", "-q"])
    assert [r["path"] for r in _rows("b.csv")] == got

    # a manifest in reverse order: rows come back in the manifest's order, paths joined to it
    listed = list(reversed([os.path.relpath(p, "new") for p in got]))
    with open("new/m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([p, p.split(os.sep)[0]] for p in listed)
    _invoke(["predict", "h.npz", "new/m.csv", "--out", "c.csv", "--workers", "0", "-q"])
    assert [r["path"] for r in _rows("c.csv")] == [os.path.join("new", p) for p in listed]

    # the new sources' stores sit in <cache>/predict, listed by featx cache ls
    res = json.loads(_invoke(["cache", "ls", "--json"]).output)
    kinds = {e["kind"] for e in res["entries"] if e["name"].startswith(("new__", "m__"))}
    assert kinds == {"prediction"}
