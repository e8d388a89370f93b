"""The shared walker (featx/walk.py) and the strict table reader (featx/tables.py) on their own;
tests/test_sources_zoo.py runs every source kind through them (issue #23)."""

from __future__ import annotations

import json
import os
import threading

import pytest

from featx.errors import FeatxError
from featx.tables import label_cell, read_delimited, read_jsonl
from featx.walk import open_regular, scan, walk


def _zoo(root):
    """Every hostile kind of entry, inside class folder ``a`` (and good files)."""
    a = root / "a"
    a.mkdir(parents=True)
    (a / "good.txt").write_text("fine")
    os.symlink("missing.txt", a / "broken.txt")
    os.symlink("self.txt", a / "self.txt")
    os.symlink("..", a / "up")
    os.symlink(str(root), a / "root")
    os.mkfifo(a / "pipe.txt")
    (a / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name")
    locked = a / "locked.txt"
    locked.write_text("x")
    locked.chmod(0)
    (root / "b").mkdir()
    (root / "b" / "ok.txt").write_text("b")
    return a


def test_walker_records_every_hostile_entry_and_never_blocks(tmp_path):
    _zoo(tmp_path)
    done: list = []
    t = threading.Thread(target=lambda: done.append(scan(tmp_path)), daemon=True)
    t.start()
    t.join(30)
    assert done, "the walk blocked (a FIFO was opened?)"
    tree = done[0]
    assert tree.classes == ("a", "b")
    got = {e.rel: e.error for e in tree.entries}
    assert got["a/good.txt"] == "" and got["b/ok.txt"] == ""
    assert got[os.fsdecode(b"a/caf\xe9.txt")] == ""
    assert "broken symlink" in got["a/broken.txt"]
    assert "symlink loop" in got["a/self.txt"]
    assert "symlink loop" in got["a/up"] and "symlink loop" in got["a/root"]
    assert "FIFO" in got["a/pipe.txt"]
    assert got["a/locked.txt"] == ""  # readable as a type; reading it fails later, recorded
    assert len(got) == 9


def test_a_link_to_the_parent_at_the_top_is_no_class(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.txt").write_text("t")
    (tmp_path / "img.png").write_bytes(b"png")  # beside the source: must not be seen
    os.symlink("..", tmp_path / "src" / "up")
    tree = scan(tmp_path / "src")
    assert tree.classes == ()
    assert {e.rel: bool(e.error) for e in tree.entries} == {"x.txt": False, "up": True}
    assert all("img.png" not in e.rel for e in walk(tmp_path / "src"))


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "p")
    with pytest.raises(OSError, match="FIFO"):
        open_regular(tmp_path / "p")
    (tmp_path / "f").write_bytes(b"ok")
    with open_regular(tmp_path / "f") as f:
        assert f.read() == b"ok"


@pytest.mark.parametrize(
    "body, line, why",
    [
        ("text,label\na,x\nb\n", 3, "1 field(s) but the header has 2"),
        ("text,label\na,x\nb,y,z\n", 3, "3 field(s) but the header has 2"),
    ],
)
def test_rows_with_the_wrong_field_count_are_errors_with_their_line(tmp_path, body, line, why):
    p = tmp_path / "t.csv"
    p.write_text(body)
    rows = read_delimited(p).rows
    assert [(r.line, r.error) for r in rows] == [(2, ""), (line, why)]


def test_an_unterminated_quote_is_refused_with_its_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('text,label\na,x\n"never closed,y\nc,z\nd,w\n')
    with pytest.raises(FeatxError, match="line 3: a quote opened here is never closed"):
        read_delimited(p)
    p.write_text('text,label\n"multi\nline",x\nc,z\n')  # a closed multi-line field is fine
    assert [(r.line, r.cells["text"]) for r in read_delimited(p).rows] == [
        (2, "multi\nline"),
        (4, "c"),
    ]


def test_jsonl_rows_and_label_types(tmp_path):
    p = tmp_path / "t.jsonl"
    lines = [{"text": "a", "label": "x"}, {"text": "b"}, "[1]", "{bad", {"text": "c", "label": 3}]
    p.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    t = read_jsonl(p)
    assert t.columns == ("text", "label")
    assert [(r.line, r.error[:14]) for r in t.rows] == [
        (1, ""),
        (2, ""),
        (3, "not a JSON obj"),
        (4, "not valid JSON"),
        (5, ""),
    ]
    assert "label" not in t.rows[1].present
    assert label_cell(["l"], "label")[1].startswith("field 'label' is a list")
    assert label_cell({"a": 1}, "label")[1].startswith("field 'label' is an object")
    assert label_cell(1.5, "label")[1] and label_cell(True, "label")[1]
    assert label_cell(3, "label") == ("3", "") and label_cell(None, "label") == ("", "")
    assert label_cell(" cat ", "label") == ("cat", "")
