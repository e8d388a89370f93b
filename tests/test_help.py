"""Help that a new user can read: every option explained, extract's options in sections, and
the command list without cut descriptions."""

from __future__ import annotations

import click
from click.testing import CliRunner

from featx.cli import cli


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


def test_every_option_of_every_command_has_a_help_line():
    missing = [
        f"featx {' '.join(path)} {p.opts[0]}"
        for path, cmd in _commands(cli)
        for p in cmd.params
        if isinstance(p, click.Option) and not (p.help or "").strip()
    ]
    assert not missing, missing


def test_the_command_list_cuts_no_description():
    out = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    listed = out.split("Commands:", 1)[1]
    assert "..." not in listed
    for path, _ in _commands(cli):
        if len(path) == 1:
            assert f"\n  {path[0]} " in listed


def test_extract_help_is_in_sections():
    out = CliRunner().invoke(cli, ["extract", "--help"], terminal_width=100).output
    heads = [line[:-1] for line in out.splitlines() if line and line[0] != " " and line[-1] == ":"]
    assert heads[-5:] == ["Source", "Backbone", "Text", "Engine", "Output"], heads
    assert "Other options" not in out  # every option has its section
    options = out.split("\nSource:", 1)[1]
    for flag in ("--text-column", "--device", "--store", "--backbone", "--root", "--json"):
        assert options.count(flag) == 1, flag
    text = out.split("\nText:", 1)[1].split("\nEngine:", 1)[0]
    assert "--max-seq-length" in text and "--device" not in text
    assert "Images per batch" not in out
