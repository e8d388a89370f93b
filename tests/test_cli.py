"""The command line: output formats, exit codes, one-line errors, no tracebacks unless -v."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from featx.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def fake_registry(fake_backbone_family):
    """`featx extract -b tiny` loads the deterministic TinyBackbone (a registered family)."""
    return fake_backbone_family


def test_help_is_fast_and_lists_commands(runner):
    r = runner.invoke(cli, ["--help"])
    assert r.exit_code == 0
    for cmd in ("extract", "info", "backbones"):
        assert cmd in r.output


def test_extract_then_info_json(runner, image_folder, tmp_path, fake_registry):
    store = tmp_path / "s.h5"
    args = ["extract", str(image_folder), "-b", "tiny", "--store", str(store), "--workers", "0"]
    r = runner.invoke(cli, [*args, "--json", "-q"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("store", "n_items", "n_new", "n_failed", "dim", "seconds", "items_per_s"):
        assert key in out
    assert (out["n_items"], out["n_new"], out["dim"]) == (12, 12, 8)
    assert out["images_per_s"] == out["items_per_s"]  # the old name, kept for one release
    r = runner.invoke(cli, [*args, "-q"])
    assert r.exit_code == 0 and "up to date" in r.stdout
    r = runner.invoke(cli, ["info", str(store), "--json"])
    info = json.loads(r.stdout)
    assert (info["n_items"], info["n_failed"], info["dim"], info["backbone"]) == (
        12,
        0,
        8,
        "test/tiny",
    )
    assert info["weights"] == "seed0"
    r = runner.invoke(cli, ["info", str(store)])
    assert r.exit_code == 0 and "test/tiny" in r.stdout and "cat, dog, eel" in r.stdout


def test_progress_goes_to_stderr(runner, image_folder, tmp_path, fake_registry):
    r = runner.invoke(
        cli,
        [
            "extract",
            str(image_folder),
            "-b",
            "tiny",
            "--store",
            str(tmp_path / "s.h5"),
            "--workers",
            "0",
            "--json",
        ],
    )
    assert r.exit_code == 0
    json.loads(r.stdout)  # stdout stays clean JSON
    assert "img" in r.stderr


@pytest.mark.parametrize(
    "args, match",
    [
        (["extract", "/does/not/exist", "-b", "tiny"], "does not exist"),
        (["info", "/does/not/exist.h5"], "does not exist"),
        (["extract", "{imgs}", "-b", "nosuch"], "unknown backbone"),
        (["extract", "{imgs}", "-b", "tiny", "--device", "cuda:7"], "cuda"),
    ],
)
def test_bad_input_is_one_line_without_traceback(runner, image_folder, fake_registry, args, match):
    args = [a.replace("{imgs}", str(image_folder)) for a in args]
    r = runner.invoke(cli, args)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert match.lower() in r.stderr.lower()


def test_verbose_shows_the_traceback(runner, fake_registry):
    r = runner.invoke(cli, ["-v", "info", "/does/not/exist.h5"])
    assert r.exit_code != 0
    assert r.exception is not None  # re-raised for a full traceback


def test_not_a_store_keeps_the_file(runner, tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("hello")
    r = runner.invoke(cli, ["info", str(p)])
    assert r.exit_code == 1 and "not a featx store" in r.stderr
    assert p.read_text() == "hello"
