"""``--engine ray``: the extraction engine on a Ray cluster (Ray Data), same batches out.

What runs where
---------------
The driver (the process that runs ``featx extract``) scans the source, computes the incremental
plan and owns the store, exactly as with the local engine (see :mod:`featx.extraction`). Only the
to-do rows become a Ray Dataset of ``(position, key, path)`` rows. Two operators follow:

1. *decode* — Ray tasks (one CPU each, spread over the cluster) read each file, decode it with
   Pillow and resize/crop it to the backbone's ``uint8`` input; a file that does not decode
   becomes a row with its failure reason, as in the local engine.
2. *model* — a fixed pool of Ray actors (``map_batches`` with an actor pool): each actor takes
   the backbone from the object store once, prepares it for its device (precision, BatchNorm
   folding, channels-last, ``torch.compile``: :func:`featx.engine.prepare_model`) and turns
   batches of images into features.

Features stream back to the driver through ``iter_batches`` and come out of
:func:`iter_features_ray` as the same :class:`featx.engines.Batch` objects the local engine
yields, so the driver writes them through the same part files and atomic commit.

Faults: Ray Data creates pool actors with unlimited restarts and their tasks with unlimited
retries (``max_restarts=-1, max_task_retries=-1``, its defaults in Ray 2.60); Ray retries a
task whose worker died 3 times. An actor or worker that dies is replaced and its batch
recomputed (``tests/test_ray_engine.py`` kills one); rows are deduplicated by position, so a batch
delivered twice is written once. The driver is the single point of failure, and a killed
driver resumes from its part files like a local run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.devices import amp_dtype_of, resolve_device, resolve_precision
from featx.engine import keep_heap_pages, prepare_model
from featx.engines import (
    FEATURES,
    Batch,
    EngineSetup,
    check_rows,
    named_outputs,
    register_engine,
)
from featx.errors import FeatxError
from featx.options import ExtractOptions

log = logging.getLogger(__name__)

RAY_MISSING = (
    "--engine ray needs Ray Data, which is not installed; install it with: pip install 'featx[ray]'"
)
#: Fault injection for tests: an actor whose marker file does not exist creates it, then dies.
CRASH_ENV = "FEATX_RAY_CRASH_ONCE"


def import_ray() -> Any:
    """``ray`` with ``ray.data`` loaded, or a one-line :class:`FeatxError` saying how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise FeatxError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run: the ``--ray-*`` options, resolved against the cluster.

    Attributes
    ----------
    address : str or None
        None starts a local Ray runtime for the run (or uses the one this process already
        started); ``"auto"`` joins the cluster of this machine; ``"ray://HOST:10001"`` connects
        through Ray Client.
    actors : int or None
        Model actors; None: one per ``gpus_per_actor`` GPUs of the cluster, or on a CPU cluster
        one per ``2 * cpus_per_actor`` CPUs (the other half decodes).
    gpus_per_actor, cpus_per_actor : float
        Resources each model actor reserves. CPU actors run ``torch`` on ``cpus_per_actor``
        threads.
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    @classmethod
    def from_options(cls, opts: ExtractOptions) -> RaySettings:
        """The Ray options of ``opts``, defaults filled in."""
        return cls(
            address=opts.ray_address,
            actors=opts.actors,
            gpus_per_actor=0.0 if opts.gpus_per_actor is None else float(opts.gpus_per_actor),
            cpus_per_actor=1.0 if opts.cpus_per_actor is None else float(opts.cpus_per_actor),
        )


def actor_device(device: str, gpus_per_actor: float) -> str:
    """The device the actors use: ``auto`` is ``cuda`` when actors reserve GPUs, else ``cpu``.

    Decided on the driver (which may have no GPU) so that every actor runs the same way.
    """
    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if gpus_per_actor > 0 else "cpu"
    if d.startswith("cuda"):
        if gpus_per_actor <= 0:
            raise FeatxError(
                f"--device {device} with --engine ray needs GPUs for the actors; "
                "add --gpus-per-actor 1"
            )
        if d != "cuda":
            raise FeatxError(
                f"--device {device}: with --engine ray Ray assigns the GPUs; use --device cuda"
            )
        return "cuda"
    if d == "cpu":
        return "cpu"
    raise FeatxError(f"--device {device} is not supported with --engine ray; use auto, cpu or cuda")


