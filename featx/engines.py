"""The engine table: what runs a backbone over items, looked up by engine name and modality.

An *engine* turns items into batches of named per-row outputs. Each one is an object with the
:class:`Engine` attributes, registered under ``(name, modality)`` by its own module:

* ``local`` / ``image``: :mod:`featx.engine` (DataLoader workers, device decode, prefetch);
* ``ray`` / ``image``: :mod:`featx.ray_engine` (Ray Data decode tasks and model actors);
* ``local`` / ``text``: :mod:`featx.text.engine` (tokenize once, length-sorted batches).

Every engine takes the :class:`~featx.options.ExtractOptions` whole; the defaults live there
only. An engine lists the engine options it acts on in ``honours``; :func:`engine_for` rejects a
run that sets any other engine option (``OptionInfo.engine``) to a value other than its default,
with a one-line :class:`~featx.errors.FeatxError`, so no option is dropped without a word.

What an engine yields is a :class:`Batch`: positions into the item list, a mapping of named
arrays whose rows follow those positions (the pooled vector is :data:`FEATURES`), and the items
that failed with their reasons. A model may return a tensor (the pooled vector) or a mapping of
name to tensor; :func:`named_outputs` makes both a mapping.

Adding an engine (the built-in modules are imported on the first lookup; a plugin registers
its own from its package):

>>> from featx.engines import Batch, EngineSetup, get_engine, register_engine, unregister_engine
>>> class Echo:
...     name, modality, honours = "echo", "image", frozenset({"batch_size"})
...     def setup(self, opts):
...         return EngineSetup(device="cpu", precision="fp32", decode="-")
...     def iter_batches(self, backbone, items, reader, opts):
...         yield from ()
>>> register_engine(Echo())
>>> get_engine("echo", "image").name
'echo'
>>> unregister_engine("echo", "image")

This module imports neither torch nor any engine at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from featx.errors import FeatxError
from featx.options import ExtractOptions, option_fields

if TYPE_CHECKING:  # pragma: no cover
    from featx.backbones.registry import BackboneLike

#: The name of the pooled per-row vector: the output every backbone gives, stored as
#: ``features`` (old stores hold only this one).
FEATURES = "features"

#: The modules of the built-in engines, imported (and so registered) on the first lookup.
BUILTIN_ENGINE_MODULES = ("featx.engine", "featx.ray_engine", "featx.text.engine")


@dataclass(frozen=True)
class Batch:
    """One processed batch of an engine.

    Attributes
    ----------
    indices : ndarray of int64, shape (b,)
        Positions into the item list of the items that succeeded, each once in a run.
    outputs : mapping of str to ndarray
        Named per-row arrays, row ``r`` belonging to ``indices[r]``; always holds
        :data:`FEATURES` (float32, (b, D)), also when ``b`` is 0.
    failures : list of (int, str)
        Positions of the items that failed, with a one-line reason each.
    parts : ndarray of str, optional
        When the engine's workers wrote the rows themselves (an engine given a
        :class:`~featx.store.writer.PartSink`): the part file of each of ``indices``, durable
        already; ``outputs`` then holds no rows and the failures are in those parts too.
    part_rows : ndarray of int64, optional
        The row of each of ``indices`` in its part file.
    """

    indices: np.ndarray
    outputs: Mapping[str, np.ndarray] = field(repr=False)
    failures: list[tuple[int, str]]
    parts: np.ndarray | None = None
    part_rows: np.ndarray | None = None

    @property
    def features(self) -> np.ndarray:
        """The pooled vectors, (b, D) float32: ``outputs["features"]``."""
        return self.outputs[FEATURES]


def named_outputs(out: Any) -> dict[str, Any]:
    """A model's output as named outputs: a mapping stays (it must hold :data:`FEATURES`), a
    single tensor or array is the pooled vector."""
    if isinstance(out, Mapping):
        if FEATURES not in out:
            raise FeatxError(
                f"the backbone's outputs {', '.join(sorted(out))} lack {FEATURES!r}, the pooled "
                "vector every store holds"
            )
        return dict(out)
    return {FEATURES: out}


def empty_outputs(dim: int) -> dict[str, np.ndarray]:
    """The outputs of a batch without rows."""
    return {FEATURES: np.empty((0, int(dim)), dtype=np.float32)}


def check_rows(outputs: Mapping[str, np.ndarray], n: int) -> None:
    """Every output has ``n`` rows and the pooled vector is one row per item (a FeatxError
    that says what to choose otherwise)."""
    feats = outputs[FEATURES]
    if feats.ndim != 2:
        raise FeatxError(
            f"backbone produced features of shape {tuple(feats.shape)}; "
            "choose a --pool that reduces them to one vector per image"
        )
    for name, arr in outputs.items():
        if arr.shape[0] != n:
            raise FeatxError(f"backbone output {name!r} has {arr.shape[0]} rows for {n} items")


@dataclass(frozen=True)
class EngineSetup:
    """What a run resolves to before the store is touched (shown in the result)."""

    device: str  # e.g. "cpu", "cuda"
    precision: str  # "fp32", "bf16" or "fp16"
    decode: str  # where images are decoded: "cpu" or "device"; "-" where nothing is decoded


@runtime_checkable
class Engine(Protocol):
    """What extraction needs from an engine (structural: any object with these)."""

    #: The ``--engine`` name, e.g. ``"local"``.
    name: str
    #: The backbones it runs: ``"image"``, ``"text"`` (``backbone.modality``).
    modality: str
    #: The engine options (``OptionInfo.engine``) it acts on; others must keep their defaults.
    honours: frozenset[str]

    def setup(self, opts: ExtractOptions) -> EngineSetup:
        """Check and resolve device, precision and decode; raise FeatxError on bad values."""
        ...

    def iter_batches(
        self,
        backbone: BackboneLike,
        items: Sequence[Any],
        reader: Callable[[Any], Any],
        opts: ExtractOptions,
    ) -> Iterator[Batch]:
        """Run ``backbone`` over ``items`` (each read by ``reader``), yielding batches in any
        order; every position appears once, in ``indices`` or in ``failures``."""
        ...


_ENGINES: dict[tuple[str, str], Engine] = {}
_builtins_loaded = False


def register_engine(engine: Engine) -> None:
    """Add an engine; ValueError when its (name, modality) is taken."""
    key = (engine.name, engine.modality)
    if key in _ENGINES:
        raise ValueError(f"engine {engine.name!r} for {engine.modality} is already registered")
    _ENGINES[key] = engine


def unregister_engine(name: str, modality: str) -> None:
    """Remove an engine (tests and plugins that register temporary ones)."""
    _ENGINES.pop((name, modality), None)


def engines() -> list[Engine]:
    """The registered engines: the built-in ones first (imported on the first call)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for mod in BUILTIN_ENGINE_MODULES:
            importlib.import_module(mod)
    return list(_ENGINES.values())


