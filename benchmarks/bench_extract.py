"""Extraction benchmark: featx against the standard loop and the model-only bound, in one run.

    python benchmarks/make_jpegs.py /tmp/jpegs --n 512
    python benchmarks/bench_extract.py /tmp/jpegs --model resnet50 --device cpu

Rows (images/s, end to end from JPEG files to features on disk):

- ``standard``: what users write: torchvision ImageFolder + PIL transforms (Resize, CenterCrop,
  ToTensor, Normalize), a DataLoader with the same workers and pinned memory, fp32, batch 256,
  features gathered in a list and saved with ``np.save``.
- ``featx-<precision>[-<decode>]``: ``featx.extraction.extract`` into a fresh store (scan, decode,
  model, crash-safe parts, final atomic commit), once per precision and ``--decodes`` value
  (``cpu``: Pillow in the workers; ``device``: nvJPEG on CUDA, see featx/jpeg.py; ``auto``).
  ``store_write_share`` is the time the run waited on the store (parts are written on a
  background thread; the final commit) over the run's time.
- ``model-only``: preprocessed tensors already on the device, the model alone, best precision:
  the ceiling no loader can beat.

Weights are random (``--weights none``): speed does not depend on their values, and nothing is
downloaded. ``featx`` and the standard loop use the same ``--workers``; ``--repeat R`` runs the
whole set R times, interleaved, so each ratio compares runs made under the same machine load.
Feature agreement is reported too: the cosine similarity of each featx store's rows to the
standard loop's features (fp32 should be ~1; bf16 shows its drift), and ``--drift-model`` (default
the embedded efficientnet_lite0 with its real ImageNet weights) measures the fp32-vs-bf16 drift
of trained weights. Prints one JSON object with every row and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def standard_loop(
    root: Path, model_name: str, device: str, batch_size: int, workers: int, out: Path
) -> dict:
    """Exactly what the usual tutorial does: no tuning of threads, allocator or layout."""
    import torch
    import torchvision
    from torchvision import transforms as T

    t0 = time.perf_counter()
    torch.manual_seed(0)  # the same random init as featx's load_backbone(name, None)
    model = torchvision.models.get_model(model_name, weights=None)
    model.fc = torch.nn.Identity() if hasattr(model, "fc") else model.fc
    model = model.eval().to(device)
    tf = T.Compose(
        [
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    ds = torchvision.datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=workers, pin_memory=device.startswith("cuda")
    )
    feats = []
    with torch.no_grad():
        for x, _ in loader:
            feats.append(model(x.to(device, non_blocking=True)).cpu().numpy())
    np.save(out, np.concatenate(feats))
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"images": len(ds), "seconds": seconds, "images_per_s": len(ds) / seconds}


def featx_run(
    root: Path,
    model_name: str,
    device: str,
    batch_size: int,
    workers: int,
    precision: str,
    store: Path,
    compile_: bool,
    decode: str = "auto",
) -> dict:
    import featx.store as st
    from featx.extraction import ExtractOptions, extract

    opts = ExtractOptions(
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        compile=compile_,
        decode=decode,
    )
    spent = [0.0]
    originals = st.StoreWriter.write_part, st.StoreWriter.commit

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t

        return wrapper

    st.StoreWriter.write_part, st.StoreWriter.commit = map(timed, originals)
    try:
        t0 = time.perf_counter()
        r = extract(str(root), model_name, weights=None, store=store, options=opts)
        seconds = time.perf_counter() - t0
    finally:
        st.StoreWriter.write_part, st.StoreWriter.commit = originals
    assert r.n_failed == 0, r
    return {
        "images": r.n_items,
        "seconds": seconds,
        "images_per_s": r.n_items / seconds,
        "engine_images_per_s": r.images_per_s,
        "decode": r.decode,
        "store_write_seconds": spent[0],
        "store_waited_seconds": r.store_seconds,
        "store_write_share": r.store_seconds / seconds,
    }


def model_only(model_name: str, device: str, batch_size: int, precision: str, steps: int) -> dict:
    import torch

    from featx.backbones import load_backbone
    from featx.engine import fold_batchnorm, keep_heap_pages

    undo = keep_heap_pages() if device == "cpu" else (lambda: None)
    bb = load_backbone(model_name, None)
    model = fold_batchnorm(bb.model.to(device).eval(), 224).to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, 224, 224, device=device).contiguous(
        memory_format=torch.channels_last
    )
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with (
        torch.inference_mode(),
        torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None),
    ):
        model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        _sync(device)
    seconds = time.perf_counter() - t0
    undo()
    return {
        "images": steps * batch_size,
        "seconds": seconds,
        "images_per_s": steps * batch_size / seconds,
        "precision": precision,
    }


def _cos_rows(a: np.ndarray, b: np.ndarray) -> dict:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    c = (a * b).sum(axis=1)
    return {"mean_cosine": float(c.mean()), "min_cosine": float(c.min())}


def agreement(store: Path, std_npy: Path, root: Path) -> dict:
    """Cosine similarity of a featx store's rows to the standard loop's rows, same files."""
    import torchvision

    from featx.store import load_features

    fs = load_features(store)
    ref = np.load(std_npy)
    ds = torchvision.datasets.ImageFolder(str(root))
    keys = [Path(p).relative_to(root).as_posix() for p, _ in ds.samples]
    pos = {k: i for i, k in enumerate(fs.keys)}
    return _cos_rows(fs.X[[pos[k] for k in keys]], ref)


def drift(root: Path, model_name: str, n: int) -> dict:
    """fp32 vs bf16 features of trained weights (``model_name`` with its DEFAULT weights)."""
    from featx.backbones import load_backbone
    from featx.engine import iter_features
    from featx.images import load_rgb

    files = sorted(root.rglob("*.jpg"))[:n]
    bb = load_backbone(model_name, "DEFAULT")
    out = {}
    for p in ("fp32", "bf16"):
        out[p] = np.concatenate(
            [b.features for b in iter_features(bb, files, load_rgb, device="cpu", precision=p)]
        )
    return {"model": model_name, "weights": bb.weights, "images": len(files)} | _cos_rows(
        out["fp32"], out["bf16"]
    )


def cpu_model() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "amx_bf16": False}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            info["amx_bf16"] = "amx_bf16" in flags
            info["avx512f"] = "avx512f" in flags
            break
    return info


def versions() -> dict:
    import torch
    import torchvision

    import featx

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "featx": featx.__version__,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **cpu_model(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="featx extraction benchmark")
    ap.add_argument("root", type=Path, help="ImageFolder of JPEGs (benchmarks/make_jpegs.py)")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers, both loops")
    ap.add_argument("--batch-size", type=int, default=256, help="standard loop batch")
    ap.add_argument("--featx-batch-size", type=int, default=64)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument(
        "--decodes", default="auto", help="featx --decode values to run: auto, cpu, device"
    )
    ap.add_argument("--model-only-steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--drift-model", default="efficientnet_lite0", help="'' to skip")
    ap.add_argument("--drift-images", type=int, default=128)
    a = ap.parse_args(argv)

    precisions = a.precisions.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    runs: list[dict] = []
    try:
        for rep in range(a.repeat):
            rows = {
                "standard": standard_loop(
                    a.root, a.model, a.device, a.batch_size, a.workers, tmp / "std.npy"
                )
            }
            decodes = a.decodes.split(",")
            for p in precisions:
                for dec in decodes:
                    name = f"featx-{p}" if len(decodes) == 1 else f"featx-{p}-{dec}"
                    store = tmp / f"{name}-{rep}.h5"
                    rows[name] = featx_run(
                        a.root,
                        a.model,
                        a.device,
                        a.featx_batch_size,
                        a.workers,
                        p,
                        store,
                        a.compile,
                        dec,
                    )
                    rows[name]["vs_standard_features"] = agreement(store, tmp / "std.npy", a.root)
                    store.unlink()
            best = {
                p: model_only(a.model, a.device, a.featx_batch_size, p, a.model_only_steps)
                for p in precisions
            }
            rows["model-only"] = max(best.values(), key=lambda r: r["images_per_s"])
            std = rows["standard"]["images_per_s"]
            bound = rows["model-only"]["images_per_s"]
            ratios = {
                k: {
                    "vs_standard": round(v["images_per_s"] / std, 3),
                    "vs_model_only": round(v["images_per_s"] / bound, 3),
                }
                for k, v in rows.items()
                if k.startswith("featx")
            }
            runs.append({"rows": rows, "ratios": ratios})
            print(json.dumps({"repeat": rep, "ratios": ratios}), file=sys.stderr, flush=True)
        result = {
            "benchmark": "extract",
            "model": a.model,
            "device": a.device,
            "n": runs[0]["rows"]["standard"]["images"],
            "workers": a.workers,
            "featx_batch_size": a.featx_batch_size,
            "standard_batch_size": a.batch_size,
            "versions": versions(),
            "runs": runs,
        }
        if a.drift_model:
            result["bf16_drift_trained_weights"] = drift(a.root, a.drift_model, a.drift_images)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
