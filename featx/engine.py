"""The local image engine (``--engine local``): decoded images through a frozen model in this
process, named outputs out (registered in :mod:`featx.engines` as ``local`` / ``image``).

Decoding, resizing and cropping run in DataLoader workers and produce ``uint8`` tensors; the
batch moves to the device (pinned, non-blocking on CUDA), is normalized there and runs through
the model under ``torch.inference_mode`` with the chosen precision and channels_last layout. A file
that does not decode never stops the run: it comes back as a failure with its reason.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from featx.devices import AMP_DTYPES as AMP_DTYPES
from featx.devices import DEVICES_HELP as DEVICES_HELP
from featx.devices import amp_dtype_of, resolve_device, resolve_precision
from featx.engines import (
    Batch,
    EngineSetup,
    check_rows,
    empty_outputs,
    named_outputs,
    register_engine,
)
from featx.jpeg import resolve_decode
from featx.options import PRECISIONS as PRECISIONS  # one list, also for the CLI
from featx.options import ExtractOptions

if TYPE_CHECKING:  # pragma: no cover
    from featx.backbones.registry import BackboneLike

log = logging.getLogger(__name__)


def default_workers(device) -> int:
    n = os.cpu_count() or 1
    # On CPU the model competes with decoding for the same cores.
    return min(8, n) if device.type != "cpu" else max(1, min(4, n // 2))


class DecodeDataset:
    """Map-style dataset: index -> (index, uint8 CHW tensor or None, failure reason)."""

    def __init__(self, items: Sequence[Any], reader: Callable[[Any], Any], preprocess: Any):
        self.items = items
        self.reader = reader
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from featx.images import ImageDecodeError

        try:
            img = self.reader(self.items[i])
            return i, self.preprocess.to_uint8(img), ""
        except ImageDecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad file must not kill a long run
            return i, None, f"{type(exc).__name__}: {exc}".splitlines()[0]


class RawDecodeDataset(DecodeDataset):
    """For ``--decode device``: index -> (index, None, JPEG bytes, orientation, "") for files the
    device decodes (see :mod:`featx.jpeg`), else what :class:`DecodeDataset` gives, widened to
    (index, uint8 tensor or None, None, 1, failure reason)."""

    def __getitem__(self, i: int):  # type: ignore[override]
        from featx.jpeg import sniff

        path = getattr(self.items[i], "path", None)
        if path:
            found = sniff(path)
            if found is not None:
                return i, None, found[0], found[1], ""
        i, t, reason = super().__getitem__(i)
        return i, t, None, 1, reason


def collate_raw(batch):
    """Collate :class:`RawDecodeDataset` samples: the CPU-decoded part as :func:`collate` does,
    plus the positions, bytes and orientations of the JPEGs left for the device."""
    idx, x, failures = collate([(i, t, r) for i, t, raw, _, r in batch if raw is None])
    raw = [(i, data, o) for i, _, data, o, _ in batch if data is not None]
    return idx, x, failures, [i for i, _, _ in raw], [d for _, d, _ in raw], [o for *_, o in raw]


def collate(batch):
    import torch

    ok = [(i, t) for i, t, _ in batch if t is not None]
    failures = [(i, r) for i, t, r in batch if t is None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    x = torch.stack([t for _, t in ok]) if ok else torch.empty(0, dtype=torch.uint8)
    return idx, x, failures


# glibc malloc serves blocks above M_MMAP_THRESHOLD (at most 32 MB even with its dynamic
# threshold) with fresh mmap()s and unmaps them on free. A CNN's activations are such blocks
# (ResNet-50, batch 64: up to 200 MB each), so every forward pass page-faults and zero-fills its
# whole working set again: measured on 2 Sapphire Rapids cores, a third of the run was sys time
# and ResNet-50 fp32 went from 10.6 to 15.5 img/s once the heap kept those pages.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_HEAP_KEEP = 1 << 30


def _glibc():
    import ctypes
    import platform

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover
        return None


def keep_heap_pages() -> Callable[[], None]:
    """Let glibc reuse freed large blocks instead of unmapping them; returns the undo.

    Process-wide while a CPU extraction runs. The undo gives the kept memory back
    (``malloc_trim``) and sets the thresholds to where glibc's own dynamic adjustment ends up
    after large frees (32 MB mmap, 64 MB trim). A no-op off glibc.
    """
    libc = _glibc()
    if libc is None:
        return lambda: None
    libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_KEEP)
    libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP)

    def undo() -> None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
        libc.malloc_trim(0)

    return undo


def _bn_replacement(bn: Any):
    """What stands in for a BatchNorm once folded: nothing, or timm BatchNormAct2d's activation."""
    from torch import nn

    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return nn.Sequential(bn.drop, bn.act)
    return None


