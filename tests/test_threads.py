"""The torch heads' CPU thread policy (featx.heads._torch.cpu_threads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from featx.heads import _torch
from featx.heads._torch import SMALL_WORK, busy_elsewhere, cpu_threads, threads_for


def test_threads_for_small_work_runs_on_one_thread():
    assert threads_for(SMALL_WORK / 2, before=8, busy=0.0, cpus=8) == 1


def test_threads_for_large_work_takes_the_free_cores_only():
    assert threads_for(SMALL_WORK * 10, before=2, busy=0.0, cpus=2) == 2
    assert threads_for(SMALL_WORK * 10, before=2, busy=1.0, cpus=2) == 1  # one core busy
    assert threads_for(SMALL_WORK * 10, before=16, busy=5.6, cpus=16) == 10
    assert threads_for(SMALL_WORK * 10, before=4, busy=0.0, cpus=16) == 4  # the user's cap stands
    assert threads_for(SMALL_WORK * 10, before=16, busy=40.0, cpus=16) == 1
    assert threads_for(SMALL_WORK * 10, before=4, busy=None, cpus=16) == 4  # load unknown


def _fake_proc(root: Path, running: int, own_states: str) -> Path:
    (root / "loadavg").parent.mkdir(parents=True, exist_ok=True)
    (root / "loadavg").write_text(f"9.50 9.00 8.00 {running}/321 4242\n")
    for i, state in enumerate(own_states, 1):
        task = root / "self" / "task" / str(i)
        task.mkdir(parents=True)
        (task / "stat").write_text(f"{i} (py (th) ) {state} 1 1 1 0 -1 0\n")
    return root


def test_busy_elsewhere_counts_the_run_queue_less_this_process(tmp_path, monkeypatch):
    # 5 runnable threads machine-wide, 2 of them ours (the reader and a spinning worker): 3 other
    monkeypatch.setattr(_torch, "PROC", _fake_proc(tmp_path, running=5, own_states="RSRS"))
    assert busy_elsewhere(samples=3, interval=0) == 3.0
    # the 1-minute load average (9.5) is not what it reads: that would count featx's own past work


def test_busy_elsewhere_falls_back_to_the_load_average(tmp_path, monkeypatch):
    monkeypatch.setattr(_torch, "PROC", tmp_path / "absent")
    monkeypatch.setattr(_torch.os, "getloadavg", lambda: (2.5, 1.0, 1.0))
    assert busy_elsewhere(samples=2, interval=0) == 1.5


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="needs Linux /proc")
def test_a_busy_process_beside_us_is_seen():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert busy_elsewhere(samples=6, interval=0.005) >= 0.8
    finally:
        spin.kill()
        spin.wait()


def test_cpu_threads_lowers_and_restores(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(_torch, "busy_elsewhere", lambda: 1.0)
        monkeypatch.setattr(_torch, "usable_cpus", lambda: 2)
        with cpu_threads(torch.device("cpu"), SMALL_WORK * 5):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(_torch, "busy_elsewhere", lambda: 0.0)
        with cpu_threads(torch.device("cpu"), SMALL_WORK * 5):
            assert torch.get_num_threads() == 2
        with cpu_threads(torch.device("cpu"), SMALL_WORK / 5):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_for_load_limits_blas_and_torch(monkeypatch):
    """diagnose's policy: BLAS and torch both drop to the free cores, and both come back."""
    torch = pytest.importorskip("torch")
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    blas_before = blas_threads()
    try:
        monkeypatch.setattr(_torch, "usable_cpus", lambda: 2)
        monkeypatch.setattr(_torch, "busy_elsewhere", lambda: 1.0)
        with _torch.cpu_threads_for_load() as n:
            assert n == 1 and torch.get_num_threads() == 1
            assert set(blas_threads()) == {1}
        assert torch.get_num_threads() == 2 and blas_threads() == blas_before
        monkeypatch.setattr(_torch, "busy_elsewhere", lambda: 0.0)
        with _torch.cpu_threads_for_load() as n:
            assert n == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
