"""featx cache ls / clean: list and remove what featx keeps, and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from featx.cache import clean, scan
from featx.cli import cli
from featx.errors import FeatxError


def _fill(cache, outside):
    (cache / "datasets" / "digits" / "3").mkdir(parents=True)
    (cache / "datasets" / "digits" / "3" / "0.png").write_bytes(b"x" * 100)
    (cache / "heads").mkdir()
    (cache / "heads" / "digits__logreg.npz").write_bytes(b"z" * 50)
    (cache / "predict").mkdir()
    (cache / "predict" / "new__resnet18.h5").write_bytes(b"p" * 30)
    (cache / "a__resnet18.h5").write_bytes(b"a" * 1000)
    (cache / "a__resnet18.h5.parts").mkdir()
    (cache / "a__resnet18.h5.parts" / "part-0.h5").write_bytes(b"q" * 10)
    (cache / "a__resnet18.h5.lock").write_text("123\n")
    (cache / "gone.h5.lock").write_text("1\n")  # a lock whose store is gone
    (cache / "x.h5.tmp-99-abcdef").write_bytes(b"t")
    (cache / "backbones.json").write_text("{}")
    (cache / "notes.txt").write_text("mine")  # not featx's
    outside.write_bytes(b"o" * 7)
    (cache / "link.h5").symlink_to(outside)
    (cache / "datasets" / "elsewhere").symlink_to(outside.parent, target_is_directory=True)


def test_scan_lists_every_kind_with_sizes(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _fill(cache, tmp_path / "precious.bin")
    got = {(e.kind, e.name): e.bytes for e in scan(cache)}
    assert got[("store", "a__resnet18.h5")] == 1000 + 10 + 4  # with its parts and lock
    assert got[("prediction", "new__resnet18.h5")] == 30
    assert got[("bundle", "digits__logreg.npz")] == 50
    assert got[("dataset", "digits")] == 100
    assert ("memo", "backbones.json") in got
    assert ("leftover", "gone.h5.lock") in got and ("leftover", "x.h5.tmp-99-abcdef") in got
    assert ("other", "notes.txt") in got and ("other", "elsewhere") in got
    assert ("store", "link.h5") in got
    assert not any(name.endswith((".parts", "a__resnet18.h5.lock")) for _, name in got)


def test_clean_needs_a_filter(tmp_path):
    with pytest.raises(FeatxError, match="--all"):
        clean(tmp_path)


def test_clean_by_kind_and_pattern(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _fill(cache, tmp_path / "precious.bin")
    removed, skipped = clean(cache, kinds=("prediction",))
    assert [e.name for e in removed] == ["new__resnet18.h5"] and not skipped
    assert not (cache / "predict" / "new__resnet18.h5").exists()
    assert (cache / "a__resnet18.h5").exists()
    removed, _ = clean(cache, pattern="a__*", dry_run=True)
    assert [e.name for e in removed] == ["a__resnet18.h5"] and (cache / "a__resnet18.h5").exists()
    removed, _ = clean(cache, pattern="a__*")
    assert not (cache / "a__resnet18.h5").exists()
    assert not (cache / "a__resnet18.h5.parts").exists()
    assert not (cache / "a__resnet18.h5.lock").exists()
    old = time.time() - 40 * 86400
    os.utime(cache / "heads" / "digits__logreg.npz", (old, old))
    removed, _ = clean(cache, older_than_days=30)
    assert [e.name for e in removed] == ["digits__logreg.npz"]


def test_clean_all_removes_only_featx_entries_inside_the_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    outside = tmp_path / "precious.bin"
    _fill(cache, outside)
    removed, skipped = clean(cache, all=True)
    assert not skipped
    assert {e.kind for e in removed} == {
        "store",
        "prediction",
        "bundle",
        "dataset",
        "memo",
        "leftover",
    }
    assert sorted(p.name for p in cache.rglob("*")) == [
        "datasets",
        "elsewhere",
        "heads",
        "notes.txt",
        "predict",
    ]
    assert outside.read_bytes() == b"o" * 7  # the link was removed, not what it points at


def test_a_store_being_written_is_kept(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    store = cache / "busy.h5"
    store.write_bytes(b"b")
    lock = cache / "busy.h5.lock"
    lock.write_text("")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed, skipped = clean(cache, kinds=("store",))
        assert not removed and [(e.name, why) for e, why in skipped] == [
            ("busy.h5", "a featx extract is writing it")
        ]
        assert store.exists()
    finally:
        holder.kill()
        holder.wait()
    removed, _ = clean(cache, kinds=("store",))
    assert [e.name for e in removed] == ["busy.h5"]


def test_cache_commands(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _fill(cache, tmp_path / "precious.bin")
    env = {"FEATX_CACHE_DIR": str(cache)}
    runner = CliRunner()
    res = runner.invoke(cli, ["cache", "ls"], env=env)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("kind"))
    assert set(lines[header + 1].replace(" ", "")) == {"-"}  # a rule, not Markdown pipes
    assert "|" not in res.output
    row = next(line for line in lines if line.endswith("a__resnet18.h5"))
    assert row.split()[:3] == ["store", "1.0", "KB"]
    res = runner.invoke(cli, ["cache", "clean"], env=env)
    assert res.exit_code == 1 and "--all" in res.output
    res = runner.invoke(cli, ["cache", "clean", "--kind", "bundle", "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert [e["name"] for e in json.loads(res.output)["removed"]] == ["digits__logreg.npz"]
