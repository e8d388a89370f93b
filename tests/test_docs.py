"""The docs stay true: the CLI reference is regenerated from the commands, every pipeline key is
documented, every relative link resolves, and shell completion answers."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "tools" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_up_to_date():
    expected = _generator().render()
    actual = (DOCS / "cli.md").read_text()
    assert actual == expected, (
        "docs/cli.md is stale: run `python tools/gen_docs.py` and commit the result"
    )


def test_pipeline_option_tables_are_up_to_date():
    text = (DOCS / "pipelines.md").read_text()
    assert text == _generator().render_pipelines(text), (
        "docs/pipelines.md is stale: run `python tools/gen_docs.py` and commit the result"
    )


def test_api_page_names_every_public_name():
    import featx

    text = (DOCS / "api.md").read_text()
    missing = [n for n in featx.__all__ if not n.startswith("_") and f"`{n}" not in text]
    assert not missing, f"docs/api.md does not mention {missing}"


def test_cli_reference_has_every_command():
    from featx.cli import cli

    text = (DOCS / "cli.md").read_text()
    for name in cli.commands:
        assert f"\n## featx {name}\n" in text


def _documented_keys(section: str) -> set[str]:
    text = (DOCS / "pipelines.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.M))


def test_pipeline_doc_lists_every_key():
    from featx import pipeline

    sections = {
        "Top level": pipeline._TOP,
        "`[[sources]]`": pipeline._SOURCE,
        "`[[backbones]]`": pipeline._BACKBONE,
        "`[extract]`": pipeline._EXTRACT,
        "`[protocol]`": pipeline._PROTOCOL,
        "`[[heads]]`": pipeline._HEAD,
        "`[finetune]`": pipeline._FINETUNE,
    }
    for section, keys in sections.items():
        assert _documented_keys(section) == set(keys), section


def test_relative_links_resolve():
    files = [REPO / "README.md", *DOCS.glob("*.md")]
    for f in files:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            assert (f.parent / target).exists(), f"{f.name} links to missing {target}"


def test_readme_links_the_docs():
    readme = (REPO / "README.md").read_text()
    for page in ("cli.md", "pipelines.md", "api.md", "outputs.md", "store.md"):
        assert f"docs/{page}" in readme, page


def test_shell_completion_completes_commands_and_choices():
    env = {**os.environ, "_FEATX_COMPLETE": "bash_complete", "PYTHONPATH": str(REPO)}

    def complete(words: str, cword: int) -> list[str]:
        env.update(COMP_WORDS=words, COMP_CWORD=str(cword))
        res = subprocess.run(
            [sys.executable, "-m", "featx"], env=env, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
        return [line.split(",", 1)[1] for line in res.stdout.splitlines()]

    assert complete("featx ex", 1) == ["export", "extract"]
    assert complete("featx export s.h5 --format ", 4) == ["npz", "parquet", "csv"]