def connect(address: str | None) -> tuple[Any, bool]:
    """Initialize Ray unless this process already did; returns (ray, whether we started it)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address in (None, "", "local"):
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address or None, **kwargs)
    except ConnectionError as exc:
        raise FeatxError(
            f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}; "
            "start it with `ray start --head` or check --ray-address"
        ) from None
    return ray, True


def _resolve_actors(ray: Any, settings: RaySettings) -> int:
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    g, c = settings.gpus_per_actor, settings.cpus_per_actor
    if g > 0 and gpus < g:
        raise FeatxError(
            f"--gpus-per-actor {g:g}: the Ray cluster has {gpus:g} GPU(s); "
            "lower it or add GPU workers"
        )
    if c > cpus:
        raise FeatxError(f"--cpus-per-actor {c:g}: the Ray cluster has {cpus:g} CPU(s)")
    if settings.actors is not None:
        n = int(settings.actors)
    elif g > 0:
        n = max(1, int(gpus // g))
    else:
        n = max(1, int(cpus // (2 * c)))
    if g > 0 and n * g > gpus:
        raise FeatxError(
            f"--actors {n} x --gpus-per-actor {g:g} needs {n * g:g} GPUs; "
            f"the Ray cluster has {gpus:g}"
        )
    if n * c >= cpus:
        raise FeatxError(
            f"--actors {n} x --cpus-per-actor {c:g} takes all {cpus:g} CPU(s) of the Ray cluster "
            "and leaves none to decode images; lower --actors or --cpus-per-actor"
        )
    return n


def _decoder(reader: Callable[[Any], Any], preprocess: Any) -> Callable[[dict], dict]:
    """The decode operator: rows (i, key, path) -> (i, uint8 image, failure reason)."""

    def decode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import socket

        from featx.images import ImageDecodeError
        from featx.keys import key_from
        from featx.sources import Item, is_uri

        size = preprocess.crop_size
        n = len(batch["i"])
        imgs = np.zeros((n, 3, size, size), dtype=np.uint8)
        reasons = np.full(n, "", dtype=object)
        for j in range(n):
            path = key_from(batch["path"][j]) or None  # bytes-safe: any file name (#23)
            item = Item(key=key_from(batch["key"][j]), path=path)
            if path and not is_uri(path) and not os.path.exists(path):
                raise FeatxError(
                    f"{path} is not visible on Ray worker {socket.gethostname()}; the source must "
                    "be on storage every worker sees (a shared filesystem at the same path, or a "
                    "CSV manifest on s3://, gs://, ...)"
                )
            try:
                imgs[j] = preprocess.to_uint8(reader(item)).numpy()
            except ImageDecodeError as exc:
                reasons[j] = str(exc)
            except FileNotFoundError as exc:
                raise FeatxError(
                    f"{path}: not found from Ray worker {socket.gethostname()} ({exc}); the "
                    "source must be on storage every worker sees"
                ) from None
            except Exception as exc:  # noqa: BLE001 - a bad file must not kill a long run
                reasons[j] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return {"i": batch["i"], "img": imgs, "reason": reasons}

    return decode


class ModelActor:
    """One model load per actor; ``__call__`` maps decoded batches to named outputs.

    ``holder`` is a one-element list holding the ObjectRef of the backbone (wrapped so that Ray
    does not resolve it before the actor asks for it). Output ``name`` travels as the column
    ``out:name``; rows of failed items are zeros.
    """

    def __init__(
        self,
        holder: list,
        device: str,
        precision: str,
        opts: ExtractOptions,
        threads: int,
        crash_marker: str | None = None,
    ) -> None:
        import ray
        import torch

        self.backbone = ray.get(holder[0])
        self.dev = resolve_device(device)
        if self.dev.type == "cpu":
            torch.set_num_threads(max(1, threads))
            keep_heap_pages()  # the actor process lives for the run only
        self.amp_dtype = amp_dtype_of(precision)
        self.model, self.memory_format = prepare_model(
            self.backbone, self.dev, self.amp_dtype, opts
        )
        self.crash_marker = crash_marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self.crash_marker and not os.path.exists(self.crash_marker):
            with open(self.crash_marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)  # the fault-injection test: die like a killed process, once
        reasons = batch["reason"]
        ok = np.array([not r for r in reasons], dtype=bool)
        columns = {OUT + FEATURES: np.zeros((len(ok), self.backbone.dim), dtype=np.float32)}
        if ok.any():
            pre = self.backbone.preprocess
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(batch["img"][ok])).to(self.dev)
                x = pre.normalize(x).contiguous(memory_format=self.memory_format)
                with torch.autocast(
                    self.dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    outs = {k: v.float() for k, v in named_outputs(self.model(x)).items()}
            arrays = {k: v.cpu().numpy() for k, v in outs.items()}
            check_rows(arrays, int(ok.sum()))
            for name, arr in arrays.items():
                full = np.zeros((len(ok), *arr.shape[1:]), dtype=arr.dtype)
                full[ok] = arr
                columns[OUT + name] = full
        return {"i": batch["i"], "reason": reasons, **columns}


#: The column prefix of the named outputs in the Ray Dataset.
OUT = "out:"


def _part_writer(sink: Any, holder: list) -> Callable[[dict], dict]:
    """The write operator (with a :class:`~featx.store.writer.PartSink`): the model's rows ->
    one durable part file per batch, in key order with labels and splits, written by the
    worker itself; what goes on to the driver is (i, reason, part, row) without features."""
    cache: dict[str, Any] = {}

    def write(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        from featx.store.writer import Rows

        meta = cache.get("meta")
        if meta is None:
            meta = cache["meta"] = ray.get(holder[0])
        i = np.asarray(batch["i"], dtype=np.int64)
        reasons = batch["reason"]
        ok = np.array([not r for r in reasons], dtype=bool)
        good = np.flatnonzero(ok)
        good = good[np.argsort(np.array([meta["key"][j] for j in i[good]], dtype=object),
                               kind="stable")]  # fmt: skip
        bad = np.flatnonzero(~ok)
        feats = np.asarray(batch[OUT + FEATURES])[good]
        outputs = {  # --layers groups, cached activations: in the part as in a segment (#21)
            k[len(OUT) :]: np.asarray(v)[good]
            for k, v in batch.items()
            if k.startswith(OUT) and k != OUT + FEATURES
        }

        def col(name: str, where: np.ndarray) -> list:
            return [meta[name][j] for j in i[where]]

        rows = Rows(
            keys=col("key", good), features=feats, size=col("size", good),
            mtime_ns=col("mtime_ns", good), sha256=col("sha256", good),
            failed_keys=col("key", bad), failed_reasons=[str(reasons[j]) for j in bad],
            failed_size=col("size", bad), failed_mtime_ns=col("mtime_ns", bad),
            failed_sha256=col("sha256", bad), labels=col("label", good),
            split=col("split", good), outputs=outputs,
        )  # fmt: skip
        path = sink.write(rows) if len(i) else ""
        row = np.full(len(i), -1, dtype=np.int64)
        row[good] = np.arange(len(good))
        return {"i": i, "reason": reasons, "part": np.full(len(i), path, dtype=object), "row": row}

    return write


def decode_memory(batch_size: int, crop_size: int) -> int:
    """Bytes a decode task reserves: a worker process with torch and Pillow loaded (measured:
    up to 381 MiB USS on Ray 2.60 / torch 2.14, decoding 500x375 JPEGs; Ray Data's issue
    detector asks for 1.25x the peak) plus its output batch."""
    return int((480 << 20) + batch_size * 3 * crop_size * crop_size)


def _featx_error(exc: BaseException) -> FeatxError | None:
    """The FeatxError a Ray task raised, found in the chain of wrappers around it."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, FeatxError):
            return FeatxError(str(e).splitlines()[0])
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def iter_features_ray(
    backbone: Any,
    items: Sequence[Any],
    reader: Callable[[Any], Any],
    opts: ExtractOptions | None = None,
    sink: Any = None,
) -> Iterator[Batch]:
    """Run ``backbone`` over ``items`` on Ray, yielding :class:`~featx.engines.Batch` results.

    Batches come back in completion order, not item order; ``Batch.indices`` are positions into
    ``items``, each exactly once. The Ray options of ``opts`` become :class:`RaySettings`; its
    ``device`` is resolved with :func:`actor_device`. With ``sink`` (a
    :class:`~featx.store.writer.PartSink`) the workers write the rows into part files
    themselves and the batches carry where (``Batch.parts``), not the features.

    Examples
    --------
    >>> opts = ExtractOptions(engine="ray", actors=2)
    >>> for b in iter_features_ray(bb, items, src.reader(), opts):
    ...     print(b.indices.shape, b.features.shape)  # doctest: +SKIP
    """
    opts = opts or ExtractOptions(engine="ray")
    settings = RaySettings.from_options(opts)
    dev = actor_device(opts.device, settings.gpus_per_actor)
    precision = _precision(opts, dev)
    ray, started = connect(settings.address)
    try:
        yield from _run(ray, backbone, items, reader, opts, dev, precision, sink)
    finally:
        if started:
            ray.shutdown()


