"""Store time of small changes on big stores: segments against a full rewrite (#21).

Builds an N x D float16 store of synthetic rows through the normal writer (parts, then the
commit), then measures, each on a copy of the state it starts from:

- ``+1 row``: open the writer (reads the row index), write the row's part, commit;
- ``+1 %``: the same with N/100 rows;
- ``no-op``: open the writer and read the index (what an unchanged rerun costs in the store);
- each change once as a segment commit and once as a full rewrite (``compact=True``, what every
  commit did before segments), in the same run.

    python benchmarks/bench_segments.py --rows 100000 300000 --dim 1280 --dir /tmp/segbench

Prints one JSON line per measurement and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from featx.store import Rows, StoreChange, StoreConfig, StoreWriter, store_info

MODES = {"change": "segment (change)", "state": "segment (whole-state commit)",
         "full": "full rewrite"}  # fmt: skip


def _config(dim: int) -> StoreConfig:
    return StoreConfig(source={"bench": "segments"}, backbone={"dim": dim}, dtype="float16")


def _rows(keys: list[str], X: np.ndarray) -> Rows:
    n = len(keys)
    return Rows(keys, X, [1] * n, [1] * n, [""] * n, [], [], [], [], [])


def build(path: Path, n: int, dim: int, n_classes: int = 10, seed: int = 0) -> float:
    """A store of n rows (class blobs) written as 50k-row parts and one commit; seconds."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)).astype(np.float32)
    keys = [f"img{i:08d}" for i in range(n)]
    labels = {k: i % n_classes for i, k in enumerate(keys)}
    t0 = time.perf_counter()
    with StoreWriter(path, _config(dim)) as w:
        rows = {}
        for a in range(0, n, 50_000):
            b = min(n, a + 50_000)
            y = np.arange(a, b) % n_classes
            X = centers[y] * 0.15 + rng.normal(size=(b - a, dim)).astype(np.float32)
            part = w.write_part(_rows(keys[a:b], X.astype(np.float16)))
            rows.update({k: (str(part), i) for i, k in enumerate(keys[a:b])})
        w.commit(
            rows=rows,
            failed={},
            labels=labels,
            split={},
            classes=tuple(f"c{c}" for c in range(n_classes)),
            fingerprints={k: (1, 1, "") for k in keys},
            attrs={"dim": dim, "backbone": "synthetic"},
        )
    return time.perf_counter() - t0


def change(path: Path, n_new: int, dim: int, *, mode: str, prefix: str = "new") -> dict[str, float]:
    """Add n_new rows as an incremental run does; seconds (wall and CPU) of each store step.

    ``mode``: ``"change"`` (what ``featx extract`` does since #21: a StoreChange naming the kept
    and the new rows), ``"state"`` (the whole-state commit: every row's dicts, compared), or
    ``"full"`` (a full rewrite, what every commit was before segments)."""
    rng = np.random.default_rng(1)
    t0, c0 = time.perf_counter(), time.process_time()
    with StoreWriter(path, _config(dim)) as w:
        t_open, c_open = time.perf_counter() - t0, time.process_time() - c0
        idx = w.index
        keys = [f"{prefix}{i:08d}" for i in range(n_new)]
        t1, c1 = time.perf_counter(), time.process_time()
        part = w.write_part(_rows(keys, rng.normal(size=(n_new, dim)).astype(np.float16)))
        t_part, c_part = time.perf_counter() - t1, time.process_time() - c1
        t2, c2 = time.perf_counter(), time.process_time()
        if mode == "change":
            w.commit_change(
                StoreChange(
                    kept=np.arange(idx.n_rows),  # positions only: keys not decoded
                    write={k: (str(part), i) for i, k in enumerate(keys)},
                    labels={k: 0 for k in keys},
                    split={},
                    fingerprints={k: (1, 1, "") for k in keys},
                    failed={},
                    classes=idx.classes,
                    attrs={"dim": dim, "backbone": "synthetic"},
                )
            )
        else:
            old = [str(k) for k in idx.keys]
            rows = {k: ("store", i) for i, k in enumerate(old)}
            rows.update({k: (str(part), i) for i, k in enumerate(keys)})
            labels = {k: int(v) for k, v in zip(old, idx.labels, strict=True)}
            labels.update({k: 0 for k in keys})
            w.commit(
                rows=rows,
                failed={},
                labels=labels,
                split={},
                classes=idx.classes,
                fingerprints={k: (1, 1, "") for k in rows},
                attrs={"dim": dim, "backbone": "synthetic"},
                compact=mode == "full",
            )
        t_commit, c_commit = time.perf_counter() - t2, time.process_time() - c2
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"open": t_open, "part": t_part, "commit": t_commit, "store_total": total,
            "open_cpu": c_open, "part_cpu": c_part, "commit_cpu": c_commit, "cpu": cpu}  # fmt: skip


