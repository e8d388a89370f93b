"""kill -9 during a real `featx extract`, and crashes inside the commit: nothing is lost or torn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import write_image

from featx.store import load_features

FEATX = [sys.executable, "-m", "featx.cli"]


def _extract_cmd(src: Path, store: Path) -> list[str]:
    return [
        *FEATX,
        "extract",
        str(src),
        "--store",
        str(store),
        "-b",
        "efficientnet_lite0",
        "--image-size",
        "64",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--checkpoint-every",
        "6",
        "-q",
        "--json",
    ]


def _parts(store: Path) -> int:
    return len(list(store.with_name(store.name + ".parts").glob("part-*.h5")))


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path):
    src = tmp_path / "src"
    for i in range(90):
        write_image(src / f"c{i % 3}" / f"{i:03d}.jpg", seed=i, size=(48, 40))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    ref = tmp_path / "ref.h5"
    subprocess.run(_extract_cmd(src, ref), check=True, env=env, capture_output=True)

    store = tmp_path / "killed.h5"
    kills = 0
    for threshold in (1, 4, 8):  # kill at growing progress points, while parts are written
        proc = subprocess.Popen(
            _extract_cmd(src, store), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and _parts(store) < threshold and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if store.exists():  # whatever state the kill left, the store opens
            with h5py.File(store, "r") as f:
                assert f["features"].shape[0] == f["paths"].shape[0]
    assert kills >= 2, "the extraction finished before it could be killed; make it slower"

    out = subprocess.run(_extract_cmd(src, store), check=True, env=env, capture_output=True)
    import json

    summary = json.loads(out.stdout)
    assert summary["n_resumed"] > 0
    assert summary["n_items"] == 90
    a, b = load_features(store), load_features(ref)
    assert list(a.keys) == list(b.keys)  # no lost or duplicated rows
    assert len(set(a.keys)) == 90
    np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-5)
    assert a.y.tolist() == b.y.tolist()
    assert not store.with_name(store.name + ".parts").exists()
    assert not list(tmp_path.glob("killed.h5.tmp-*"))


def test_crash_inside_commit_keeps_old_store_and_parts(
    image_folder, tiny_backbone, tmp_path, monkeypatch
):
    from featx.extraction import ExtractOptions, extract
    from featx.store import writer as store_mod

    opts = ExtractOptions(batch_size=4, workers=0, checkpoint_every=4)
    path = tmp_path / "s.h5"
    extract(image_folder, tiny_backbone, store=path, options=opts)
    before = path.read_bytes()
    write_image(image_folder / "cat" / "extra.png", seed=77)

    real_replace = os.replace

    def boom(src, dst):
        if Path(dst) == path:  # parts commit fine; the final rename of the store fails
            raise OSError("disk vanished")
        return real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk vanished"):
        extract(image_folder, tiny_backbone, store=path, options=opts)
    monkeypatch.undo()
    assert path.read_bytes() == before  # old store untouched
    assert _parts(path) == 1  # the new row survived in its part
    r = extract(image_folder, tiny_backbone, store=path, options=opts)
    assert (r.n_items, r.n_resumed, r.n_new) == (13, 1, 0)
    assert not list(tmp_path.glob("s.h5.tmp-*"))