def get_engine(name: str, modality: str) -> Engine:
    """The engine ``name`` for ``modality``; a FeatxError naming the valid ones otherwise."""
    table = engines()
    found = _ENGINES.get((name, modality))
    if found is not None:
        return found
    names = sorted({e.name for e in table})
    if name not in names:
        raise FeatxError(f"engine must be one of {', '.join(names)}; got {name!r}")
    runs = sorted({e.modality for e in table if e.name == name})
    here = sorted(e.name for e in table if e.modality == modality)
    other = f"--engine {' or '.join(here)}" if here else "no engine"
    raise FeatxError(
        f"--engine {name} runs {' and '.join(runs)} backbones; {modality} runs on {other}"
    )


def check_options(engine: Engine, opts: ExtractOptions) -> None:
    """Raise a one-line FeatxError for an engine option ``engine`` does not act on."""
    flags = {f.name: f.flag for f in option_fields(ExtractOptions)}
    for name in opts.engine_options():
        if name in engine.honours:
            continue
        flag = flags[name]
        others = sorted(
            e.name for e in engines() if e.modality == engine.modality and name in e.honours
        )
        if others:
            raise FeatxError(f"{flag} applies only with --engine {' or '.join(others)}")
        raise FeatxError(
            f"{flag} does not apply to {engine.modality} backbones "
            f"(--engine {engine.name}); leave it out"
        )


def engine_for(opts: ExtractOptions, modality: str) -> Engine:
    """The engine ``opts.engine`` for ``modality``, checked against the options of the run."""
    engine = get_engine(opts.engine, modality)
    check_options(engine, opts)
    return engine


__all__ = [
    "BUILTIN_ENGINE_MODULES",
    "FEATURES",
    "Batch",
    "Engine",
    "EngineSetup",
    "check_options",
    "check_rows",
    "empty_outputs",
    "engine_for",
    "engines",
    "get_engine",
    "named_outputs",
    "register_engine",
    "unregister_engine",
]
