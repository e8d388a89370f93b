"""Aligned terminal tables (featx.console) and the leaderboard as the terminal shows it."""

from __future__ import annotations

import pytest

from featx.console import human_bytes, render_table


def test_render_table_aligns_columns_and_numbers():
    out = render_table(["name", "n", "note"], [["a", 5, "x"], ["longer", 123, None]])
    lines = out.splitlines()
    assert lines[0] == "name      n  note"
    assert lines[1] == "------  ---  ----"
    assert lines[2] == "a         5  x"
    assert lines[3] == "longer  123  -"
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        render_table(["a", "b", "c"], [[1, 2]])


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 999, 1536, 4_800_000)] == [
        "0 B",
        "999 B",
        "1.5 KB",
        "4.8 MB",
    ]


def test_leaderboard_text_is_aligned_and_names_the_split():
    from test_comparison import make_store

    from featx.comparison import compare

    a = make_store(2.0, 0)
    board = compare({"a": a, "a long store name": a}, ["centroid", "knn"], seed=0)
    text = board.to_text()
    lines = text.splitlines()
    assert lines[0].startswith("protocol: stratified split (test 0.2, seed 0): ")
    assert "train /" in lines[0] and "|" not in text
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    table = lines[header : header + 2 + 4]
    col = table[0].index("accuracy") + len("accuracy")  # right-aligned: values end there
    for row in table[2:]:
        assert row[col - 6 : col].replace(".", "").isdigit(), row
    assert board.to_markdown().startswith("| # | store | head |")  # files keep Markdown
