"""featx: extract frozen-backbone image embeddings once, then fit and compare heads in seconds.

The public API, importable from ``featx`` directly (each name loads its module on first use, so
``import featx`` stays cheap: torch, timm and scikit-learn load when a function needs them):

=====================  ==========================================================================
extract                source + backbone -> feature store (:mod:`featx.extraction`)
load_features          store -> :class:`FeatureSet` of numpy arrays (:mod:`featx.store`)
verify_store           read every chunk of a store, check its checksums and schema
evaluate, fit_head     one head on a FeatureSet: metrics / a fitted head (:mod:`featx.protocol`)
compare                every head on every FeatureSet, same splits -> :class:`Leaderboard`
fit_store              fit + evaluate + save a bundle from a store path (:mod:`featx.train`)
compare_stores         :func:`compare` over store paths (:mod:`featx.train`)
predict                bundle + new images -> CSV of labels (:mod:`featx.prediction`)
Embedder, embed_files  image paths -> embeddings, a scikit-learn transformer (:mod:`featx.embedder`)
export_store           store -> npz / Parquet / CSV (:mod:`featx.export`)
diagnose               leakage, label errors, outliers -> report (:mod:`featx.diagnostics`)
run_pipeline           a pipeline TOML file end to end (:mod:`featx.pipeline`)
list_backbones         backbone names with their dims (:mod:`featx.backbones`)
load_backbone          name or :class:`BackboneSpec` -> frozen :class:`Backbone`
make_head, list_heads  heads by name (:mod:`featx.heads`)
embed_texts            texts -> embeddings with a text encoder, no store (:mod:`featx.text`)
ExtractOptions, ...    the option specs with every default (:mod:`featx.options`)
=====================  ==========================================================================

Examples
--------
>>> import featx
>>> featx.EvalProtocol(cv=5).cv
5
>>> sorted(featx.list_heads())[:3]
['centroid', 'knn', 'linear-svm']
"""

# ruff: noqa: F401 - names imported here are public through the derived __all__ (ruff cannot see it)
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featx._version import __version__
from featx.errors import FeatxError, StoreError

# THE list of the public API: name -> module that defines it, loaded on first attribute access
# (PEP 562). ``__all__`` derives from it; the TYPE_CHECKING imports at the end repeat it for static
# type checkers, and tests/test_api.py checks that they match this table name for name.
_LAZY: dict[str, str] = {
    # options and defaults
    "BackboneSpec": "featx.options",
    "EvalProtocol": "featx.options",
    "ExtractOptions": "featx.options",
    "TextFormat": "featx.options",
    "DiagnoseOptions": "featx.options",
    # extraction and stores
    "extract": "featx.extraction",
    "ExtractResult": "featx.extraction",
    "load_features": "featx.store.read",
    "store_info": "featx.store.read",
    "verify_store": "featx.store.verify",
    "VerifyReport": "featx.store.verify",
    "FeatureSet": "featx.features",
    # backbones
    "Backbone": "featx.backbones",
    "BackboneInfo": "featx.backbones",
    "BackboneLike": "featx.backbones",
    "Family": "featx.backbones",
    "list_backbones": "featx.backbones",
    "load_backbone": "featx.backbones",
    "register_family": "featx.backbones",
    # heads
    "HeadInfo": "featx.heads",
    "Param": "featx.heads",
    "list_heads": "featx.heads",
    "make_head": "featx.heads",
    "register_head": "featx.heads",
    # evaluation and comparison
    "evaluate": "featx.protocol.evaluate",
    "fit_head": "featx.protocol.evaluate",
    "FittedHead": "featx.protocol.evaluate",
    "Result": "featx.protocol.results",
    "compare": "featx.comparison",
    "Leaderboard": "featx.comparison",
    "fit_store": "featx.train",
    "compare_stores": "featx.train",
    "FitReport": "featx.train",
    # bundles and prediction
    "predict": "featx.prediction",
    "PredictResult": "featx.prediction",
    "save_bundle": "featx.bundle",
    "load_bundle": "featx.bundle",
    "Bundle": "featx.bundle",
    "register_safe_class": "featx.bundle",
    # image paths -> embeddings, exports
    "Embedder": "featx.embedder",
    "embed_files": "featx.embedder",
    "export_store": "featx.export",
    # data diagnostics
    "diagnose": "featx.diagnostics",
    "Diagnosis": "featx.diagnostics",
    "apply_manifest": "featx.diagnostics",
    "read_manifest": "featx.diagnostics",
    # pipelines
    "run_pipeline": "featx.pipeline",
    "load_pipeline": "featx.pipeline",
    "PipelineResult": "featx.pipeline",
    # files
    "cache_dir": "featx.files",
    # text
    "embed_texts": "featx.text.engine",
    # fine-tuning
    "FinetuneOptions": "featx.options",
    "finetune": "featx.finetuning",
    "finetune_full": "featx.finetuning",
    "load_finetuned": "featx.finetuning",
    "FinetuneReport": "featx.finetuning",
}

#: Derived, never written by hand: the lazy names plus the ones imported above.
__all__ = sorted([*_LAZY, "FeatxError", "StoreError", "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover  (static type checkers and IDEs see the real signatures)
    from featx.backbones import (
        Backbone,
        BackboneInfo,
        BackboneLike,
        Family,
        list_backbones,
        load_backbone,
        register_family,
    )
    from featx.bundle import Bundle, load_bundle, register_safe_class, save_bundle
    from featx.comparison import Leaderboard, compare
    from featx.diagnostics import Diagnosis, apply_manifest, diagnose, read_manifest
    from featx.embedder import Embedder, embed_files
    from featx.export import export_store
    from featx.extraction import ExtractResult, extract
    from featx.features import FeatureSet
    from featx.files import cache_dir
    from featx.finetuning import FinetuneReport, finetune, finetune_full, load_finetuned
    from featx.heads import HeadInfo, Param, list_heads, make_head, register_head
    from featx.options import (
        BackboneSpec,
        DiagnoseOptions,
        EvalProtocol,
        ExtractOptions,
        FinetuneOptions,
        TextFormat,
    )
    from featx.pipeline import PipelineResult, load_pipeline, run_pipeline
    from featx.prediction import PredictResult, predict
    from featx.protocol.evaluate import FittedHead, evaluate, fit_head
    from featx.protocol.results import Result
    from featx.store.read import load_features, store_info
    from featx.store.verify import VerifyReport, verify_store
    from featx.text.engine import embed_texts
    from featx.train import FitReport, compare_stores, fit_store
