"""Store time of +1 item on text and multi-layer stores: a segment against the full rewrite that
every commit of such stores was before the third #21 pass (both in the same run).

Builds an N-row store of synthetic rows through the normal writer (parts, then the commit):

- ``--kind text``: 384-d float32 features (all-MiniLM-L6-v2's width), ``text/texts`` (synthetic
  sentences of 12-40 words) and ``text/n_tokens``;
- ``--kind layers``: 512-d features plus two more outputs per row (``outputs/layer3`` 256-d,
  ``outputs/layer4`` 512-d), as ``featx extract --layers`` writes them.

Then, each time on a fresh copy of that store: open the writer (reads the row index), write the
new row's part, commit the change as an incremental ``featx extract`` hands it (a StoreChange:
every old row kept, one written, the written row's text and token count); once as a segment
(``mode=segment``) and once with ``compact=True`` (``mode=full``: the full rewrite). Modes
alternate, ``--repeat`` times. With ``--tokenizer``, also the token counting a text commit does
(``Modality.store_attrs``): every row's text before this pass, only the written rows' now.

    python benchmarks/bench_text_segments.py --kind text --rows 100000 --dir /tmp/tsbench

Prints one JSON line per measurement and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from featx.store import Rows, StoreChange, StoreConfig, StoreWriter, store_info

LAYERS = [
    {"name": "layer3", "pool": "avg", "dim": 256},
    {"name": "layer4", "pool": "avg", "dim": 512},
]
DIM = {"text": 384, "layers": 512}
_VOCAB = (
    "the a order parcel late refund card bill pay login password account email box ship "
    "delivery money was is not my i to of and in on for with again today please help"
)
WORDS = _VOCAB.split()


def _config(kind: str) -> StoreConfig:
    bb: dict = {"dim": DIM[kind]}
    if kind == "layers":
        bb["layers"] = LAYERS
    return StoreConfig(source={"bench": f"text-segments-{kind}"}, backbone=bb)


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    lens = rng.integers(12, 41, size=n)
    words = rng.integers(0, len(WORDS), size=int(lens.sum()))
    out, pos = [], 0
    for m in lens.tolist():
        out.append(" ".join(WORDS[w] for w in words[pos : pos + m]))
        pos += m
    return out


def _rows(kind: str, keys: list[str], rng: np.random.Generator) -> Rows:
    n = len(keys)
    X = rng.normal(size=(n, DIM[kind])).astype(np.float32)
    outputs = {}
    if kind == "layers":
        outputs = {g["name"]: rng.normal(size=(n, g["dim"])).astype(np.float32) for g in LAYERS}
    return Rows(keys, X, [1] * n, [1] * n, [""] * n, [], [], [], [], [], outputs=outputs)


def build(path: Path, kind: str, n: int, seed: int = 0) -> tuple[float, list[str]]:
    """The store of n rows, written as 20k-row parts and one commit; (seconds, texts)."""
    rng = np.random.default_rng(seed)
    keys = [f"t{i:08d}" for i in range(n)]
    texts = _texts(rng, n) if kind == "text" else []
    t0 = time.perf_counter()
    with StoreWriter(path, _config(kind)) as w:
        rows = {}
        for a in range(0, n, 20_000):
            part = w.write_part(_rows(kind, keys[a : a + 20_000], rng))
            rows.update({k: (str(part), i) for i, k in enumerate(keys[a : a + 20_000])})
        per_row = None
        if kind == "text":
            per_row = {
                "text/texts": dict(zip(keys, texts, strict=True)),
                "text/n_tokens": {k: len(t.split()) + 2 for k, t in zip(keys, texts, strict=True)},
            }
        w.commit(rows=rows, failed={}, labels={k: i % 5 for i, k in enumerate(keys)}, split={},
                 classes=tuple(f"c{c}" for c in range(5)),
                 fingerprints={k: (1, 1, "") for k in keys},
                 attrs={"dim": DIM[kind], "backbone": "synthetic"}, per_row=per_row)  # fmt: skip
    return time.perf_counter() - t0, texts


def plus_one(path: Path, kind: str, *, full: bool) -> dict[str, float]:
    """+1 row as an incremental run commits it; wall and CPU seconds of each store step."""
    rng = np.random.default_rng(7)
    key = "t~new"  # sorts after every synthetic key
    t0, c0 = time.perf_counter(), time.process_time()
    with StoreWriter(path, _config(kind)) as w:
        t1, c1 = time.perf_counter(), time.process_time()
        part = w.write_part(_rows(kind, [key], rng))
        t2, c2 = time.perf_counter(), time.process_time()
        text = _texts(rng, 1)[0]
        change = StoreChange(
            kept=np.arange(len(w.index.keys)), write={key: (str(part), 0)}, labels={key: 1},
            split={}, fingerprints={key: (1, 1, "")}, failed={},
            classes=tuple(f"c{c}" for c in range(5)),
            attrs={"dim": DIM[kind], "backbone": "synthetic"},
            per_row={"text/texts": {key: text}, "text/n_tokens": {key: len(text.split()) + 2}}
            if kind == "text" else None,
        )  # fmt: skip
        w.commit_change(change, compact=full)
        t3, c3 = time.perf_counter(), time.process_time()
    return {
        "open_s": t1 - t0, "part_s": t2 - t1, "commit_s": t3 - t2, "total_s": t3 - t0,
        "open_cpu": c1 - c0, "part_cpu": c2 - c1, "commit_cpu": c3 - c2, "total_cpu": c3 - c0,
    }  # fmt: skip


def _fresh_copy(base: Path, path: Path) -> None:
    for p in (path, path.with_name(path.name + ".segments")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    shutil.copyfile(base, path)


def tokenize(texts: list[str]) -> dict[str, float]:
    """CPU seconds of counting tokens (all-MiniLM-L6-v2's tokenizer) of every text vs one."""
    from featx.backbones import load_backbone
    from featx.text.tokens import count_tokens

    tok = load_backbone("all-minilm-l6-v2").tokenizer
    c0 = time.process_time()
    count_tokens(tok, texts, 256)
    c1 = time.process_time()
    count_tokens(tok, texts[:1], 256)
    return {"all_rows_cpu": c1 - c0, "one_row_cpu": time.process_time() - c1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("text", "layers"), default="text")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/tsbench"))
    ap.add_argument("--tokenizer", action="store_true", help="also time the token counting")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    base = args.dir / f"base-{args.kind}-{args.rows}.h5"
    texts: list[str] = []
    if not base.exists():
        secs, texts = build(base, args.kind, args.rows)
        print(json.dumps({"built": str(base), "seconds": round(secs, 2)}), flush=True)
    trial = args.dir / "trial.h5"
    got: dict[str, list[dict[str, float]]] = {"segment": [], "full": []}
    for r in range(args.repeat):
        for mode in ("segment", "full") if r % 2 == 0 else ("full", "segment"):
            _fresh_copy(base, trial)
            out = plus_one(trial, args.kind, full=mode == "full")
            info = store_info(trial)
            assert info["n_items"] == args.rows + 1, info["n_items"]
            assert info["layout"] == ("segments" if mode == "segment" else "single file")
            got[mode].append(out)
            print(json.dumps({"kind": args.kind, "rows": args.rows, "mode": mode, "repeat": r,
                              **{k: round(v, 3) for k, v in out.items()}}), flush=True)  # fmt: skip
    med = {m: {k: statistics.median(o[k] for o in v) for k in v[0]} for m, v in got.items()}
    print(
        f"\n| {args.kind} store, {args.rows:,} rows, +1 row | open | part | commit | "
        "total (CPU s) | total (wall s) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for m in ("segment", "full"):
        o = med[m]
        print(f"| {m} | {o['open_cpu']:.3f} | {o['part_cpu']:.3f} | {o['commit_cpu']:.3f} | "
              f"{o['total_cpu']:.3f} | {o['total_s']:.3f} |")  # fmt: skip
    ratio = med["full"]["total_cpu"] / max(med["segment"]["total_cpu"], 1e-9)
    print(f"\nfull rewrite / segment, CPU: {ratio:.1f}x (medians of {args.repeat})")
    if args.tokenizer and args.kind == "text":
        if not texts:
            texts = _texts(np.random.default_rng(0), args.rows)
        t = tokenize(texts)
        print(json.dumps({"tokenize": t}))
        print(
            f"token counting at commit: every row {t['all_rows_cpu']:.2f} CPU s, "
            f"the written row {t['one_row_cpu']:.4f} CPU s"
        )


if __name__ == "__main__":
    main()
