"""Where do two (or more) torch CPU threads start to beat one, for the heads' training steps?

    python benchmarks/bench_threads.py --threads 1,2 [--busy]

For each size, one MLP-like training step (``F.linear`` + ReLU + a second ``F.linear``,
cross-entropy, backward, AdamW) is timed at each thread count, alternating thread counts run by
run so that a change of machine load hits both alike. ``--busy`` starts a busy loop (a separate
process spinning on one core) for the whole run, as another user's job would. Prints one JSON
line per size: multiply-adds per product (the ``work`` that ``featx.heads._torch.cpu_threads``
sees), seconds per step at each thread count, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time


def _spin(stop) -> None:  # pragma: no cover - a busy loop in a child process
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _step_time(torch, F, batch: int, dim: int, hidden: int, k: int, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(batch, dim, generator=g)
    y = torch.randint(0, k, (batch,), generator=g)
    W1 = (torch.randn(hidden, dim, generator=g) * 0.02).requires_grad_()
    W2 = (torch.randn(k, hidden, generator=g) * 0.02).requires_grad_()
    opt = torch.optim.AdamW([W1, W2], lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(F.linear(torch.relu(F.linear(X, W1)), W2), y)
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="thread counts to compare")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument(
        "--sizes",
        default="32:128,64:256,128:256,256:256,256:512,256:1024,512:1024,1024:2048",
        help="batch:hidden pairs",
    )
    ap.add_argument("--seconds", type=float, default=0.4, help="rough time per measurement")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    a = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    stop = mp.Event()
    spinner = None
    if a.busy:
        spinner = mp.Process(target=_spin, args=(stop,), daemon=True)
        spinner.start()
    threads = [int(t) for t in a.threads.split(",")]
    try:
        for pair in a.sizes.split(","):
            batch, hidden = (int(v) for v in pair.split(":"))
            torch.set_num_threads(1)
            probe = _step_time(torch, F, batch, a.dim, hidden, a.classes, 2)
            steps = max(2, int(a.seconds / max(probe, 1e-4)))
            best = {t: float("inf") for t in threads}
            for _ in range(a.repeat):
                for t in threads:
                    torch.set_num_threads(t)
                    best[t] = min(
                        best[t], _step_time(torch, F, batch, a.dim, hidden, a.classes, steps)
                    )
            row = {
                "batch": batch,
                "hidden": hidden,
                "work": batch * a.dim * hidden,
                "steps": steps,
                "busy": a.busy,
                "load": os.getloadavg()[0],
            }
            for t in threads:
                row[f"ms_per_step_{t}t"] = round(best[t] * 1e3, 3)
            row["speedup_vs_1t"] = {t: round(best[threads[0]] / best[t], 2) for t in threads}
            print(json.dumps(row), flush=True)
    finally:
        stop.set()
        if spinner is not None:
            spinner.join(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