def fold_batchnorm(model: Any, image_size: int) -> Any:
    """An inference copy of ``model`` with each BatchNorm folded into the conv that feeds it.

    In eager mode a BatchNorm is a separate pass over every activation; folded into the conv's
    weights and bias it costs nothing (ResNet-50 on 2 CPU cores, fp32: +7-14 % model throughput,
    +8-12 % end to end).
    Pairs are found by running one small random batch with hooks: a BatchNorm is folded only
    when its input is the very tensor a ``Conv2d`` returned and neither module carries a hook
    (a ``--layer`` tap keeps its exact output). The copy must give the same output as the
    original on that batch (relative error < 1e-4), else the original is returned unchanged.
    Models without BatchNorm are returned as they are, without a copy.
    """
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if not any(_bn_replacement(m) is not None for m in model.modules()):
        return model
    try:
        param = next(model.parameters())
    except StopIteration:
        return model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, image_size, image_size, generator=gen).to(param.device)
    folded = copy.deepcopy(model).eval()
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []

    def hooked(m: nn.Module) -> bool:
        return bool(m._forward_hooks or m._forward_pre_hooks)

    for name, m in folded.named_modules():
        if isinstance(m, nn.Conv2d) and not hooked(m):
            hooks.append(
                m.register_forward_hook(lambda _m, _i, o, n=name: produced.__setitem__(id(o), n))
            )
        elif _bn_replacement(m) is not None and not hooked(m) and not m.training:
            hooks.append(
                m.register_forward_hook(
                    lambda _m, i, _o, n=name: pairs.append((produced.get(id(i[0]), ""), n))
                )
            )
    try:
        with torch.no_grad():
            ref = named_outputs(model.eval()(x))
            folded(x)
    finally:
        for h in hooks:
            h.remove()
    mods = dict(folded.named_modules())
    n = 0
    for conv_name, bn_name in pairs:
        if not conv_name or bn_name not in mods:
            continue
        conv, bn = mods[conv_name], mods[bn_name]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        for path, new in ((conv_name, fused), (bn_name, _bn_replacement(bn))):
            parent, _, leaf = path.rpartition(".")
            setattr(mods[parent] if parent else folded, leaf, new)
        n += 1
    if not n:
        return model
    with torch.no_grad():
        out = named_outputs(folded(x))
    err = max(
        float((out[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12)) for k in ref
    )
    if not all(bool(torch.isfinite(v).all()) for v in out.values()) or err > 1e-4:
        log.info("BatchNorm folding changed the output (rel. error %.2g); not folding", err)
        return model
    log.debug("folded %d BatchNorm layers into their convs (rel. error %.2g)", n, err)
    return folded


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def prepare_model(backbone: Any, dev: Any, amp_dtype: Any, opts: ExtractOptions) -> tuple[Any, Any]:
    """The backbone's model ready for inference on ``dev``: (model, input memory format).

    BatchNorms folded in fp32 (``amp_dtype`` None, ``opts.fold_bn``, see
    :func:`fold_batchnorm`), ``opts.channels_last`` layout, ``opts.compile``. Shared by the
    local engine and the Ray actors.
    """
    import torch

    model = backbone.model.to(dev).eval()
    if opts.fold_bn and amp_dtype is None:
        model = fold_batchnorm(model, backbone.preprocess.crop_size)
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if opts.compile:
        model = torch.compile(model)
    return model, memory_format


def iter_features(
    backbone: BackboneLike,
    items: Sequence[Any],
    reader: Callable[[Any], Any],
    opts: ExtractOptions | None = None,
) -> Iterator[Batch]:
    """Run ``backbone`` over ``items`` in order, yielding :class:`~featx.engines.Batch` results.

    Parameters
    ----------
    backbone : featx.backbones.Backbone
        Model (returns (B, D) features, or named outputs) and its preprocessing.
    items : sequence
        What ``reader`` turns into PIL RGB images.
    opts : ExtractOptions
        The run: ``device``, ``precision`` (:func:`~featx.devices.resolve_device`,
        :func:`~featx.devices.resolve_precision`), ``batch_size``, ``workers`` (DataLoader
        processes; None: a default for the device), ``channels_last``, ``compile``, ``fold_bn``
        (in fp32, a copy of the model with BatchNorms folded into their convs, see
        :func:`fold_batchnorm`: the features agree to float32 rounding; not done in bf16/fp16,
        where the folded weights, rounded to 16 bits, drifted 2.5x further from fp32), ``decode``
        (JPEGs decoded by Pillow in the workers, or in batches on the model's device, see
        :mod:`featx.jpeg`) and ``progress`` (a bar with images/s on stderr).
    """
    import torch

    opts = opts or ExtractOptions()
    dev = resolve_device(opts.device)
    amp_dtype = amp_dtype_of(resolve_precision(opts.precision, dev))
    dec = resolve_decode(opts.decode, dev)
    loader, cpu_decode = _loader(backbone, items, reader, opts, dev, dec)
    model, memory_format = prepare_model(backbone, dev, amp_dtype, opts)

    def prepare(loaded):
        """A loaded batch -> (indices, normalized batch on the device, failures)."""
        if dec == "device":
            idx, x, failures = _device_decode(loaded, dev, backbone.preprocess, cpu_decode)
        else:
            idx, x, failures = loaded
            x = x.to(dev, non_blocking=True)
        if idx.numel():
            x = backbone.preprocess.normalize(x).contiguous(memory_format=memory_format)
        return idx, x, failures

    from featx.progress import progress_bar

    bar = progress_bar(
        total=len(items), desc="extract", unit="img", enabled=opts.progress, smoothing=0.1
    )
    n_failed = 0
    # CUDA: decoding, the copy to the device and normalization of the next batches run on a
    # thread with its own stream while the model runs; elsewhere they run inline.
    # iter() here, so the DataLoader forks its workers from this thread, not the prefetch thread.
    cuda = dev.type == "cuda"
    batches = Prefetcher(iter(loader), prepare, dev) if cuda else map(prepare, loader)
    undo_heap = keep_heap_pages() if dev.type == "cpu" else (lambda: None)
    try:
        with torch.inference_mode():
            for batch in _forward(model, batches, dev, amp_dtype, backbone.dim):
                bar.update(int(batch.indices.size) + len(batch.failures))
                if batch.failures:
                    n_failed += len(batch.failures)
                    bar.set_postfix(failed=n_failed)
                yield batch
    finally:
        if isinstance(batches, Prefetcher):
            batches.close()
        bar.close()
        undo_heap()


def _loader(
    backbone: Any, items: Sequence[Any], reader: Callable, opts: ExtractOptions, dev: Any, dec: str
) -> tuple[Any, DecodeDataset]:
    """The DataLoader of decoded (or, for device decode, raw) batches, and the CPU decoder."""
    from torch.utils.data import DataLoader

    nworkers = default_workers(dev) if opts.workers is None else int(opts.workers)
    nworkers = min(nworkers, max(0, (len(items) + opts.batch_size - 1) // opts.batch_size))
    cpu_decode = DecodeDataset(items, reader, backbone.preprocess)
    loader = DataLoader(
        RawDecodeDataset(items, reader, backbone.preprocess) if dec == "device" else cpu_decode,
        batch_size=opts.batch_size,
        shuffle=False,
        num_workers=nworkers,
        collate_fn=collate_raw if dec == "device" else collate,
        pin_memory=dev.type == "cuda",
        worker_init_fn=_worker_init if nworkers else None,
        prefetch_factor=4 if nworkers else None,
        persistent_workers=False,
    )
    log.info(
        "extracting %d items on %s (%s, batch %d, %d workers, decode on %s)",
        len(items),
        dev,
        resolve_precision(opts.precision, dev),
        opts.batch_size,
        nworkers,
        "the device" if dec == "device" else "the CPU",
    )
    return loader, cpu_decode


def _forward(model: Any, batches: Any, dev: Any, amp_dtype: Any, dim: int) -> Iterator[Batch]:
    """Prepared batches through the model -> :class:`Batch` results, in order.

    On CUDA the outputs are copied back without waiting, and each batch is yielded one step
    later, while the next one runs.
    """
    import torch

    cuda = dev.type == "cuda"
    pending = None
    for idx, x, failures in batches:
        outs, event = None, None
        if idx.numel():
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outs = {k: v.float() for k, v in named_outputs(model(x)).items()}
            if cuda:
                outs = {k: v.to("cpu", non_blocking=True) for k, v in outs.items()}
                event = torch.cuda.Event()
                event.record()
            else:
                outs = {k: v.cpu() for k, v in outs.items()}
        current = (idx.numpy(), outs, event, failures)
        if not cuda:
            yield _finish(current, dim)
            continue
        if pending is not None:  # CUDA: the previous batch, copied while this one ran
            yield _finish(pending, dim)
        pending = current
    if pending is not None:
        yield _finish(pending, dim)


def _finish(pending: tuple, dim: int) -> Batch:
    idx, outs, event, failures = pending
    if event is not None:
        event.synchronize()
    if outs is None:
        return Batch(idx, empty_outputs(dim), failures)
    arrays = {k: v.numpy() for k, v in outs.items()}
    check_rows(arrays, int(idx.size))
    return Batch(idx, arrays, failures)


class LocalImageEngine:
    """``--engine local`` for image backbones: :func:`iter_features` in this process."""

    name = "local"
    modality = "image"
    honours = frozenset(
        {"batch_size", "workers", "device", "precision", "compile", "channels_last", "fold_bn",
         "decode"}
    )  # fmt: skip

    def setup(self, opts: ExtractOptions) -> EngineSetup:
        dev = resolve_device(opts.device)
        return EngineSetup(
            device=str(dev),
            precision=resolve_precision(opts.precision, dev),
            decode=resolve_decode(opts.decode, dev),
        )

    def iter_batches(
        self, backbone: Any, items: Sequence[Any], reader: Callable, opts: ExtractOptions
    ) -> Iterator[Batch]:
        return iter_features(backbone, items, reader, opts)


register_engine(LocalImageEngine())


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


class Prefetcher:
    """Iterate ``prepare(item)`` for the items of ``source``, computed ``depth`` ahead on a thread.

    On CUDA the thread works on its own stream; each result's tensors are handed to the
    consumer's stream with an event (the consumer waits on the GPU, not on the CPU) and
    ``record_stream`` (so the allocator does not reuse their memory early). An exception in the
    thread is raised in the consumer; :meth:`close` (or leaving the iteration) stops the thread.
    ``prepare`` must return a tuple whose tensors are the ones to hand over.
    """

    def __init__(self, source: Any, prepare: Callable[[Any], Any], device: Any, depth: int = 2):
        import queue
        import threading

        self._source = source
        self._prepare = prepare
        self._device = device
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="featx-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        import contextlib

        import torch

        cuda = self._device.type == "cuda"
        if cuda and self._device.index is not None:  # the thread's own current device
            torch.cuda.set_device(self._device)
        stream = torch.cuda.Stream(self._device) if cuda else None
        try:
            with torch.inference_mode():
                for item in self._source:
                    if self._stop.is_set():
                        return
                    ctx = torch.cuda.stream(stream) if cuda else contextlib.nullcontext()
                    with ctx:
                        out = self._prepare(item)
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(stream)
                    self._put((out, event))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(_Failed(exc))
        finally:
            self._put(_DONE)

    def __iter__(self):
        import torch

        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            out, event = item
            if event is not None:
                current = torch.cuda.current_stream(self._device)
                current.wait_event(event)
                for t in out:
                    if isinstance(t, torch.Tensor) and t.is_cuda:
                        t.record_stream(current)
            yield out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _device_decode(loaded, dev, pre, cpu_decode: DecodeDataset):
    """One :func:`collate_raw` batch -> (indices, uint8 batch on ``dev``, failures)."""
    import torch

    from featx.jpeg import decode_batch

    idx, x, failures, raw_idx, datas, orients = loaded
    idx_parts, x_parts = ([idx], [x.to(dev, non_blocking=True)]) if idx.numel() else ([], [])
    batch, ok, rejected = decode_batch(datas, orients, pre, dev)
    if batch is not None:
        idx_parts.append(torch.tensor([raw_idx[j] for j in ok], dtype=torch.long))
        x_parts.append(batch)
    fallback = []
    for j in rejected:  # the device decoder refused it: decode it as the CPU path would
        i, t, reason = cpu_decode[raw_idx[j]]
        if t is None:
            failures = [*failures, (i, reason)]
        else:
            fallback.append((i, t))
    if fallback:
        idx_parts.append(torch.tensor([i for i, _ in fallback], dtype=torch.long))
        x_parts.append(torch.stack([t for _, t in fallback]).to(dev))
    if not idx_parts:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.uint8), failures
    idx = torch.cat(idx_parts)
    order = torch.argsort(idx)
    x = torch.cat(x_parts)[order.to(dev)]
    return idx[order], x, failures
