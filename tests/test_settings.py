"""Where the cache goes: FEATX_CACHE_DIR, then the nearest project setting, then the user folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featx.errors import FeatxError
from featx.settings import cache_dir, find_project_settings, locations, resolve


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No FEATX_* variables; user folders under tmp_path (platformdirs honours XDG on Linux)."""
    monkeypatch.delenv("FEATX_CACHE_DIR", raising=False)
    monkeypatch.delenv("FEATX_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return tmp_path


def test_pyproject_setting_is_found_from_a_subfolder_and_relative_to_the_file(no_env, monkeypatch):
    proj = no_env / "proj"
    (proj / "src" / "deep").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.featx]\ncache_dir = "cache"\ndata_dir = "../datasets"\n'
    )
    for where in (proj, proj / "src" / "deep"):
        monkeypatch.chdir(where)
        s = resolve()
        assert s.cache_dir == proj / "cache"
        assert s.data_dir == no_env / "datasets"
        assert s.project_file == proj / "pyproject.toml"
        assert s.cache_dir_from == f"{proj / 'pyproject.toml'} [tool.featx] cache_dir"


def test_nearest_setting_wins_and_featx_toml_counts(no_env, monkeypatch):
    outer = no_env / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    (outer / "pyproject.toml").write_text('[tool.featx]\ncache_dir = "outer-cache"\n')
    (inner / "featx.toml").write_text('cache_dir = "/abs/cache"\n')
    # a pyproject.toml without [tool.featx] in between does not stop the walk
    (inner / "sub").mkdir()
    (inner / "sub" / "pyproject.toml").write_text('[project]\nname = "featx-user"\n')
    monkeypatch.chdir(inner / "sub")
    assert cache_dir() == Path("/abs/cache")
    assert find_project_settings()[0] == inner / "featx.toml"
    monkeypatch.chdir(outer)
    assert cache_dir() == outer / "outer-cache"


def test_environment_wins_over_the_project_setting(no_env, monkeypatch):
    (no_env / "featx.toml").write_text('cache_dir = "c"\n')
    monkeypatch.chdir(no_env)
    monkeypatch.setenv("FEATX_CACHE_DIR", str(no_env / "env-cache"))
    s = resolve()
    assert s.cache_dir == no_env / "env-cache" and s.cache_dir_from == "FEATX_CACHE_DIR"
    assert s.data_dir == no_env / "xdg-data" / "featx"  # neither env nor setting: user folder


def test_without_any_setting_the_user_cache_folder(no_env, monkeypatch):
    empty = no_env / "nowhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    if find_project_settings() is not None:
        pytest.skip("a featx setting exists above the temp folder")
    s = resolve()
    assert s.cache_dir == no_env / "xdg-cache" / "featx"
    assert s.data_dir == no_env / "xdg-data" / "featx"
    assert s.cache_dir_from == "user cache folder" and s.project_file is None


@pytest.mark.parametrize(
    "text, match",
    [
        ('[tool.featx]\ncache = "x"\n', "unknown featx setting \\[tool.featx\\] 'cache'"),
        ("[tool.featx]\ncache_dir = 3\n", "must be a folder path"),
        ("[tool.featx\ncache_dir = 'x'\n", "cannot read the featx setting"),
    ],
)
def test_bad_settings_are_one_line_errors(no_env, monkeypatch, text, match):
    (no_env / "pyproject.toml").write_text(text)
    monkeypatch.chdir(no_env)
    with pytest.raises(FeatxError, match=match):
        resolve()


def test_unrelated_broken_pyproject_is_ignored(no_env, monkeypatch):
    (no_env / "pyproject.toml").write_text("[project\nname = 'other'\n")
    monkeypatch.chdir(no_env)
    resolve()  # does not raise: it does not mention featx


def test_this_repository_keeps_its_cache_folder(monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.delenv("FEATX_CACHE_DIR", raising=False)
    monkeypatch.chdir(repo / "docs")
    assert cache_dir() == repo / "cache"


def test_locations_lists_every_folder(no_env, monkeypatch):
    monkeypatch.chdir(no_env)
    monkeypatch.setenv("FEATX_CACHE_DIR", str(no_env / "c"))
    (no_env / "c").mkdir()
    (no_env / "c" / "a.h5").write_bytes(b"12345")
    loc = locations()
    assert loc["cache_dir"] == str(no_env / "c") and loc["stores"] == 1
    assert loc["stores_bytes"] == 5
    assert loc["heads_dir"] == os.path.join(str(no_env / "c"), "heads")
    assert loc["torch_weights_dir"].endswith(os.path.join("hub", "checkpoints"))