def nightly(base: Path, work: Path, n: int, nights: int, share: float, dim: int) -> list[dict]:
    """``nights`` commits of ``share`` x n new rows each on a copy of ``base`` (what a nightly
    run over a growing collection does): per commit, its store time and what the merge policy
    decided (the commit's log line)."""
    import logging

    decisions: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            decisions.append(record.getMessage())

    seg_log = logging.getLogger("featx.store.segments")
    seg_log.addHandler(_Keep())
    seg_log.setLevel(logging.INFO)
    _copy(base, work)
    out = []
    n_new = max(1, int(n * share))
    for night in range(nights):
        decisions.clear()
        t = change(work, n_new, dim, mode="change", prefix=f"n{night:04d}-")
        info = store_info(work)
        why = next((d.split(": ", 1)[1] for d in decisions if d.startswith("commit of")), "")
        rec = {"rows": n, "night": night + 1, "added": n_new,
               **{k: round(v, 3) for k, v in t.items()}, "segments": info["segments"],
               "layout": info["layout"], "decision": why, "load": os.getloadavg()[0]}  # fmt: skip
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


def noop(path: Path, dim: int) -> float:
    t0 = time.perf_counter()
    with StoreWriter(path, _config(dim)) as w:
        assert w.index is not None
    return time.perf_counter() - t0


def _copy(src: Path, dst: Path) -> None:
    for p in (dst, dst.with_name(dst.name + ".segments")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    os.link(src, dst)  # no commit changes a file in place, so the base can be shared


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--dir", default="/tmp/segbench")
    ap.add_argument("--keep", action="store_true", help="keep the base stores")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--repeat-segmented", action="store_true")
    ap.add_argument(
        "--nightly",
        type=int,
        default=0,
        metavar="NIGHTS",
        help="only: NIGHTS commits of --share new rows each (the merge policy)",
    )
    ap.add_argument("--share", type=float, default=0.01)
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    table = []
    for n in args.rows:
        base = folder / f"base-{n}.h5"
        if not base.exists():
            s = build(base, n, args.dim)
            print(json.dumps({"rows": n, "build_s": round(s, 1)}), flush=True)
        work = folder / f"work-{n}.h5"
        if args.nightly:
            recs = nightly(base, work, n, args.nightly, args.share, args.dim)
            print("\n| night | rows added | store s | store CPU s | segments | decision | load |")
            print("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
            for r in recs:
                print(f"| {r['night']} | {r['added']:,} | {r['store_total']} | {r['cpu']} | "
                      f"{r['segments']} | {r['decision']} | {r['load']:.1f} |")  # fmt: skip
            total = sum(r["store_total"] for r in recs)
            print(
                f"\n{len(recs)} commits: {total:.1f} s store time in all, "
                f"{total / len(recs):.2f} s per commit"
            )
            continue
        for label, n_new in (("+1 row", 1), ("+1 %", max(1, n // 100))):
            for mode in args.modes:
                _copy(base, work)
                t = change(work, n_new, args.dim, mode=mode)
                info = store_info(work)
                rec = {"rows": n, "change": label, "mode": MODES[mode],
                       **{k: round(v, 3) for k, v in t.items()}, "load": os.getloadavg()[0],
                       "layout": info["layout"], "segments": info["segments"]}  # fmt: skip
                print(json.dumps(rec), flush=True)
                table.append(rec)
            if args.repeat_segmented:  # the same change on a store already segmented
                _copy(base, work)
                change(work, 1, args.dim, mode="change")
                t = change(work, n_new, args.dim, mode="change")
                rec = {"rows": n, "change": label, "mode": "change, 2nd segment",
                       **{k: round(v, 3) for k, v in t.items()},
                       "load": os.getloadavg()[0]}  # fmt: skip
                print(json.dumps(rec), flush=True)
                table.append(rec)
        _copy(base, work)
        change(work, 1, args.dim, mode="change")  # a segmented store
        t = noop(work, args.dim)
        rec = {"rows": n, "change": "no-op (index read)", "mode": "segmented", "store_total": t}
        print(json.dumps(rec), flush=True)
        table.append(rec)
        work.unlink()
        shutil.rmtree(work.with_name(work.name + ".segments"), ignore_errors=True)
        if not args.keep:
            base.unlink()
    if not table:
        return
    print("\n| rows | change | commit as | open (index) s | part s | commit s | store total s "
          "| store CPU s | load |")  # fmt: skip
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        print(
            f"| {r['rows']:,} | {r['change']} | {r['mode']} | {r.get('open', '')} | "
            f"{r.get('part', '')} | {r.get('commit', '')} | {round(r['store_total'], 3)} | "
            f"{r.get('cpu', '')} | {r.get('load', '')} |"
        )


if __name__ == "__main__":
    main()