def _precision(opts: ExtractOptions, dev: str) -> str:
    import torch

    return resolve_precision(opts.precision, torch.device(dev))


def build_dataset(
    ray: Any,
    backbone: Any,
    items: Sequence[Any],
    reader: Callable[[Any], Any],
    opts: ExtractOptions,
    dev: str,
    precision: str,
    sink: Any = None,
) -> tuple[Any, list]:
    """The Ray Dataset of (i, reason, out:NAME...) rows for ``items``, and the holder of the
    backbone's ObjectRef (keep it alive while the dataset runs). Nothing runs until it is
    iterated. ``dev`` and ``precision`` are resolved (:func:`actor_device`)."""
    import pyarrow as pa
    import ray.data

    from featx.keys import arrow_keys

    settings = RaySettings.from_options(opts)
    batch_size = opts.batch_size
    n_actors = _resolve_actors(ray, settings)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    # Blocks of whole batches, about four per decoding CPU, at most 16 batches each.
    n = len(items)
    per_block = batch_size * max(1, min(16, -(-n // (batch_size * max(1, int(cpus) * 4)))))
    tables = [
        pa.table(
            {
                "i": pa.array(np.arange(s, min(n, s + per_block), dtype=np.int64)),
                # keys and paths as bytes: a file name need not be UTF-8 (featx.keys, #23)
                "key": arrow_keys([it.key for it in items[s : s + per_block]], always_binary=True),
                "path": arrow_keys(
                    [getattr(it, "path", None) or "" for it in items[s : s + per_block]],
                    always_binary=True,
                ),
            }
        )
        for s in range(0, n, per_block)
    ]
    # The backbone travels once through the object store; every actor (and a restarted one)
    # takes it from there, so workers need neither the weights cache nor a network.
    holder = [ray.put(backbone)]
    crash_marker = os.environ.get(CRASH_ENV) or None
    ds = ray.data.from_arrow(tables)
    ds = ds.map_batches(
        _decoder(reader, backbone.preprocess),
        batch_size=batch_size,
        num_cpus=1,
        # What a decode task holds (see decode_memory). Declaring
        # it also keeps Ray Data from fusing decoding into the model actors (it fuses only ops
        # with equal resources; fused, one process would decode and infer in turn, and a GPU
        # actor would wait on its one CPU). Ray Data spreads tasks over the nodes by default.
        memory=decode_memory(batch_size, backbone.preprocess.crop_size),
    )
    ds = ds.map_batches(
        ModelActor,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
        fn_constructor_kwargs={
            "holder": holder,
            "device": dev,
            "precision": precision,
            "opts": opts,
            "threads": max(1, int(settings.cpus_per_actor)),
            "crash_marker": crash_marker,
        },
    )
    if sink is not None:  # the workers write the parts: features never reach the driver
        meta = {
            "key": [it.key for it in items],
            "label": [int(it.label) for it in items],
            "split": [it.split for it in items],
            "size": [int(it.size) for it in items],
            "mtime_ns": [int(it.mtime_ns) for it in items],
            "sha256": [it.sha256 for it in items],
        }
        holder.append(ray.put(meta))
        ds = ds.map_batches(
            _part_writer(sink, holder[1:]), batch_size=sink.rows_per_part, num_cpus=0.5
        )
    log.info(
        "extracting %d items on Ray: %d model actor(s) on %s (%s, %g CPU / %g GPU each), "
        "batch %d, %d input blocks",
        n,
        n_actors,
        dev,
        precision,
        settings.cpus_per_actor,
        settings.gpus_per_actor,
        batch_size,
        len(tables),
    )
    return ds, holder


def _run(
    ray: Any,
    backbone: Any,
    items: Sequence[Any],
    reader: Callable[[Any], Any],
    opts: ExtractOptions,
    dev: str,
    precision: str,
    sink: Any = None,
) -> Iterator[Batch]:
    from tqdm.auto import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # featx's own bar below counts images
    ctx.print_on_execution_start = False
    ds, holder = build_dataset(ray, backbone, items, reader, opts, dev, precision, sink)
    n = len(items)
    bar = tqdm(
        total=n, unit="img", disable=not opts.progress, file=sys.stderr, dynamic_ncols=True,
        smoothing=0.1, desc="extract (ray)",
    )  # fmt: skip
    seen = np.zeros(n, dtype=bool)
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            idx = np.asarray(out["i"], dtype=np.int64)
            fresh = ~seen[idx]
            if not fresh.all():  # a retried batch delivered twice: keep the first copy
                log.debug("dropping %d rows delivered twice", int((~fresh).sum()))
            seen[idx] = True
            reasons = out["reason"][fresh]
            idx = idx[fresh]
            ok = np.array([not r for r in reasons], dtype=bool)
            outputs = {
                k[len(OUT) :]: np.asarray(v)[fresh][ok] for k, v in out.items() if k.startswith(OUT)
            }
            failures = [(int(i), str(r)) for i, r in zip(idx[~ok], reasons[~ok], strict=True)]
            bar.update(int(idx.size))
            if "part" in out:  # written by the workers: where, not what
                outputs = {FEATURES: np.empty((0, int(backbone.dim)), dtype=np.float32)}
                parts = np.asarray(out["part"], dtype=object)[fresh][ok]
                rows = np.asarray(out["row"], dtype=np.int64)[fresh][ok]
                yield Batch(idx[ok], outputs, failures, parts=parts, part_rows=rows)
                continue
            yield Batch(idx[ok], outputs, failures)
    except Exception as exc:
        err = _featx_error(exc)
        if err is not None:
            raise err from None
        raise
    finally:
        bar.close()
    if not seen.all():  # pragma: no cover - Ray Data lost rows; never write a partial plan
        raise FeatxError(f"Ray returned {int(seen.sum())} of {n} rows; run the command again")


class RayImageEngine:
    """``--engine ray`` for image backbones: :func:`iter_features_ray` on a Ray cluster."""

    name = "ray"
    modality = "image"
    #: Given a PartSink, the workers write the parts themselves (the driver writes no feature).
    writes_parts = True
    honours = frozenset(
        {"batch_size", "device", "precision", "compile", "channels_last", "fold_bn", "decode",
         "ray_address", "actors", "gpus_per_actor", "cpus_per_actor"}
    )  # fmt: skip

    def setup(self, opts: ExtractOptions) -> EngineSetup:
        import_ray()
        dev = actor_device(opts.device, RaySettings.from_options(opts).gpus_per_actor)
        if (opts.decode or "auto").lower() == "device":
            raise FeatxError(
                "--decode device is not available with --engine ray (Ray tasks decode on CPUs); "
                "use --decode cpu or auto"
            )
        return EngineSetup(device=dev, precision=_precision(opts, dev), decode="cpu")

    def iter_batches(
        self,
        backbone: Any,
        items: Sequence[Any],
        reader: Callable,
        opts: ExtractOptions,
        sink: Any = None,
    ) -> Iterator[Batch]:
        return iter_features_ray(backbone, items, reader, opts, sink)


register_engine(RayImageEngine())
